"""Activity: per-minute tallies of what flowed, kept in the store for the operator console.

Prometheus counters (:mod:`adapter.metrics`) live in one host's processes and restart at
zero; the console needs history ("the last hour, minute by minute") and the whole
picture when several hosts share a Redis store. So each process tallies what it saw in
memory (:class:`Activity`: a dict increment per request, nothing on the hot path's store
transaction) and adds its tallies to the store every few seconds
(:meth:`~adapter.store.Store.add_activity`); :func:`overview` reads them back, summed over
every process and host, for the console.

A tally is ``(minute, metric, source, key) → n``:

==============  ===================  =======================================================
metric          source               key
==============  ===================  =======================================================
received        segment / mixpanel   "" (events read, malformed rows included)
stored          segment / mixpanel   the Miso type of the records stored
duplicates      segment / mixpanel   ""
skipped         segment / mixpanel   the reason, bucketed as the metrics do
uncovered       segment / mixpanel   JSON ``[kind, match]`` of an event no rule claimed
malformed       segment / mixpanel   ""
links           segment / mixpanel   "" (identity links learned)
profiles        segment / mixpanel   "" (profile changes stored)
forwarded       ""                   record / delete / user (what Miso acknowledged)
retried         ""                   record / delete / user
dead_lettered   ""                   why (invalid, rejected, refused, gave_up, ...)
users_uploaded  ""                   "" (user records Miso's Users API accepted)
users_refused   ""                   why, of user uploads dead-lettered (also dead_lettered)
==============  ===================  =======================================================

Distinct uncovered names are bounded per flush (:data:`MAX_UNCOVERED`), the rest counted
under an empty key, so hostile input (a new event name per event) cannot flood the store.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from adapter.metrics import reason_kind
from adapter.store import StoreError
from adapter.store import current as store_current

if TYPE_CHECKING:
    from flask import Flask

    from adapter.ingest import IngestResult
    from adapter.store import Status

__all__ = ["FLUSH_SECONDS", "MAX_UNCOVERED", "Activity", "current", "init_app", "overview"]

log = logging.getLogger("adapter.activity")

#: How often a process adds its tallies to the store (the console's lag at most).
FLUSH_SECONDS = 5.0
#: Distinct uncovered (kind, name) keys one process keeps between two flushes.
MAX_UNCOVERED = 200
#: Pending tallies kept while the store cannot be written; beyond, the oldest go.
_MAX_PENDING = 20_000

Key = tuple[int, str, str, str]
#: The overview's ``profiles`` counts, by the tally they sum.
_PROFILES = {"profiles": "changes", "users_uploaded": "uploaded", "users_refused": "refused"}


class Activity:
    """One process's tallies, added to ``store`` every ``interval`` seconds.

    Call :meth:`start` in a long-running process with no loop of its own (a web
    worker): a daemon thread flushes, started again after a fork. A loop (the
    forwarder) calls :meth:`flush_if_due` instead. :meth:`flush` writes now.
    """

    def __init__(
        self,
        store: Status,
        *,
        interval: float = FLUSH_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: Counter[Key] = Counter()
        self._uncovered = 0  # distinct uncovered keys pending
        self._last_flush = time.monotonic()
        self._thread_pid: int | None = None

    def __repr__(self) -> str:
        return f"<Activity every {self.interval:g}s into {self.store!r}>"

    # ------------------------------------------------------------------ noting

    def ingest(self, source: str, result: IngestResult, *, malformed: int = 0) -> None:
        """What one request, or one chunk of an upload, did."""
        minute = int(self._clock() // 60)
        with self._lock:
            add = self._pending
            if result.received + malformed:
                add[minute, "received", source, ""] += result.received + malformed
            for record_type, n in result.types.items():
                add[minute, "stored", source, record_type] += n
            if result.duplicates:
                add[minute, "duplicates", source, ""] += result.duplicates
            for reason, n in result.skipped.items():
                add[minute, "skipped", source, reason_kind(reason)] += n
            if malformed:
                add[minute, "malformed", source, ""] += malformed
            if result.links:
                add[minute, "links", source, ""] += result.links
            if result.profiles:
                add[minute, "profiles", source, ""] += result.profiles
            for target, n in result.uncovered.items():
                key = (minute, "uncovered", source, orjson.dumps(target).decode())
                if key not in add:
                    if self._uncovered >= MAX_UNCOVERED:
                        key = (minute, "uncovered", source, "")
                    else:
                        self._uncovered += 1
                add[key] += n
        self._maybe_start()

    def delivery(self, metric: str, key: str, n: int) -> None:
        """``n`` items forwarded, retried or dead-lettered (``key``: kind or why)."""
        if n:
            with self._lock:
                self._pending[int(self._clock() // 60), metric, "", key] += n
            self._maybe_start()

    # ------------------------------------------------------------------ flushing

    def flush(self) -> bool:
        """Add pending tallies to the store now; False (tallies kept) when it cannot."""
        with self._lock:
            pending, self._pending = self._pending, Counter()
            self._uncovered = 0
            self._last_flush = time.monotonic()
        if not pending:
            return True
        rows = [(*key, n) for key, n in pending.items()]
        try:
            self.store.add_activity(rows)
        except StoreError as exc:
            log.warning("cannot record activity for the console yet: %s", exc)
            with self._lock:
                if len(self._pending) + len(pending) <= _MAX_PENDING:
                    self._pending.update(pending)
                # Kept names still count toward MAX_UNCOVERED until they are written.
                self._uncovered = sum(1 for k in self._pending if k[1] == "uncovered" and k[3])
            return False
        return True

    def flush_if_due(self) -> None:
        """Flush when ``interval`` has passed since the last flush (for loops)."""
        if time.monotonic() - self._last_flush >= self.interval:
            self.flush()

    def _maybe_start(self) -> None:
        if self._thread_pid != os.getpid() and self._thread_pid != -1:
            self.start()

    def start(self) -> None:
        """Flush from a daemon thread of this process, and once more at exit."""
        with self._lock:
            if self._thread_pid == os.getpid():
                return
            self._thread_pid = os.getpid()
        # The thread and the exit hook hold the Activity weakly: an app that is dropped
        # (tests make thousands) takes its flushing with it instead of leaking a thread.
        ref = weakref.ref(self)
        thread = threading.Thread(
            target=_flush_loop, args=(ref, self.interval), name="activity-flush", daemon=True
        )
        thread.start()
        atexit.register(_flush_now, ref)

    def manual(self) -> Activity:
        """No background thread: the owner calls :meth:`flush_if_due` (returns self)."""
        self._thread_pid = -1
        return self


_EXTENSION = "miso-adapter.activity"


def init_app(app: Flask) -> None:
    """The app's tallies, into its store; the flushing thread starts with the first event a
    worker sees (after gunicorn forks), not here."""
    app.extensions[_EXTENSION] = Activity(store_current(app))


def current(app: Flask | None = None) -> Activity:
    """The tallies of ``app`` (default: the app handling this request)."""
    if app is None:
        from flask import current_app as app
    return app.extensions[_EXTENSION]


def _flush_loop(ref: weakref.ref[Activity], interval: float) -> None:
    """Flush every ``interval`` seconds while the Activity lives."""
    while True:
        time.sleep(interval)
        activity = ref()
        if activity is None:
            return
        try:
            activity.flush()
        except Exception:  # a bug here must not end the flushing for good
            log.exception("activity flush failed")
        del activity  # hold it only while flushing


def _flush_now(ref: weakref.ref[Activity]) -> None:
    activity = ref()
    if activity is not None:
        activity.flush()


# --------------------------------------------------------------------------- reading


def overview(store: Status, *, now: float | None = None) -> dict[str, Any]:
    """What the console shows, from the store's tallies of the last 24 hours.

    ``series``: 60 per-minute points per metric for the last hour (oldest first, the
    current minute last); ``sources``: per source, counts for the last ``hour`` and
    ``day``; ``types``: records stored per source and Miso type; ``skipped``: per
    source and reason; ``uncovered``: per source, names no rule claimed (newest and
    most frequent first) with when they were last seen; ``delivery``: forwarded,
    retried and dead-lettered; ``profiles``: profile changes stored, users uploaded to
    Miso and user uploads refused (``refused_by``: per why), per window.
    """
    now_minute = int((time.time() if now is None else now) // 60)
    hour_start = now_minute - 59
    rows = store.activity(now_minute - 24 * 60 + 1)
    series_metrics = ("received", "stored", "forwarded", "dead_lettered", "skipped")
    series = {m: [0] * 60 for m in series_metrics}
    sources: dict[str, dict[str, Counter[str]]] = {}
    types: dict[tuple[str, str], Counter[str]] = {}
    skipped: dict[tuple[str, str], Counter[str]] = {}
    uncovered: dict[tuple[str, str], dict[str, Any]] = {}
    delivery: dict[tuple[str, str], Counter[str]] = {}
    profiles: dict[str, Counter[str]] = {name: Counter() for name in _PROFILES.values()}
    refused_by: dict[str, Counter[str]] = {}
    for minute, metric, source, key, n in rows:
        minute = min(minute, now_minute)  # a host whose clock runs ahead: count it as now
        windows = ("hour", "day") if minute >= hour_start else ("day",)
        if metric in series and minute >= hour_start:
            series[metric][minute - hour_start] += n
        if source:
            per = sources.setdefault(source, {"hour": Counter(), "day": Counter()})
            for w in windows:
                per[w][metric] += n
        if metric == "stored":
            _add(types.setdefault((source, key), Counter()), windows, n)
        elif metric == "skipped":
            _add(skipped.setdefault((source, key), Counter()), windows, n)
        elif metric == "uncovered":
            entry = uncovered.setdefault((source, key), {"counts": Counter(), "last": minute})
            _add(entry["counts"], windows, n)
            entry["last"] = max(entry["last"], minute)
        elif metric in ("forwarded", "retried", "dead_lettered"):
            _add(delivery.setdefault((metric, key), Counter()), windows, n)
        elif metric in _PROFILES:
            _add(profiles[_PROFILES[metric]], windows, n)
            if metric == "users_refused":
                _add(refused_by.setdefault(key, Counter()), windows, n)
    return {
        "minute": now_minute,
        "series": {"start_minute": hour_start, **series},
        "sources": {
            source: {w: dict(sorted(c.items())) for w, c in per.items()}
            for source, per in sorted(sources.items())
        },
        "types": _table(types, ("source", "type")),
        "skipped": _table(skipped, ("source", "reason")),
        "uncovered": _uncovered(uncovered, now_minute),
        "delivery": _table(delivery, ("metric", "key")),
        "profiles": {
            **{name: {"hour": c["hour"], "day": c["day"]} for name, c in profiles.items()},
            "refused_by": [
                {"reason": why, "hour": c["hour"], "day": c["day"]}
                for why, c in sorted(refused_by.items(), key=lambda i: (-i[1]["day"], i[0]))
            ],
        },
    }


def _add(counter: Counter[str], windows: tuple[str, ...], n: int) -> None:
    for w in windows:
        counter[w] += n


def _table(data: dict[tuple[str, str], Counter[str]], names: tuple[str, str]) -> list[dict]:
    """Rows of {names..., hour, day}, most frequent in the last day first."""
    rows = [
        {names[0]: a, names[1]: b, "hour": c["hour"], "day": c["day"]} for (a, b), c in data.items()
    ]
    rows.sort(key=lambda r: (-r["day"], -r["hour"], r[names[0]], r[names[1]]))
    return rows


def _uncovered(data: dict[tuple[str, str], dict[str, Any]], now_minute: int) -> list[dict]:
    """Uncovered names per source with a rule stub each; spellings of one event name
    (``Cart Viewed``, ``cart_viewed``) share one stub, as in ``mappings coverage``."""
    from adapter.coverage import rule_stub
    from adapter.mapping import normalize_name

    # Names beyond MAX_UNCOVERED in one flush were counted under an empty key: one
    # "other" group per source, with no stub.
    groups: dict[tuple[str, str, str], dict[str, Any]] = {}
    for (source, key), entry in data.items():
        kind, match = orjson.loads(key) if key else ("other", "")
        # As the table matches: event names loosely, calls by case, page paths exactly.
        norm = {"event": normalize_name, "call": str.casefold}.get(kind, str)(match)
        group = groups.setdefault(
            (source, kind, norm), {"spellings": Counter(), "counts": Counter(), "last": 0}
        )
        group["spellings"][match] += entry["counts"]["day"]
        group["counts"].update(entry["counts"])
        group["last"] = max(group["last"], entry["last"])
    rows = []
    for (source, kind, _), group in groups.items():
        ranked = sorted(group["spellings"].items(), key=lambda item: (-item[1], item[0]))
        match = ranked[0][0]
        rows.append({
            "source": source,
            "kind": kind,
            "match": match,
            "spellings": [s for s, _ in ranked if s],
            "hour": group["counts"]["hour"],
            "day": group["counts"]["day"],
            "last_seen_minutes_ago": now_minute - group["last"],
            "stub": rule_stub(kind, match) if kind != "other" else "",
        })  # fmt: skip
    rows.sort(key=lambda r: (r["kind"] == "other", -r["day"], r["source"], r["match"]))
    return rows
