"""The forwarder: moves spooled records to Miso, exactly once in normal operation.

One cycle (:meth:`Forwarder.step`) leases a batch (≤ 1,000 records, ≤ 1 MiB), checks
each record against the Miso model, sends the valid ones, and acts on the answer
(README.md § What it does with an event):

* 200: ack.
* 422: Miso inserted nothing. Dead-letter the records it names, with its message, and
  resend the rest at once; if it names none, split the batch to find them.
* 408/429/5xx, connection errors, timeouts: retry later with exponential backoff and
  jitter, never sooner than ``Retry-After``; after ``max_retry_age`` seconds of
  trying, dead-letter with the last error.
* 401/403 (or a 404 from a wrong URL): stop, keep everything, publish the reason for
  ``/readyz``, and probe again every ``pause_interval`` seconds.

User profiles go the same way to Miso's Users API (``POST /v1/users``), which replaces
a user's whole record: each queued ``user`` item names a user, whose merged profile is
read as it is when sent and mapped by its table's ``users:`` section
(:class:`adapter.users.UsersTables`) to one whole record; ≤ 100 records a request, one
per user. Miso answers an upload with a task id: the task is checked
(``GET /v1/users/_status/{task_id}``) until it ends, and the users of a failed task are
dead-lettered with Miso's words. A deletion notice deletes the user's interactions and
then their user record.

Leases make several forwarders safe: an item is sent by the process holding its
lease, and only comes back to another one if that process dies.

A running forwarder (:meth:`Forwarder.run`, :meth:`Forwarder.drain`) keeps one record
send in flight while it leases and checks the next batch: Miso's time answering overlaps
the forwarder's own work. Sends stay one at a time and in order, and each answer is acted
on before the next batch goes out.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson

from adapter import metrics, records
from adapter.activity import Activity
from adapter.config import mappings_dir
from adapter.forwarder_users import UserForwarding
from adapter.identity import complete_ids
from adapter.miso import MisoClient, Outcome, key_id
from adapter.store import Claimed, Store, StoreError
from adapter.users import UsersTables

__all__ = ["MISO_STATUS", "Forwarder", "ForwarderSettings", "refusal", "settings_from_env"]

log = logging.getLogger("adapter.forwarder")

#: The shared status name under which the forwarder publishes Miso's refusal.
MISO_STATUS = "miso"


@dataclass
class ForwarderSettings:
    """Tunables; the batch limits are those of Miso's own SDK, the rest suit production."""

    batch_size: int = 1000
    max_bytes: int = 1 << 20  # 1 MiB request body, as Miso's SDK
    lease: float = 30.0  # must exceed the request timeout, so a slow send is not re-sent
    flush_interval: float = 1.0  # records never wait longer than this for a batch
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    max_retry_age: float = 24 * 3600.0  # give up (dead-letter) after trying this long
    pause_interval: float = 30.0  # while Miso refuses the key, probe this often
    users_batch: int = 100  # user records per upload, as Miso's Users API recommends
    task_check: float = 2.0  # first look at a Users API task this long after the upload


def refusal(store: Store, api_key: str | None = None) -> dict[str, Any] | None:
    """Miso's refusal of the key, as a forwarder published it (``reason``, ``status``), or None.

    With ``api_key``, only a refusal of that key counts: one published while an older
    key was configured says nothing of this one.
    """
    status = store.get_status(MISO_STATUS)
    if status is None or status.get("ready", True):
        return None
    if api_key is not None and status.get("key_id") not in (None, key_id(api_key)):
        return None
    return status


def settings_from_env() -> ForwarderSettings:
    """Forwarder tunables from the environment; the defaults suit production."""
    env = os.environ.get
    defaults = ForwarderSettings()
    return ForwarderSettings(
        backoff_base=float(env("ADAPTER_BACKOFF_BASE", defaults.backoff_base)),
        backoff_cap=float(env("ADAPTER_BACKOFF_CAP", defaults.backoff_cap)),
        max_retry_age=float(env("ADAPTER_RETRY_HOURS", defaults.max_retry_age / 3600)) * 3600,
        pause_interval=float(env("ADAPTER_PAUSE_SECONDS", defaults.pause_interval)),
        lease=float(env("ADAPTER_LEASE_SECONDS", defaults.lease)),
    )


def _backoff(attempts: int, settings: ForwarderSettings, retry_after: float | None) -> float:
    """Exponential backoff with equal jitter, never below Retry-After.

    The ceiling doubles with each attempt, from ``backoff_base`` up to ``backoff_cap``;
    the delay is drawn uniformly from its upper half, so retries of many forwarders
    spread out without any of them retrying almost at once.
    """
    ceiling = min(settings.backoff_cap, settings.backoff_base * 2 ** max(attempts - 1, 0))
    delay = random.uniform(ceiling / 2, ceiling)
    return max(delay, retry_after or 0.0)


class Forwarder(UserForwarding):
    """Claims, validates, sends and settles spooled items; run one or many."""

    def __init__(
        self,
        store: Store,
        client: MisoClient | None,
        settings: ForwarderSettings | None = None,
        *,
        owner: str | None = None,
        activity: Activity | None = None,
        users: UsersTables | None = None,
    ) -> None:
        self.store = store
        # Each source's `users:` section, read at upload time (MAPPINGS_DIR by default).
        self.users = users if users is not None else UsersTables(mappings_dir())
        # The console's per-minute tallies; flushed from this forwarder's own loop.
        self.activity = activity if activity is not None else Activity(store).manual()
        self.client = client
        self.settings = settings or ForwarderSettings()
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.paused_until = 0.0
        self._first_ok = True
        # The record send in flight while the next batch is leased and checked.
        self._sender: ThreadPoolExecutor | None = None
        self._in_flight: Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Forwarder {self.owner} via {self.client!r}>"

    # ------------------------------------------------------------------ running

    def run(self, stop: threading.Event) -> None:
        """Forward until ``stop`` is set; survives store and network trouble."""
        if self.client is None:
            log.warning("MISO_API_KEY is not set: records are kept in the spool, nothing is sent")
        last_upkeep = 0.0
        try:
            while not stop.is_set():
                try:
                    busy = self._cycle(overlap=True) >= self.settings.batch_size
                    if not busy:
                        self._settle_in_flight()  # no full batch follows: act on it now
                    self.activity.flush_if_due()
                    if time.monotonic() - last_upkeep > 3600:
                        self.store.purge_expired()
                        last_upkeep = time.monotonic()
                except StoreError as exc:
                    log.error("store unavailable, retrying: %s", exc,
                              extra={"event": "store_error"})  # fmt: skip
                    busy = False
                if not busy:
                    stop.wait(self._idle_wait())
        finally:
            self._stop_sender()
        self.activity.flush()

    def _idle_wait(self) -> float:
        if self.paused_until > time.time():
            return min(self.settings.flush_interval * 5, self.paused_until - time.time())
        return self.settings.flush_interval

    def step(self) -> bool:
        """One cycle over deletions and records, its sends answered before it returns;
        True when a full batch was sent."""
        return self._cycle() >= self.settings.batch_size

    def _cycle(self, overlap: bool = False) -> int:
        """Forward due deletions, user uploads and one batch of records; returns how many
        items it took.

        With ``overlap``, the batch's send is left in flight (settled by the next cycle, or
        :meth:`_settle_in_flight`), and the batch was leased and checked while the previous
        send was still in flight.
        """
        if self.client is None or self.paused_until > time.time():
            self._settle_in_flight()
            return 0
        s = self.settings
        leased_at = time.time()
        batch = self.store.claim("record", s.batch_size, s.max_bytes, s.lease, self.owner)
        valid = self._checked(batch) if batch else []
        self._settle_in_flight()
        if valid and (
            self.paused_until > time.time()
            # The lease must still cover a whole send, or another forwarder could take
            # the batch while it is being sent: a batch that waited long on the send
            # before it is released and leased afresh.
            or time.time() - leased_at > s.lease * _LEASE_SPENT
        ):
            self.store.release([item.id for item in valid])
            valid = []
        taken = len(batch) + self._forward_deletions() + self._forward_users()
        taken += self._check_tasks()
        if valid:
            if overlap:
                if self._sender is None:
                    self._sender = ThreadPoolExecutor(1, thread_name_prefix="forwarder-send")
                self._in_flight = self._sender.submit(self._deliver, valid, self.client.send)
            else:
                self._deliver(valid, self.client.send)
        return taken

    def _settle_in_flight(self) -> None:
        """Wait for the record send in flight, if any; its answer has then been acted on."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            in_flight.result()  # re-raises what the send raised (a StoreError, say)

    def _stop_sender(self) -> None:
        try:
            self._settle_in_flight()
        finally:
            if self._sender is not None:
                self._sender.shutdown(wait=True)
                self._sender = None

    def drain(self, stop: threading.Event | None = None) -> int:
        """Forward until nothing is ready to send (or Miso refuses the key); returns items taken.

        Records waiting for a retry delay are not waited for: the caller reads
        :meth:`Store.stats` to see what is left.
        """
        taken = 0
        idle_since = time.monotonic()
        try:
            while stop is None or not stop.is_set():
                claimed = self._cycle(overlap=True)
                taken += claimed
                if claimed:
                    idle_since = time.monotonic()
                    continue
                # Users API tasks are checked a moment after their upload: wait for their
                # answer a while, so a drained spool means every task was seen to succeed.
                waiting = self.store.stats().get("user_tasks", 0) and not self.paused_until
                if not waiting or time.monotonic() - idle_since > _TASK_WAIT:
                    break
                (stop or threading.Event()).wait(0.2)
        finally:
            self._stop_sender()
        self.activity.flush()
        return taken

    # ------------------------------------------------------------------ counting

    def _count(self, metric: str, items: list[Claimed]) -> None:
        """Items forwarded or retried: Prometheus counters and the console's tallies."""
        if metric == "forwarded":
            metrics.count_forwarded(items)
        else:
            metrics.count_retried(items)
        for kind, n in Counter(i.kind for i in items).items():
            self.activity.delivery(metric, kind, n)
            if kind == "user" and metric == "forwarded":
                self.activity.delivery("users_uploaded", "", n)

    def _dead_lettered(self, kind: str, why: str, n: int) -> None:
        metrics.count_dead_lettered(kind, why, n)
        self.activity.delivery("dead_lettered", why, n)
        if kind == "user":
            self.activity.delivery("users_refused", why, n)

    # ------------------------------------------------------------------ records

    def _checked(self, batch: list[Claimed]) -> list[Claimed]:
        """The batch's records fit to send, each completed with the ids known now; the
        others are dead-lettered, saying why."""
        valid: list[Claimed] = []
        invalid: list[tuple[int, str]] = []
        parsed: list[tuple[Claimed, dict]] = []
        for item in batch:
            try:
                record = orjson.loads(item.body)
            except orjson.JSONDecodeError as exc:
                invalid.append((item.id, f"not sent, not JSON: {exc}"))
                continue
            parsed.append((item, record))
        self._complete_ids(parsed)
        for item, record in parsed:
            problem = _invalid(record)
            if problem is None:
                valid.append(item)
            else:
                invalid.append((item.id, f"not sent, invalid for Miso: {problem}"))
        if invalid:
            self.store.dead_letter(invalid)
            self._dead_lettered("record", "invalid", len(invalid))
            log.warning(
                "dead-lettered %d invalid records before sending",
                len(invalid),
                extra={"event": "dead_letter", "count": len(invalid), "reason": "invalid"},
            )
        return valid

    def _deliver(
        self,
        items: list[Claimed],
        send: Callable[[list[bytes]], Outcome],
        accepted: Callable[[list[Claimed], Outcome], None] | None = None,
    ) -> None:
        """Send the items' bodies, settle Miso's answer, and send again at once what the
        answer leaves to resend (a 422's other records, a split batch's halves);
        ``accepted`` sees each part Miso took, before it is acknowledged."""
        pending = [items] if items else []
        while pending:
            part = pending.pop()
            outcome = send([i.body for i in part])
            if accepted is not None and outcome.kind == "ok":
                accepted(part, outcome)
            pending.extend(self._settle(part, outcome))

    def _complete_ids(self, parsed: list[tuple[Claimed, dict]]) -> None:
        """Give every record both ids when a link is known, as it goes out (the rule:
        :func:`adapter.identity.complete_ids`). Applied at send time, so records queued
        before their link was learned still reach Miso with both ids."""
        records = [record for _, record in parsed]
        for index in complete_ids(records, self.store.resolve):
            parsed[index][0].body = orjson.dumps(records[index])

    def _settle(self, items: list[Claimed], outcome: Outcome) -> list[list[Claimed]]:
        """Act on Miso's answer; return sub-batches that should be sent again now."""
        ids = [i.id for i in items]
        if outcome.kind == "ok":
            self.store.ack(ids)
            self._count("forwarded", items)
            if self.paused_until:
                self._resume()
            elif self._first_ok:
                # A refusal published by an earlier process (a key since fixed) is stale.
                self._first_ok = False
                if self.store.get_status(MISO_STATUS) is not None:
                    self._resume()
            return []
        if outcome.kind == "rejected":
            named = {i: msg for i, msg in outcome.rejected.items() if 0 <= i < len(items)}
            if named:
                self.store.dead_letter(
                    [(items[i].id, f"Miso refused it (422): {msg}") for i, msg in named.items()]
                )
                self._dead_lettered(items[0].kind, "rejected", len(named))
                log.warning(
                    "Miso refused %d of %d records (422)",
                    len(named),
                    len(items),
                    extra={"event": "dead_letter", "count": len(named), "status": 422},
                )
                rest = [item for i, item in enumerate(items) if i not in named]
                return [rest] if rest else []
            return self._split(items, f"Miso refused it (422): {outcome.message}", "rejected")
        if outcome.kind == "too_large":
            return self._split(
                items, f"Miso refused its size (413): {outcome.message}", "too_large"
            )
        if outcome.kind in ("auth", "setup"):
            self.store.release(ids)
            self._pause(outcome)
            return []
        if outcome.kind == "retry":
            self._retry(items, outcome)
            return []
        reason = f"Miso refused it ({outcome.status}): {outcome.message}"
        self.store.dead_letter([(i, reason) for i in ids])
        self._dead_lettered(items[0].kind, "refused", len(ids))
        log.error(
            "dead-lettered %d records: %s",
            len(ids),
            reason,
            extra={"event": "dead_letter", "count": len(ids), "status": outcome.status},
        )
        return []

    def _split(self, items: list[Claimed], reason: str, why: str) -> list[list[Claimed]]:
        """Halve a refused batch to isolate what Miso will not take; a single item is dead."""
        if len(items) == 1:
            self.store.dead_letter([(items[0].id, reason)])
            self._dead_lettered(items[0].kind, why, 1)
            return []
        middle = len(items) // 2
        return [items[middle:], items[:middle]]

    def _retry(self, items: list[Claimed], outcome: Outcome) -> None:
        now = time.time()
        error = f"{outcome.status or 'network'}: {outcome.message}"[:500]
        expired = [i for i in items if now - i.first_attempt_at >= self.settings.max_retry_age]
        if expired:
            hours = self.settings.max_retry_age / 3600
            self.store.dead_letter(
                [
                    (i.id, f"gave up after {i.attempts} attempts in {hours:g} h; last: {error}")
                    for i in expired
                ]
            )
            self._dead_lettered(expired[0].kind, "gave_up", len(expired))
        waiting = [i for i in items if i not in expired]
        if waiting:
            delay = _backoff(max(i.attempts for i in waiting), self.settings, outcome.retry_after)
            self.store.retry_later([i.id for i in waiting], delay, error)
            self._count("retried", waiting)
            log.warning(
                "Miso unavailable (%s); %d records retry in %.1fs", error, len(waiting), delay,
                extra={"event": "miso_error", "status": outcome.status, "count": len(waiting),
                       "delay": round(delay, 3)},
            )  # fmt: skip

    # ------------------------------------------------------------------ pause

    def _pause(self, outcome: Outcome) -> None:
        first = not self.paused_until
        self.paused_until = time.time() + self.settings.pause_interval
        what = (
            "refused the API key" if outcome.kind == "auth" else "cannot be reached as configured"
        )
        self.store.set_status(
            MISO_STATUS,
            {
                "ready": False,
                "reason": f"Miso {what} ({outcome.status}): {outcome.message}",
                "since": time.time(),
                # Lets /readyz ignore a refusal of a key that is no longer configured.
                "key_id": self.client.key_id if self.client is not None else None,
            },
        )
        if first:
            log.error(
                "Miso %s (%s): %s. Sending paused, nothing is lost; retrying every %gs.",
                what,
                outcome.status,
                outcome.message,
                self.settings.pause_interval,
                extra={"event": "miso_paused", "status": outcome.status},
            )

    def _resume(self) -> None:
        self.paused_until = 0.0
        self.store.set_status(MISO_STATUS, None)
        log.warning("Miso accepts the key again: sending resumed", extra={"event": "miso_resumed"})


#: Share of a lease a batch may spend waiting for the send before it (else leased again).
_LEASE_SPENT = 0.1
#: Seconds drain() waits for Users API tasks to end once nothing else is ready.
_TASK_WAIT = 60.0


def _invalid(record: dict) -> str | None:
    """Why a record must not be sent (Miso's schema, or no id at all), or None."""
    errors = records.record_errors(record)
    if errors:
        return orjson.dumps(errors).decode()
    if isinstance(record, dict) and "user_id" not in record and "anonymous_id" not in record:
        return "no user_id or anonymous_id"
    return None
