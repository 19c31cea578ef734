"""The store's operator-console operations, on both backends: activity tallies, links overview.

Fixtures come from conftest.py (``store`` runs each test once per backend); the Redis runs
need a Redis at 127.0.0.1:6379 and skip, saying why, without one.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import time

import pytest

from adapter.identity import Link
from adapter.store import ACTIVITY_KEEP_MINUTES, Incoming, StoreError, open_store
from adapter.store.sqlite import SqliteStore
from adapter.testing.ports import closed_port as _closed_port
from adapter.testing.stores import DAY, url_of


def now_minute() -> int:
    return int(time.time() // 60)


def stored_minutes(store, request) -> set[int]:
    """The minutes the backend holds tallies for, read past the store's own filtering."""
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as db:
            return {m for (m,) in db.execute("SELECT DISTINCT minute FROM activity")}
    client = request.getfixturevalue("redis_client")
    pattern = f"{store.prefix}activity:*"
    return {int(k.rsplit(b":", 1)[1]) for k in client.scan_iter(match=pattern)}


def plant(store, request, minute: int, n: int = 1) -> None:
    """A tally written behind the store's back (e.g. by a run whose clock was behind)."""
    if isinstance(store, SqliteStore):
        with sqlite3.connect(store.path) as db:
            db.execute("INSERT INTO activity VALUES (?, 'events', 'segment', 'x', ?)", (minute, n))
    else:
        client = request.getfixturevalue("redis_client")
        client.hset(f"{store.prefix}activity:{minute}", '["events","segment","x"]', n)


def _add_many(url: str, times: int) -> None:
    s = open_store(url)
    minute = now_minute() - 3
    for _ in range(times):
        s.add_activity(
            [(minute, "events", "segment", "k", 1), (minute, "events", "segment", "j", 2)]
        )
    s.close()


# ------------------------------------------------------------------ activity


def test_activity_adds_up_across_calls_and_store_instances(store):
    """n accumulates over calls, rows repeated within a call and another instance's adds."""
    m = now_minute() - 5
    store.add_activity([(m, "events", "segment", "track", 2)])
    store.add_activity([(m, "events", "segment", "track", 3), (m, "events", "segment", "track", 1)])
    other = open_store(url_of(store))  # another process's view of the same store
    try:
        other.add_activity(
            [(m, "events", "segment", "track", 4), (m, "records", "segment", "like", 7)]
        )
        expected = [(m, "events", "segment", "track", 10), (m, "records", "segment", "like", 7)]
        assert sorted(store.activity(m)) == sorted(expected)
        assert sorted(other.activity(m)) == sorted(expected)
    finally:
        other.close()


def test_processes_adding_at_once_lose_nothing(store):
    """Three processes adding to the same tallies concurrently: every add is counted."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_many, args=(url_of(store), 40)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    m = now_minute() - 3
    got = {(metric, source, key): n for minute, metric, source, key, n in store.activity(m - 1)}
    assert got == {("events", "segment", "k"): 120, ("events", "segment", "j"): 240}


def test_activity_round_trips_any_text_exactly(store):
    """Metric, source, key with unicode, quotes, \\x1f, JSON, separators come back exactly."""
    m = now_minute() - 2
    odd = ["café ☕😀", 'say "hi"', "it's", "a\x1fb", "\x1f", "", '["x", 1]', "\\", "a,b:c|d", "\n"]
    rows = [(m, f"metric{i}", "src\x1f\"'", key, i + 1) for i, key in enumerate(odd)]
    # Joined naively with \x1f these two would be one tally.
    rows += [(m, "a\x1fb", "c", "k", 100), (m, "a", "b\x1fc", "k", 200)]
    store.add_activity(rows)
    assert sorted(store.activity(m)) == sorted(rows)


def test_activity_since_minute_filters(store):
    """Only tallies of minutes >= since_minute are returned."""
    base = now_minute() - 20
    rows = [(base + d, "events", "segment", "track", d + 1) for d in (0, 5, 10)]
    store.add_activity(rows)
    assert sorted(store.activity(base)) == rows
    assert sorted(store.activity(base + 5)) == rows[1:]
    assert store.activity(base + 11) == []


def test_activity_older_than_the_keep_is_neither_stored_nor_returned(store, request):
    """Rows older than now - ACTIVITY_KEEP_MINUTES are dropped on write and never read."""
    oldest = now_minute() - ACTIVITY_KEEP_MINUTES
    # Margins of a minute or two: the clock may pass a minute boundary during the test.
    too_old, kept = oldest - 2, oldest + 2
    store.add_activity(
        [(too_old, "events", "segment", "track", 1), (kept, "events", "segment", "track", 2)]
    )
    assert store.activity(0) == [(kept, "events", "segment", "track", 2)]
    assert stored_minutes(store, request) == {kept}


def test_tallies_left_past_the_keep_are_never_returned(store, request):
    """A tally older than the keep still in the backend is not read, whatever since_minute."""
    oldest = now_minute() - ACTIVITY_KEEP_MINUTES
    plant(store, request, oldest - 3)
    plant(store, request, oldest + 2, n=5)
    assert store.activity(0) == [(oldest + 2, "events", "segment", "x", 5)]
    assert store.activity(oldest - 3) == [(oldest + 2, "events", "segment", "x", 5)]


def test_empty_or_all_expired_activity_is_a_no_op(store, monkeypatch):
    """add_activity([]) (or only rows past the keep) does not even reach the backend."""
    name = "_write" if isinstance(store, SqliteStore) else "_client"

    def unreachable(*args, **kwargs):
        raise AssertionError("the backend was used")

    with monkeypatch.context() as patched:  # undone before the fixture closes the store
        patched.setattr(store, name, unreachable)
        store.add_activity([])
        store.add_activity(
            [(now_minute() - ACTIVITY_KEEP_MINUTES - 5, "events", "segment", "x", 1)]
        )
    assert store.activity(0) == []


def test_redis_activity_hashes_expire_with_the_keep(redis_store, redis_client):
    """Each minute is one hash under the prefix, expiring when its minute leaves the keep."""
    m = now_minute() - 1
    redis_store.add_activity([(m, "events", "segment", "a\x1f", 3)])
    key = f"{redis_store.prefix}activity:{m}"
    assert redis_client.hgetall(key) == {b'["events","segment","a\\u001f"]': b"3"}
    assert redis_client.expiretime(key) == (m + ACTIVITY_KEEP_MINUTES + 1) * 60


def test_sqlite_drops_old_activity_on_add_and_on_purge(sqlite_store, request):
    """Old tallies written by an earlier run go on the next add, or on purge_expired."""
    oldest = now_minute() - ACTIVITY_KEEP_MINUTES

    def plant_old() -> None:
        with sqlite3.connect(sqlite_store.path) as db:
            db.execute(
                "INSERT INTO activity VALUES (?, 'events', 'segment', 'x', 1)", (oldest - 3,)
            )

    plant_old()
    sqlite_store.add_activity([(oldest + 2, "events", "segment", "x", 1)])
    assert stored_minutes(sqlite_store, request) == {oldest + 2}
    plant_old()
    assert sqlite_store.purge_expired() == 0  # counts dedup keys only
    assert stored_minutes(sqlite_store, request) == {oldest + 2}


def test_an_existing_store_gains_the_new_table_and_index(tmp_path):
    """A store file made before activity existed gets the table and links_recent on open."""
    path = tmp_path / "old.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE activity")
        db.execute("DROP INDEX links_recent")
    s = SqliteStore(path)
    try:
        s.add_activity([(now_minute(), "events", "segment", "x", 1)])
        assert len(s.activity(0)) == 1
        with sqlite3.connect(path) as db:
            plan = db.execute(
                "EXPLAIN QUERY PLAN SELECT anonymous_id, user_id, linked_at FROM links "
                "ORDER BY linked_at DESC LIMIT 5"
            ).fetchall()
        assert "links_recent" in str(plan) and "TEMP B-TREE" not in str(plan)
    finally:
        s.close()


# ------------------------------------------------------------------ links overview


def _link(store, anonymous: str, user: str) -> None:
    store.accept([Incoming(None, links=[Link(anonymous, user)])], DAY)
    time.sleep(0.005)  # distinct linked_at, so newest-first is well defined


def test_links_overview_counts_and_lists_newest_first(store):
    """total counts linked anonymous ids; recent is newest first, up to limit."""
    assert store.links_overview() == {"total": 0, "recent": []}
    for anonymous, user in (("a1", "u1"), ("a2", "u1"), ("a3", "u2")):
        _link(store, anonymous, user)
    two = store.links_overview(limit=2)
    assert two["total"] == 3
    assert [(r["anonymous_id"], r["user_id"]) for r in two["recent"]] == [
        ("a3", "u2"),
        ("a2", "u1"),
    ]
    every = store.links_overview()["recent"]
    assert [r["anonymous_id"] for r in every] == ["a3", "a2", "a1"]
    assert every[0]["linked_at"] > every[1]["linked_at"] > every[2]["linked_at"]
    # The same time links_of reports for that link.
    assert every[2]["linked_at"] == store.links_of("a1")["user"]["linked_at"]
    assert store.links_overview(limit=0) == {"total": 3, "recent": []}


def test_a_relinked_anonymous_id_appears_once_with_its_new_user(store):
    """An anonymous id linked again (to another user, or the same) is listed once, on top."""
    for anonymous, user in (("a1", "u1"), ("a2", "u1"), ("a1", "u2")):
        _link(store, anonymous, user)
    view = store.links_overview()
    assert view["total"] == 2
    assert [(r["anonymous_id"], r["user_id"]) for r in view["recent"]] == [
        ("a1", "u2"),
        ("a2", "u1"),
    ]
    _link(store, "a2", "u1")
    assert [r["anonymous_id"] for r in store.links_overview()["recent"]] == ["a2", "a1"]


def test_a_link_repeated_by_many_events_does_not_crowd_out_the_others(store):
    """Every event carrying both ids links them again: the others stay listed."""
    _link(store, "quiet", "u1")
    for _ in range(120):
        store.accept([Incoming(None, links=[Link("busy", "u2")])], DAY)
    view = store.links_overview(limit=5)
    assert [r["anonymous_id"] for r in view["recent"]] == ["busy", "quiet"]
    assert view["total"] == 2


def test_a_deletion_removes_the_users_links_from_the_overview(store):
    """A deletion notice forgets the user's links: gone from total and recent."""
    for anonymous, user in (("a1", "u1"), ("a2", "u2"), ("a3", "u1"), ("a4", "u2")):
        _link(store, anonymous, user)
    store.accept([Incoming(None, deletions=["u2"])], DAY)
    # The newest links were u2's: a limit still gets that many of the others.
    assert [r["anonymous_id"] for r in store.links_overview(limit=2)["recent"]] == ["a3", "a1"]
    view = store.links_overview()
    assert view["total"] == 2
    assert [(r["anonymous_id"], r["user_id"]) for r in view["recent"]] == [
        ("a3", "u1"),
        ("a1", "u1"),
    ]
    _link(store, "a2", "u1")  # linked again after the deletion: listed again
    assert [r["anonymous_id"] for r in store.links_overview()["recent"]] == ["a2", "a3", "a1"]


def test_redis_keeps_only_the_newest_hundred_links(redis_store, redis_client):
    """The recent-links index is capped at 100 entries, the newest."""
    redis_store.accept([Incoming(None, links=[Link(f"a{n}", "u1")]) for n in range(130)], DAY)
    assert redis_client.zcard(f"{redis_store.prefix}links:recent") == 100
    view = redis_store.links_overview(limit=500)
    assert view["total"] == 130 and len(view["recent"]) == 100


# ------------------------------------------------------------------ failures


def test_an_unreachable_redis_is_a_store_error_without_the_password():
    """The console operations on a Redis that is down raise StoreError, never the password."""
    port = _closed_port()
    s = open_store(f"redis://:s3cret-pw@127.0.0.1:{port}/0?timeout=1")
    calls = [
        lambda: s.add_activity([(now_minute(), "events", "segment", "x", 1)]),
        lambda: s.activity(now_minute() - 10),
        lambda: s.links_overview(),
    ]
    for call in calls:
        with pytest.raises(StoreError) as error:
            call()
        assert f"Redis at 127.0.0.1:{port} is unreachable" in str(error.value)
        assert "s3cret" not in str(error.value)


def test_a_failing_sqlite_write_is_a_store_error(sqlite_store):
    """A malformed row fails the whole add as a StoreError, and nothing of it is kept."""
    m = now_minute()
    with pytest.raises(StoreError, match="store write failed"):
        sqlite_store.add_activity([(m, "events", "segment", "x", 1), (m, "events", "segment")])
    assert sqlite_store.activity(0) == []
