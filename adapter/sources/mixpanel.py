"""Mixpanel export rows: the source, and the normaliser that gives them plain fields.

:class:`MixpanelSource` reads raw-export rows (``{"event": ..., "properties": {...}}``)
and Data Pipelines rows (``event_name``, ``distinct_id``, ``device_id``, ``user_id``,
``insert_id``, ``time``, ``properties``), one per line or in a JSON array, each file
plain or gzip (:mod:`adapter.sources.inputs` and :mod:`~adapter.sources.jsonvalues` read
them, in constant memory).

Normalising (:class:`Normalizer`) applies Mixpanel's own semantics once, so the YAML
table maps plain fields: hot-shard rows restored from their originals; ``time`` in
seconds or milliseconds, corrected from a pre-2023 project's local time; ``user_id``
and ``anonymous_id`` from ``$user_id``, ``$device_id`` and ``distinct_id`` (``$device:``
prefixes, placeholders, numeric ids, ids known as anonymous: rules in mappings/README.md
§ The default Mixpanel table);
identity events (``$identify``, ``$create_alias``, ``$merge``) turned into the pair they
link; system properties stripped; and the dedup key Mixpanel itself uses.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, ClassVar, NamedTuple
from zoneinfo import ZoneInfo

import orjson

from adapter import values
from adapter.identity import Link
from adapter.sources import OUTSIDE, BaseSource, Item, Window, learn_first
from adapter.sources.jsonvalues import values_naming

__all__ = [
    "NOT_AN_EVENT",
    "NOT_AN_OBJECT",
    "MixpanelSource",
    "Normalizer",
    "identity_rows",
]

DEVICE_PREFIX = "$device:"
IDENTITY_EVENTS = ("$identify", "$create_alias", "$merge")
HOT_SHARD = "$hotshard_events"
#: Skip reasons of rows that are no Mixpanel event at all (the /mixpanel route refuses a
#: body made only of such rows).
NOT_AN_EVENT = "not a Mixpanel event"
NOT_AN_OBJECT = f"{NOT_AN_EVENT}: expected a JSON object"

# Mixpanel system properties: bookkeeping of Mixpanel's pipeline, never behaviour.
_SYSTEM = frozenset(
    {
        "time", "distinct_id", "$distinct_id_before_identity", "$insert_id", "$device_id",
        "$user_id", "token", "mp_processing_time_ms", "$import", "$mp_event_size",
        "$lib_version", "mp_lib", "mp_sent_by_lib_version", "mp_original_event_name",
        "mp_original_distinct_id", "$is_reshuffled", "$preshuffle_distinct_id",
        "$identity_failure_reason", "$failure_reason", "$mp_replay_id",
    }
)  # fmt: skip
_SYSTEM_PREFIXES = ("$mp_api_",)
_MS_THRESHOLD = 1e11
_IDENTITY_NAMES = re.compile(rb'"\$(?:identify|create_alias|merge)"')
_SETTLE_AT = 1000  # undecided events held at most, for callers that never call settle()

Known = Callable[[str], bool]
Pair = tuple[str | None, str | None]  # (user_id, anonymous_id)
Decide = Callable[[Known], Pair]


class _Pending(NamedTuple):
    """An event whose ids depend on whether some of its ids are anonymous."""

    event: dict
    decide: Decide
    candidates: tuple[str, ...]


# --------------------------------------------------------------------------- reading


def identity_rows(stream: IO[bytes], name: str) -> Iterator[Any]:
    """The identity rows (``$identify``, ``$create_alias``, ``$merge``) of an export
    (a buffered, decoded stream); a quick pass (:func:`~.jsonvalues.values_naming`)."""
    for row in values_naming(stream, name, _IDENTITY_NAMES):
        if isinstance(row, dict) and (row.get("event") or row.get("event_name")) in (
            IDENTITY_EVENTS
        ):
            yield row


# --------------------------------------------------------------------------- normalising


class Normalizer:
    """Turns export rows into events for ``mixpanel.yaml``, with their dedup keys.

    ``time_offset`` (hours, e.g. ``-8``) or ``timezone`` (e.g. ``America/Los_Angeles``,
    DST-aware) undo the local-time storage of projects created before 2023, whose
    exported ``time`` is local wall-clock time written as if it were UTC. ``window`` keeps
    events whose true time is in it.
    """

    def __init__(
        self,
        *,
        time_offset: float | None = None,
        timezone: str | None = None,
        window: Window | None = None,
        known_anonymous: Callable[[list[str]], Iterable[str]] | None = None,
        cache_size: int = 200_000,
    ) -> None:
        if time_offset is not None and timezone is not None:
            raise ValueError("give a fixed time offset or a project timezone, not both")
        if time_offset is not None and not -24 <= time_offset <= 24:
            raise ValueError(f"a time offset is between -24 and 24 hours, not {time_offset:g}")
        self._offset = time_offset * 3600 if time_offset is not None else 0.0
        self._zone = ZoneInfo(timezone) if timezone else None
        self._corrects = self._zone is not None or self._offset != 0  # local-time rows
        self._window = window if window else None
        # Which ids are anonymous is the store's knowledge (links from every source, run
        # and host): ``known_anonymous(ids)`` returns those of ``ids`` it holds as
        # anonymous. In front of it, a bounded cache of the anonymous ids this run has
        # met, so that a row re-keyed to a device id, or a device's pre-sign-in row, is
        # not taken for a user. Kept as hash(id): a 64-bit int is a third of a UUID
        # string, so memory stays nearly flat (a collision in 2^64 is not a concern).
        self.known_anonymous = known_anonymous
        self._anonymous: OrderedDict[int, None] = OrderedDict()
        self._anonymous_cap = cache_size
        # Events whose ids hang on whether an id is anonymous; settled in batches.
        self._pending: list[_Pending] = []
        # Rows of one export share a few hundred property-name sets: which of a set's
        # names are system properties is worked out once per set (half the cost of _clean).
        self._system_names: dict[tuple[str, ...], tuple[str, ...]] = {}

    def __call__(self, row: Any) -> tuple[str | None, dict | str]:
        """``(dedup key, event)``, or ``(None, reason)`` for a row that is not an event."""
        if not isinstance(row, dict):
            return None, NOT_AN_OBJECT
        local_time = True
        if "event_name" in row and "event" not in row:
            row = _from_pipeline(row)
            local_time = False  # Data Pipelines always write UTC, even for old projects
        name = row.get("event")
        props = row.get("properties")
        if not isinstance(props, dict):
            props = {}
        if not isinstance(name, str) or not name:
            return None, f"{NOT_AN_EVENT}: no event name"
        if name == HOT_SHARD:
            original = props.get("mp_original_event_name")
            if isinstance(original, str) and original:
                name = original
                if props.get("mp_original_distinct_id") not in (None, ""):
                    props = {**props, "distinct_id": props["mp_original_distinct_id"]}
        raw_time = props.get("time")
        exported, numeric = _exported_epoch(raw_time)  # before any local-time correction
        if exported is None:
            # Miso would stamp it "now": wrong for history, so it is not sent.
            return None, "no valid time"
        # Only a number can be a pre-2023 project's local time; ISO text is UTC already.
        epoch = self._local(exported) if local_time and numeric and self._corrects else exported
        if epoch is None:
            return None, "no valid time"
        if self._window is not None and not self._window.holds(epoch):
            return None, OUTSIDE
        try:
            key = self._dedup_key(name, props, raw_time, exported)
        except (orjson.JSONEncodeError, RecursionError):
            # Deeper than any JSON serialiser goes (orjson: 255 levels): not a real event.
            return None, "properties nested too deeply"
        event = {
            "event": name,
            "time": epoch,
            "user_id": None,
            "anonymous_id": None,
            "properties": self._clean(props),
        }
        self._ids(name, props, event)
        return key, event

    # -- time

    def _local(self, epoch: float) -> float | None:
        """An exported epoch (seconds) corrected from a pre-2023 project's local time."""
        if self._zone is not None:
            # The number is local wall-clock time read as UTC: re-read it in the zone.
            try:
                wall = datetime(1970, 1, 1) + timedelta(seconds=epoch)
            except OverflowError:
                return None
            return wall.replace(tzinfo=self._zone).astimezone(UTC).timestamp()
        return epoch - self._offset

    # -- identity

    def _remember(self, anonymous: str | None) -> None:
        if anonymous is None:
            return
        key = hash(anonymous)
        if key in self._anonymous:
            self._anonymous.move_to_end(key)
            return
        self._anonymous[key] = None
        if len(self._anonymous) > self._anonymous_cap:
            self._anonymous.popitem(last=False)

    def _cached(self, candidate: str) -> bool:
        return hash(candidate) in self._anonymous

    def _ids(self, name: str, props: dict, event: dict) -> None:
        """Set the event's ``user_id`` and ``anonymous_id`` (rules in ``_choose``).

        An id whose side is not known yet (an unprefixed ``distinct_id``) is decided from
        this run's memory now and again in :meth:`settle`, against the store.
        """
        if name in IDENTITY_EVENTS:
            decide, candidates = _identity_pair(name, props)
        else:
            device = _anonymous_id(props.get("$device_id"))
            distinct = values.to_id(props.get("distinct_id"))
            before = values.to_id(props.get("$distinct_id_before_identity"))
            user = values.to_id(props.get("$user_id"), max_length=512)
            anonymous = device
            if anonymous is None and distinct is not None and distinct.startswith(DEVICE_PREFIX):
                anonymous = _anonymous_id(distinct)
            candidates = _undecided(distinct, device, user)
            if before is not None:
                candidates += _undecided(before, device, user)
            if not candidates:
                event["user_id"], event["anonymous_id"] = user, anonymous
                self._remember(anonymous)
                return
            decide = functools.partial(_choose, user, anonymous, candidates)
        user, anonymous = decide(self._cached)
        event["user_id"], event["anonymous_id"] = user, anonymous
        if any(not self._cached(c) for c in candidates):
            # Undecided: what it would be now is not yet knowledge to remember.
            self._pending.append(_Pending(event, decide, candidates))
            if len(self._pending) >= _SETTLE_AT:
                self.settle()
        else:
            self._remember(anonymous)

    def learn(self, row: Any) -> tuple[str, str] | None:
        """The (anonymous, user) link of an identity row, remembered as this run's own.

        For a pass over the identity rows before the events (:func:`identity_rows`), so
        that a device's rows read before its sign-in are known as anonymous too.
        """
        if not isinstance(row, dict):
            return None
        if "event_name" in row and "event" not in row:
            row = _from_pipeline(row)
        name, props = row.get("event"), row.get("properties")
        if name not in IDENTITY_EVENTS or not isinstance(props, dict):
            return None
        decide, candidates = _identity_pair(name, props)
        if candidates and not any(self._cached(c) for c in candidates):
            return None  # which side is which is only known in the full read
        user, anonymous = decide(self._cached)
        if user is None or anonymous is None:
            return None
        self._remember(anonymous)
        return anonymous, user

    def settle(self) -> None:
        """Decide again the ids of events read since the last call, against the store.

        Call it on a batch of events before translating them: an id the store (or a row
        later in the batch) knows as anonymous becomes the ``anonymous_id`` instead of
        passing for a user. One look-up per batch, of the ids not already known.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return
        if self.known_anonymous is not None:
            unknown = {c for p in pending for c in p.candidates if not self._cached(c)}
            if unknown:
                for anonymous in self.known_anonymous(sorted(unknown)):
                    self._remember(anonymous)
        for item in pending:
            user, anonymous = item.decide(self._cached)
            item.event["user_id"], item.event["anonymous_id"] = user, anonymous
            self._remember(anonymous)

    def _clean(self, props: dict) -> dict:
        """Properties without Mixpanel's system ones, and without the ``$direct`` non-referrer."""
        names = tuple(props)
        drop = self._system_names.get(names)
        if drop is None:
            if len(self._system_names) > 10_000:  # a pathological file: stay bounded
                self._system_names.clear()
            drop = self._system_names[names] = tuple(k for k in names if _is_system(k))
        out = props.copy()
        for name in drop:
            del out[name]
        if out.get("$referrer") == "$direct":
            del out["$referrer"]
        return out

    # -- dedup

    def _dedup_key(self, name: str, props: dict, raw_time: Any, exported: float) -> str:
        """Mixpanel's own identity of an event: (event, distinct_id, time, $insert_id).

        Without an ``$insert_id``, a hash of the event's content (system properties
        excluded, keys sorted) stands in, as Mixpanel's import docs recommend.

        The key starts with the event's time (hex seconds, as exported, before any
        time-zone correction): exports run in time order, so a chunk's keys land
        side by side in the store's dedup index instead of on a thousand random
        pages (a random 128-bit key per event wrote ~4 KB of index pages each).
        """
        distinct = props.get("distinct_id")
        insert_id = props.get("$insert_id")
        if insert_id not in (None, ""):
            identity = [name, distinct, raw_time, insert_id]
        else:
            identity = [name, distinct, raw_time, self._clean(props)]
        digest = hashlib.blake2b(
            orjson.dumps(identity, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS),
            digest_size=16,
        ).hexdigest()
        return f"mixpanel:{int(exported):010x}:{digest}"


def _exported_epoch(raw: Any) -> tuple[float | None, bool]:
    """(UTC epoch seconds of a Mixpanel ``time`` as exported, in s or ms, or None; whether
    it was a number)."""
    number = values.to_number(raw)
    if number is None:
        stamp = values.to_timestamp(raw)  # Data Pipelines may carry ISO text (UTC)
        return (datetime.fromisoformat(stamp).timestamp() if stamp else None), False
    epoch = float(number) / 1000.0 if abs(number) > _MS_THRESHOLD else float(number)
    return (epoch if epoch > 0 else None), True


def _anonymous_id(value: Any) -> str | None:
    """An anonymous id without Mixpanel's ``$device:`` prefix (never doubled)."""
    text = values.to_id(value)
    if text is not None and text.startswith(DEVICE_PREFIX):
        text = values.to_id(text[len(DEVICE_PREFIX) :])
    return text


def _undecided(candidate: str | None, device: str | None, user: str | None) -> tuple[str, ...]:
    """``(candidate,)`` when which side it is on is still to decide, else ``()``."""
    if (
        candidate is None
        or candidate.startswith(DEVICE_PREFIX)
        or candidate in (device, user)
        or len(candidate) > 512
    ):
        return ()
    return (candidate,)


def _choose(
    user: str | None, anonymous: str | None, candidates: tuple[str, ...], known: Known
) -> tuple[str | None, str | None]:
    """(user_id, anonymous_id) of an event, given which ids are ``known`` anonymous ids.

    ``user``: ``$user_id``; ``anonymous``: ``$device_id``, else a ``$device:``-prefixed
    ``distinct_id`` without its prefix. ``candidates`` (``distinct_id``, then
    ``$distinct_id_before_identity``, unprefixed): a known anonymous one is the anonymous
    id when none is set, any other the user when none is set.
    """
    for candidate in candidates:
        if known(candidate):
            if anonymous is None:
                anonymous = candidate
        elif user is None:
            user = candidate
    return user, anonymous


def _identity_pair(name: str, props: dict) -> tuple[Decide, tuple[str, ...]]:
    """How to decide the (user, anonymous) pair an identity event links, and the ids
    whose side that depends on.

    ``$identify``: ``$anon_distinct_id`` (or ``$anon_id``) is anonymous, ``$identified_id``
    (or ``distinct_id``) the user. ``$create_alias``: ``distinct_id`` is anonymous (as
    mixpanel-js sends it at sign-up), ``alias`` the user. ``$merge`` (``$distinct_ids``,
    two ids): a ``$device:``-prefixed or known anonymous id is the anonymous side wherever
    it stands; otherwise the order is [user, anonymous].
    """
    if name == "$identify":
        anonymous = _anonymous_id(props.get("$anon_distinct_id")) or _anonymous_id(
            props.get("$anon_id")
        )
        user = values.to_id(props.get("$identified_id")) or values.to_id(props.get("distinct_id"))
    elif name == "$create_alias":
        anonymous = _anonymous_id(props.get("distinct_id"))
        user = values.to_id(props.get("alias"))
    else:
        ids = props.get("$distinct_ids")
        if not isinstance(ids, list) or len(ids) != 2:
            return _no_pair, ()
        first, second = (values.to_id(v) for v in ids)
        if first is not None and first.startswith(DEVICE_PREFIX):
            first, second = second, first
        elif not (second is not None and second.startswith(DEVICE_PREFIX)):
            ambiguous = tuple(i for i in (first, second) if i is not None)
            return functools.partial(_merge_pair, first, second), ambiguous
        return functools.partial(_merge_pair, first, second), ()
    return functools.partial(_fixed_pair, _user_side(user), anonymous), ()


def _merge_pair(first: str | None, second: str | None, known: Known) -> Pair:
    if first is not None and known(first) and not (second is not None and known(second)):
        first, second = second, first
    return _user_side(first), _anonymous_id(second)


def _fixed_pair(user: str | None, anonymous: str | None, _: Known) -> Pair:
    return user, anonymous


def _no_pair(_: Known) -> tuple[None, None]:
    return None, None


def _user_side(user: str | None) -> str | None:
    """A user id, unless it is a device id or too long for Miso."""
    if user is not None and (user.startswith(DEVICE_PREFIX) or len(user) > 512):
        return None
    return user


def _is_system(name: Any) -> bool:
    return name in _SYSTEM or (isinstance(name, str) and name.startswith(_SYSTEM_PREFIXES))


def _from_pipeline(row: dict) -> dict:
    """A Data Pipelines row in raw-export shape (top-level ids go back into properties)."""
    props = row.get("properties")
    if isinstance(props, str):
        try:
            props = orjson.loads(props)
        except orjson.JSONDecodeError:
            props = {}
    props = dict(props) if isinstance(props, dict) else {}
    for field, prop in (
        ("distinct_id", "distinct_id"),
        ("device_id", "$device_id"),
        ("user_id", "$user_id"),
        ("insert_id", "$insert_id"),
        ("time", "time"),
    ):
        if row.get(field) not in (None, ""):
            props[prop] = row[field]
    return {"event": row.get("event_name"), "properties": props}


# --------------------------------------------------------------------------- the source


class MixpanelSource(BaseSource):
    """Rows of Mixpanel exports, normalised (see :class:`Normalizer`) and keyed by
    Mixpanel's own event identity."""

    name: ClassVar[str] = "mixpanel"
    table: ClassVar[str | None] = "mixpanel"
    options: ClassVar[tuple[str, ...]] = ("time_offset", "timezone")
    describes: ClassVar[str] = "Mixpanel export rows"
    foreign: ClassVar[str] = NOT_AN_EVENT
    expected: ClassVar[str] = "Mixpanel export rows"
    unit: ClassVar[str] = "Mixpanel rows"

    def __init__(
        self,
        *,
        window: Window | None = None,
        time_offset: float | None = None,
        timezone: str | None = None,
    ) -> None:
        self.normalizer = Normalizer(time_offset=time_offset, timezone=timezone, window=window)
        # Every row is one event: readers take the normaliser's answer as it is.
        self.one_event = self.normalizer

    def items(self, where: str, value: Any) -> tuple[Item]:
        return (Item(where, *self.normalizer(value)),)

    def end_chunk(self) -> None:
        self.normalizer.settle()

    def not_of_this_source(self, skipped: Mapping[str, int], received: int) -> str | None:
        not_events = sum(n for reason, n in skipped.items() if reason.startswith(NOT_AN_EVENT))
        if not_events != received:
            return None
        if skipped.get(NOT_AN_OBJECT, 0) == not_events:
            return "no Mixpanel events in the body: expected JSON objects as rows"
        return (
            "no Mixpanel events in the body: rows need an event name ('event' or "
            "'event_name') and their properties"
        )

    def use_anonymous_lookup(self, known: Callable[[list[str]], Iterable[str]]) -> None:
        if self.normalizer.known_anonymous is None:
            self.normalizer.known_anonymous = known

    def prepare(self, paths: Sequence[Path], learn: Callable[[list[Link]], None] | None) -> None:
        """Learn the links of every identity row first, so no row is read before its link.

        A device's rows come before its sign-in, so a single pass would take its id for a
        user's. The normaliser remembers the anonymous side; ``learn`` also stores the
        links, so the store knows them beyond the normaliser's memory.
        """

        def links(stream: IO[bytes], name: str) -> Iterator[Link]:
            for row in identity_rows(stream, name):
                pair = self.normalizer.learn(row)
                if pair is not None:
                    yield Link(*pair)

        learn_first(paths, links, learn)
