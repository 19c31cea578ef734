"""Mixpanel exports: stream rows from files, and normalise them into events to map.

Reading (constant memory whatever the file size):

* raw export JSON Lines (``{"event": ..., "properties": {...}}`` per line),
* a JSON array of such rows (parsed incrementally with ijson),
* Data Pipelines JSON (``event_name``, ``distinct_id``, ``device_id``, ``user_id``,
  ``insert_id``, ``time``, ``properties``), one per line or in an array,
* each plain or gzip, recognised by content, not by name.

A malformed line is yielded as a :class:`~adapter.reader.ReadError` with its location.

Normalising (:class:`Normalizer`) applies Mixpanel's own semantics once, so the YAML
table maps plain fields: hot-shard rows restored from their originals; ``time`` in
seconds or milliseconds, corrected from a pre-2023 project's local time; ``user_id``
and ``anonymous_id`` by SPEC §5 (``$device:`` prefixes, placeholders, numeric ids);
identity events (``$identify``, ``$create_alias``, ``$merge``) turned into the pair they
link; system properties stripped; and the dedup key Mixpanel itself uses.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

import ijson
import orjson

from adapter import values
from adapter.reader import ReadError

__all__ = ["NOT_AN_EVENT", "NOT_AN_OBJECT", "Normalizer", "iter_rows", "open_export"]

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
_GZIP_MAGIC = b"\x1f\x8b"
MAX_DEPTH = 64  # deepest nesting accepted in a JSON-array export (rows are a few levels)
_BOM = b"\xef\xbb\xbf"
_MS_THRESHOLD = 1e11


# --------------------------------------------------------------------------- reading


def open_export(path: str | Path) -> tuple[IO[bytes], IO[bytes]]:
    """Open an export for reading; gzip is recognised by its magic bytes.

    Returns (the decoded stream, the raw file): progress is the raw file's position.
    """
    raw = open(path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
    head = raw.read(2)
    raw.seek(0)
    if head == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    return raw, raw


def iter_rows(stream: IO[bytes], name: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, row)`` for each row of an export: JSON Lines or one JSON array.

    ``where`` is ``file:line`` (JSON Lines) or ``file item N`` (array); an unreadable
    line yields a ReadError in place of the row, and reading goes on.
    """
    buffered = io.BufferedReader(stream) if not isinstance(stream, io.BufferedReader) else stream
    if buffered.peek(3)[:3] == _BOM:
        buffered.read(3)  # editors on Windows save one; no JSON parser accepts it
    head = buffered.peek(64).lstrip(b" \t\r\n")
    if head.startswith(b"["):
        yield from _array_rows(buffered, name)
        return
    for number, line in enumerate(buffered, start=1):
        if not line.strip():
            continue
        try:
            yield f"{name}:{number}", orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield f"{name}:{number}", ReadError(f"invalid JSON: {exc}")


def _array_rows(stream: IO[bytes], name: str) -> Iterator[tuple[str, Any]]:
    """Rows of a JSON array, built from ijson's prefix-free events with a depth limit.

    ``ijson.items`` keeps a prefix string per nesting level, so memory grows with the
    square of the depth: a 60 KB body nested 30,000 deep took 2 GB. Export rows are a
    few levels deep; anything past MAX_DEPTH is refused.
    """
    index = depth = 0
    builder: ijson.common.ObjectBuilder | None = None
    events = ijson.basic_parse(stream, use_float=True)
    try:
        first = next(events, None)
        if first is None or first[0] != "start_array":
            yield f"{name}", ReadError("invalid JSON array: expected '['")
            return
        for event, value in events:
            if event in ("start_map", "start_array"):
                depth += 1
                if depth > MAX_DEPTH:
                    yield (f"{name} item {index + 1}",
                           ReadError(f"nested deeper than {MAX_DEPTH} levels"))  # fmt: skip
                    return
            elif event in ("end_map", "end_array"):
                if depth == 0:
                    return  # the end of the top-level array
                depth -= 1
            if builder is None:
                builder = ijson.common.ObjectBuilder()
            builder.event(event, value)
            if depth == 0:
                index += 1
                yield f"{name} item {index}", builder.value
                builder = None
    except ijson.JSONError as exc:
        # An array cannot be resynchronised after a syntax error: report where, stop.
        yield f"{name} after item {index}", ReadError(f"invalid JSON array: {exc}")


# --------------------------------------------------------------------------- normalising


class Normalizer:
    """Turns export rows into events for ``mixpanel.yaml``, with their dedup keys.

    ``time_offset`` (hours, e.g. ``-8``) or ``timezone`` (e.g. ``America/Los_Angeles``,
    DST-aware) undo the local-time storage of projects created before 2023, whose
    exported ``time`` is local wall-clock time written as if it were UTC. ``since`` and
    ``until`` (aware datetimes) keep events in ``[since, until)``.
    """

    def __init__(
        self,
        *,
        time_offset: float | None = None,
        timezone: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        known_anonymous: int = 200_000,
    ) -> None:
        if time_offset is not None and timezone is not None:
            raise ValueError("give a fixed time offset or a project timezone, not both")
        if time_offset is not None and not -24 <= time_offset <= 24:
            raise ValueError(f"a time offset is between -24 and 24 hours, not {time_offset:g}")
        self._offset = time_offset * 3600 if time_offset is not None else 0.0
        self._zone = ZoneInfo(timezone) if timezone else None
        self._since = since.timestamp() if since else None
        self._until = until.timestamp() if until else None
        # Anonymous ids seen in this run, so a row re-keyed to a device id (Original ID
        # Merge) is not mistaken for a user. Bounded: memory stays flat on huge exports.
        # Kept as hash(id): a 64-bit int is a third of a UUID string, and memory then
        # stays nearly flat (a collision in 2^64 is not a practical concern).
        self._anonymous: OrderedDict[int, None] = OrderedDict()
        self._anonymous_cap = known_anonymous
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
        epoch = self._epoch(raw_time, local_time)
        if epoch is None:
            # Miso would stamp it "now": wrong for history, so it is not sent.
            return None, "no valid time"
        if (self._since is not None and epoch < self._since) or (
            self._until is not None and epoch >= self._until
        ):
            return None, "outside --since/--until"
        try:
            key = self._dedup_key(name, props, raw_time)
        except (orjson.JSONEncodeError, RecursionError):
            # Deeper than any JSON serialiser goes (orjson: 255 levels): not a real event.
            return None, "properties nested too deeply"
        user, anonymous = self._ids(name, props)
        event = {
            "event": name,
            "time": epoch,
            "user_id": user,
            "anonymous_id": anonymous,
            "properties": self._clean(props),
        }
        return key, event

    # -- time

    def _epoch(self, raw: Any, local_time: bool = True) -> float | None:
        """True UTC epoch seconds of a Mixpanel ``time`` (s or ms), local-time corrected."""
        number = values.to_number(raw)
        if number is None:
            stamp = values.to_timestamp(raw)  # Data Pipelines may carry ISO text (UTC)
            return datetime.fromisoformat(stamp).timestamp() if stamp else None
        epoch = float(number) / 1000.0 if abs(number) > _MS_THRESHOLD else float(number)
        if epoch <= 0:
            return None
        if not local_time:
            return epoch
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

    def _ids(self, name: str, props: dict) -> tuple[str | None, str | None]:
        """(user_id, anonymous_id) by SPEC §5; identity events give the pair they link."""
        if name in IDENTITY_EVENTS:
            user, anonymous = _identity_pair(name, props)
        else:
            device = _anonymous_id(props.get("$device_id"))
            distinct = values.to_id(props.get("distinct_id"))
            before = values.to_id(props.get("$distinct_id_before_identity"))
            user = values.to_id(props.get("$user_id"), max_length=512)
            if user is None:
                for candidate in (distinct, before):
                    if (
                        candidate is not None
                        and not candidate.startswith(DEVICE_PREFIX)
                        and candidate != device
                        and hash(candidate) not in self._anonymous
                        and len(candidate) <= 512
                    ):
                        user = candidate
                        break
            anonymous = device
            if anonymous is None and distinct is not None and distinct.startswith(DEVICE_PREFIX):
                anonymous = _anonymous_id(distinct)
        self._remember(anonymous)
        return user, anonymous

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

    def _dedup_key(self, name: str, props: dict, raw_time: Any) -> str:
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
        seconds = int(self._epoch(raw_time, local_time=False) or 0)
        return f"mixpanel:{seconds:010x}:{digest}"


def _anonymous_id(value: Any) -> str | None:
    """An anonymous id without Mixpanel's ``$device:`` prefix (never doubled)."""
    text = values.to_id(value)
    if text is not None and text.startswith(DEVICE_PREFIX):
        text = values.to_id(text[len(DEVICE_PREFIX) :])
    return text


def _identity_pair(name: str, props: dict) -> tuple[str | None, str | None]:
    """(user, anonymous) that an identity event links (SPEC §5)."""
    if name == "$identify":
        anonymous = _anonymous_id(props.get("$anon_distinct_id")) or _anonymous_id(
            props.get("$anon_id")
        )
        user = values.to_id(props.get("$identified_id")) or values.to_id(props.get("distinct_id"))
    elif name == "$create_alias":
        # mixpanel-js sends the current (anonymous) distinct_id and the new alias (the user).
        anonymous = _anonymous_id(props.get("distinct_id"))
        user = values.to_id(props.get("alias"))
    else:  # $merge: [user, anonymous], except that a $device: id is always the anonymous one
        ids = props.get("$distinct_ids")
        if not isinstance(ids, list) or len(ids) != 2:
            return None, None
        first, second = (values.to_id(v) for v in ids)
        if first is not None and first.startswith(DEVICE_PREFIX):
            first, second = second, first
        user, anonymous = first, _anonymous_id(second)
    if user is not None and (user.startswith(DEVICE_PREFIX) or len(user) > 512):
        user = None
    return user, anonymous


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
