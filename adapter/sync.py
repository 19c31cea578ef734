"""``sync mixpanel``: Mixpanel's Export API pulled on a schedule, every event sent once.

Mixpanel pushes no raw events out, so the live path for a Mixpanel project is to pull.
Each cycle pulls the days from the stored cursor minus a lookback (default 5 days: late
mobile events reach the export up to 5 days late) through today, through the same replay
engine as files, so rows pulled again are duplicates and never sent twice; then the
cursor moves to today, in the store, so it survives restarts and every host sharing the
store sees it. Only one host syncs a project at a time: it holds a lease in the store,
renewed while it runs; another host waits for it.

The cycle's account is kept in the store (status ``mixpanel-sync:<project>``): its
window, rows pulled, new and duplicate, when it ended, the next run and the last error,
for ``/readyz``, ``/metrics`` and the console.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import IO, Any

from adapter.forwarder import Forwarder
from adapter.mapping import Translator
from adapter.replay import ReplaySummary, Sender, replay
from adapter.sources import Source
from adapter.sources.mixpanel_api import ExportClient, ExportRange, day_ranges
from adapter.store import Status, Store, StoreError

__all__ = ["Sync", "check_cadence", "configured_status", "status_name"]

log = logging.getLogger("adapter.sync")

LEASE_SECONDS = 120.0  # a host that died lets another sync after this long


def status_name(project_id: str) -> str:
    """The store status (and lease) of a project's sync."""
    return f"mixpanel-sync:{project_id}"


def configured_status(store: Status) -> tuple[str, dict[str, Any] | None]:
    """``MIXPANEL_PROJECT_ID`` and its sync's status in ``store`` (None: none ran yet, or no
    project is set). What /readyz, /metrics and the console show."""
    project = os.environ.get("MIXPANEL_PROJECT_ID", "").strip()
    return project, store.get_status(status_name(project)) if project else None


def check_cadence(
    lookback_days: int, days_per_request: int, every: float, dedup_hours: float, per_hour: int = 60
) -> None:
    """ValueError when a schedule would break Mixpanel's hourly budget, or pull days again
    after the store has forgotten their rows (they would be sent twice)."""
    if lookback_days < 0:
        raise ValueError("--lookback-days must be 0 or more")
    if every <= 0:
        raise ValueError("--every must be longer than 0")
    requests_per_cycle = math.ceil((lookback_days + 1) / days_per_request)
    per_hour_used = requests_per_cycle * 3600 / every
    if per_hour_used > per_hour:
        least = math.ceil(requests_per_cycle * 3600 / per_hour)
        raise ValueError(
            f"a cycle every {every:g} s of {requests_per_cycle} requests is {per_hour_used:.0f} "
            f"requests an hour; Mixpanel allows {per_hour}: make --every at least {least} s, "
            "or --days-per-request larger"
        )
    if (lookback_days + 2) * 24 > dedup_hours:
        raise ValueError(
            f"a lookback of {lookback_days} days pulls rows older than the dedup window "
            f"(ADAPTER_DEDUP_HOURS={dedup_hours:g}): they would be sent again; raise "
            "ADAPTER_DEDUP_HOURS or shorten --lookback-days"
        )


@dataclass
class Sync:
    """One project's sync: cycles of pulls into ``store``, under the project's lease."""

    client: ExportClient
    store: Store
    make_source: Callable[[], Source]
    translator: Translator
    today: Callable[[], date]
    dedup_ttl: float
    lookback_days: int = 5
    every: float = 900.0
    days_per_request: int = 1
    start: date | None = None
    forwarder: Callable[[], Forwarder | Sender | None] = lambda: None
    errors: IO[str] | None = None
    owner: str = ""

    def __post_init__(self) -> None:
        self.owner = self.owner or f"{socket.gethostname()}:{os.getpid()}"
        self.name = status_name(self.client.settings.project_id)
        self._held = threading.Event()

    # ------------------------------------------------------------------ the lease

    def _heartbeat(self, stop: threading.Event) -> None:
        """Keep the lease while this process runs; let go if another host took it."""
        while not stop.wait(LEASE_SECONDS / 4):
            try:
                if not self.store.take_lease(self.name, self.owner, LEASE_SECONDS):
                    self._held.clear()
            except StoreError as exc:
                log.warning("could not renew the sync's lease: %s", exc)

    def _wait_for_lease(self, stop: threading.Event) -> bool:
        waited = False
        while not stop.is_set():
            try:
                if self.store.take_lease(self.name, self.owner, LEASE_SECONDS):
                    self._held.set()
                    return True
            except StoreError as exc:
                log.warning("could not take the sync's lease: %s", exc)
            if not waited:
                log.info("another host syncs project %s; waiting for its lease",
                         self.client.settings.project_id)  # fmt: skip
                waited = True
            stop.wait(min(5.0, LEASE_SECONDS / 4))
        return False

    # ------------------------------------------------------------------ cycles

    def run(self, stop: threading.Event, *, once: bool = False) -> int:
        """Cycles until ``stop`` (or one, with ``once``); 0, or 1 when a cycle failed."""
        beat = threading.Thread(target=self._heartbeat, args=(stop,), daemon=True)
        failed = False
        try:
            while not stop.is_set():
                if not self._held.is_set() and not self._wait_for_lease(stop):
                    break
                if not beat.is_alive():
                    beat.start()
                report = self.cycle()
                failed = not report["ok"]
                if once:
                    break
                stop.wait(self.every)
        finally:
            stop.set()
            if self._held.is_set():
                with contextlib.suppress(StoreError):  # else it expires by itself
                    self.store.drop_lease(self.name, self.owner)
        return 1 if failed else 0

    def cycle(self) -> dict[str, Any]:
        """Pull (cursor - lookback) .. today once; store the cursor and the cycle's account."""
        saved = self.store.get_status(self.name) or {}
        cursor = date.fromisoformat(saved["cursor"]) if saved.get("cursor") else None
        today = self.today()
        first = (cursor or self.start or today) - timedelta(days=self.lookback_days)
        first = min(first, today)
        ranges = day_ranges(first, today, self.days_per_request)
        started = time.time()
        log.info("sync cycle: pulling %s..%s (%d requests)", first, today, len(ranges),
                 extra={"event": "sync_started"})  # fmt: skip
        summary: ReplaySummary | None = None
        error = ""
        try:
            summary = replay(
                self.make_source(),
                [ExportRange(self.client, a, b) for a, b in ranges],
                translator=self.translator,
                store=self.store,
                dedup_ttl=self.dedup_ttl,
                forwarder=self.forwarder(),
                errors=self.errors if self.errors is not None else _Null(),
            )
            error = summary.failed
        except StoreError as exc:
            error = f"the store failed: {exc}"
        ok = not error
        result = summary.result if summary is not None else None
        report: dict[str, Any] = {
            "ok": ok,
            "first": first.isoformat(),
            "last": today.isoformat(),
            "requests": len(ranges),
            "rows": result.received if result else 0,
            "new": result.accepted if result else 0,
            "duplicates": result.duplicates if result else 0,
            "started_at": started,
            "ended_at": time.time(),
            "error": error,
        }
        status = {
            **saved,
            "cursor": today.isoformat() if ok else saved.get("cursor"),
            "last_cycle": report,
            "next_run_at": time.time() + self.every,
        }
        if ok:
            status["last_success_at"] = report["ended_at"]
        try:
            self.store.set_status(self.name, status)
        except StoreError as exc:
            log.error("could not store the sync's cursor: %s", exc)
        _count_cycle(report)
        if ok:
            log.info("sync cycle done: %s..%s, %d rows, %d new records, %d duplicates",
                     first, today, report["rows"], report["new"], report["duplicates"],
                     extra={"event": "sync_done", "count": report["new"]})  # fmt: skip
        else:
            log.error("sync cycle failed: %s", error, extra={"event": "sync_failed"})
        return report


def _count_cycle(report: dict[str, Any]) -> None:
    from adapter import metrics

    metrics.count_sync(report)


class _Null:
    """Where a cycle's per-row messages go when nobody reads them (they are logged)."""

    def write(self, text: str) -> int:
        if text.strip():
            log.warning("%s", text.strip())
        return len(text)

    def flush(self) -> None:
        return None
