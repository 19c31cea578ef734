"""Identity links: stored with the records that reveal them, applied as records go out."""

from __future__ import annotations

import time

import orjson
import pytest

from adapter import cli
from adapter.forwarder import Forwarder, ForwarderSettings
from adapter.identity import Link, ProfileChange
from adapter.miso import MisoClient
from adapter.store import Incoming
from adapter.store.sqlite import SqliteStore
from adapter.testing import FakeMiso

DAY = 86400.0


@pytest.fixture
def store(tmp_path, monkeypatch):
    path = tmp_path / "identity.db"
    monkeypatch.setenv("ADAPTER_STORE", f"sqlite:///{path}")
    s = SqliteStore(path)
    yield s
    s.close()


def like(**ids) -> bytes:
    return orjson.dumps({"type": "like", "product_ids": ["p"], **ids})


def learn(store, *links: Link, key=None) -> None:
    store.accept([Incoming(key, links=list(links))], DAY)


def test_resolve_both_ways(store):
    """anonymous → user; user → the anonymous id linked most recently."""
    learn(store, Link("a1", "u1"))
    time.sleep(0.01)
    learn(store, Link("a2", "u1"), Link("a3", "u3"))
    assert store.resolve(["a1", "a3", "nope"], ["u1", "u3", "u9"]) == (
        {"a1": "u1", "a3": "u3"},
        {"u1": "a2", "u3": "a3"},
    )


def test_relink_moves_an_anonymous_id(store):
    """A device later identified as another user belongs to that user (latest wins)."""
    learn(store, Link("shared", "u1"))
    learn(store, Link("shared", "u2"))
    assert store.resolve(["shared"], []) == ({"shared": "u2"}, {})


def test_duplicate_message_teaches_nothing_twice(store):
    """Links ride on the message's dedup key like its records."""
    learn(store, Link("a1", "u1"), key="segment:m1")
    learn(store, Link("a1", "u2"), key="segment:m1")
    assert store.resolve(["a1"], [])[0] == {"a1": "u1"}


def test_deletion_forgets_the_user(store):
    """A deletion drops the user's queued records, those of their devices, and their links."""
    learn(store, Link("a1", "u1"))
    store.accept(
        [
            Incoming(None, [like(user_id="u1"), like(anonymous_id="a1"), like(user_id="u2")]),
            Incoming(None, deletions=["u1"], links=[]),
        ],
        DAY,
    )
    queued = [orjson.loads(c.body) for c in store.claim("record", 100, 1 << 20, 30, "t")]
    assert queued == [orjson.loads(like(user_id="u2"))]
    assert store.resolve(["a1"], ["u1"]) == ({}, {})
    [deletion] = store.claim("delete", 10, 1 << 20, 30, "t")
    assert orjson.loads(deletion.body) == {"user_ids": ["u1"]}


def test_links_of(store):
    """links_of tells what an id is linked to, as anonymous id and as user."""
    learn(store, Link("a1", "u1"))
    assert store.links_of("a1")["user"]["user_id"] == "u1"
    assert [x["anonymous_id"] for x in store.links_of("u1")["anonymous"]] == ["a1"]
    assert store.links_of("zzz") == {"user": None, "anonymous": []}


def test_forwarder_completes_ids_at_send_time(store):
    """Records queued before their link was learned still reach Miso with both ids."""
    store.accept(
        [Incoming(None, [like(anonymous_id="a1"), like(user_id="u1"), like(user_id="u1",
                                                                            anonymous_id="x")])],
        DAY,
    )  # fmt: skip
    learn(store, Link("a1", "u1"))
    with FakeMiso(api_key="k") as miso:
        fwd = Forwarder(store, MisoClient(miso.url, "k"), ForwarderSettings())
        fwd.step()
        assert miso.records == [
            {"type": "like", "product_ids": ["p"], "anonymous_id": "a1", "user_id": "u1"},
            {"type": "like", "product_ids": ["p"], "user_id": "u1", "anonymous_id": "a1"},
            {"type": "like", "product_ids": ["p"], "user_id": "u1", "anonymous_id": "x"},
        ]


def test_record_without_ids_is_never_sent(store):
    """A spooled record with neither id is dead-lettered with that reason, not sent."""
    store.accept([Incoming(None, [orjson.dumps({"type": "like"})])], DAY)
    with FakeMiso(api_key="k") as miso:
        Forwarder(store, MisoClient(miso.url, "k"), ForwarderSettings()).step()
        assert miso.records == []
    [dead] = store.dead_letters()
    assert dead.reason == "not sent, invalid for Miso: no user_id or anonymous_id"


def test_identity_show_command(store, capsys):
    """`identity show ID` prints what the id is linked to, both ways."""
    learn(store, Link("a1", "u1"), Link("a2", "u1"))
    assert cli.main(["identity", "show", "u1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("u1 is a user with 2 anonymous id(s), most recent first:")
    assert cli.main(["identity", "show", "a1"]) == 0
    assert capsys.readouterr().out.startswith("a1 is an anonymous id of user u1 (linked ")
    assert cli.main(["identity", "show", "nobody"]) == 0
    assert capsys.readouterr().out == "nobody: no links known\nnobody: no profile stored\n"
    assert cli.main(["identity", "show", "a2", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["user"]["user_id"] == "u1"


def test_identity_show_prints_the_profile_and_its_user_record(store, capsys):
    """`identity show ID` prints a user's merged profile and the whole record it uploads
    as (through the table's users: section: no e-mail), and says when a profile is an
    anonymous one waiting for its user."""
    store.accept(
        [Incoming("k1", profiles=[
            ProfileChange("u1", None, {"traits": {"name": "Ada", "email": "a@x.io"}}, 1.0),
            ProfileChange(None, "a9", {"traits": {"age": 3}}, 1.0),
        ])],
        DAY,
    )  # fmt: skip
    assert cli.main(["identity", "show", "u1"]) == 0
    out = capsys.readouterr().out
    assert '{"segment":{"traits":{"name":"Ada","email":"a@x.io"}}}' in out
    assert out.endswith('uploads to Miso as:\n  {"user_id":"u1","name":"Ada"}\n')
    assert cli.main(["identity", "show", "a9", "--json"]) == 0
    shown = orjson.loads(capsys.readouterr().out)
    assert shown["profile"]["anonymous"] is True and shown["user_record"] is None


def test_deletion_during_a_send_is_never_overtaken(store):
    """A deleted user's record in flight is never retried, and Miso's deletion waits for it."""
    store.accept([Incoming(None, [like(user_id="u1")])], DAY)
    [in_flight] = store.claim("record", 10, 1 << 20, lease=30, owner="fwd")
    store.accept([Incoming("segment:del", deletions=["u1"])], DAY)
    assert store.claim("delete", 10, 1 << 20, 30, "fwd") == []  # the send has not settled
    store.retry_later([in_flight.id], delay=0, error="503")  # the send failed
    assert store.claim("record", 10, 1 << 20, 30, "fwd") == []  # ... and is not retried
    [deletion] = store.claim("delete", 10, 1 << 20, 30, "fwd")
    assert orjson.loads(deletion.body) == {"user_ids": ["u1"]}


def test_cancelled_send_of_a_dead_forwarder_does_not_block_deletion(store):
    """If the sender died (lease expired), the deletion goes ahead."""
    store.accept([Incoming(None, [like(user_id="u1")])], DAY)
    store.claim("record", 10, 1 << 20, lease=0.05, owner="dies")
    store.accept([Incoming("segment:del", deletions=["u1"])], DAY)
    time.sleep(0.1)
    assert len(store.claim("delete", 10, 1 << 20, 30, "fwd")) == 1
