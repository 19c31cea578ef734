"""FakeMiso (adapter.testing) behaves like Miso's User APIs over real HTTP."""

from __future__ import annotations

import gzip
import json

import pytest
import requests

from adapter.testing import (
    INTERACTIONS_PATH,
    INVALID_KEY_BODY,
    SCHEMA_ERROR_MESSAGE,
    USER_PATH,
    USERS_DELETE_PATH,
    USERS_PATH,
    USERS_STATUS_PATH,
    FakeMiso,
)

KEY = "test-key"
PARAMS = {"api_key": KEY}
ALICE = {
    "user_id": "alice",
    "name": "Alice Liddell",
    "age": 33,
    "city": "Oxford",
    "created_at": "2024-01-02T03:04:05Z",
    "custom_attributes": {"plan": "pro", "interests": ["tea", "croquet"]},
}
BOB = {"user_id": "bob", "created_at": "2023-12-31", "country": "GB"}


@pytest.fixture(scope="module")
def server():
    """One FakeMiso for this module: starting and stopping one per test would double its time."""
    with FakeMiso(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def miso(server):
    """The module's FakeMiso, reset to a clean state, validating, accepting ``test-key``."""
    server.reset()
    server.validate = True
    server.set_valid_keys(KEY)
    return server


def upload(miso: FakeMiso, records, *, key: str | None = KEY) -> requests.Response:
    """POST ``{"data": records}`` to /v1/users with the key in the query string."""
    params = {"api_key": key} if key is not None else {}
    return requests.post(miso.users_url, params=params, json={"data": records}, timeout=10)


def status(miso: FakeMiso, task_id: str) -> requests.Response:
    """GET the status of a User API task."""
    return requests.get(f"{miso.users_url}/_status/{task_id}", params=PARAMS, timeout=10)


def bulk_delete(miso: FakeMiso, body) -> requests.Response:
    """POST a body to /v1/users/_delete."""
    return requests.post(f"{miso.users_url}/_delete", params=PARAMS, json=body, timeout=10)


def task_id_of(response: requests.Response) -> str:
    """The task id of a 200 answer, after checking the answer's shape."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"message", "data"} and set(body["data"]) == {"task_id"}
    assert isinstance(body["data"]["task_id"], str) and body["data"]["task_id"]
    return body["data"]["task_id"]


# ------------------------------------------------------------------------ upload


def test_upload_stores_users_and_answers_a_task_id(miso):
    """A valid upload answers 200 with a task id whose status is success; users are stored."""
    response = upload(miso, [ALICE, BOB])
    task_id = task_id_of(response)
    assert response.json()["message"] == "success"
    assert miso.users == {"alice": ALICE, "bob": BOB}
    assert miso.user_uploads == [[ALICE, BOB]]
    answer = status(miso, task_id)
    assert answer.status_code == 200
    assert answer.json() == {"data": {"task_id": task_id, "status": "success", "errors": []}}
    entry = miso.requests[0]
    assert (entry.method, entry.path, entry.status, entry.n_records) == ("POST", USERS_PATH, 200, 2)


def test_upload_replaces_the_whole_record(miso):
    """A second upload of the same user_id replaces the record: absent fields are gone."""
    task_id_of(upload(miso, [ALICE]))
    task_id_of(upload(miso, [{"user_id": "alice", "age": 34}]))
    assert miso.users == {"alice": {"user_id": "alice", "age": 34}}
    read = requests.get(miso.user_url("alice"), params=PARAMS, timeout=10)
    assert read.json() == {"message": "success", "data": {"user_id": "alice", "age": 34}}
    assert [len(batch) for batch in miso.user_uploads] == [1, 1]


def test_user_uploads_show_batches_and_repeats(miso):
    """user_uploads keeps one list per accepted request, so repeats within a batch show."""
    task_id_of(upload(miso, [ALICE, BOB, {"user_id": "alice", "age": 1}]))
    task_id_of(upload(miso, [{"user_id": "carol"}]))
    batches = miso.user_uploads
    assert [len(batch) for batch in batches] == [3, 1]
    assert [r["user_id"] for r in batches[0]] == ["alice", "bob", "alice"]
    assert miso.users["alice"] == {"user_id": "alice", "age": 1}


def test_gzip_upload_is_accepted(miso):
    """A gzip-compressed upload body is decoded and stored."""
    body = gzip.compress(json.dumps({"data": [BOB]}).encode())
    response = requests.post(
        miso.users_url,
        params=PARAMS,
        data=body,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        timeout=10,
    )
    task_id_of(response)
    assert miso.users == {"bob": BOB}


def test_every_allowed_value_shape_is_accepted(miso):
    """Dates or date-times, a URI, and every custom attribute shape (null too) are valid."""
    record = {
        "user_id": "u@example.com",
        "created_at": "2024-02-29",
        "updated_at": "2024-03-01T10:00:00.123+02:00",
        "profile_image": "https://img.example.com/u.png",
        "gender": "F",
        "state": "CA",
        "group_id": "Northwind",
        "description": "Engineer",
        "custom_attributes": {
            "flag": True,
            "count": 3,
            "score": 0.5,
            "tier": "gold",
            "sizes": [1, 2.5],
            "tags": ["a", "b"],
            "addresses": [{"city": "Oslo", "zip": 150, "main": True}],
            "unknown": None,
        },
    }
    task_id_of(upload(miso, [record]))
    assert miso.users == {"u@example.com": record}


@pytest.mark.parametrize(
    ("record", "line"),
    [
        ({"user_id": 42}, "data.0.user_id is invalid. 42 is not of type 'string'"),
        ({"name": "x"}, "data.0.user_id is invalid. 'user_id' is a required property"),
        ({"user_id": ""}, "data.0.user_id is invalid. '' should be non-empty"),
        (
            {"user_id": "u", "nickname": "x"},
            "data.0.nickname is invalid. Additional properties are not allowed "
            "('nickname' was unexpected)",
        ),
        (
            {"user_id": "u", "created_at": "yesterday"},
            "data.0.created_at is invalid. 'yesterday' is not a 'date-time' or a 'date'",
        ),
        (
            {"user_id": "u", "created_at": "2024-13-01T00:00:00Z"},
            "data.0.created_at is invalid. '2024-13-01T00:00:00Z' is not a 'date-time' or a 'date'",
        ),
        ({"user_id": "u", "age": "33"}, "data.0.age is invalid. '33' is not of type 'integer'"),
        (
            {"user_id": "u", "profile_image": "not a url"},
            "data.0.profile_image is invalid. 'not a url' is not a 'uri'",
        ),
        (
            {"user_id": "u", "custom_attributes": {"x": {"nested": 1}}},
            "data.0.custom_attributes.x is invalid. {'nested': 1} is not of type 'boolean', "
            "'integer', 'number', 'string', 'array', 'null'",
        ),
        (
            {"user_id": "u", "custom_attributes": ["a"]},
            "data.0.custom_attributes is invalid. ['a'] is not of type 'object'",
        ),
        (
            {"user_id": "_reserved"},
            "data.0.user_id is invalid. '_reserved' starts with '_', which a user_id must not",
        ),
        ("alice", "data.0 is invalid. 'alice' is not of type 'object'"),
    ],
)
def test_invalid_record_gets_422_naming_the_field(miso, record, line):
    """An invalid record gets Miso's 422 with a line naming data.<index>.<field>."""
    response = upload(miso, [record])
    assert response.status_code == 422
    assert response.json()["data"] == [line]
    assert miso.users == {} and miso.user_uploads == [] and miso.tasks == {}


def test_one_bad_record_rejects_the_whole_upload(miso):
    """A batch with one invalid record is refused whole; only that record's index is named."""
    response = upload(miso, [ALICE, {"user_id": ["bob"]}, BOB])
    assert response.status_code == 422
    assert response.json() == {
        "errors": True,
        "message": SCHEMA_ERROR_MESSAGE,
        "data": ["data.1.user_id is invalid. ['bob'] is not of type 'string'"],
    }
    assert miso.users == {} and miso.user_uploads == []
    assert miso.requests[0].n_records == 3


@pytest.mark.parametrize(
    ("kwargs", "line"),
    [
        ({"data": b"not json"}, "body is invalid. The body is not valid JSON"),
        ({"json": {"users": []}}, "data is invalid. 'data' is a required property"),
        ({"json": {"data": {"user_id": "u"}}}, "data is invalid. {'user_id': 'u'} is not of"),
        ({"json": [ALICE]}, "body is invalid. [{'user_id': 'alice'"),
    ],
)
def test_bad_upload_envelope_gets_422_without_an_index(miso, kwargs, line):
    """A body that is not {"data": [...]} gets 422 with a line naming body or data."""
    response = requests.post(miso.users_url, params=PARAMS, timeout=10, **kwargs)
    assert response.status_code == 422
    (only,) = response.json()["data"]
    assert only.startswith(line)


def test_validate_false_skips_the_schema_but_needs_a_user_id(miso):
    """With validate off, unknown fields pass, but a record still needs a string user_id."""
    miso.validate = False
    task_id_of(upload(miso, [{"user_id": "u", "nickname": "x", "age": "old"}]))
    assert miso.users == {"u": {"user_id": "u", "nickname": "x", "age": "old"}}
    response = upload(miso, [{"name": "no id"}])
    assert response.status_code == 422
    assert response.json()["data"] == ["data.0.user_id is invalid. None is not a non-empty string"]


# ------------------------------------------------------------------------- tasks


def test_injected_task_failure_is_reported_and_changes_nothing(miso):
    """fail_next_task: the upload is answered 200, its status says failed, nothing is stored."""
    miso.fail_next_task(errors=["data.0 is invalid. index unavailable"])
    failed = task_id_of(upload(miso, [ALICE]))
    assert miso.users == {}
    assert miso.user_uploads == [[ALICE]]
    assert status(miso, failed).json() == {
        "data": {
            "task_id": failed,
            "status": "failed",
            "errors": ["data.0 is invalid. index unavailable"],
        }
    }
    succeeded = task_id_of(upload(miso, [ALICE]))
    assert status(miso, succeeded).json()["data"]["status"] == "success"
    assert miso.users == {"alice": ALICE}
    assert miso.tasks[failed]["kind"] == "upload"


def test_failed_delete_task_keeps_the_user(miso):
    """A delete task failed by fail_next_task (default errors) deletes nothing."""
    task_id_of(upload(miso, [BOB]))
    miso.fail_next_task()
    task_id = task_id_of(requests.delete(miso.user_url("bob"), params=PARAMS, timeout=10))
    data = status(miso, task_id).json()["data"]
    assert data["status"] == "failed" and len(data["errors"]) == 1
    assert miso.users == {"bob": BOB} and miso.deleted_users == []


def test_held_task_is_pending_until_completed(miso):
    """hold_next_task keeps a task pending, its users unstored, until complete_task."""
    miso.hold_next_task(times=2)
    first = task_id_of(upload(miso, [ALICE]))
    second = task_id_of(upload(miso, [BOB]))
    assert status(miso, first).json()["data"] == {
        "task_id": first,
        "status": "pending",
        "errors": [],
    }
    assert miso.users == {}
    assert miso.complete_task(first)["status"] == "success"
    assert miso.complete_task(second, errors=["timed out"]) == {
        "task_id": second,
        "status": "failed",
        "errors": ["timed out"],
    }
    assert miso.users == {"alice": ALICE}
    assert status(miso, second).json()["data"]["status"] == "failed"
    with pytest.raises(ValueError, match="not pending"):
        miso.complete_task(first)
    with pytest.raises(KeyError):
        miso.complete_task("no-such-task")


def test_inconsistent_custom_attribute_type_fails_only_that_record(miso):
    """A custom attribute given another type than before fails its record within the task."""
    task_id_of(upload(miso, [{"user_id": "a", "custom_attributes": {"plan": "pro"}}]))
    mixed = [
        {"user_id": "b", "custom_attributes": {"plan": 3}},
        {"user_id": "c", "custom_attributes": {"plan": ["basic"], "seats": None}},
    ]
    task_id = task_id_of(upload(miso, mixed))
    data = status(miso, task_id).json()["data"]
    assert data["status"] == "failed"
    assert len(data["errors"]) == 1
    assert data["errors"][0].startswith("data.0.custom_attributes.plan is invalid. ")
    assert sorted(miso.users) == ["a", "c"]


def test_unknown_task_status_is_404(miso):
    """The status of a task id that was never given out is 404 not found."""
    response = status(miso, "no-such-task")
    assert (response.status_code, response.json()) == (404, {"message": "not found"})


# ----------------------------------------------------------------- read, delete


@pytest.mark.parametrize("user_id", ["a/b", "mail+tag@example.com", "with space", "ünï?#&%"])
def test_get_user_by_url_encoded_id(miso, user_id):
    """GET /v1/users/{user_id} finds a user whose id needs URL-encoding."""
    record = {"user_id": user_id, "name": "N"}
    task_id_of(upload(miso, [record]))
    response = requests.get(miso.user_url(user_id), params=PARAMS, timeout=10)
    assert (response.status_code, response.json()) == (200, {"message": "success", "data": record})
    assert miso.requests[-1].path == "/v1/users/" + miso.user_url(user_id).rsplit("/", 1)[1]


def test_get_unknown_user_is_404(miso):
    """GET of a user that is not stored answers 404 not found."""
    response = requests.get(miso.user_url("ghost"), params=PARAMS, timeout=10)
    assert (response.status_code, response.json()) == (404, {"message": "not found"})


def test_delete_user_by_url_encoded_id(miso):
    """DELETE /v1/users/{user_id} answers deleted with a task id and removes the user."""
    task_id_of(upload(miso, [ALICE, {"user_id": "a/b"}]))
    response = requests.delete(miso.user_url("a/b"), params=PARAMS, timeout=10)
    task_id = task_id_of(response)
    assert response.json()["message"] == "deleted"
    assert status(miso, task_id).json()["data"]["status"] == "success"
    assert miso.users == {"alice": ALICE}
    assert miso.deleted_users == ["a/b"]
    assert requests.get(miso.user_url("a/b"), params=PARAMS, timeout=10).status_code == 404
    assert [e.n_records for e in miso.requests if e.method == "DELETE"] == [1]
    unknown = requests.delete(miso.user_url("ghost"), params=PARAMS, timeout=10)
    assert unknown.status_code == 200
    assert miso.deleted_users == ["a/b", "ghost"]


def test_bulk_delete_removes_the_users(miso):
    """POST /v1/users/_delete removes every listed user and records the ids in order."""
    task_id_of(upload(miso, [ALICE, BOB, {"user_id": "carol"}]))
    response = bulk_delete(miso, {"data": {"user_ids": ["carol", "alice", "ghost"]}})
    task_id = task_id_of(response)
    assert response.json()["message"] == "deleted"
    assert miso.tasks[task_id] == {
        "task_id": task_id,
        "kind": "delete",
        "status": "success",
        "errors": [],
    }
    assert miso.users == {"bob": BOB}
    assert miso.deleted_users == ["carol", "alice", "ghost"]
    assert miso.requests[-1].n_records == 3


@pytest.mark.parametrize(
    ("body", "loc", "kind"),
    [
        ({"user_ids": ["u"]}, ["body", "data"], "value_error.missing"),
        ({"data": ["u"]}, ["body", "data"], "type_error.dict"),
        ({"data": {}}, ["body", "data", "user_ids"], "value_error.missing"),
        ({"data": {"user_ids": "u"}}, ["body", "data", "user_ids"], "type_error.list"),
        ({"data": {"user_ids": ["u", 7]}}, ["body", "data", "user_ids", 1], "type_error.str"),
    ],
)
def test_bulk_delete_with_a_bad_body_gets_validation_422(miso, body, loc, kind):
    """A _delete body not shaped like UserBulkDeleteIn gets FastAPI's 422 and deletes nothing."""
    task_id_of(upload(miso, [{"user_id": "u"}]))
    response = bulk_delete(miso, body)
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert (detail["loc"], detail["type"]) == (loc, kind)
    assert miso.users == {"u": {"user_id": "u"}} and miso.deleted_users == []


def test_user_id_over_512_characters_in_the_path_gets_422(miso):
    """A path user_id longer than 512 characters gets a validation 422 naming the path."""
    response = requests.delete(miso.user_url("x" * 513), params=PARAMS, timeout=10)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "user_id"]


# ------------------------------------------------------------------- keys, routes


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/users", {"data": [{"user_id": "mallory"}]}),
        ("GET", "/v1/users/alice", None),
        ("DELETE", "/v1/users/alice", None),
        ("POST", "/v1/users/_delete", {"data": {"user_ids": ["alice"]}}),
        ("GET", "/v1/users/_status/any", None),
    ],
)
def test_wrong_or_missing_key_gets_401_on_every_users_route(miso, method, path, body):
    """Every User API route refuses a wrong or missing key with Miso's 401 and changes nothing."""
    task_id_of(upload(miso, [ALICE]))
    for params in ({"api_key": "wrong"}, {}):
        response = requests.request(method, miso.url + path, params=params, json=body, timeout=10)
        assert (response.status_code, response.json()) == (401, INVALID_KEY_BODY)
    assert miso.users == {"alice": ALICE} and miso.deleted_users == []
    assert len(miso.tasks) == 1
    assert not any(entry.api_key_ok for entry in miso.requests[1:])


def test_key_in_header_works(miso):
    """The X-API-KEY header is accepted on the User APIs as on interactions."""
    response = requests.post(
        miso.users_url, headers={"X-API-KEY": KEY}, json={"data": [BOB]}, timeout=10
    )
    task_id_of(response)


def test_other_methods_and_paths_under_users(miso):
    """Wrong methods on user routes get 405 with Allow; unknown paths under /v1/users get 404."""
    listing = requests.get(miso.users_url, params=PARAMS, timeout=10)
    assert (listing.status_code, listing.headers["Allow"]) == (405, "POST")
    put = requests.put(miso.user_url("alice"), params=PARAMS, json={}, timeout=10)
    assert (put.status_code, put.headers["Allow"]) == (405, "GET, DELETE")
    for path in ("/v1/users/", "/v1/users/_ids", "/v1/users/a/b", "/v1/users/_status/"):
        response = requests.get(miso.url + path, params=PARAMS, timeout=10)
        assert (response.status_code, response.json()) == (404, {"message": "Not Found"}), path


# ------------------------------------------------------------------------ faults


def test_fail_next_on_the_users_path(miso):
    """fail_next(path=USERS_PATH) fails uploads only; interactions and reads go through."""
    miso.fail_next(503, times=2, path=USERS_PATH, headers={"Retry-After": "1"})
    interaction = {"data": [{"type": "home_page_view", "user_id": "alice"}]}
    assert requests.post(miso.interactions_url, params=PARAMS, json=interaction).status_code == 200
    assert requests.get(miso.user_url("alice"), params=PARAMS, timeout=10).status_code == 404
    first = upload(miso, [ALICE])
    assert (first.status_code, first.headers["Retry-After"]) == (503, "1")
    assert upload(miso, [ALICE], key="wrong").status_code == 503  # before the key check
    task_id_of(upload(miso, [ALICE]))
    assert miso.user_uploads == [[ALICE]]
    assert [e.status for e in miso.requests if e.path == USERS_PATH] == [503, 503, 200]


def test_default_faults_stay_on_interactions(miso):
    """fail_next without path= is not taken by User API requests."""
    miso.fail_next(500)
    task_id_of(upload(miso, [ALICE]))
    response = requests.post(miso.interactions_url, params=PARAMS, json={"data": []})
    assert response.status_code == 500


def test_faults_by_route_method_and_single_path(miso):
    """Faults can target a route template with a method, or one user's own path."""
    task_id_of(upload(miso, [ALICE, BOB]))
    miso.fail_next(500, path=USER_PATH, method="delete")
    miso.disconnect_next(path="/v1/users/bob")
    miso.fail_next(429, path=USERS_STATUS_PATH)
    miso.fail_next(502, path=USERS_DELETE_PATH)
    assert requests.get(miso.user_url("alice"), params=PARAMS, timeout=10).status_code == 200
    assert requests.delete(miso.user_url("alice"), params=PARAMS, timeout=10).status_code == 500
    with pytest.raises(requests.ConnectionError):
        requests.get(miso.user_url("bob"), params=PARAMS, timeout=10)
    assert status(miso, "any").status_code == 429
    assert bulk_delete(miso, {"data": {"user_ids": ["bob"]}}).status_code == 502
    assert sorted(miso.users) == ["alice", "bob"]
    assert requests.delete(miso.user_url("alice"), params=PARAMS, timeout=10).status_code == 200
    assert sorted(miso.users) == ["bob"]


def test_fault_for_any_route(miso):
    """path=None makes a fault apply to whichever request comes next."""
    miso.fail_next(500, path=None)
    assert status(miso, "t").status_code == 500
    assert status(miso, "t").status_code == 404
    miso.fail_next(500, path=None)
    assert requests.post(miso.interactions_url, params=PARAMS, json={"data": []}).status_code == 500


# --------------------------------------------------------------- state handling


def test_reset_forgets_users_uploads_deletions_and_tasks(miso):
    """reset clears users, uploads, deleted users, tasks and queued task outcomes."""
    task_id = task_id_of(upload(miso, [ALICE, BOB]))
    task_id_of(bulk_delete(miso, {"data": {"user_ids": ["bob"]}}))
    miso.fail_next_task()
    miso.hold_next_task()
    miso.fail_next(500, path=USERS_PATH)
    miso.reset()
    assert (miso.users, miso.user_uploads, miso.deleted_users, miso.tasks) == ({}, [], [], {})
    assert status(miso, task_id).status_code == 404
    fresh = task_id_of(upload(miso, [{"user_id": "u", "custom_attributes": {"plan": 1}}]))
    assert status(miso, fresh).json()["data"]["status"] == "success"


def test_public_state_is_copied(miso):
    """Mutating what users, user_uploads, deleted_users or tasks return changes nothing."""
    task_id = task_id_of(upload(miso, [ALICE]))
    task_id_of(requests.delete(miso.user_url("ghost"), params=PARAMS, timeout=10))
    miso.users["alice"]["custom_attributes"]["plan"] = "free"
    miso.users.clear()
    miso.user_uploads[0][0]["name"] = "changed"
    miso.deleted_users.clear()
    miso.tasks[task_id]["errors"].append("x")
    assert miso.users == {"alice": ALICE}
    assert miso.user_uploads == [[ALICE]]
    assert miso.deleted_users == ["ghost"]
    assert miso.tasks[task_id]["errors"] == []
    read = requests.get(miso.user_url("alice"), params=PARAMS, timeout=10).json()
    assert read["data"] == ALICE


def test_wait_for_users(miso):
    """wait_for_users returns the users once enough are stored, else says how many are."""
    task_id_of(upload(miso, [ALICE]))
    assert miso.wait_for_users(1, timeout=1) == {"alice": ALICE}
    with pytest.raises(AssertionError, match="got 1"):
        miso.wait_for_users(2, timeout=0.05)


def test_interactions_still_work_beside_users(miso):
    """The interactions endpoint is unchanged on the same server."""
    record = {"type": "home_page_view", "user_id": "alice"}
    response = requests.post(
        miso.url + INTERACTIONS_PATH, params=PARAMS, json={"data": [record]}, timeout=10
    )
    assert response.status_code == 200
    assert miso.records == [record] and miso.users == {}
