"""The compiled table at work: match an event to its rule and build what it becomes.

:class:`Translator` is the hot path (``translate``), and answers without building
anything which rule an event meets (``explain``, for coverage reports).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from adapter.identity import Link, ProfileChange
from adapter.mapping.codegen import Resolver
from adapter.mapping.paths import Getter, normalize_name

if TYPE_CHECKING:
    from adapter.users import UsersMapping

#: Distinct raw event names a translator remembers the matching of.
_NAME_CACHE_MAX = 100_000
# The page path of an event that is no page view: never read (None: read, and absent).
_UNREAD = object()


class Translation:
    """What one source event became: Miso records, identity links, deletions, or why nothing."""

    __slots__ = ("deletions", "links", "profiles", "records", "skipped", "uncovered")

    def __init__(
        self,
        records: list[dict],
        links: list[Link],
        deletions: list[str],
        skipped: str | None,
        uncovered: tuple[str, str] | None = None,
        profiles: list[ProfileChange] | None = None,
    ) -> None:
        self.records = records
        self.links = links
        self.deletions = deletions
        self.skipped = skipped
        # Profile changes (the table's `profiles:` entries): uploaded to Miso's Users API.
        self.profiles = profiles if profiles is not None else []
        # No rule of the table claimed the event (skipped, or sent by `unmatched: custom`):
        # (kind, what a rule must match), kind "event", "page" or "call"; for the console's
        # live list of uncovered names and their rule stubs.
        self.uncovered = uncovered

    def __repr__(self) -> str:
        return (
            f"Translation(records={self.records!r}, links={self.links!r}, "
            f"deletions={self.deletions!r}, skipped={self.skipped!r}, "
            f"uncovered={self.uncovered!r}, profiles={self.profiles!r})"
        )


class Explanation(NamedTuple):
    """How a table treats an event: see :meth:`Translator.explain`."""

    key: str
    outcome: str  # "mapped", "skipped" or "uncovered"
    detail: str
    type: str | None


@dataclass
class _Items:
    """A compiled item list: where the items are, and per-item id/quantity readers."""

    sources: list[Getter]
    key: str
    per_item: dict[str, tuple[list[Getter], Callable[[Any], Any], Any]]


_NO_PROFILES: list[Any] = []  # shared, never changed: the entries of most events


@dataclass
class _Profile:
    """A compiled `profiles:` entry: the person a message is about, and what it sets:
    ``(part, key, reader)``, key None for a whole object merged key by key."""

    user: Resolver | None
    anonymous: Resolver | None
    sets: list[tuple[str, str | None, Resolver]]


@dataclass
class _Rule:
    """A compiled rule: what to emit and how to read each field."""

    label: str
    type: str | None
    skip: str | None
    fields: Callable[[Any, dict], dict | None] | None = None
    items: _Items | None = None
    item_fields: tuple[str, ...] = ()
    links: list[tuple[Resolver, Resolver]] = field(default_factory=list)
    delete: Resolver | None = None
    required: tuple[str, ...] = ()
    patterns: list[re.Pattern[str]] = field(default_factory=list)


class Translator:
    """A compiled mapping table: ``translate(event)`` is all the hot path does."""

    def __init__(
        self,
        *,
        path: str,
        source: str,
        event_name: Resolver,
        call_type: Resolver | None,
        page_calls: frozenset[str],
        page_events: frozenset[str],
        page_path: Resolver | None,
        page_rules: list[tuple[re.Pattern[str], _Rule]],
        call_rules: dict[str, _Rule],
        event_rules: dict[str, _Rule],
        name_patterns: list[tuple[re.Pattern[str], _Rule]],
        unmatched: _Rule | None,
        links: list[tuple[Resolver, Resolver]],
        users: UsersMapping | None = None,
        profile_calls: dict[str, list[_Profile]] | None = None,
        profile_events: dict[str, list[_Profile]] | None = None,
        timestamp: Resolver | None = None,
    ) -> None:
        self.path = path
        self.source = source
        self._event_name = event_name
        self._call_type = call_type
        self._page_calls = page_calls
        self._page_events = page_events
        self._page_path = page_path
        self._page_rules = page_rules
        self._call_rules = call_rules
        self._event_rules = event_rules
        self._name_patterns = name_patterns
        self._unmatched = unmatched
        self._links = links
        # The compiled `users:` section (adapter.users): a user's merged traits → the
        # UserRecord to upload; None when the table has no such section.
        self.users = users
        self._profile_calls = profile_calls or {}
        self._profile_events = profile_events or {}
        self._timestamp = timestamp
        # Raw event name → rule (or None); event names repeat endlessly, normalising once
        # per distinct spelling keeps matching at one dict lookup.
        self._name_cache: dict[str, tuple[bool, _Rule | None, list[_Profile]]] = {}

    def __repr__(self) -> str:
        return f"<Translator {self.source} from {self.path}: {self.rule_count} rules>"

    @property
    def rule_count(self) -> int:
        """How many distinct rules the table holds."""
        rules = {id(r) for r in self._event_rules.values()}
        rules |= {id(r) for r in self._call_rules.values()}
        rules |= {id(r) for _, r in self._page_rules}
        rules |= {id(r) for _, r in self._name_patterns}
        return len(rules)

    @property
    def event_names(self) -> list[str]:
        """The normalised event names the table maps."""
        return sorted(self._event_rules)

    def _lookup(self, name: str) -> tuple[bool, _Rule | None, list[_Profile]]:
        """(is a page-view event, its event rule, its `profiles:` entries) for a raw event
        name, cached."""
        try:
            return self._name_cache[name]
        except KeyError:
            key = normalize_name(name)
            is_page = key in self._page_events
            rule = self._event_rules.get(key)
            if rule is None and not is_page:
                # Exact names first; patterns ("^\$mp_") catch what no name claims. A page
                # view is matched by its path instead, so an unmapped path says which one.
                rule = next((r for p, r in self._name_patterns if p.search(name)), None)
            found = (is_page, rule, self._profile_events.get(key, _NO_PROFILES))
            if len(self._name_cache) < _NAME_CACHE_MAX:  # bounded: hostile input has endless names
                self._name_cache[name] = found
            return found

    def explain(self, event: dict) -> Explanation:
        """Which rule an event meets, without building anything (for coverage reports).

        ``key`` is what was matched: the event name, ``page <path>`` for a page view, or
        the call type. ``outcome`` is ``mapped`` (``detail`` = the Miso type), ``skipped``
        (a skip rule: ``detail`` = its reason) or ``uncovered`` (``detail`` = why).
        """
        env: dict[str, Any] = {}
        rule, name, call, page, _ = self._match(event, env)
        if page is not _UNREAD and page is not None and (rule is None or rule.patterns):
            key = f"page {page}"
        else:
            key = name if name is not None else call or ""
        if rule is None:
            return Explanation(key, "uncovered", _unmatched_reason(name, call, page), None)
        if rule is self._unmatched:
            return Explanation(key, "uncovered", f"sent as {rule.type} (unmatched)", rule.type)
        if rule.skip is not None:
            return Explanation(key, "skipped", rule.skip, None)
        return Explanation(key, "mapped", rule.type or "", rule.type)

    def _match(
        self, event: dict, env: dict
    ) -> tuple[_Rule | None, str | None, str | None, Any, list[_Profile]]:
        """(rule, event name, call type, page path or _UNREAD, `profiles:` entries) for an
        event."""
        name = self._event_name(event, env)
        call = self._call_type(event, env) if self._call_type is not None else None
        call_key = call.casefold() if call is not None else None
        env["$event"] = name if name is not None else call
        rule: _Rule | None = None
        page: Any = _UNREAD  # the page path, once looked at
        is_page_event, named_rule, profiles = (
            self._lookup(name) if name is not None else (False, None, _NO_PROFILES)
        )
        if call_key is not None and self._profile_calls:
            profiles = profiles + self._profile_calls.get(call_key, _NO_PROFILES)
        if self._page_path is not None and (is_page_event or call_key in self._page_calls):
            page = self._page_path(event, env)
            if page is not None:
                for pattern, candidate in self._page_rules:
                    match = pattern.search(page)
                    if match is not None:
                        env["$match"] = match.groupdict()
                        rule = candidate
                        break
        if rule is None:
            rule = named_rule
        if rule is None and call_key is not None:
            rule = self._call_rules.get(call_key)
        if rule is None and (name is not None or call is not None):
            rule = self._unmatched
        return rule, name, call, page, profiles

    def translate(self, event: dict) -> Translation:
        """Translate one source event (a JSON object) into Miso records, links, deletions
        and profile changes."""
        env: dict[str, Any] = {}
        rule, name, call, page, profiles = self._match(event, env)
        translation = self._translate(event, env, rule, name, call, page)
        if profiles:
            translation.profiles = self._profiles(event, env, profiles)
        return translation

    def _translate(
        self,
        event: dict,
        env: dict,
        rule: _Rule | None,
        name: str | None,
        call: str | None,
        page: Any,
    ) -> Translation:
        links = self._learn(self._links, event, env)
        if rule is None:
            uncovered = _uncovered_target(name, call, page)
            return Translation([], links, [], _unmatched_reason(name, call, page), uncovered)
        if rule.links:
            links += [x for x in self._learn(rule.links, event, env) if x not in links]
        deletions = []
        if rule.delete is not None:
            user = rule.delete(event, env)
            if user is not None:
                deletions.append(user)
        if rule.skip is not None:
            return Translation([], links, deletions, rule.skip)
        record = self._build(rule, event, env)
        if "user_id" not in record and "anonymous_id" not in record:
            return Translation([], links, deletions, "no user_id or anonymous_id")
        for required in rule.required:
            if required not in record:
                return Translation([], links, deletions, f"no value for {required}")
        if rule is self._unmatched:
            return Translation(
                [record], links, deletions, None, _uncovered_target(name, call, page)
            )
        return Translation([record], links, deletions, None)

    def _profiles(self, event: dict, env: dict, entries: list[_Profile]) -> list[ProfileChange]:
        """The profile changes the matching `profiles:` entries read from this message."""
        out = []
        for entry in entries:
            user = entry.user(event, env) if entry.user is not None else None
            anonymous = entry.anonymous(event, env) if entry.anonymous is not None else None
            if user is None and anonymous is None:
                continue
            changes: dict[str, dict[str, Any]] = {}
            for part, key, read in entry.sets:
                got = read(event, env)
                if got is None:
                    continue
                if key is None:
                    changes.setdefault(part, {}).update(got)
                else:
                    changes.setdefault(part, {})[key] = got
            if changes:
                at = self._when(event, env)
                out.append(ProfileChange(user, anonymous, changes, at, self.source))
        return out

    def _when(self, event: dict, env: dict) -> float:
        """A message's time in epoch seconds (now when it has none)."""
        stamp = self._timestamp(event, env) if self._timestamp is not None else None
        if stamp is not None:
            try:
                return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            except ValueError:
                pass
        return time.time()

    @staticmethod
    def _learn(specs: list[tuple[Resolver, Resolver]], event: dict, env: dict) -> list[Link]:
        out = []
        for user_of, anon_of in specs:
            user = user_of(event, env)
            if user is None:
                continue
            anon = anon_of(event, env)
            if anon is not None and anon != user:
                out.append(Link(anonymous_id=anon, user_id=user))
        return out

    @staticmethod
    def _build(rule: _Rule, event: dict, env: dict) -> dict:
        record: dict[str, Any] = {"type": rule.type}
        built = rule.fields(event, env) if rule.fields is not None else None
        if built is not None:
            record.update(built)
        if rule.items is not None:
            _add_items(record, rule.items, rule.item_fields, event, env)
        return record


def _uncovered_target(name: str | None, call: str | None, page: Any) -> tuple[str, str] | None:
    """(kind, match) a rule would need to claim an event no rule claimed, as in
    :func:`_unmatched_reason`: its page path, else its event name, else its call type."""
    if page is not _UNREAD and page:
        return "page", page
    if name is not None:
        return "event", name
    if call is not None:
        return "call", call
    return None


def _unmatched_reason(name: str | None, call: str | None, page: Any) -> str:
    """Why no rule applied, naming what was looked for (built only when needed)."""
    if page is not _UNREAD:
        return f"no rule for page path {page!r}" if page else "page view without a path"
    if name is not None:
        return f"no rule for event {name!r}"
    if call is not None:
        return f"no rule for call {call!r}"
    return "no event name or call type"


def _add_items(record: dict, items: _Items, wanted: tuple[str, ...], event: Any, env: dict) -> None:
    """Fill parallel lists (ids, quantities) from the first item source that has ids."""
    key_getters, key_convert, _ = items.per_item[items.key]
    for source in items.sources:
        found = source(event, env)
        if isinstance(found, dict):
            found = [found]
        if not isinstance(found, list):
            continue
        rows: list[tuple[str, Any]] = []
        for item in found:
            if isinstance(item, dict):
                key = _first(key_getters, key_convert, item, env)
            else:
                key = key_convert(item)  # a bare id in a list of ids
                item = {}
            if key is not None:
                rows.append((key, item))
        if not rows:
            continue
        record[items.key] = [key for key, _ in rows]
        for name in wanted:
            if name == items.key:
                continue
            getters, convert, default = items.per_item[name]
            column = [_first(getters, convert, item, env) for _, item in rows]
            if name == "quantities":
                # Parallel to product_ids: every position needs a value.
                if default is None and None in column:
                    continue
                record[name] = [default if q is None else q for q in column]
            else:
                present = [v for v in column if v is not None]
                if present:
                    record[name] = present
        return


def _first(getters: list[Getter], convert: Callable[[Any], Any], item: Any, env: dict) -> Any:
    for getter in getters:
        raw = getter(item, env)
        if raw is not None:
            got = convert(raw)
            if got is not None:
                return got
    return None
