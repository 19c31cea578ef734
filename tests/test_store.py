"""The SQLite store: atomic dedup + enqueue, leases, retries, dead letters, shared status."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time

import orjson
import pytest

from adapter.store import Incoming, StoreError, open_store
from adapter.store.sqlite import SqliteStore

DAY = 86400.0


@pytest.fixture
def store(tmp_path):
    """A fresh store in a temporary folder."""
    s = SqliteStore(tmp_path / "var" / "adapter.db")
    yield s
    s.close()


def rec(n: int) -> bytes:
    return orjson.dumps({"type": "like", "user_id": f"u{n}"})


def test_open_store_urls(tmp_path, monkeypatch):
    """sqlite:///relative and sqlite:////absolute URLs; other schemes are a clear error."""
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///var/a.db")
    assert relative.path.resolve() == (tmp_path / "var" / "a.db").resolve()
    absolute = open_store(f"sqlite:///{tmp_path}/b.db?synchronous=normal")
    assert absolute.path == tmp_path / "b.db"
    with pytest.raises(StoreError, match="unsupported ADAPTER_STORE scheme 'postgres'"):
        open_store("postgres://x")
    with pytest.raises(StoreError, match="unknown ADAPTER_STORE option"):
        open_store("sqlite:///a.db?fast=1")


def test_accept_dedups_within_and_across_calls(store):
    """A dedup key seen before (in the window) is a duplicate and enqueues nothing."""
    first = store.accept([Incoming("segment:m1", [rec(1)]), Incoming("segment:m1", [rec(1)])], DAY)
    again = store.accept([Incoming("segment:m1", [rec(1)]), Incoming(None, [rec(2)])], DAY)
    assert (first, again) == ([False, True], [True, False])
    assert store.stats()["spool"] == 2


def test_dedup_key_expires(store):
    """After the window, the same key is accepted again."""
    store.accept([Incoming("k", [rec(1)])], dedup_ttl=0.05)
    time.sleep(0.1)
    assert store.accept([Incoming("k", [rec(1)])], dedup_ttl=DAY) == [False]
    assert store.purge_expired() == 0


def test_claim_respects_count_and_bytes(store):
    """A claim takes the oldest items up to the count and the byte budget."""
    store.accept([Incoming(None, [rec(n) for n in range(10)])], DAY)
    size = len(rec(0)) + 1
    batch = store.claim("record", limit=5, max_bytes=3 * size, lease=30, owner="a")
    assert [orjson.loads(c.body)["user_id"] for c in batch] == ["u0", "u1", "u2"]
    assert len(store.claim("record", limit=100, max_bytes=1 << 20, lease=30, owner="a")) == 7


def test_claim_takes_the_longest_ready_first(store):
    """A record back from a retry delay waits behind those that became ready before it."""
    store.accept([Incoming(None, [rec(1), rec(2)])], DAY)
    first, second = store.claim("record", 10, 1 << 20, 30, "a")
    store.retry_later([first.id], delay=0.05, error="503")  # ready in 50 ms
    store.release([second.id])  # ready now
    store.accept([Incoming(None, [rec(3)])], DAY)  # ready now, after the release
    time.sleep(0.06)
    two = store.claim("record", 2, 1 << 20, 30, "a")
    assert [orjson.loads(c.body)["user_id"] for c in two] == ["u2", "u3"]  # not u1 (lowest id)
    assert [orjson.loads(c.body)["user_id"] for c in store.claim("record", 9, 1 << 20, 30, "a")] \
        == ["u1"]  # fmt: skip


def test_ack_removes_a_whole_batch(store):
    """ack() of a 1,500-item batch removes exactly those items, in one statement."""
    store.accept([Incoming(None, [rec(n) for n in range(1600)])], DAY)
    batch = store.claim("record", 1500, 1 << 24, 30, "a")
    store.ack([c.id for c in batch])
    left = store.claim("record", 1000, 1 << 24, 30, "a")
    assert [orjson.loads(c.body)["user_id"] for c in left] == [f"u{n}" for n in range(1500, 1600)]
    assert store.stats()["spool"] == 100


def test_oversize_single_item_is_still_claimed(store):
    """An item larger than the byte budget is claimed alone rather than stuck forever."""
    store.accept([Incoming(None, [b"x" * 5000, rec(1)])], DAY)
    assert len(store.claim("record", limit=10, max_bytes=100, lease=30, owner="a")) == 1


def test_leased_items_are_not_claimed_twice(store):
    """Two forwarders never lease the same item while the lease holds."""
    store.accept([Incoming(None, [rec(n) for n in range(4)])], DAY)
    a = store.claim("record", 2, 1 << 20, 30, "a")
    b = store.claim("record", 10, 1 << 20, 30, "b")
    assert {c.id for c in a}.isdisjoint({c.id for c in b})
    assert len(a) + len(b) == 4
    assert store.claim("record", 10, 1 << 20, 30, "c") == []


def test_expired_lease_is_claimed_again(store):
    """Items held by a forwarder that died come back when the lease runs out."""
    store.accept([Incoming(None, [rec(1)])], DAY)
    first = store.claim("record", 10, 1 << 20, lease=0.05, owner="dead")
    time.sleep(0.1)
    again = store.claim("record", 10, 1 << 20, lease=30, owner="alive")
    assert [c.id for c in again] == [first[0].id]
    assert again[0].attempts == 2


def test_ack_retry_release(store):
    """ack removes; retry_later delays; release returns at once without counting."""
    store.accept([Incoming(None, [rec(1), rec(2), rec(3)])], DAY)
    one, two, three = store.claim("record", 10, 1 << 20, 30, "a")
    store.ack([one.id])
    store.retry_later([two.id], delay=0.1, error="503")
    store.release([three.id])
    ready = store.claim("record", 10, 1 << 20, 30, "a")
    assert [(c.id, c.attempts) for c in ready] == [(three.id, 1)]
    time.sleep(0.15)
    assert [c.id for c in store.claim("record", 10, 1 << 20, 30, "a")] == [two.id]
    assert store.stats()["spool"] == 2


def test_dead_letters_keep_body_and_reason(store):
    """Dead letters hold the record and why; retry puts them back; purge empties them."""
    store.accept([Incoming(None, [rec(1), rec(2)], source="segment")], DAY)
    one, two = store.claim("record", 10, 1 << 20, 30, "a")
    store.dead_letter([(one.id, "Miso 422: product_ids is invalid.")])
    [dead] = store.dead_letters()
    assert (dead.body, dead.reason, dead.source) == (
        rec(1),
        "Miso 422: product_ids is invalid.",
        "segment",
    )
    assert store.requeue_dead([dead.id]) == 1 and store.dead_letters() == []
    store.ack([two.id])
    [back] = store.claim("record", 10, 1 << 20, 30, "a")
    assert back.body == rec(1) and back.attempts == 1
    store.dead_letter([(back.id, "again")])
    assert store.requeue_dead([]) == 0
    assert store.purge_dead() == 1


def test_deletions_are_their_own_kind(store):
    """A deletion request is spooled as a 'delete' item, claimed apart from records."""
    store.accept([Incoming("segment:d1", deletions=["u9"])], DAY)
    assert store.claim("record", 10, 1 << 20, 30, "a") == []
    [item] = store.claim("delete", 10, 1 << 20, 30, "a")
    assert orjson.loads(item.body) == {"user_ids": ["u9"]}


def test_status_is_shared_between_connections(store):
    """A status set by one process's connection is read by another's."""
    other = SqliteStore(store.path)
    store.set_status("miso_auth", {"status": 401, "message": "invalid api key."})
    assert other.get_status("miso_auth") == {"status": 401, "message": "invalid api key."}
    store.set_status("miso_auth", None)
    assert other.get_status("miso_auth") is None


def test_stats(store):
    """stats reports spool depth, oldest age and dead letters."""
    assert store.stats() == {"spool": 0, "oldest_age": 0.0, "dead_letters": 0}
    store.accept([Incoming(None, [rec(1)])], DAY)
    time.sleep(0.02)
    stats = store.stats()
    assert stats["spool"] == 1 and stats["oldest_age"] > 0


def test_unwritable_store_raises_store_error(tmp_path):
    """A store that cannot be created is a StoreError naming the path."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot open the store"):
        SqliteStore(blocker / "adapter.db")


def test_threads_share_one_store(store):
    """Each thread gets its own connection; concurrent accepts all land."""

    def worker(n):
        for i in range(20):
            store.accept([Incoming(f"t{n}-{i}", [rec(i)])], DAY)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.stats()["spool"] == 80


def _hold_first_commit(store, monkeypatch) -> tuple[threading.Event, threading.Event, list]:
    """Make the first transaction wait until released, and count transactions."""
    entered, release, transactions = threading.Event(), threading.Event(), []
    original = store._transaction

    @contextlib.contextmanager
    def counted():
        transactions.append(threading.get_ident())
        if len(transactions) == 1:
            entered.set()
            release.wait(5)
        with original() as conn:
            yield conn

    monkeypatch.setattr(store, "_transaction", counted)
    return entered, release, transactions


def test_concurrent_accepts_share_one_commit(store, monkeypatch):
    """Accepts arriving while a commit is under way are committed together, each durable."""
    entered, release, transactions = _hold_first_commit(store, monkeypatch)
    results: dict[int, list[bool]] = {}

    def accept(n: int) -> None:
        key = "first" if n == 100 else f"k{n % 3}"
        results[n] = store.accept([Incoming(key, [rec(n)])], DAY)

    first = threading.Thread(target=accept, args=(100,))
    first.start()
    assert entered.wait(5)
    waiting = [threading.Thread(target=accept, args=(n,)) for n in range(6)]
    for t in waiting:
        t.start()
    deadline = time.monotonic() + 5
    while len(store._pending) < 6 and time.monotonic() < deadline:
        time.sleep(0.005)
    release.set()
    for t in [first, *waiting]:
        t.join(5)
    assert len(transactions) == 2  # the first, then one for all six that waited
    # Dedup across the group is as if one after the other: k0, k1, k2 once each.
    assert sorted(flag for n in range(6) for flag in results[n]) == [False] * 3 + [True] * 3
    other = SqliteStore(store.path)  # a new connection sees every accepted record
    assert other.stats()["spool"] == 1 + 3


def test_a_failed_group_commit_fails_every_accept_in_it(store, monkeypatch):
    """When the shared transaction fails, every accept in it gets StoreError; none is stored."""
    import sqlite3

    entered, release, _ = _hold_first_commit(store, monkeypatch)
    original = store._accept_in

    def failing(db, job, now):
        if any(item.dedup_key == "poison" for item in job.batch):
            raise sqlite3.OperationalError("disk I/O error")
        return original(db, job, now)

    monkeypatch.setattr(store, "_accept_in", failing)
    errors: dict[str, BaseException | None] = {}

    def accept(key: str) -> None:
        try:
            store.accept([Incoming(key, [rec(1)])], DAY)
            errors[key] = None
        except StoreError as exc:
            errors[key] = exc

    first = threading.Thread(target=accept, args=("first",))
    first.start()
    assert entered.wait(5)
    group = [threading.Thread(target=accept, args=(k,)) for k in ("a", "poison", "b")]
    for t in group:
        t.start()
    deadline = time.monotonic() + 5
    while len(store._pending) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    release.set()
    for t in [first, *group]:
        t.join(5)
    assert errors["first"] is None
    assert all("disk I/O error" in str(errors[k]) for k in ("a", "poison", "b"))
    assert store.stats()["spool"] == 1
    assert store.accept([Incoming("a", [rec(2)])], DAY) == [False]  # "a" was never kept


def _claim_all(path, owner, out):
    s = SqliteStore(path)
    got = []
    while batch := s.claim("record", 7, 1 << 20, 30, owner):
        got += [c.id for c in batch]
    out.put(got)


def test_processes_never_claim_the_same_item(store):
    """Forwarder processes racing on one file lease disjoint sets covering everything."""
    store.accept([Incoming(None, [rec(n) for n in range(300)])], DAY)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(store.path, f"p{i}", out)) for i in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join()
    claimed = [i for r in results for i in r]
    assert len(claimed) == 300 and len(set(claimed)) == 300


def test_wal_stays_bounded(tmp_path):
    """Checkpoints run outside commits, yet the write-ahead log does not grow without end."""
    s = SqliteStore(tmp_path / "wal.db", synchronous="normal")
    body = orjson.dumps({"type": "like", "user_id": "u", "context": {"user_agent": "x" * 800}})
    for i in range(3000):
        s.accept([Incoming(f"k{i}", [body])], DAY)
    assert (tmp_path / "wal.db-wal").stat().st_size < 8 * 1024 * 1024


_V1_SPOOL = """
CREATE TABLE spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, body BLOB NOT NULL,
    size INTEGER NOT NULL, source TEXT NOT NULL, created_at REAL NOT NULL,
    ready_at REAL NOT NULL, owner TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt_at REAL, last_error TEXT
);
CREATE INDEX spool_ready ON spool (kind, ready_at, id);
"""


def test_a_store_from_the_first_version_is_migrated(tmp_path):
    """A spool written with bodies inline (version 1) opens with every item intact."""
    import sqlite3

    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(_V1_SPOOL)
    now = time.time()
    old.executemany(
        "INSERT INTO spool (kind, body, size, source, created_at, ready_at) VALUES (?,?,?,?,?,?)",
        [("record", rec(n), len(rec(n)), "segment", now, now) for n in range(3)],
    )
    old.commit()
    old.close()
    store = SqliteStore(path)
    batch = store.claim("record", 10, 1 << 20, 30, "a")
    assert [orjson.loads(c.body)["user_id"] for c in batch] == ["u0", "u1", "u2"]
    store.accept([Incoming(None, [rec(3)])], DAY)
    store.ack([c.id for c in batch])
    (fresh,) = store.claim("record", 10, 1 << 20, 30, "a")
    assert fresh.id == 4 and orjson.loads(fresh.body)["user_id"] == "u3"
    assert SqliteStore(path).claim("record", 10, 1 << 20, 30, "b") == []  # reopening is a no-op
    (version,) = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()
    assert version == 2


def test_ids_are_never_reused_after_the_newest_item_is_acked(store):
    """Acking the newest item and enqueueing again gives a new id (an old ack cannot hit it)."""
    store.accept([Incoming(None, [rec(1)])], DAY)
    (first,) = store.claim("record", 10, 1 << 20, 30, "a")
    store.ack([first.id])
    store.accept([Incoming(None, [rec(2)])], DAY)
    (second,) = store.claim("record", 10, 1 << 20, 30, "a")
    assert second.id > first.id
    assert orjson.loads(second.body)["user_id"] == "u2"
