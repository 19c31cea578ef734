"""End to end: user profiles from Segment to Miso's Users API through `serve`.

The service runs as a user starts it (``miso-adapter serve`` in a subprocess, see
adapter/testing/service.py). identify and group calls come from Segment's own Python client
(``segment-analytics-python``) pointed at the adapter, deletions as Segment's webhook
delivers them; the fake Miso validates every user record against Miso's ``UserRecord``
schema, and each test checks the records it stored.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from adapter.testing import FakeMiso
from adapter.testing.service import MISO_KEY, WRITE_KEY, Service


@pytest.fixture(scope="module")
def miso():
    with FakeMiso(api_key=MISO_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def service(tmp_path_factory, miso):
    running = Service(tmp_path_factory.mktemp("users"), miso).start()
    yield running
    running.stop()


@pytest.fixture
def client(service):
    """Segment's analytics-python, sending to the adapter; fails the test on any error."""
    from segment.analytics.client import Client

    errors: list = []
    segment = Client(
        write_key=WRITE_KEY, host=service.url, sync_mode=True,
        on_error=lambda e, batch: errors.append(e), max_retries=1,
    )  # fmt: skip
    yield segment
    segment.flush()
    assert errors == []


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def wait_until(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_identify_traits_merge_into_one_whole_record(client, miso):
    """identify(U, name + address + e-mail + phone) then identify(U, age): Miso's record
    for U has name, city, state, country and age, and no e-mail or phone."""
    user = uid("ada")
    address = {"street": "12 Byron St", "city": "London", "state": "LND", "country": "GB"}
    client.identify(
        user_id=user,
        traits={"name": "Ada Lovelace", "address": address, "email": "ada@example.com",
                "phone": "+44 20 7946 0000"},
    )  # fmt: skip
    client.flush()
    wait_until(lambda: user in miso.users, "the first upload")
    client.identify(user_id=user, traits={"age": 36})
    client.flush()
    wait_until(lambda: miso.users.get(user, {}).get("age") == 36, "the second upload")
    assert miso.users[user] == {
        "user_id": user,
        "name": "Ada Lovelace",
        "city": "London",
        "state": "LND",
        "country": "GB",
        "age": 36,
    }
    sent = str([r for upload in miso.user_uploads for r in upload if r["user_id"] == user])
    assert "ada@example.com" not in sent and "7946" not in sent and "Byron" not in sent


def test_group_and_anonymous_traits_reach_the_user(client, miso):
    """group(U, G) sets group_id G; identify(anonymous A, name) then identify(U, A, age)
    gives U both name and age, and no record is ever uploaded for A."""
    user, anon, group = uid("u"), uid("anon"), uid("acct")
    client.group(user_id=user, group_id=group, traits={"name": "Acme"})
    client.identify(anonymous_id=anon, traits={"name": "Grace Hopper"})
    client.flush()
    wait_until(lambda: miso.users.get(user, {}).get("group_id") == group, "the group upload")
    client.identify(user_id=user, anonymous_id=anon, traits={"age": 85})
    client.flush()
    wait_until(lambda: miso.users[user].get("age") == 85, "the joined upload")
    assert miso.users[user] == {
        "user_id": user,
        "group_id": group,
        "name": "Grace Hopper",
        "age": 85,
    }
    assert all(r["user_id"] != anon for upload in miso.user_uploads for r in upload)


def test_a_burst_of_identifies_then_a_deletion(client, service, miso):
    """300 identifies for 60 users within a second: uploads of at most 100 records, no user
    twice in one upload, each user's last traits win; delete(U) deletes U in Miso and no
    later upload round brings U back."""
    prefix = uid("burst")
    users = [f"{prefix}-{n}" for n in range(60)]
    started = time.monotonic()
    for n in range(300):
        client.identify(user_id=users[n % 60], traits={"plan": f"plan-{n}"})
    client.flush()
    assert time.monotonic() - started < 5
    wait_until(
        lambda: all(
            miso.users.get(u, {}).get("custom_attributes", {}).get("plan") == f"plan-{240 + i}"
            for i, u in enumerate(users)
        ),
        "every user's last traits",
    )
    for upload in miso.user_uploads:
        ids = [r["user_id"] for r in upload]
        assert len(ids) <= 100 and len(ids) == len(set(ids))
    gone = users[0]
    delete = {"type": "delete", "userId": gone, "messageId": uid("del")}
    response = service.post("/segment", delete)
    assert response.status_code == 200 and response.json()["deletions"] == 1
    wait_until(lambda: gone in miso.deleted_users, "the user deletion")
    assert gone in miso.deleted_user_ids  # their interactions too
    client.identify(user_id=users[1], traits={"plan": "after"})
    client.flush()
    wait_until(lambda: miso.users[users[1]]["custom_attributes"]["plan"] == "after", "an upload")
    time.sleep(1.5)  # a revival would come within the forwarder's next rounds
    assert gone not in miso.users
