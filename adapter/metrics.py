"""Prometheus metrics: what came in, what was stored, what reached Miso (``GET /metrics``).

The code calls small functions (:func:`count_ingest`, :func:`count_forwarded`,
:func:`observe_miso`, ...); :func:`scrape` returns the exposition text. Names start with
``miso_adapter_``; counters end in ``_total``.

Processes. ``serve`` runs gunicorn workers and a forwarder as separate processes, so it
uses prometheus-client's multiprocess mode: it hands both children one fresh, empty
``PROMETHEUS_MULTIPROC_DIR`` (:func:`prepare_multiprocess_dir`), every process writes its
counts to its own files there, gunicorn's ``child_exit`` hook calls
:func:`process_exited`, and a scrape (in whichever worker answers it) merges every
process's files. prometheus-client picks the mode when it is imported, from that
variable; without it (tests, ``forward`` alone, a bare ``flask run``) the counts live in
this process and a scrape shows them. Metric objects are made once per process, lazily
and outside prometheus-client's global registry, so any number of apps per process is fine.

Spool depth, oldest age, dead letters and stored profiles are read from ``store.stats()``
at scrape time (a collector), never pushed: every scrape sees the store as it is, from any
worker.

Label values are bounded. ``source`` is segment or mixpanel; ``type`` is one of Miso's 29
record types; ``outcome`` and ``kind`` are fixed sets (a spool kind: ``record``,
``delete``, ``user``, ``user_task``). Skip reasons name events and paths
("no rule for event 'X'"), so they are bucketed by kind (:func:`reason_kind`): the
adapter's own reasons become a fixed phrase, and a mapping table's ``skip:`` reasons (a
handful, written by the operator) are kept as written, up to :data:`MAX_REASONS`
distinct values per process, then ``other``. No label ever holds a key, token or URL.
"""

from __future__ import annotations

import glob
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Counter
    from prometheus_client.core import Metric

    from adapter.ingest import IngestResult
    from adapter.store import Claimed, Store

__all__ = [
    "CONTENT_TYPE",
    "ENV",
    "MAX_REASONS",
    "count_dead_lettered",
    "count_forwarded",
    "count_ingest",
    "count_reload",
    "count_retried",
    "multiprocess_enabled",
    "observe_miso",
    "prepare_multiprocess_dir",
    "process_exited",
    "reason_kind",
    "reset",
    "scrape",
]

log = logging.getLogger("adapter.metrics")

#: What :func:`scrape` returns: the Prometheus text format, version 0.0.4.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Distinct verbatim skip reasons (a mapping's ``skip:`` texts) kept per process.
MAX_REASONS = 50
_REASON_LENGTH = 100

# The adapter's own skip reasons, by their start: the rest of the text names an event,
# a path or a field, which would make one time series per event name.
_REASON_KINDS = (
    ("no rule for event", "no rule for event"),
    ("no rule for page path", "no rule for page path"),
    ("page view without a path", "no rule for page path"),
    ("no rule for call", "no rule for call"),
    ("no event name or call type", "no event name"),
    ("no user_id or anonymous_id", "no user_id or anonymous_id"),
    ("no value for ", "no value for a required field"),
    ("not a Segment message", "not a Segment message"),
    ("not a Mixpanel event", "not a Mixpanel event"),
    ("no valid time", "no valid time"),
    ("outside --since/--until", "outside since/until"),
    ("properties nested too deeply", "properties nested too deeply"),
    ("nothing to send", "nothing to send"),
)
_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)


class _Metrics:
    """This process's metric objects (never in prometheus-client's global registry)."""

    def __init__(self) -> None:
        # Imported on first use: the CLI's translate path never pays for it.
        from prometheus_client import Counter, Histogram, disable_created_metrics

        # No `_created` series: multiprocess mode has none, so both modes look alike.
        disable_created_metrics()

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"miso_adapter_{name}", doc, labels, registry=None)

        self.received = counter(
            "received", "Events (messages, export rows) read from a source", ("source",)
        )
        self.accepted = counter("accepted", "Miso records durably queued for sending", ("source",))
        self.duplicates = counter(
            "duplicates", "Events already seen (dedup key), not stored again", ("source",)
        )
        self.skipped = counter("skipped", "Events not sent, by reason kind", ("source", "reason"))
        self.records = counter(
            "records", "Miso records durably queued, by Miso record type", ("source", "type")
        )
        self.profile_changes = counter(
            "profile_changes", "Profile changes stored (identify and group calls, profile rows)",
            ("source",),
        )  # fmt: skip
        self.forwarded = counter(
            "forwarded", "Items Miso accepted: record, delete (a user's deletion), user "
            "(a user's profile upload)", ("kind",),
        )  # fmt: skip
        self.retried = counter(
            "retried", "Items put back for a later retry (429, 5xx, network), by kind "
            "(record, delete, user)", ("kind",),
        )  # fmt: skip
        self.dead_lettered = counter(
            "dead_lettered", "Items moved to the dead letters, by kind (record, delete, user) "
            "and why", ("kind", "reason"),
        )  # fmt: skip
        self.reloads = counter(
            "mapping_reloads", "Mapping tables reloaded from disk, by outcome",
            ("table", "outcome"),
        )  # fmt: skip
        self.sync_cycles = counter(
            "sync_cycles", "Cycles of the Mixpanel Export API sync, by outcome", ("outcome",)
        )
        self.sync_rows = counter(
            "sync_rows", "Rows the sync pulled: new (stored) or duplicate (pulled again)",
            ("kind",),
        )  # fmt: skip
        self.miso_seconds = Histogram(
            "miso_adapter_miso_request_seconds",
            "Time of a request to Miso's Interactions API, by outcome",
            ("outcome",),
            buckets=_SECONDS,
            registry=None,
        )
        self.all = (
            self.received, self.accepted, self.duplicates, self.skipped, self.records,
            self.profile_changes, self.forwarded, self.retried, self.dead_lettered,
            self.reloads, self.miso_seconds, self.sync_cycles, self.sync_rows,
        )  # fmt: skip
        self.reasons: set[str] = set()


_lock = threading.Lock()
_state: _Metrics | None = None


def _m() -> _Metrics:
    global _state
    state = _state
    if state is None:
        with _lock:
            if _state is None:
                _state = _Metrics()
            state = _state
    return state


def reset() -> None:
    """Forget this process's counts (tests; a multiprocess directory keeps its files)."""
    global _state
    with _lock:
        _state = None


# --------------------------------------------------------------------------- recording


def reason_kind(reason: str) -> str:
    """The bounded label for a skip reason (see the module doc)."""
    for start, kind in _REASON_KINDS:
        if reason.startswith(start):
            return kind
    label = reason[:_REASON_LENGTH]
    reasons = _m().reasons
    if label in reasons:
        return label
    if len(reasons) >= MAX_REASONS:
        return "other"
    reasons.add(label)
    return label


def count_ingest(source: str, result: IngestResult, *, malformed: int = 0) -> None:
    """Count what one request (or upload) did; ``malformed`` rows could not be read."""
    m = _m()
    m.received.labels(source).inc(result.received + malformed)
    m.accepted.labels(source).inc(result.accepted)
    m.duplicates.labels(source).inc(result.duplicates)
    m.profile_changes.labels(source).inc(result.profiles)
    for reason, n in result.skipped.items():
        m.skipped.labels(source, reason_kind(reason)).inc(n)
    if malformed:
        m.skipped.labels(source, "malformed").inc(malformed)
    for record_type, n in result.types.items():
        m.records.labels(source, record_type).inc(n)


def _by_kind(items: list[Claimed]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.kind] = counts.get(item.kind, 0) + 1
    return counts


def count_forwarded(items: list[Claimed]) -> None:
    """Items Miso acknowledged, by kind (``user``: one user's profile uploaded)."""
    for kind, n in _by_kind(items).items():
        _m().forwarded.labels(kind).inc(n)


def count_retried(items: list[Claimed]) -> None:
    """Items scheduled for another attempt."""
    for kind, n in _by_kind(items).items():
        _m().retried.labels(kind).inc(n)


def count_dead_lettered(kind: str, reason: str, n: int) -> None:
    """``n`` items dead-lettered; ``reason`` is a fixed word (invalid, rejected, ...)."""
    if n:
        _m().dead_lettered.labels(kind, reason).inc(n)


def observe_miso(seconds: float, outcome: str) -> None:
    """One request to Miso took ``seconds``; ``outcome`` is its :class:`Outcome` kind."""
    _m().miso_seconds.labels(outcome).observe(seconds)


def count_reload(table: str, outcome: str) -> None:
    """A mapping table's edit was loaded (``ok``) or refused (``rejected``)."""
    _m().reloads.labels(table, outcome).inc()


def count_sync(report: dict) -> None:
    """One cycle of the Mixpanel sync: its outcome and the rows it pulled."""
    m = _m()
    m.sync_cycles.labels("ok" if report.get("ok") else "failed").inc()
    m.sync_rows.labels("new").inc(report.get("new", 0))
    m.sync_rows.labels("duplicate").inc(report.get("duplicates", 0))


# --------------------------------------------------------------------------- scraping


class _StoreCollector:
    """Spool, dead-letter and profile gauges read from the store at scrape time."""

    def __init__(self, store: Store | None) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        from adapter.store import StoreError

        if self.store is None:
            return
        up = GaugeMetricFamily("miso_adapter_store_up", "1 when the store answered this scrape")
        try:
            stats = self.store.stats()
        except StoreError as exc:
            log.warning("metrics: cannot read the store's stats: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _sync_gauges(self.store)
        yield from _kafka_gauges(self.store)
        for name, key, doc in (
            ("spool_depth", "spool", "Items waiting in the spool (in flight and retries included)"),
            ("spool_oldest_age_seconds", "oldest_age", "Age of the oldest item in the spool"),
            ("dead_letters", "dead_letters", "Items in the dead letters now"),
            ("profiles", "profiles", "Users with a stored profile (uploaded to Miso's Users API)"),
            ("anonymous_profiles", "anonymous_profiles",
             "Profiles kept under an anonymous id until a link names the user"),
        ):  # fmt: skip
            if key not in stats:  # a store that does not keep profiles
                continue
            gauge = GaugeMetricFamily(f"miso_adapter_{name}", doc)
            gauge.add_metric([], float(stats.get(key) or 0))
            yield gauge


def _kafka_gauges(store: Store) -> Iterator[Metric]:
    """Consumer lag per partition of ``KAFKA_GROUP``'s live consumers (when one runs)."""
    from prometheus_client.core import GaugeMetricFamily

    from adapter.consume import configured_members
    from adapter.store import StoreError

    try:
        _, members = configured_members(store)
    except StoreError:
        return
    if not members:
        return
    lag = GaugeMetricFamily("miso_adapter_kafka_lag", "Messages of a partition not yet consumed",
                            labels=["topic", "partition"])  # fmt: skip
    up = GaugeMetricFamily("miso_adapter_kafka_consumers_ok",
                           "Consumers of the group that reach their brokers")  # fmt: skip
    for member in members:
        for name, behind in member.get("lag", {}).items():
            topic, _, partition = name.rpartition("/")
            lag.add_metric([topic, partition], float(behind))
    up.add_metric([], float(sum(1 for m in members if m.get("ok"))))
    yield lag
    yield up


def _sync_gauges(store: Store) -> Iterator[Metric]:
    """Seconds since each syncing project's last successful cycle (when one syncs)."""
    from prometheus_client.core import GaugeMetricFamily

    from adapter.store import StoreError
    from adapter.sync import configured_status

    try:
        _, status = configured_status(store)
    except StoreError:
        return
    if not status or not status.get("last_success_at"):
        return
    gauge = GaugeMetricFamily(
        "miso_adapter_sync_last_success_age_seconds",
        "Seconds since the Mixpanel sync's last successful cycle",
    )
    gauge.add_metric([], max(0.0, time.time() - float(status["last_success_at"])))
    yield gauge


class _Own:
    """This process's metrics, as one collector."""

    def collect(self) -> Iterator[Metric]:
        for metric in _m().all:
            yield from metric.collect()


def multiprocess_enabled() -> bool:
    """True when prometheus-client keeps values in ``PROMETHEUS_MULTIPROC_DIR`` files."""
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False)) and bool(os.environ.get(ENV))


def scrape(store: Store | None = None) -> bytes:
    """The exposition text: every process's counters (multiprocess mode) or this one's,
    plus the store's gauges."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_enabled():
        from prometheus_client.multiprocess import MultiProcessCollector

        MultiProcessCollector(registry, path=os.environ[ENV])
    else:
        registry.register(_Own())
    registry.register(_StoreCollector(store))
    return generate_latest(registry)


# --------------------------------------------------------------------------- supervision


def prepare_multiprocess_dir() -> tuple[str, bool]:
    """A fresh, empty directory for ``PROMETHEUS_MULTIPROC_DIR``; returns it and whether
    it was made here (a temporary one, to remove at exit).

    A directory the user named is created if missing and emptied of metric files (counts
    of a previous run would otherwise be added to this one's).
    """
    given = os.environ.get(ENV)
    if not given:
        return tempfile.mkdtemp(prefix="miso-adapter-metrics-"), True
    os.makedirs(given, exist_ok=True)
    for path in glob.glob(os.path.join(given, "*.db")):
        os.remove(path)
    return given, False


def process_exited(pid: int, path: str | None = None) -> None:
    """Bookkeeping for a dead process in multiprocess mode (gunicorn's ``child_exit``)."""
    path = path or os.environ.get(ENV)
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)
