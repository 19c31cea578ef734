"""User profiles to Miso's Users API: whole merged records, batches, retries, 422s, tasks,
deletions; the forwarder against the fake Miso over real HTTP, on both store backends.

Messages go through the real default Segment table (``mappings/segment.yaml``) and
``ingest()``, as the webhook route does; the fake Miso validates every user record
against Miso's ``UserRecord`` schema and refuses any that does not conform.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from adapter.forwarder import Forwarder, ForwarderSettings
from adapter.ingest import ingest
from adapter.mapping import default_mappings_dir, load_mapping
from adapter.miso import MisoClient
from adapter.testing import USERS_PATH, FakeMiso
from adapter.users import UsersTables

FAST = ForwarderSettings(
    backoff_base=0.01, backoff_cap=0.05, pause_interval=0.2, lease=5, task_check=0.05
)
SEGMENT = load_mapping(default_mappings_dir() / "segment.yaml")


@pytest.fixture(autouse=True)
def _uploads_ready_at_once(store):
    """Uploads are ready as soon as they are queued (the store's wait is tested apart)."""
    store.upload_delay = 0.0


@pytest.fixture
def miso():
    with FakeMiso(api_key="good-key") as fake:
        yield fake


def send(store, *messages: dict):
    """Segment messages through the default table into the store, as ``POST /segment``."""
    events = [(f"segment:{m.setdefault('messageId', uuid.uuid4().hex)}", m) for m in messages]
    return ingest(store, SEGMENT, events, source="segment", dedup_ttl=3600)


def identify(user=None, anonymous=None, **traits) -> dict:
    message = {"type": "identify", "traits": traits, "timestamp": _now()}
    if user is not None:
        message["userId"] = user
    if anonymous is not None:
        message["anonymousId"] = anonymous
    return message


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def forwarder(store, miso, settings=FAST, folder: Path | None = None) -> Forwarder:
    tables = UsersTables(folder or default_mappings_dir())
    client = MisoClient(miso.url, "good-key", timeout=(2, 5))
    return Forwarder(store, client, settings, users=tables)


def run(fwd: Forwarder, until, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the forwarder did not get there in time"
        if not fwd.step():
            time.sleep(0.01)


def settled(store) -> bool:
    return store.stats()["spool"] == 0


ADDRESS = {"street": "1 Rue X", "city": "Paris", "state": "IDF", "country": "FR"}


def test_partial_identifies_make_one_whole_record(store, miso):
    """identify(name, address, e-mail, phone) then identify(age): Miso's record has
    name, city, state, country and age; never the e-mail, phone or street."""
    send(store, identify("U", name="Ada Lovelace", address=ADDRESS, email="a@x.io", phone="+33 1"))
    fwd = forwarder(store, miso)
    run(fwd, lambda: "U" in miso.users)
    send(store, identify("U", age=36))
    run(fwd, lambda: miso.users["U"].get("age") == 36)
    run(fwd, lambda: settled(store))
    assert miso.users["U"] == {
        "user_id": "U",
        "name": "Ada Lovelace",
        "city": "Paris",
        "state": "IDF",
        "country": "FR",
        "age": 36,
    }
    assert not any(k in str(miso.user_uploads) for k in ("a@x.io", "+33 1", "1 Rue X"))


def test_group_call_sets_group_id_and_anonymous_traits_join_the_user(store, miso):
    """group(U, G) gives group_id G; identify(anonymous A, name) then identify(U, A, age)
    gives U both; the anonymous profile alone is never uploaded."""
    send(store, {"type": "group", "userId": "U", "groupId": "acct-7", "timestamp": _now()})
    send(store, identify(anonymous="A", name="Grace Hopper"))
    fwd = forwarder(store, miso)
    run(fwd, lambda: settled(store))
    assert list(miso.users) == ["U"]
    send(store, identify("U", "A", age=85))
    run(fwd, lambda: settled(store) and miso.users["U"].get("age") == 85)
    assert miso.users["U"] == {
        "user_id": "U",
        "group_id": "acct-7",
        "name": "Grace Hopper",
        "age": 85,
    }
    assert all(r["user_id"] != "A" for upload in miso.user_uploads for r in upload)


def test_many_identifies_become_small_batches_one_record_per_user(store, miso):
    """300 identifies for 60 users: uploads of at most 100 records, no user twice in one
    upload, and each user's last traits win."""
    messages = [
        identify(f"user-{n % 60}", plan=f"plan-{n}", title=f"t{n // 60}") for n in range(300)
    ]
    for start in range(0, 300, 50):  # as six webhook requests within a second
        send(store, *messages[start : start + 50])
    fwd = forwarder(store, miso)
    run(fwd, lambda: settled(store) and len(miso.users) == 60)
    for upload in miso.user_uploads:
        assert len(upload) <= 100
        ids = [r["user_id"] for r in upload]
        assert len(ids) == len(set(ids))
    for n in range(60):
        last = max(k for k in range(300) if k % 60 == n)
        assert miso.users[f"user-{n}"]["custom_attributes"] == {
            "plan": f"plan-{last}",
            "title": f"t{last // 60}",
        }
    assert sum(len(u) for u in miso.user_uploads) == 60


def test_delete_removes_the_user_from_miso_and_nothing_brings_them_back(store, miso):
    """delete(U): Miso deletes U's interactions and user record; a late identify older
    than the deletion and later upload rounds do not revive U."""
    send(store, identify("U", name="Ada"), identify("V", name="Bob"))
    fwd = forwarder(store, miso)
    run(fwd, lambda: settled(store) and set(miso.users) == {"U", "V"})
    before = "2020-01-01T00:00:00.000Z"
    send(store, {"type": "delete", "userId": "U", "timestamp": _now()})
    send(store, {**identify("U", age=40), "timestamp": before})
    send(store, identify("V", age=30))
    run(fwd, lambda: settled(store) and miso.users["V"].get("age") == 30)
    assert "U" not in miso.users
    assert miso.deleted_users == ["U"]
    assert miso.deleted_user_ids == ["U"]
    for _ in range(5):
        fwd.step()
    assert "U" not in miso.users
    assert store.profile_of("U") is None


def test_a_refused_record_is_dead_lettered_and_the_others_uploaded(store, miso):
    """A 422 naming one record dead-letters that user with Miso's words; the others of
    the batch are sent again at once."""
    send(store, identify("u1", name="One"), identify("u2", name="Two"))
    line = "data.1.name is invalid. Refused for the test"
    miso.fail_next(422, body={"errors": True, "message": "no", "data": [line]}, path=USERS_PATH)
    fwd = forwarder(store, miso)
    run(fwd, lambda: settled(store))
    assert list(miso.users) == ["u1"]
    (dead,) = store.dead_letters()
    assert dead.kind == "user" and "Refused for the test" in dead.reason
    assert dead.body == b'{"user_id":"u2"}'
    assert store.requeue_dead(None) == 1
    run(fwd, lambda: settled(store) and "u2" in miso.users)


def test_an_unavailable_miso_is_retried(store, miso):
    """A 503 and a dropped connection are retried with backoff until Miso takes them."""
    send(store, identify("u1", name="One"))
    miso.fail_next(503, path=USERS_PATH)
    miso.disconnect_next(path=USERS_PATH)
    fwd = forwarder(store, miso)
    run(fwd, lambda: settled(store) and "u1" in miso.users)
    assert store.dead_letters() == []


def test_a_failed_task_dead_letters_its_users_with_misos_words(store, miso):
    """Miso accepts an upload, then its task fails: the task is checked and the users it
    names are dead-lettered with Miso's words (all of the upload's when it names none)."""
    send(store, identify("u1", name="One"), identify("u2", name="Two"))
    miso.fail_next_task(["data.0.custom_attributes.plan is invalid. Inconsistent types"])
    fwd = forwarder(store, miso)
    run(fwd, lambda: settled(store))
    (dead,) = store.dead_letters()
    assert dead.kind == "user" and dead.body == b'{"user_id":"u1"}'
    assert "failed" in dead.reason and "Inconsistent types" in dead.reason
    send(store, identify("u3", name="Three"))
    miso.fail_next_task(["the whole task failed"])
    run(fwd, lambda: settled(store))
    assert len(store.dead_letters()) == 2
    assert "the whole task failed" in store.dead_letters()[1].reason


def test_a_pending_task_is_checked_again_until_it_ends(store, miso):
    """A task still pending is looked at again later; once it succeeds, nothing is left."""
    send(store, identify("u1", name="One"))
    miso.hold_next_task()
    fwd = forwarder(store, miso)
    run(fwd, lambda: len(miso.tasks) == 1)
    run(fwd, lambda: store.stats()["user_tasks"] == 1 and store.stats()["spool"] == 1)
    (task_id,) = miso.tasks
    for _ in range(3):
        fwd.step()
        time.sleep(0.05)
    assert store.stats()["user_tasks"] == 1
    miso.complete_task(task_id)
    run(fwd, lambda: settled(store))
    assert miso.users["u1"]["name"] == "One" and store.dead_letters() == []


def test_a_table_edit_reaches_the_next_upload(store, miso, tmp_path):
    """The forwarder reads the users: section when it changes: an attribute added to
    the table is in the next upload, without a restart."""
    folder = tmp_path / "mappings"
    folder.mkdir()
    text = (default_mappings_dir() / "segment.yaml").read_text()
    (folder / "segment.yaml").write_text(text)
    fwd = forwarder(store, miso, folder=folder)
    send(store, identify("u1", name="One", favourite="tea"))
    run(fwd, lambda: settled(store) and "u1" in miso.users)
    assert "custom_attributes" not in miso.users["u1"]
    (folder / "segment.yaml").write_text(
        text.replace("    - traits.plan\n", "    - traits.plan\n    - traits.favourite\n")
    )
    send(store, identify("u1", age=3))
    run(fwd, lambda: settled(store) and miso.users["u1"].get("age") == 3)
    assert miso.users["u1"]["custom_attributes"] == {"favourite": "tea"}


def test_a_profile_no_table_maps_is_dead_lettered_saying_why(store, miso, tmp_path):
    """A profile whose table has no users: section, or whose id Miso refuses ('_x'), is
    not sent: it is dead-lettered with the reason, and the others are uploaded."""
    folder = tmp_path / "mappings"
    folder.mkdir()
    text = (default_mappings_dir() / "segment.yaml").read_text()
    (folder / "segment.yaml").write_text(text)
    send(store, identify("_hidden", name="X"), identify("ok", name="Ok"))
    fwd = forwarder(store, miso, folder=folder)
    run(fwd, lambda: settled(store))
    assert list(miso.users) == ["ok"]
    (dead,) = store.dead_letters()
    assert dead.reason.startswith("not sent: the users: section of segment finds no user id")
    start, end = text.index("\nusers:\n"), text.index("\nrules:\n")
    (folder / "segment.yaml").write_text(text[:start] + text[end:])
    send(store, identify("ok", age=3))
    run(fwd, lambda: settled(store))
    assert "no table has a users: section for this profile (segment.yaml in" in (
        store.dead_letters()[1].reason
    )
