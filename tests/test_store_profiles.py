"""Profiles in the store, on both backends: merged traits, anonymous profiles joined on a
link, one queued upload per user, deletions that nothing brings back.

Every test runs once per backend (``[sqlite]``, ``[redis]``), as in ``test_store.py``.
"""

from __future__ import annotations

import time

import orjson
import pytest

from adapter.identity import Link, ProfileChange
from adapter.store import Incoming
from adapter.testing.stores import DAY


@pytest.fixture(autouse=True)
def _uploads_ready_at_once(store):
    """Queued uploads are ready at once here; their wait has a test of its own."""
    store.upload_delay = 0.0


def change(user=None, anonymous=None, at=None, table="segment", **parts) -> ProfileChange:
    return ProfileChange(user, anonymous, parts, time.time() if at is None else at, table)


def accept(store, *items: Incoming) -> list[bool]:
    return store.accept(list(items), DAY)


def profile(store, any_id):
    found = store.profile_of(any_id)
    return None if found is None else found["data"]


def queued_users(store):
    """The user ids of the ``user`` uploads ready now, leased (and so taken off the queue)."""
    claimed = store.claim("user", 1000, 1 << 20, 30.0, "test")
    return [orjson.loads(item.body)["user_id"] for item in claimed], claimed


def test_changes_merge_later_values_win_and_null_removes(store):
    """A later trait wins, an explicit null removes one, and other traits stay."""
    accept(store, Incoming("k1", profiles=[change("u1", traits={"name": "Ada", "city": "Paris"})]))
    accept(store, Incoming("k2", profiles=[change("u1", traits={"age": 36, "city": None})]))
    accept(store, Incoming("k3", profiles=[change("u1", group={"groupId": "g7"})]))
    assert profile(store, "u1") == {
        "segment": {"traits": {"name": "Ada", "age": 36}, "group": {"groupId": "g7"}}
    }


def test_profiles_of_two_sources_are_kept_apart(store):
    """Each table's traits are merged on their own (each is read by its own table)."""
    accept(store, Incoming("k1", profiles=[change("u1", traits={"name": "Ada"})]))
    accept(
        store,
        Incoming(
            "k2",
            source="mixpanel-profiles",
            profiles=[change("u1", traits={"$city": "Oslo"}, table="mixpanel")],
        ),
    )
    assert profile(store, "u1") == {
        "segment": {"traits": {"name": "Ada"}},
        "mixpanel": {"traits": {"$city": "Oslo"}},
    }


def test_many_changes_queue_one_upload_until_it_reads_the_profile(store):
    """Changes to one user queue one upload; once it has read the profile, the next
    change queues another, so no change waits behind an upload that read too early."""
    for n in range(5):
        accept(store, Incoming(f"k{n}", profiles=[change("u1", traits={"n": n})]))
    users, claimed = queued_users(store)
    assert users == ["u1"]
    assert store.take_profiles(["u1", "nobody"]) == {"u1": {"segment": {"traits": {"n": 4}}}}
    accept(store, Incoming("k9", profiles=[change("u1", traits={"n": 9})]))
    store.ack([item.id for item in claimed])
    again, _ = queued_users(store)
    assert again == ["u1"]


def test_a_duplicate_message_changes_nothing(store):
    """A redelivered message (same dedup key) is a duplicate: its change is not applied."""
    accept(store, Incoming("k1", profiles=[change("u1", traits={"n": 1})]))
    accept(store, Incoming("k2", profiles=[change("u1", traits={"n": 2})]))
    assert accept(store, Incoming("k1", profiles=[change("u1", traits={"n": 1})])) == [True]
    assert profile(store, "u1") == {"segment": {"traits": {"n": 2}}}


def test_an_anonymous_profile_waits_and_joins_its_user_on_a_link(store):
    """Traits of an anonymous-only message stay under the anonymous id, are never
    uploaded, and join the user's profile when a link names the user (the user's own
    values win)."""
    accept(
        store,
        Incoming("k1", profiles=[change(None, "a1", traits={"name": "Guest", "plan": "pro"})]),
    )
    assert store.profile_of("a1")["anonymous"] is True
    assert queued_users(store)[0] == []
    assert store.stats()["anonymous_profiles"] == 1
    accept(
        store,
        Incoming(
            "k2",
            links=[Link("a1", "u1")],
            profiles=[change("u1", "a1", traits={"name": "Ada", "age": 36})],
        ),
    )
    assert profile(store, "u1") == {
        "segment": {"traits": {"name": "Ada", "age": 36, "plan": "pro"}}
    }
    assert store.profile_of("a1") is None
    assert queued_users(store)[0] == ["u1"]
    stats = store.stats()
    assert (stats["profiles"], stats["anonymous_profiles"]) == (1, 0)


def test_a_link_alone_joins_an_anonymous_profile(store):
    """An alias (a link, no traits) joins the anonymous profile into the user's."""
    accept(store, Incoming("k1", profiles=[change(None, "a1", traits={"name": "Guest"})]))
    accept(store, Incoming("k2", links=[Link("a1", "u1")]))
    assert profile(store, "u1") == {"segment": {"traits": {"name": "Guest"}}}
    assert queued_users(store)[0] == ["u1"]


def test_an_anonymous_change_after_the_link_goes_to_the_user(store):
    """Once an anonymous id is linked, its later anonymous-only changes are the user's."""
    accept(store, Incoming("k1", links=[Link("a1", "u1")]))
    accept(store, Incoming("k2", profiles=[change(None, "a1", traits={"city": "Lyon"})]))
    assert profile(store, "u1") == {"segment": {"traits": {"city": "Lyon"}}}
    assert store.profile_of("a1") is None


def test_a_deletion_drops_the_profile_its_uploads_and_older_changes(store):
    """A deletion drops the user's profile (and their anonymous ids' profiles) and queued
    uploads; a change older than the deletion (a late or replayed message) is ignored,
    and a newer one starts a fresh profile."""
    before = time.time() - 60
    accept(store, Incoming("k1", links=[Link("a2", "u1")]))
    accept(store, Incoming("k2", profiles=[change("u1", traits={"name": "Ada"})]))
    accept(store, Incoming("k3", profiles=[change(None, "a9", traits={"x": 1})]))
    accept(store, Incoming("k4", deletions=["u1"]))
    assert store.profile_of("u1") is None
    assert queued_users(store)[0] == []
    assert [item.kind for item in store.claim("delete", 10, 1 << 20, 30.0, "t")] == ["delete"]
    accept(store, Incoming("k5", profiles=[change("u1", traits={"name": "Ada"}, at=before)]))
    assert store.profile_of("u1") is None
    assert queued_users(store)[0] == []
    accept(
        store, Incoming("k6", profiles=[change("u1", traits={"name": "New"}, at=time.time() + 1)])
    )
    assert profile(store, "u1") == {"segment": {"traits": {"name": "New"}}}


def test_a_deletion_waits_for_an_upload_in_flight(store):
    """An upload being sent when its user is deleted cannot be recalled: the deletion
    notice is held back until that upload settles, so Miso deletes after it."""
    accept(store, Incoming("k1", profiles=[change("u1", traits={"name": "Ada"})]))
    users, claimed = queued_users(store)
    assert users == ["u1"]
    accept(store, Incoming("k2", deletions=["u1"]))
    assert store.claim("delete", 10, 1 << 20, 30.0, "t") == []
    store.ack([item.id for item in claimed])
    assert [item.kind for item in store.claim("delete", 10, 1 << 20, 30.0, "t")] == ["delete"]


def test_enqueue_puts_items_of_a_kind_on_the_spool_after_a_delay(store):
    """enqueue() adds items (e.g. a Miso task to check later), ready after the delay."""
    ids = store.enqueue("user_task", [b'{"task_id":"t1","user_ids":["u1"]}'], "segment", 0.2)
    assert len(ids) == 1
    assert store.claim("user_task", 10, 1 << 20, 30.0, "t") == []
    time.sleep(0.3)
    claimed = store.claim("user_task", 10, 1 << 20, 30.0, "t")
    assert [(c.id, c.body) for c in claimed] == [(ids[0], b'{"task_id":"t1","user_ids":["u1"]}')]
    store.dead_letter([(ids[0], "Miso's task t1 failed")])
    (dead,) = store.dead_letters()
    assert (dead.kind, dead.reason) == ("user_task", "Miso's task t1 failed")


@pytest.mark.parametrize("kind", ["user", "user_task"])
def test_user_items_retry_dead_letter_and_requeue_like_records(store, kind):
    """The spool's retry, dead-letter and requeue work for the user kinds too."""
    (item_id,) = store.enqueue(kind, [b'{"user_id":"u1"}'], "segment")
    (claimed,) = store.claim(kind, 10, 1 << 20, 30.0, "t")
    store.retry_later([claimed.id], 0.0, "503: busy")
    (again,) = store.claim(kind, 10, 1 << 20, 30.0, "t")
    assert (again.id, again.attempts) == (item_id, 2)
    store.dead_letter([(again.id, "refused")])
    assert store.requeue_dead(None) == 1
    (back,) = store.claim(kind, 10, 1 << 20, 30.0, "t")
    assert back.body == b'{"user_id":"u1"}'
    store.ack([back.id])
    assert store.stats()["spool"] == 0


def test_an_upload_waits_so_changes_that_follow_share_it(store):
    """A queued upload is ready only after the store's upload delay: an identify and the
    group call that follows it within the delay go out as one upload."""
    store.upload_delay = 0.3
    accept(store, Incoming("k1", profiles=[change("u1", traits={"name": "Ada"})]))
    accept(store, Incoming("k2", profiles=[change("u1", group={"groupId": "g1"})]))
    assert queued_users(store)[0] == []
    time.sleep(0.35)
    assert queued_users(store)[0] == ["u1"]
    assert store.take_profiles(["u1"]) == {
        "u1": {"segment": {"traits": {"name": "Ada"}, "group": {"groupId": "g1"}}}
    }
