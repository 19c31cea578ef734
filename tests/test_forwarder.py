"""The forwarder against the fake Miso over real HTTP: delivery, retries, 422s, auth pauses."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time

import orjson
import pytest

from adapter.forwarder import MISO_STATUS, Forwarder, ForwarderSettings
from adapter.identity import Link
from adapter.miso import MisoClient, Outcome, key_id, parse_422
from adapter.store import Incoming
from adapter.store.sqlite import SqliteStore
from adapter.testing import FakeMiso

FAST = ForwarderSettings(backoff_base=0.01, backoff_cap=0.05, pause_interval=0.2, lease=5)


@pytest.fixture
def miso():
    with FakeMiso(api_key="good-key") as fake:
        yield fake


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "fwd.db")
    yield s
    s.close()


def like(n: int, **extra) -> dict:
    return {"type": "like", "user_id": f"u{n}", "product_ids": [f"p{n}"], **extra}


def enqueue(store, records):
    store.accept([Incoming(None, [orjson.dumps(r) for r in records])], 3600)


def forwarder(store, miso, key="good-key", settings=FAST) -> Forwarder:
    return Forwarder(store, MisoClient(miso.url, key, timeout=(2, 5)), settings)


def drain(fwd: Forwarder, until, timeout: float = 10.0) -> None:
    """Run forwarder steps until ``until()`` holds (retries need their delays to pass)."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "forwarder did not finish in time"
        if not fwd.step():
            time.sleep(0.01)


def test_delivers_and_acks(store, miso):
    """Spooled records reach Miso once and leave the spool."""
    enqueue(store, [like(n) for n in range(5)])
    fwd = forwarder(store, miso)
    drain(fwd, lambda: store.stats()["spool"] == 0)
    assert miso.records == [like(n) for n in range(5)]


def test_records_go_out_with_both_ids_of_a_known_link(store, miso):
    """At send time a link fills the missing id; a "user" that is a known anonymous id (a
    device's row read before its sign-in) becomes the anonymous id beside its user."""
    store.accept([Incoming(None, links=[Link("dev-1", "u1"), Link("dev-2", "u2")])], 3600)
    enqueue(
        store,
        [
            {"type": "like", "anonymous_id": "dev-1", "product_ids": ["a"]},
            {"type": "like", "user_id": "u1", "product_ids": ["b"]},
            {"type": "like", "user_id": "dev-2", "product_ids": ["c"]},
            {"type": "like", "user_id": "u9", "product_ids": ["d"]},
            {"type": "like", "user_id": "u2", "anonymous_id": "other", "product_ids": ["e"]},
        ],
    )
    drain(forwarder(store, miso), lambda: store.stats()["spool"] == 0)
    assert [
        (r["product_ids"][0], r.get("user_id"), r.get("anonymous_id")) for r in miso.records
    ] == [
        ("a", "u1", "dev-1"),
        ("b", "u1", "dev-1"),
        ("c", "u2", "dev-2"),
        ("d", "u9", None),
        ("e", "u2", "other"),
    ]


def test_batches_respect_count_and_size(store, miso):
    """No request carries more than 1,000 records or more than 1 MiB."""
    pad = "x" * 400
    enqueue(store, [like(n, context={"user_agent": pad}) for n in range(3000)])
    fwd = forwarder(store, miso)
    drain(fwd, lambda: store.stats()["spool"] == 0, timeout=60)
    posts = [r for r in miso.requests if r.method == "POST"]
    assert len(miso.records) == 3000
    assert max(r.n_records for r in posts) <= 1000
    assert max(len(r.body) for r in posts) <= 1 << 20
    assert len(posts) >= 3000 * 460 // (1 << 20)


def test_retries_5xx_then_429_honouring_retry_after(store, miso):
    """500 three times, then 429 with Retry-After: 1, then OK: all delivered, after ≥ 1 s."""
    enqueue(store, [like(1), like(2)])
    for _ in range(3):
        miso.fail_next(500)
    miso.fail_next(429, headers={"Retry-After": "1"})
    fwd = forwarder(store, miso)
    drain(fwd, lambda: store.stats()["spool"] == 0)
    statuses = [r.status for r in miso.requests]
    assert statuses == [500, 500, 500, 429, 200]
    assert miso.records == [like(1), like(2)]
    assert store.dead_letters() == []


def test_retry_after_is_a_floor(store, miso):
    """After a 429 with Retry-After, the next attempt waits at least that long."""
    enqueue(store, [like(1)])
    miso.fail_next(429, headers={"Retry-After": "1"})
    fwd = forwarder(store, miso)
    fwd.step()
    refused_at = time.monotonic()
    drain(fwd, lambda: store.stats()["spool"] == 0)
    assert time.monotonic() - refused_at >= 0.95


def test_unreachable_miso_is_retried(store, tmp_path):
    """Connection refused (Miso down) keeps records for a later attempt."""
    enqueue(store, [like(1)])
    with FakeMiso(api_key="k") as gone:
        url = gone.url
    fwd = Forwarder(store, MisoClient(url, "k", timeout=(0.5, 0.5)), FAST)
    fwd.step()
    assert store.stats()["spool"] == 1 and store.dead_letters() == []


def test_422_dead_letters_the_named_record_and_sends_the_rest(store, miso):
    """Miso's 422 naming one record: it is dead-lettered with Miso's words; the rest go."""
    enqueue(store, [like(1), like(2), like(3)])
    miso.reject_records(lambda r: r["user_id"] == "u2", field="product_ids", message="Unknown id.")
    fwd = forwarder(store, miso)
    drain(fwd, lambda: store.stats()["spool"] == 0)
    assert miso.records == [like(1), like(3)]
    [dead] = store.dead_letters()
    assert orjson.loads(dead.body) == like(2)
    assert dead.reason == "Miso refused it (422): product_ids is invalid. Unknown id."
    miso.reject_records(None)
    assert store.requeue_dead(None) == 1
    drain(fwd, lambda: store.stats()["spool"] == 0)
    assert miso.records[-1] == like(2)


def test_422_without_indexes_is_bisected(store, miso):
    """A 422 naming no record splits the batch in halves; a lone refused record is dead."""
    enqueue(store, [like(n) for n in range(4)])
    fwd = forwarder(store, miso)
    batch = store.claim("record", 10, 1 << 20, 30, fwd.owner)
    vague = Outcome("rejected", 422, "None of the records were inserted.", rejected={})
    halves = fwd._settle(batch, vague)
    assert [[c.id for c in half] for half in halves] == [
        [batch[2].id, batch[3].id],
        [batch[0].id, batch[1].id],
    ]
    assert fwd._settle(halves[0][:1], vague) == []
    [dead] = store.dead_letters()
    assert dead.reason == "Miso refused it (422): None of the records were inserted."


def test_invalid_record_never_sent(store, miso):
    """A record that fails Miso's schema is dead-lettered before sending, with the reason."""
    enqueue(store, [like(1), {"type": "search", "product_ids": ["p"]}])
    fwd = forwarder(store, miso)
    drain(fwd, lambda: store.stats()["spool"] == 0)
    assert miso.records == [like(1)]
    [dead] = store.dead_letters()
    assert dead.reason.startswith("not sent, invalid for Miso: ")
    assert "product_ids" in dead.reason
    assert all(r.status == 200 for r in miso.requests)


def test_refused_key_pauses_keeps_everything_and_resumes(store, miso):
    """401: nothing lost, status published (without the key), delivery resumes when accepted."""
    enqueue(store, [like(1), like(2)])
    miso.set_valid_keys({"other-key"})
    fwd = forwarder(store, miso, key="good-key")
    fwd.step()
    status = store.get_status(MISO_STATUS)
    assert status["ready"] is False
    assert status["reason"] == "Miso refused the API key (401): invalid api key."
    assert "good-key" not in orjson.dumps(status).decode()
    assert status["key_id"] == key_id("good-key")
    assert store.stats()["spool"] == 2 and store.dead_letters() == []
    assert fwd.step() is False  # paused: no request until the pause interval passes
    assert len(miso.requests) == 1
    miso.set_valid_keys({"good-key"})
    drain(fwd, lambda: store.stats()["spool"] == 0)
    assert miso.records == [like(1), like(2)]
    assert store.get_status(MISO_STATUS) is None


def test_gives_up_after_max_retry_age(store, miso):
    """Past the retry window, records are dead-lettered with the last error."""
    enqueue(store, [like(1)])
    miso.fail_next(503, times=100)
    settings = ForwarderSettings(backoff_base=0.01, backoff_cap=0.01, max_retry_age=0.2)
    fwd = forwarder(store, miso, settings=settings)
    drain(fwd, lambda: store.stats()["spool"] == 0)
    [dead] = store.dead_letters()
    assert dead.reason.startswith("gave up after ")
    assert "503" in dead.reason


def test_deletions_are_forwarded(store, miso):
    """A queued deletion becomes DELETE /v1/interactions with the user ids."""
    store.accept([Incoming("d", deletions=["u7"])], 3600)
    fwd = forwarder(store, miso)
    drain(fwd, lambda: store.stats()["spool"] == 0)
    assert miso.deleted_user_ids == ["u7"]


def test_two_forwarders_send_each_record_once(store, miso, tmp_path):
    """Forwarders racing on one store never send a record twice."""
    enqueue(store, [like(n) for n in range(2000)])
    settings = ForwarderSettings(batch_size=50, flush_interval=0.01)
    stop = threading.Event()
    workers = [
        threading.Thread(
            target=Forwarder(
                SqliteStore(store.path), MisoClient(miso.url, "good-key"), settings
            ).run,
            args=(stop,),
        )
        for _ in range(3)
    ]
    for w in workers:
        w.start()
    try:
        miso.wait_for(2000, timeout=60)
    finally:
        stop.set()
        for w in workers:
            w.join()
    ids = [r["user_id"] for r in miso.records]
    assert len(ids) == 2000 and len(set(ids)) == 2000


def _leased(store: SqliteStore) -> int:
    """Spool items under a lease, read beside the forwarder (a second connection)."""
    with contextlib.closing(sqlite3.connect(store.path)) as conn:
        return conn.execute("SELECT COUNT(*) FROM spool WHERE owner IS NOT NULL").fetchone()[0]


def test_a_running_forwarder_leases_the_next_batch_while_a_send_is_in_flight(store, miso):
    """While Miso answers one batch, the next is already leased and checked; sends stay one
    at a time, in spool order, and each record goes out once."""
    enqueue(store, [like(n) for n in range(30)])
    miso.set_delay(0.5)
    fwd = forwarder(store, miso, settings=ForwarderSettings(batch_size=10, lease=30))
    worker = threading.Thread(target=fwd.drain)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while _leased(store) < 20:  # batch 1 in flight, batch 2 leased beside it
            assert time.monotonic() < deadline, "the next batch was not leased during a send"
            time.sleep(0.02)
        assert miso.records == []  # nothing answered yet: both leases are held at once
    finally:
        worker.join(timeout=30)
    assert not worker.is_alive()
    assert miso.records == [like(n) for n in range(30)]
    assert store.stats()["spool"] == 0


def test_a_batch_that_waited_long_for_the_send_before_it_is_leased_again(store, miso):
    """A lease must cover a whole send: a batch leased while a slow send was in flight is
    released and leased afresh, and still reaches Miso once, in order."""
    enqueue(store, [like(n) for n in range(20)])
    miso.set_delay(0.4)  # well past a tenth of the 2-second lease
    fwd = forwarder(store, miso, settings=ForwarderSettings(batch_size=10, lease=2))
    released: list[int] = []
    release = store.release
    store.release = lambda ids: (released.extend(ids), release(ids))  # type: ignore[method-assign]
    fwd.drain()
    assert len(released) == 10  # the second batch, given back after waiting 0.4 s
    assert miso.records == [like(n) for n in range(20)]
    assert store.stats()["spool"] == 0


def test_no_key_sends_nothing(store, miso):
    """Without a key the forwarder keeps everything queued."""
    enqueue(store, [like(1)])
    assert Forwarder(store, None, FAST).step() is False
    assert store.stats()["spool"] == 1 and miso.requests == []


def test_parse_422_lines():
    """Miso's 422 lines map to record indexes; several lines for one record are joined."""
    body = orjson.dumps(
        {
            "errors": True,
            "data": [
                "data.0.product_ids is invalid. Expected array.",
                "data.0.timestamp is invalid. Bad format.",
                "data.12.user_id (123) is invalid. Not a string.",
                "something else",
            ],
        }
    )
    assert parse_422(body) == {
        0: "product_ids is invalid. Expected array.; timestamp is invalid. Bad format.",
        12: "user_id is invalid. Not a string.",
    }
    assert parse_422(b"not json") == {}


def test_client_repr_hides_key():
    """The Miso client never shows its key."""
    assert "sekret" not in repr(MisoClient("http://x", "sekret"))


def _forward_until_empty(monkeypatch, miso, tmp_path, key="good-key") -> int:
    from adapter import cli

    monkeypatch.setenv("MISO_API_URL", miso.url)
    monkeypatch.setenv("MISO_API_KEY", key)
    monkeypatch.setenv("ADAPTER_BACKOFF_BASE", "30")
    return cli.main(["forward", "--until-empty"])


def test_forward_until_empty_sends_everything_and_exits_0(monkeypatch, miso, tmp_path, capsys):
    """`forward --until-empty` delivers the whole spool in batches, then exits 0."""
    store = SqliteStore(tmp_path / "adapter.db")
    enqueue(store, [like(n) for n in range(2500)])
    assert _forward_until_empty(monkeypatch, miso, tmp_path) == 0
    assert miso.records == [like(n) for n in range(2500)]
    assert [r.n_records for r in miso.requests] == [1000, 1000, 500]
    assert store.stats()["spool"] == 0
    assert "forwarded 2,500 items" in capsys.readouterr().err


def test_forward_until_empty_exits_1_when_records_wait(monkeypatch, miso, tmp_path, capsys):
    """When Miso is down, `--until-empty` does not wait out the backoff: it says what is left."""
    store = SqliteStore(tmp_path / "adapter.db")
    enqueue(store, [like(n) for n in range(3)])
    miso.fail_next(503)
    assert _forward_until_empty(monkeypatch, miso, tmp_path) == 1
    err = capsys.readouterr().err
    assert "3 waiting" in err and "wait for a retry" in err
    assert store.stats()["spool"] == 3


def test_forward_until_empty_reports_a_refused_key(monkeypatch, miso, tmp_path, capsys):
    """A refused key stops the drain at once with Miso's reason, and keeps the records."""
    store = SqliteStore(tmp_path / "adapter.db")
    enqueue(store, [like(1)])
    assert _forward_until_empty(monkeypatch, miso, tmp_path, key="wrong-key") == 1
    err = capsys.readouterr().err
    assert "error: not sent: Miso refused the API key (401)" in err
    assert "wrong-key" not in err
    assert store.stats()["spool"] == 1
