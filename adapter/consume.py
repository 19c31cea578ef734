"""``consume kafka``: Miso as one more consumer of an event stream, losing and stalling nothing.

The usual hand-written consumer commits offsets before its write and loses events on a
crash, or blocks a partition forever on one bad message. This one:

* reads chunks of up to 1,000 messages or 1 second, stores their records, links and dedup
  keys in one transaction, and only then stores their offsets for committing
  (``enable.auto.offset.store=false``): what Kafka counts as consumed is durable here;
* on a rebalance, stores the chunk in hand and commits before the partitions go; a lost
  partition commits nothing (its next owner reads again; the store's dedup keys make
  that a duplicate);
* counts a message that is not JSON or not of the format as skipped, logs where it is
  (``topic/partition@offset``) and why, copies it to ``--dead-letter-topic`` when asked,
  and goes on;
* on SIGTERM finishes the chunk in hand, commits and exits 0;
* keeps its state in the store (status ``kafka:<group>:<member>``, members listed under
  ``kafka:<group>``): brokers reachable or not, and the lag of each partition it holds,
  for ``/readyz``, ``/metrics`` and the console.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from adapter import metrics
from adapter.activity import Activity
from adapter.ingest import IngestResult, ingest
from adapter.mapping import Translator
from adapter.sources import Source
from adapter.sources.jsonvalues import ReadError
from adapter.sources.kafka import KafkaSettings, message_items
from adapter.store import Status, Store, StoreError

__all__ = [
    "CHUNK",
    "Consumer",
    "check_brokers",
    "configured_members",
    "group_status",
    "member_status_name",
]

log = logging.getLogger("adapter.consume")

CHUNK = 1000  # messages per transaction at most
CHUNK_SECONDS = 1.0  # and at most this long between two
STATUS_SECONDS = 5.0  # how often the state and lag are published
STALE_SECONDS = 60.0  # a member silent this long is no longer listed


def member_status_name(group: str, member: str) -> str:
    return f"kafka:{group}:{member}"


def group_status(store: Status, group: str) -> list[dict[str, Any]]:
    """The live members' states of a consumer group (what /readyz, /metrics, the console show)."""
    members = (store.get_status(f"kafka:{group}") or {}).get("members", {})
    now = time.time()
    out = []
    for member, seen in sorted(members.items()):
        if now - seen > STALE_SECONDS:
            continue
        status = store.get_status(member_status_name(group, member))
        if status:
            out.append(status)
    return out


def configured_members(store: Status) -> tuple[str, list[dict[str, Any]]]:
    """``KAFKA_GROUP`` and the live members of it (none when no group is set)."""
    group = os.environ.get("KAFKA_GROUP", "").strip()
    return group, group_status(store, group) if group else []


def check_brokers(settings: KafkaSettings, timeout: float = 50.0) -> str | None:
    """None when the brokers answer within ``timeout``; else why, naming the servers."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    deadline = time.monotonic() + timeout
    problem = "no answer"
    admin = AdminClient({**settings.client_config(), "socket.timeout.ms": 5000,
                         "logger": _quiet_logger()})  # fmt: skip
    while time.monotonic() < deadline:
        try:
            topics = admin.list_topics(timeout=min(10.0, max(1.0, deadline - time.monotonic())))
        except KafkaException as exc:
            problem = str(exc.args[0] if exc.args else exc)
            continue
        missing = [t for t in settings.topics if t not in topics.topics]
        if missing:
            log.warning("topic(s) %s do not exist on %s (yet)", ", ".join(missing),
                        settings.bootstrap_servers)  # fmt: skip
        return None
    return f"cannot reach Kafka at {settings.bootstrap_servers} within {timeout:.0f} s: {problem}"


def _quiet_logger() -> logging.Logger:
    """librdkafka's own lines go to our log at DEBUG; what matters we log ourselves."""
    quiet = logging.getLogger("adapter.consume.librdkafka")
    quiet.setLevel(logging.WARNING)
    return quiet


class Consumer:
    """One member of a consumer group, storing what it reads before committing it."""

    def __init__(
        self,
        settings: KafkaSettings,
        store: Store,
        source: Source,
        translator: Translator,
        *,
        dedup_ttl: float,
        stop: threading.Event,
        check_forwarder: Callable[[], None] = lambda: None,
    ) -> None:
        from confluent_kafka import Consumer as KafkaConsumer

        self.settings = settings
        self.store = store
        self.source = source
        self.translator = translator
        self.dedup_ttl = dedup_ttl
        self.stop = stop
        self.check_forwarder = check_forwarder
        self.member = f"{socket.gethostname()}:{os.getpid()}"
        self.activity = Activity(store).manual()
        self.pending: list[Any] = []  # messages read, not yet stored
        self.broker_problem = ""
        self.totals = IngestResult()
        self.skipped = 0
        self._last_status = 0.0
        self._last_complaint = 0.0
        self._producer = None
        config = {
            **settings.client_config(),
            "group.id": settings.group,
            "client.id": f"miso-adapter-{self.member}",
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 1000,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            # A member that dies (kill -9) holds its partitions until its session ends: 10 s
            # instead of librdkafka's 45 s, safe as this loop polls at least every second.
            # Brokers also wait up to about half of it for members to join a group.
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 1_000,
            "error_cb": self._error,
            "logger": _quiet_logger(),
        }
        self.consumer = KafkaConsumer(config)
        if settings.dead_letter_topic:
            from confluent_kafka import Producer

            self._producer = Producer({**settings.client_config(), "acks": "all",
                                       "logger": _quiet_logger()})  # fmt: skip

    # ------------------------------------------------------------------ callbacks

    def _error(self, error: Any) -> None:
        """librdkafka's errors: brokers lost or back; it keeps retrying by itself."""
        self.broker_problem = f"{error.name()}: {error.str()}"
        now = time.monotonic()
        if now - self._last_complaint > 10:
            self._last_complaint = now
            log.error("Kafka at %s: %s (retrying)", self.settings.bootstrap_servers,
                      self.broker_problem, extra={"event": "kafka_error"})  # fmt: skip

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        """Partitions leave this member: store what is in hand, commit, then let them go."""
        self._store_pending()
        with contextlib.suppress(Exception):
            consumer.commit(asynchronous=False)
        log.info("partitions revoked: %s", _names(partitions))

    def _lost(self, consumer: Any, partitions: list[Any]) -> None:
        """Partitions taken away without a handover: commit nothing for them."""
        lost = {(p.topic, p.partition) for p in partitions}
        kept = [m for m in self.pending if (m.topic(), m.partition()) not in lost]
        self.pending = kept
        log.warning("partitions lost: %s (their next owner reads again)", _names(partitions))

    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("partitions assigned: %s", _names(partitions))

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        """Consume until ``stop``; 0 after a clean stop with every stored offset committed."""
        self.consumer.subscribe(list(self.settings.topics), on_assign=self._assigned,
                                on_revoke=self._revoked, on_lost=self._lost)  # fmt: skip
        try:
            while not self.stop.is_set():
                self._read_chunk()
                self._store_pending()
                self.check_forwarder()
                self._publish()
        finally:
            try:
                self._store_pending()
                with contextlib.suppress(Exception):
                    self.consumer.commit(asynchronous=False)
            finally:
                self.consumer.close()  # leaves the group (a revoke: committed above)
                self._publish(force=True, leaving=True)
                self.activity.flush()
        return 0

    def _read_chunk(self) -> None:
        deadline = time.monotonic() + CHUNK_SECONDS
        while len(self.pending) < CHUNK and not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for message in self.consumer.consume(CHUNK - len(self.pending), min(left, 0.5)):
                error = message.error()
                if error is not None:
                    self._error(error)
                    continue
                self.broker_problem = ""
                self.pending.append(message)

    def _store_pending(self) -> None:
        """Store the records of the messages in hand, then mark their offsets consumed."""
        if not self.pending:
            return
        messages, self.pending = self.pending, []
        events: list[tuple[str | None, dict | str]] = []
        bad: list[tuple[Any, str]] = []
        for message in messages:
            items = message_items(self.source, message.topic(), message.partition(),
                                  message.offset(), message.value())  # fmt: skip
            for item in items:
                event = item.event
                if isinstance(event, ReadError):
                    bad.append((message, f"{item.where}: {event.message}"))
                elif isinstance(event, str) and event.startswith(self.source.foreign):
                    bad.append((message, f"{item.where}: {event}"))
                else:
                    events.append((item.key, event))
        self.source.end_chunk()
        while True:
            try:
                result = ingest(self.store, self.translator, events, source=self.settings.format,
                                dedup_ttl=self.dedup_ttl)  # fmt: skip
                break
            except StoreError as exc:
                # Nothing is committed until it is stored: wait for the store, keep the chunk.
                log.error("the store cannot take %d messages: %s; trying again", len(messages),
                          exc, extra={"event": "store_error"})  # fmt: skip
                if self.stop.wait(2.0):
                    self.pending = messages + self.pending  # not committed: read again later
                    raise
        for _, why in bad:
            log.warning("skipped %s", why, extra={"event": "kafka_skipped"})
        self._dead_letter(bad)
        self.totals.add(result)
        self.skipped += len(bad)
        metrics.count_ingest(self.settings.format, result, malformed=len(bad))
        self.activity.ingest(self.settings.format, result, malformed=len(bad))
        self.activity.flush_if_due()
        offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            key = (message.topic(), message.partition())
            offsets[key] = max(offsets.get(key, -1), message.offset() + 1)
        from confluent_kafka import KafkaException, TopicPartition

        try:
            self.consumer.store_offsets(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()]
            )
        except KafkaException as exc:
            # A partition no longer ours: its next owner reads it again (duplicates).
            log.info("offsets not stored (%s)", exc)

    def _dead_letter(self, bad: list[tuple[Any, str]]) -> None:
        """Copy unusable messages to the dead-letter topic, durably, before their offsets go."""
        if self._producer is None or not bad:
            return
        reasons: dict[tuple[str, int, int], tuple[Any, list[str]]] = {}
        for message, why in bad:  # a batch with several bad items is copied once
            place = (message.topic(), message.partition(), message.offset())
            reasons.setdefault(place, (message, []))[1].append(why)
        for message, whys in reasons.values():
            why = "; ".join(whys)
            headers = [
                (
                    "miso-adapter-origin",
                    f"{message.topic()}/{message.partition()}@{message.offset()}",
                ),
                ("miso-adapter-reason", why),
            ]
            self._producer.produce(self.settings.dead_letter_topic, value=message.value(),
                                   key=message.key(), headers=headers)  # fmt: skip
        left = self._producer.flush(30)
        if left:
            log.error("%d messages not copied to the dead-letter topic %s", left,
                      self.settings.dead_letter_topic)  # fmt: skip

    # ------------------------------------------------------------------ state

    def _lag(self) -> dict[str, int]:
        lag: dict[str, int] = {}
        try:
            assigned = self.consumer.assignment()
            for tp in self.consumer.position(assigned):
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high is not None and high >= 0:
                    done = tp.offset if tp.offset >= 0 else 0
                    lag[f"{tp.topic}/{tp.partition}"] = max(0, high - done)
        except Exception as exc:  # the lag is informative; never let it stop consuming
            log.debug("lag unknown: %s", exc)
        return lag

    def _publish(self, *, force: bool = False, leaving: bool = False) -> None:
        now = time.time()
        if not force and now - self._last_status < STATUS_SECONDS:
            return
        self._last_status = now
        if self.broker_problem and not leaving:
            # librdkafka says when brokers go, not when they come back: ask them.
            with contextlib.suppress(Exception):
                self.consumer.list_topics(timeout=2.0)
                self.broker_problem = ""
                log.warning("Kafka at %s answers again", self.settings.bootstrap_servers)
        group = self.settings.group
        status = {
            "group": group,
            "member": self.member,
            "topics": list(self.settings.topics),
            "format": self.settings.format,
            "ok": not self.broker_problem,
            "error": self.broker_problem,
            "lag": {} if leaving else self._lag(),
            "received": self.totals.received,
            "accepted": self.totals.accepted,
            "duplicates": self.totals.duplicates,
            "skipped": self.skipped,
            "updated_at": now,
        }
        try:
            self.store.set_status(
                member_status_name(group, self.member), None if leaving else status
            )
            registry = self.store.get_status(f"kafka:{group}") or {"members": {}}
            members = {
                m: t for m, t in registry.get("members", {}).items() if now - t < STALE_SECONDS
            }
            if leaving:
                members.pop(self.member, None)
            else:
                members[self.member] = now
            self.store.set_status(f"kafka:{group}", {"members": members})
        except StoreError as exc:
            log.warning("could not publish the consumer's state: %s", exc)


def _names(partitions: list[Any]) -> str:
    return ", ".join(f"{p.topic}/{p.partition}" for p in partitions) or "none"
