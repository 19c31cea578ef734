"""Validated table data to a :class:`Translator`: every rule compiled, every problem located."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

from marshmallow import ValidationError

from adapter import records, values
from adapter._yaml import KeyPath, Located, show_path
from adapter.mapping.codegen import Resolver, _converter, _object_builder, _resolver
from adapter.mapping.paths import _compile_getter, normalize_name
from adapter.mapping.schema import (
    _NOTHING,
    MappingError,
    Problem,
    _flatten,
    _RuleSchema,
    _ValueSpec,
    _ValueSpecField,
)
from adapter.mapping.translator import Translator, _Items, _Profile, _Rule

_COMMON_TARGETS = frozenset({"user_id", "anonymous_id", "timestamp", "miso_id", "context"})
_ITEM_FIELDS = ("product_ids", "product_group_ids", "quantities")
_BOUNDED_ID = partial(values.to_id, max_length=records.MAX_LENGTHS["product_ids"])

#: The parts of a person's profile a `profiles:` entry may set (what `users:` paths read).
PROFILE_PARTS = ("traits", "group")


def _object(value: Any) -> dict | None:
    return value if isinstance(value, dict) else None


def _as_is(value: Any) -> Any:
    return value


class _Compiler:
    """Turns validated file data into compiled rules, collecting located problems."""

    def __init__(self, located: Located, filename: str) -> None:
        self.located = located
        self.filename = filename
        self.problems: list[Problem] = []
        # Named captures `$match.NAME` may read: those of the page rule being compiled,
        # None outside page rules.
        self.captures: set[str] | None = None

    def problem(self, path: KeyPath, message: str) -> None:
        self.problems.append(
            Problem(self.filename, self.located.line_of(path), show_path(path), message)
        )

    def resolver(self, spec: _ValueSpec, target: str, path: KeyPath) -> Resolver | None:
        try:
            parts = self.target(target)
            resolver = _resolver(spec, _converter(parts))
        except ValueError as exc:
            self.problem(path, str(exc))
            return None
        if any(p.startswith("$match") for p in spec.paths) and self.captures is None:
            self.problem(path, "$match.NAME only works in a rule with `pages:` patterns")
        elif self.captures is not None:
            for name in self.match_names_used(spec):
                if name not in self.captures:
                    self.problem(path, f"no page pattern of this rule captures (?P<{name}>…)")
        return resolver

    @staticmethod
    def match_names_used(spec: _ValueSpec) -> list[str]:
        return [p.split(".", 1)[1] for p in spec.paths if p.startswith("$match.")]

    @staticmethod
    def target(text: str) -> tuple[str, ...]:
        parts = tuple(text.split("."))
        if not all(parts):
            raise ValueError(f"bad field name '{text}'")
        return parts

    def setters(
        self, specs: dict[str, _ValueSpec], path: KeyPath, allowed: frozenset[str] | None
    ) -> dict[tuple[str, ...], Resolver]:
        out: dict[tuple[str, ...], Resolver] = {}
        for name, spec in specs.items():
            top = name.split(".", 1)[0]
            if allowed is not None and top not in allowed:
                self.problem(
                    (*path, name),
                    f"'{top}' is not allowed on this Miso type; it allows: "
                    + ", ".join(sorted(allowed - {"type"})),
                )
                continue
            resolver = self.resolver(spec, name, (*path, name))
            if resolver is not None:
                out[self.target(name)] = resolver
        return out

    def links(self, raw: list[dict], path: KeyPath) -> list[tuple[Resolver, Resolver]]:
        out = []
        for index, link in enumerate(raw):
            user = self.resolver(link["user"], "user_id", (*path, index, "user"))
            anon = self.resolver(link["anonymous"], "anonymous_id", (*path, index, "anonymous"))
            if user and anon:
                out.append((user, anon))
        return out

    def profiles(
        self, raw: list[dict], common: dict[tuple[str, ...], Resolver]
    ) -> tuple[dict[str, list[_Profile]], dict[str, list[_Profile]]]:
        """Compile the `profiles:` entries: (call type → entries, event name → entries)."""
        calls: dict[str, list[_Profile]] = {}
        events: dict[str, list[_Profile]] = {}
        for index, entry in enumerate(raw):
            path: KeyPath = ("profiles", index)
            user = common.get(("user_id",))
            if "user" in entry:
                user = self.resolver(entry["user"], "user_id", (*path, "user"))
            anonymous = common.get(("anonymous_id",))
            if "anonymous" in entry:
                anonymous = self.resolver(entry["anonymous"], "anonymous_id", (*path, "anonymous"))
            if user is None and anonymous is None:
                self.problem(path, "say whose profile it is: 'user' (or common user_id)")
                continue
            sets = []
            for target, spec in entry["set"].items():
                part, _, key = target.partition(".")
                if part not in PROFILE_PARTS or (key == "" and "." in target):
                    self.problem(
                        (*path, "set", target),
                        f"'{target}' is not a part of a profile: set "
                        + ", ".join(PROFILE_PARTS)
                        + " (an object, merged key by key) or one key of them (traits.plan)",
                    )
                    continue
                try:
                    read = _resolver(spec, _object if not key else _as_is)
                except ValueError as exc:
                    self.problem((*path, "set", target), str(exc))
                    continue
                sets.append((part, key or None, read))
            compiled = _Profile(user, anonymous, sets)
            for call in entry.get("calls", []):
                calls.setdefault(call.casefold(), []).append(compiled)
            for name in entry.get("events", []):
                events.setdefault(normalize_name(name), []).append(compiled)
        return calls, events

    def items(self, name: str, raw: Any, path: KeyPath) -> _Items | None:
        if not isinstance(raw, dict):
            self.problem(path, "an item list is a mapping with 'from' and per-item fields")
            return None
        unknown = set(raw) - {"from", *_ITEM_FIELDS}
        for key in sorted(unknown):
            self.problem(
                (*path, key),
                f"unknown key; an item list takes 'from' and {', '.join(_ITEM_FIELDS)}",
            )
        try:
            source = _ValueSpecField().deserialize(raw.get("from"))
        except ValidationError as exc:
            self.problem((*path, "from"), "; ".join(exc.messages))
            return None
        key = next((f for f in ("product_ids", "product_group_ids") if f in raw), None)
        if key is None:
            self.problem(path, "an item list needs 'product_ids' or 'product_group_ids'")
            return None
        per_item = {}
        for item_field in _ITEM_FIELDS:
            if item_field not in raw:
                continue
            try:
                spec = _ValueSpecField().deserialize(raw[item_field])
            except ValidationError as exc:
                self.problem((*path, item_field), "; ".join(exc.messages))
                continue
            convert = values.to_positive_number if item_field == "quantities" else _BOUNDED_ID
            default = None
            if spec.default is not _NOTHING:
                default = convert(spec.default)
                if default is None:
                    self.problem((*path, item_field), f"default {spec.default!r} is not valid")
            try:
                getters = [_compile_getter(p) for p in spec.paths]
            except ValueError as exc:  # pragma: no cover - paths were validated above
                self.problem((*path, item_field), str(exc))
                continue
            per_item[item_field] = (getters, convert, default)
        try:
            sources = [_compile_getter(p) for p in source.paths]
        except ValueError as exc:  # pragma: no cover
            self.problem((*path, "from"), str(exc))
            return None
        if not sources:
            self.problem((*path, "from"), "an item list needs 'from' paths")
            return None
        return _Items(sources, key, per_item)

    def rule(
        self,
        raw: dict,
        path: KeyPath,
        common: dict[tuple[str, ...], Resolver],
        extra: dict[tuple[str, ...], Resolver],
        item_lists: dict[str, _Items],
        label: str,
    ) -> _Rule | None:
        """Compile one rule; page rules expose their named captures while compiling."""
        try:
            return self._rule(raw, path, common, extra, item_lists, label)
        finally:
            self.captures = None

    def _rule(
        self,
        raw: dict,
        path: KeyPath,
        common: dict[tuple[str, ...], Resolver],
        extra: dict[tuple[str, ...], Resolver],
        item_lists: dict[str, _Items],
        label: str,
    ) -> _Rule | None:
        patterns: list[re.Pattern[str]] = []
        for index, pattern in enumerate(raw.get("pages", [])):
            try:
                patterns.append(re.compile(pattern))
            except re.error as exc:
                self.problem((*path, "pages", index), f"bad regular expression: {exc}")
        self.captures = {n for p in patterns for n in p.groupindex} if patterns else None
        if "skip" in raw:
            rule = _Rule(label=label, type=None, skip=raw["skip"])
        else:
            miso_type = raw["type"]
            if miso_type not in records.INTERACTION_TYPES:
                self.problem(
                    (*path, "type"),
                    f"unknown Miso type '{miso_type}'; expected one of: "
                    + ", ".join(records.INTERACTION_TYPES),
                )
                return None
            allowed = records.ALLOWED_FIELDS[miso_type]
            own = self.setters(raw.get("fields", {}), (*path, "fields"), allowed)
            specs = dict(raw.get("fields", {}))
            if miso_type == "custom" and "custom_action_name" not in specs:
                own[("custom_action_name",)] = _resolver(_ValueSpec(("$event",)), values.to_string)
            # Precedence: the rule's own fields, then page-view fields, then common ones.
            merged = {**common, **{t: r for t, r in extra.items() if t[0] in allowed}, **own}
            rule = _Rule(
                label=label,
                type=miso_type,
                skip=None,
                fields=_object_builder(list(merged.items())),
                required=("custom_action_name",) if miso_type == "custom" else (),
            )
            if "items" in raw:
                items = item_lists.get(raw["items"])
                if items is None:
                    known = ", ".join(sorted(item_lists)) or "none are defined"
                    self.problem((*path, "items"), f"no item list named '{raw['items']}' ({known})")
                else:
                    usable = tuple(f for f in items.per_item if f in allowed)
                    clash = [f for f in usable if (f,) in own]
                    if items.key not in allowed:
                        self.problem(
                            (*path, "items"),
                            f"'{miso_type}' does not allow {items.key}, so it takes no items",
                        )
                    elif clash:
                        self.problem(
                            (*path, "items"),
                            f"{', '.join(clash)} set both by 'items' and by 'fields'",
                        )
                    else:
                        rule.items, rule.item_fields = items, usable
        rule.patterns = patterns
        if "links" in raw:
            rule.links = self.links(raw["links"], (*path, "links"))
        if "delete" in raw:
            rule.delete = self.resolver(raw["delete"], "user_id", (*path, "delete"))
        return rule


def _compile(data: dict, located: Located, filename: str) -> Translator:
    compiler = _Compiler(located, filename)
    common = compiler.setters(data.get("common", {}), ("common",), None)
    for target in common:
        if target[0] not in _COMMON_TARGETS:
            compiler.problem(
                ("common", ".".join(target)),
                "common fields apply to every type, so only "
                + ", ".join(sorted(_COMMON_TARGETS))
                + " (and context.*) may be set here",
            )
    event_name = _resolver(data["event_name"], values.to_string)
    call_type = None
    if "call_type" in data:
        call_type = _resolver(data["call_type"], values.to_string)

    page_views = data.get("page_views")
    page_calls: frozenset[str] = frozenset()
    page_events: frozenset[str] = frozenset()
    page_path = None
    page_fields: dict[tuple[str, ...], Resolver] = {}
    if page_views is not None:
        page_calls = frozenset(c.casefold() for c in page_views.get("calls", []))
        page_events = frozenset(normalize_name(e) for e in page_views.get("events", []))
        try:
            page_path = _resolver(page_views["path"], values.to_url_path)
        except ValueError as exc:  # pragma: no cover - path specs hold no constants
            compiler.problem(("page_views", "path"), str(exc))
        page_fields = compiler.setters(page_views.get("fields", {}), ("page_views", "fields"), None)
        if not page_calls and not page_events:
            compiler.problem(("page_views",), "say which events are page views: calls or events")

    item_lists: dict[str, _Items] = {}
    for name, raw in data.get("items", {}).items():
        compiled = compiler.items(name, raw, ("items", name))
        if compiled is not None:
            item_lists[name] = compiled

    page_rules: list[tuple[re.Pattern[str], _Rule]] = []
    name_patterns: list[tuple[re.Pattern[str], _Rule]] = []
    call_rules: dict[str, _Rule] = {}
    event_rules: dict[str, _Rule] = {}
    claimed: dict[tuple[str, str], int] = {}
    for index, raw in enumerate(data["rules"]):
        path: KeyPath = ("rules", index)
        matchers = [k for k in ("events", "event_patterns", "calls", "pages") if k in raw]
        if not matchers:
            compiler.problem(
                path, "a rule needs 'events', 'event_patterns', 'calls' or 'pages' to match on"
            )
            continue
        label = raw.get("name") or _label(raw)
        is_page_rule = "pages" in raw
        extra = page_fields if is_page_rule else {}
        rule = compiler.rule(raw, path, common, extra, item_lists, label)
        if rule is None:
            continue
        if is_page_rule and page_path is None:
            compiler.problem((*path, "pages"), "page rules need a top-level 'page_views' section")
        for kind, table, norm in (
            ("events", event_rules, normalize_name),
            ("calls", call_rules, str.casefold),
        ):
            for position, name in enumerate(raw.get(kind, [])):
                key = norm(name)
                first = claimed.get((kind, key))
                if first is not None:
                    compiler.problem(
                        (*path, kind, position),
                        f"'{name}' is already matched by the rule at line {first}; "
                        "an event may be claimed by one rule only",
                    )
                    continue
                claimed[(kind, key)] = located.line_of((*path, kind, position))
                table[key] = rule
        page_rules.extend((pattern, rule) for pattern in rule.patterns)
        for position, text in enumerate(raw.get("event_patterns", [])):
            try:
                name_patterns.append((re.compile(text, re.IGNORECASE), rule))
            except re.error as exc:
                compiler.problem(
                    (*path, "event_patterns", position), f"bad regular expression: {exc}"
                )

    unmatched = _compile_unmatched(data.get("unmatched", "skip"), compiler, common, item_lists)
    links = compiler.links(data.get("links", []), ("links",))
    profile_calls, profile_events = compiler.profiles(data.get("profiles", []), common)
    users = None
    if "users" in data:
        from adapter.users import compile_users

        users = compile_users(data["users"], compiler.problem, located.line_of)
    if compiler.problems:
        raise MappingError(sorted(compiler.problems, key=lambda p: p.line))
    return Translator(
        path=filename,
        source=data.get("source", Path(filename).stem),
        event_name=event_name,  # type: ignore[arg-type]
        call_type=call_type,
        page_calls=page_calls,
        page_events=page_events,
        page_path=page_path,
        page_rules=page_rules,
        call_rules=call_rules,
        event_rules=event_rules,
        name_patterns=name_patterns,
        unmatched=unmatched,
        links=links,
        users=users,
        profile_calls=profile_calls,
        profile_events=profile_events,
        timestamp=common.get(("timestamp",)),
    )


def _compile_unmatched(
    raw: Any,
    compiler: _Compiler,
    common: dict[tuple[str, ...], Resolver],
    item_lists: dict[str, _Items],
) -> _Rule | None:
    """`unmatched: skip` (default), `unmatched: custom`, or a rule body without matchers."""
    if raw == "skip":
        return None
    if raw == "custom":
        raw = {"type": "custom"}
    if not isinstance(raw, dict):
        compiler.problem(("unmatched",), "expected 'skip', 'custom', or a rule body")
        return None
    try:
        # The `unmatched:` rule is a rule body without matchers.
        body = _RuleSchema(exclude=("events", "event_patterns", "calls", "pages")).load(raw)
    except ValidationError as exc:
        for path, message in _flatten(exc.normalized_messages(), ("unmatched",)):
            compiler.problem(path, message)
        return None
    return compiler.rule(body, ("unmatched",), common, {}, item_lists, "unmatched")


def _label(raw: dict) -> str:
    for key in ("events", "event_patterns", "calls", "pages"):
        if raw.get(key):
            return str(raw[key][0])
    return "rule"  # pragma: no cover - every rule has a matcher
