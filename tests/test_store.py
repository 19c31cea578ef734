"""The store, on both backends: atomic dedup + enqueue, leases, retries, dead letters, status.

Every test taking ``store`` runs once per backend (``test_x[sqlite]``, ``test_x[redis]``),
so the two stay equivalent. The Redis runs need a Redis at 127.0.0.1:6379 (``.ci/run``
starts one); each uses a key prefix of its own and deletes its keys afterwards. Tests of
one backend's own mechanics take ``sqlite_store`` or ``redis_store`` (all in conftest.py).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import multiprocessing
import re
import threading
import time
from importlib.resources import files

import orjson
import pytest

from adapter.identity import Link
from adapter.store import Incoming, StoreError, open_store
from adapter.store.sqlite import SqliteStore
from adapter.testing.ports import closed_port as _closed_port
from adapter.testing.stores import DAY, url_of


def rec(n: int) -> bytes:
    return orjson.dumps({"type": "like", "user_id": f"u{n}"})


def users(batch) -> list[str]:
    """The user ids of claimed records, in order."""
    return [orjson.loads(c.body).get("user_id") for c in batch]


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


def test_seen_names_the_live_dedup_keys_and_writes_nothing(store):
    """seen() answers which keys an accept would call duplicates; expired ones are not."""
    store.accept([Incoming("k1", [rec(1)]), Incoming("k2", [rec(2)])], DAY)
    store.accept([Incoming("short", [rec(3)])], dedup_ttl=0.05)
    time.sleep(0.1)
    many = [f"absent-{n}" for n in range(1200)]  # more than one statement's worth
    assert store.seen(["k1", "short", "k1", *many]) == {"k1"}
    assert store.seen([]) == set()
    assert store.stats()["spool"] == 3
    assert store.accept([Incoming("absent-1", [rec(4)])], DAY) == [False]


def test_a_readonly_store_reads_and_never_writes_or_creates(tmp_path):
    """open_store(readonly=True): a missing file is an error (not a new store); writes fail."""
    url = f"sqlite:///{tmp_path}/var/adapter.db"
    with pytest.raises(StoreError, match="no store at"):
        open_store(url, readonly=True)
    assert not (tmp_path / "var").exists()
    writer = open_store(url)
    writer.accept([Incoming("k1", [rec(1)], links=[Link("a1", "u1")])], DAY)
    reader = open_store(url, readonly=True)
    assert reader.seen(["k1", "k2"]) == {"k1"}
    assert reader.resolve(["a1"], []) == ({"a1": "u1"}, {})
    with pytest.raises(StoreError):
        reader.accept([Incoming("k2", [rec(2)])], DAY)
    reader.close()
    assert writer.seen(["k2"]) == set() and writer.stats()["spool"] == 1
    writer.close()


def test_a_named_lease_has_one_holder_until_it_ends_or_is_dropped(store):
    """take_lease: one owner at a time, renewable by its owner, free after it expires or
    is dropped; dropping someone else's lease does nothing."""
    assert store.take_lease("sync", "host-a", 0.3)
    assert not store.take_lease("sync", "host-b", 10)
    assert store.take_lease("sync", "host-a", 0.3)  # renewed
    store.drop_lease("sync", "host-b")
    assert not store.take_lease("sync", "host-b", 10)
    time.sleep(0.4)
    assert store.take_lease("sync", "host-b", 10)
    store.drop_lease("sync", "host-b")
    assert store.take_lease("sync", "host-a", 10)
    assert store.take_lease("other", "host-b", 10)  # leases are by name


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
    other = open_store(url_of(store))
    store.set_status("miso_auth", {"status": 401, "message": "invalid api key."})
    assert other.get_status("miso_auth") == {"status": 401, "message": "invalid api key."}
    store.set_status("miso_auth", None)
    assert other.get_status("miso_auth") is None


def test_stats(store):
    """stats reports spool depth, oldest age and dead letters."""
    assert store.stats() == {
        "spool": 0,
        "oldest_age": 0.0,
        "dead_letters": 0,
        "user_tasks": 0,
        "profiles": 0,
        "anonymous_profiles": 0,
    }
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


def test_concurrent_accepts_share_one_commit(sqlite_store, monkeypatch):
    """Accepts arriving while a commit is under way are committed together, each durable."""
    store = sqlite_store
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


def test_a_failed_group_commit_fails_every_accept_in_it(sqlite_store, monkeypatch):
    """When the shared transaction fails, every accept in it gets StoreError; none is stored."""
    store = sqlite_store
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


def _claim_all(url, owner, out):
    s = open_store(url)
    got = []
    while batch := s.claim("record", 7, 1 << 20, 30, owner):
        got += [c.id for c in batch]
    out.put(got)


def test_processes_never_claim_the_same_item(store):
    """Forwarder processes racing on one store lease disjoint sets covering everything."""
    store.accept([Incoming(None, [rec(n) for n in range(300)])], DAY)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(url_of(store), f"p{i}", out)) for i in range(3)]
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


# --------------------------------------------------------------------------- both backends


def test_a_dead_forwarders_items_go_to_another_owner_after_its_lease(store):
    """Items leased by a forwarder that died are taken by another only once the lease ends."""
    store.accept([Incoming(None, [rec(n) for n in range(3)])], DAY)
    dead = store.claim("record", 10, 1 << 20, lease=0.3, owner="dead")
    assert store.claim("record", 10, 1 << 20, lease=30, owner="alive") == []
    time.sleep(0.35)
    taken = store.claim("record", 10, 1 << 20, lease=30, owner="alive")
    assert [c.id for c in taken] == [c.id for c in dead]
    assert [c.attempts for c in taken] == [2, 2, 2]
    assert [c.first_attempt_at for c in taken] == [c.first_attempt_at for c in dead]
    store.ack([c.id for c in taken])
    assert store.claim("record", 10, 1 << 20, 30, "alive") == []
    assert store.stats()["spool"] == 0


def test_items_beyond_the_byte_budget_are_neither_lost_nor_stuck(store):
    """Claims under a small byte budget take every item once, oldest first, none left over."""
    store.accept([Incoming(None, [rec(n) for n in range(10)])], DAY)
    size = len(rec(0)) + 1
    seen = []
    for turn in range(4):
        batch = store.claim("record", 10, 3 * size, 30, owner=f"f{turn % 2}")
        seen.append(users(batch))
        store.ack([c.id for c in batch])
    assert seen == [["u0", "u1", "u2"], ["u3", "u4", "u5"], ["u6", "u7", "u8"], ["u9"]]
    assert store.stats()["spool"] == 0


def test_unclaimed_items_keep_their_place_behind_the_budget(store):
    """Items not taken for lack of budget come before records queued after them."""
    store.accept([Incoming(None, [rec(n) for n in range(5)])], DAY)
    first = store.claim("record", 10, len(rec(0)) + 1, 30, "a")
    store.accept([Incoming(None, [rec(9)])], DAY)
    rest = store.claim("record", 10, 1 << 20, 30, "b")
    assert (users(first), users(rest)) == (["u0"], ["u1", "u2", "u3", "u4", "u9"])
    assert all(c.attempts == 1 for c in rest)


def test_retry_delay_is_honoured(store):
    """A retried item is not ready before its delay, then comes back with its history."""
    store.accept([Incoming(None, [rec(1)])], DAY)
    (first,) = store.claim("record", 10, 1 << 20, 30, "a")
    store.retry_later([first.id], delay=0.4, error="503: busy")
    time.sleep(0.2)
    assert store.claim("record", 10, 1 << 20, 30, "a") == []
    assert store.stats()["spool"] == 1  # waiting for its retry still counts
    time.sleep(0.25)
    (again,) = store.claim("record", 10, 1 << 20, 30, "a")
    assert (again.id, again.body, again.attempts) == (first.id, rec(1), 2)
    assert (again.first_attempt_at, again.created_at) == (first.first_attempt_at, first.created_at)


def test_release_does_not_count_the_attempt(store):
    """A released item is ready at once, its attempt not counted, its first attempt kept."""
    store.accept([Incoming(None, [rec(1)])], DAY)
    (first,) = store.claim("record", 10, 1 << 20, 30, "a")
    store.release([first.id])
    (again,) = store.claim("record", 10, 1 << 20, 30, "b")
    assert (again.id, again.attempts, again.first_attempt_at) == (
        first.id,
        1,
        first.first_attempt_at,
    )


def test_deletion_drops_queued_records_and_cancels_the_one_in_flight(store):
    """Deleting a user drops their records (and their devices'); one being sent is cancelled."""
    store.accept([Incoming(None, links=[Link("a1", "u1")])], DAY)
    store.accept([Incoming(None, [rec(1)])], DAY)
    (in_flight,) = store.claim("record", 10, 1 << 20, lease=30, owner="fwd")
    queued = [
        rec(1),
        orjson.dumps({"type": "like", "anonymous_id": "a1"}),
        orjson.dumps({"type": "like", "anonymous_id": "a2"}),
        rec(2),
    ]
    store.accept(
        [
            Incoming(None, queued),
            Incoming("segment:del", deletions=["u1"]),
            Incoming(None, [rec(1)]),  # after the deletion: a new life, kept
        ],
        DAY,
    )
    assert store.resolve(["a1"], ["u1"]) == ({}, {})
    later = store.claim("record", 10, 1 << 20, 30, "fwd")
    assert [orjson.loads(c.body) for c in later] == [
        {"type": "like", "anonymous_id": "a2"},
        {"type": "like", "user_id": "u2"},
        {"type": "like", "user_id": "u1"},
    ]
    assert in_flight.id not in {c.id for c in later}
    assert store.claim("delete", 10, 1 << 20, 30, "fwd") == []  # waits for the send
    store.dead_letter([(in_flight.id, "Miso refused it")])  # the send failed
    assert store.dead_letters() == []  # a deleted user's record is not kept
    [notice] = store.claim("delete", 10, 1 << 20, 30, "fwd")
    assert orjson.loads(notice.body) == {"user_ids": ["u1"]}
    store.ack([notice.id, *(c.id for c in later)])
    assert store.stats()["spool"] == 0


def test_a_cancelled_send_that_succeeds_is_acked_and_frees_the_deletion(store):
    """The in-flight record of a deleted user, once delivered, lets the deletion go out."""
    store.accept([Incoming(None, [rec(1)])], DAY)
    (in_flight,) = store.claim("record", 10, 1 << 20, 30, "fwd")
    store.accept([Incoming(None, deletions=["u1"])], DAY)
    assert store.stats()["spool"] == 2  # the cancelled send and the notice
    store.ack([in_flight.id])
    assert len(store.claim("delete", 10, 1 << 20, 30, "fwd")) == 1


def test_a_cancelled_send_whose_sender_died_is_never_sent_again(store):
    """When the sender of a cancelled record dies, the record is dropped, never re-sent."""
    store.accept([Incoming(None, [rec(1), rec(2)])], DAY)
    store.claim("record", 10, 1 << 20, lease=0.2, owner="dies")
    store.accept([Incoming(None, deletions=["u1"])], DAY)
    time.sleep(0.25)
    assert users(store.claim("record", 10, 1 << 20, 30, "alive")) == ["u2"]
    assert len(store.claim("delete", 10, 1 << 20, 30, "alive")) == 1
    assert store.stats()["spool"] == 2  # u2 and the notice, both leased


def test_deletion_drops_dead_letters_and_finds_escaped_ids(store):
    """A user's dead letters go too; ids are matched as JSON values, however encoded."""
    odd_user, odd_device = "zoë/ø 1", 'dev"ice'
    bodies = [
        json.dumps({"type": "like", "user_id": odd_user}).encode(),  # \\u escapes, spaces
        json.dumps({"type": "like", "anonymous_id": odd_device}).encode(),
        json.dumps({"type": "like", "context": {"user_id": odd_user}, "user_id": "x"}).encode(),
    ]
    store.accept([Incoming(None, [bodies[0]], links=[Link(odd_device, odd_user)])], DAY)
    (dead,) = store.claim("record", 10, 1 << 20, 30, "fwd")
    store.dead_letter([(dead.id, "Miso refused it")])
    store.accept([Incoming(None, bodies)], DAY)
    store.accept([Incoming(None, deletions=[odd_user])], DAY)
    assert store.dead_letters() == []
    assert [c.body for c in store.claim("record", 10, 1 << 20, 30, "fwd")] == [bodies[2]]


def test_identity_links_both_ways(store):
    """resolve and links_of: latest link wins, a relinked device moves, newest first."""
    store.accept([Incoming(None, links=[Link("a1", "u1"), Link("shared", "u9")])], DAY)
    time.sleep(0.01)
    store.accept([Incoming(None, links=[Link("a2", "u1"), Link("shared", "u1")])], DAY)
    assert store.resolve(["a1", "shared", "nope"], ["u1", "u9", "u0"]) == (
        {"a1": "u1", "shared": "u1"},
        {"u1": "shared"},
    )
    links = store.links_of("u1")
    assert links["user"] is None
    assert [x["anonymous_id"] for x in links["anonymous"]] == ["shared", "a2", "a1"]
    assert links["anonymous"][0]["linked_at"] > links["anonymous"][2]["linked_at"]
    assert store.links_of("a1")["user"]["user_id"] == "u1"
    assert store.links_of("u9") == {"user": None, "anonymous": []}
    assert store.resolve([], []) == ({}, {})


def test_accept_publishes_its_status_in_the_same_step(store):
    """A replay checkpoint is stored with its records, even when all of them are duplicates."""
    store.accept([Incoming("k", [rec(1)])], DAY, status=("replay:a", {"line": 10}))
    assert store.get_status("replay:a") == {"line": 10}
    assert store.accept([Incoming("k", [rec(1)])], DAY, status=("replay:a", {"line": 20})) == [True]
    assert store.get_status("replay:a") == {"line": 20}
    assert store.accept([], DAY, status=("replay:a", {"line": 30})) == []
    assert store.get_status("replay:a") == {"line": 30}
    assert store.stats()["spool"] == 1


def test_a_zero_dedup_window_only_dedups_within_the_call(store):
    """With no dedup window, a key repeats within one call only."""
    assert store.accept([Incoming("k", [rec(1)]), Incoming("k", [rec(1)])], 0) == [False, True]
    assert store.accept([Incoming("k", [rec(1)])], 0) == [False]


def test_requeued_dead_letters_keep_their_age(store):
    """A dead letter put back keeps created_at, so stats still show how old it is."""
    store.accept([Incoming(None, [rec(1)])], DAY)
    (item,) = store.claim("record", 10, 1 << 20, 30, "a")
    store.dead_letter([(item.id, "no")])
    time.sleep(0.05)
    store.accept([Incoming(None, [rec(2)])], DAY)
    (dead,) = store.dead_letters()
    assert store.requeue_dead([dead.id, dead.id, 12345]) == 1
    assert store.stats()["oldest_age"] >= 0.05
    back = store.claim("record", 10, 1 << 20, 30, "a")  # in id order: requeued is new
    assert [(c.body, c.attempts) for c in back] == [(rec(2), 1), (rec(1), 1)]
    assert back[1].created_at == item.created_at and back[1].id > item.id


def test_dead_letters_limit_and_requeue_all(store):
    """dead_letters(limit) gives the oldest; requeue_dead(None) puts all back in order."""
    store.accept([Incoming(None, [rec(n) for n in range(3)])], DAY)
    batch = store.claim("record", 10, 1 << 20, 30, "a")
    store.dead_letter([(c.id, f"reason {n}") for n, c in enumerate(batch)])
    assert [d.reason for d in store.dead_letters(2)] == ["reason 0", "reason 1"]
    assert all(d.attempts == 1 and d.kind == "record" for d in store.dead_letters())
    assert store.stats()["dead_letters"] == 3
    assert store.requeue_dead(None) == 3
    assert users(store.claim("record", 10, 1 << 20, 30, "a")) == ["u0", "u1", "u2"]


def test_dead_letter_and_identity_commands(store, monkeypatch, capsys):
    """`dead-letters list|retry ID|purge` and `identity show` work on the store's ids."""
    from adapter import cli

    monkeypatch.setenv("ADAPTER_STORE", url_of(store))
    store.accept([Incoming(None, [rec(1), rec(2)], links=[Link("a1", "u1")])], DAY)
    one, two = store.claim("record", 10, 1 << 20, 30, "a")
    store.dead_letter([(one.id, "Miso refused it (422)"), (two.id, "again")])
    assert cli.main(["dead-letters", "list", "--json"]) == 0
    listed = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["reason"], d["body"]["user_id"]) for d in listed] == [
        ("Miso refused it (422)", "u1"),
        ("again", "u2"),
    ]
    assert cli.main(["dead-letters", "retry", str(listed[0]["id"])]) == 0
    assert "requeued 1 dead letters" in capsys.readouterr().out
    assert users(store.claim("record", 10, 1 << 20, 30, "a")) == ["u1"]
    assert cli.main(["dead-letters", "purge"]) == 0
    assert capsys.readouterr().out == "purged 1 dead letters\n"
    assert cli.main(["identity", "show", "u1"]) == 0
    assert "a1  (linked " in capsys.readouterr().out


# --------------------------------------------------------------------------- Redis


def device(anonymous_id: str) -> bytes:
    return orjson.dumps({"type": "like", "anonymous_id": anonymous_id})


def test_deletion_catches_records_queued_during_its_prescan(redis_store, monkeypatch):
    """Records queued after the paged pre-scan, before the deletion step, are dropped too."""
    import adapter.store.redis as redis_module

    monkeypatch.setattr(redis_module, "_FIND_PAGE", 2)  # several pages
    redis_store.accept([Incoming(None, [rec(n) for n in range(5)], links=[Link("a1", "u1")])], DAY)
    redis_store.accept([Incoming(None, [device("a1"), rec(1), device("a2")])], DAY)
    prescan = redis_store._prescan
    other = open_store(url_of(redis_store))

    def racing(batch, deleted):
        found = prescan(batch, deleted)
        other.accept([Incoming(None, [device("a1"), rec(1), rec(7)])], DAY)
        return found

    monkeypatch.setattr(redis_store, "_prescan", racing)
    redis_store.accept([Incoming(None, deletions=["u1"])], DAY)
    left = redis_store.claim("record", 100, 1 << 20, 30, "a")
    assert [orjson.loads(c.body) for c in left] == [
        orjson.loads(body) for body in [rec(0), rec(2), rec(3), rec(4), device("a2"), rec(7)]
    ]


def test_deletion_scans_everything_when_the_user_gains_a_device_meanwhile(redis_store, monkeypatch):
    """A link learned during the pre-scan makes the deletion step scan every queued record."""
    redis_store.accept([Incoming(None, [rec(n) for n in range(1500)] + [device("a9")])], DAY)
    redis_store.accept([Incoming(None, [rec(n) for n in range(1500, 2500)])], DAY)
    prescan = redis_store._prescan
    other = open_store(url_of(redis_store))

    def racing(batch, deleted):
        found = prescan(batch, deleted)
        other.accept([Incoming(None, links=[Link("a9", "u1")])], DAY)
        return found

    monkeypatch.setattr(redis_store, "_prescan", racing)
    redis_store.accept([Incoming(None, deletions=["u1"])], DAY)
    left = [c.body for c in redis_store.claim("record", 5000, 1 << 24, 30, "a")]
    assert len(left) == 2499 and device("a9") not in left and rec(1) not in left
    assert redis_store.resolve(["a9"], []) == ({}, {})


def test_redis_urls():
    """redis:// and rediss:// URLs: host, port, db, prefix and timeout; anything else is clear."""
    from adapter.store.redis import RedisStore

    s = open_store("redis://cache.internal:6390/3?prefix=shop-a:&timeout=2.5")
    assert isinstance(s, RedisStore)
    assert (s.host, s.port, s.db, s.prefix, s.tls) == ("cache.internal", 6390, 3, "shop-a:", False)
    assert repr(s) == "<RedisStore redis://cache.internal:6390/3 prefix='shop-a:'>"
    default = open_store("rediss://cache")
    assert (default.port, default.db, default.prefix, default.tls) == (
        6379,
        0,
        "miso-adapter:",
        True,
    )
    for url, message in [
        ("redis://h/0?fast=1", "unknown ADAPTER_STORE option"),
        ("redis://h/zero", "database must be a number"),
        ("redis://:pw@h:port/0", "invalid port"),
        ("redis://h/0?timeout=soon", "timeout must be a number"),
        ("redis://h/0?prefix=", "prefix must not be empty"),
    ]:
        with pytest.raises(StoreError, match=message) as error:
            open_store(url)
        assert "pw" not in str(error.value)


def test_an_unreachable_redis_is_a_store_error_without_the_password():
    """Every operation on a Redis that is down raises StoreError naming it, never the password."""
    port = _closed_port()
    s = open_store(f"redis://:s3cret-pw@127.0.0.1:{port}/0?timeout=1")
    assert "s3cret" not in repr(s)
    calls = [
        lambda: s.accept([Incoming("k", [rec(1)])], DAY),
        lambda: s.claim("record", 10, 1 << 20, 30, "a"),
        lambda: s.ack([1]),
        lambda: s.retry_later([1], 1, "x"),
        lambda: s.release([1]),
        lambda: s.dead_letter([(1, "x")]),
        lambda: s.dead_letters(),
        lambda: s.requeue_dead(None),
        lambda: s.purge_dead(),
        lambda: s.resolve(["a"], ["u"]),
        lambda: s.links_of("a"),
        lambda: s.set_status("x", {"a": 1}),
        lambda: s.get_status("x"),
        lambda: s.stats(),
        lambda: s.ping(),
        lambda: s.purge_expired(),
    ]
    for call in calls:
        with pytest.raises(StoreError) as error:
            call()
        assert f"Redis at 127.0.0.1:{port} is unreachable" in str(error.value)
        assert "s3cret" not in str(error.value)


def test_a_wrong_password_is_a_store_error_without_it(redis_client):
    """Credentials Redis refuses give StoreError; the password is in neither it nor repr."""
    s = open_store("redis://nobody:s3cret-pw@127.0.0.1:6379/0?prefix=test-store-auth:")
    assert "s3cret" not in repr(s)
    with pytest.raises(StoreError) as error:
        s.ping()
    assert "127.0.0.1:6379" in str(error.value) and "s3cret" not in str(error.value)


@pytest.mark.parametrize(
    ("reply", "meaning"),
    [
        ("READONLY You can't write against a read only replica.", "is a read-only replica"),
        ("OOM command not allowed when used memory > 'maxmemory'.", "is out of memory"),
    ],
    ids=["replica", "full"],
)
def test_redis_refusing_writes_is_a_store_error(redis_store, monkeypatch, reply, meaning):
    """A replica or a full Redis refusing a write is a StoreError that says so."""
    import redis

    def refuse(*args, **kwargs):
        raise redis.ResponseError(reply)

    monkeypatch.setattr(redis_store._client, "execute_command", refuse)
    with pytest.raises(StoreError, match=f"accept records: Redis at 127.0.0.1:6379 {meaning}"):
        redis_store.accept([Incoming(None, [rec(1)])], DAY)
    with pytest.raises(StoreError, match=meaning):
        redis_store.ping()


def test_ids_are_never_reused_after_redis_loses_its_data(redis_store, redis_client):
    """A Redis restarted empty hands out ids above those a forwarder may still hold."""
    redis_store.accept([Incoming(None, [rec(1)])], DAY)
    (before,) = redis_store.claim("record", 10, 1 << 20, 30, "a")
    for key in redis_client.scan_iter(match=f"{redis_store.prefix}*"):
        redis_client.delete(key)
    redis_store.accept([Incoming(None, [rec(2)])], DAY)
    redis_store.ack([before.id])  # the stale ack of a forwarder that held it: harmless
    (after,) = redis_store.claim("record", 10, 1 << 20, 30, "a")
    assert after.id > before.id and after.body == rec(2)


def test_a_lost_id_counter_restarts_above_the_queued_items(redis_store, redis_client):
    """Without its counter (but with its streams), the store still queues after the last id."""
    seq = f"{redis_store.prefix}seq"
    redis_client.set(seq, 2**52)  # far ahead of the clock
    redis_store.accept([Incoming(None, [rec(1)])], DAY)
    redis_client.delete(seq)  # lost: restarts above the last item, not at the clock
    assert redis_store.accept([Incoming("k", [rec(2)])], DAY) == [False]
    batch = redis_store.claim("record", 10, 1 << 20, 30, "a")
    assert users(batch) == ["u1", "u2"] and batch[0].id == 2**52 + 1


def test_redis_keys_stay_under_the_prefix_and_dedup_keys_expire(redis_store, redis_client):
    """Every key lives under the store's prefix; a dedup key carries the window as its TTL."""
    redis_store.accept([Incoming("segment:m1", [rec(1)], links=[Link("a", "u")])], 60)
    redis_store.claim("record", 10, 1 << 20, 30, "a")
    ttl = redis_client.pttl(f"{redis_store.prefix}dedup:segment:m1")
    assert 59_000 < ttl <= 60_000
    keys = {k.decode() for k in redis_client.scan_iter(match=f"{redis_store.prefix}*")}
    assert f"{redis_store.prefix}spool:record" in keys and len(keys) >= 6
    pending = redis_client.xpending(f"{redis_store.prefix}spool:record", "forwarders")
    assert pending["pending"] == 1 and pending["consumers"] == [{"name": b"a", "pending": 1}]


def test_forwarders_gone_for_long_are_forgotten(redis_store, redis_client):
    """Upkeep removes group consumers idle for long that hold nothing; keeps the others."""
    redis_store.accept([Incoming(None, [rec(1), rec(2)])], DAY)
    redis_store.claim("record", 1, 1 << 20, 30, "busy")
    (done,) = redis_store.claim("record", 1, 1 << 20, 30, "gone")
    redis_store.ack([done.id])
    stream = f"{redis_store.prefix}spool:record"

    def consumers() -> set[bytes]:
        return {c["name"] for c in redis_client.xinfo_consumers(stream, "forwarders")}

    assert redis_store.purge_expired() == 0  # the default: idle for an hour
    assert consumers() == {b"busy", b"gone"}
    redis_store.idle_consumer = 0.05
    time.sleep(0.1)
    redis_store.purge_expired()
    assert consumers() == {b"busy"}  # still holds a lease


def test_every_redis_script_says_its_keys_arguments_and_answer():
    """Each Lua script of the Redis store opens with a header naming what it does, its KEYS,
    each ARGV position its code reads, and what it returns: the header is the script's
    contract with the Python that calls it."""
    folder = files("adapter.store") / "lua"
    scripts = sorted(p for p in folder.iterdir() if p.name.endswith(".lua"))
    assert len(scripts) > 10
    for script in scripts:
        lines = script.read_text(encoding="utf-8").splitlines()
        header = "\n".join(
            line for line in lines if line.startswith("--") and line == line.lstrip()
        )
        code = "\n".join(line for line in lines if not line.startswith("--"))
        name = script.name
        assert lines[0].startswith(f"-- {name[:-4]}: "), f"{name}: no summary line"
        assert "-- KEYS" in header and "-- Returns" in header, f"{name}: no KEYS or Returns"
        documented = {int(n) for n in re.findall(r"^-- ARGV\[(\d+)", header, re.M)}
        read = {int(n) for n in re.findall(r"ARGV\[(\d+)\]", code)}
        assert read <= documented, f"{name}: ARGV {sorted(read - documented)} not in its header"


@pytest.mark.parametrize("role", ["Spool", "Links", "Status", "ConsoleReads", "Store"])
def test_both_backends_implement_each_role_with_its_signatures(role):
    """Every method of a store role exists on both backends with the role's parameters, so
    code typed against a role works on either store."""
    from adapter import store as store_module
    from adapter.store.redis import RedisStore

    protocol = getattr(store_module, role)
    methods = [
        name
        for name, value in vars(protocol).items()
        if callable(value) and not name.startswith("_")
    ]
    assert methods, f"{role} names no methods"
    for backend in (SqliteStore, RedisStore):
        for name in methods:
            wanted = inspect.signature(getattr(protocol, name)).parameters
            got = inspect.signature(getattr(backend, name)).parameters
            assert list(got) == list(wanted), f"{backend.__name__}.{name}{list(got)}"
