"""FakeMiso (adapter.testing) behaves like Miso's Interactions API over real HTTP."""

from __future__ import annotations

import builtins
import gzip
import subprocess
import sys
import threading
import time

import orjson
import pytest
import requests

from adapter import records as records_module
from adapter.testing import (
    INVALID_KEY_BODY,
    SCHEMA_ERROR_MESSAGE,
    SUCCESS_BODY,
    FakeMiso,
    RequestLog,
)
from adapter.testing.ports import closed_port
from adapter.testing.stores import REQUIRE_REDIS, require_redis

KEY = "test-key"
PAGE_VIEW = {
    "type": "product_detail_page_view",
    "user_id": "u1",
    "anonymous_id": "a1",
    "product_ids": ["p1"],
    "timestamp": "2024-01-02T03:04:05.678Z",
}
SEARCH = {"type": "search", "anonymous_id": "a2", "search": {"keywords": "shoes"}}


@pytest.fixture
def miso():
    """A running FakeMiso accepting the key ``test-key``."""
    with FakeMiso(api_key=KEY) as fake:
        yield fake


def post(miso: FakeMiso, body, *, key: str | None = KEY, **kwargs) -> requests.Response:
    """POST a JSON body to the fake with the key in the query string."""
    params = {"api_key": key} if key is not None else {}
    return requests.post(miso.interactions_url, params=params, json=body, timeout=10, **kwargs)


def test_valid_batch_is_accepted_and_recorded(miso):
    """A valid batch gets 200 success and its records are kept in order."""
    response = post(miso, {"data": [PAGE_VIEW, SEARCH]})
    assert response.status_code == 200
    assert response.json() == SUCCESS_BODY
    assert response.headers["Content-Type"] == "application/json"
    assert miso.records == [PAGE_VIEW, SEARCH]
    (entry,) = miso.requests
    assert (entry.method, entry.path, entry.status, entry.n_records, entry.api_key_ok) == (
        "POST",
        "/v1/interactions",
        200,
        2,
        True,
    )


def test_every_interaction_type_is_accepted(miso):
    """Each of the 29 types the adapter knows is accepted by the fake's per-type dispatch."""
    batch = [{"type": name} for name in records_module.INTERACTION_TYPES]
    batch[records_module.INTERACTION_TYPES.index("custom")]["custom_action_name"] = "x"
    assert len(batch) == 29
    assert post(miso, {"data": batch}).status_code == 200
    assert len(miso.records) == 29


def test_wrong_key_gets_401_with_miso_body(miso):
    """A wrong or missing key gets 401 with Miso's exact body and nothing is recorded."""
    for key in ("wrong", None, ""):
        response = post(miso, {"data": [PAGE_VIEW]}, key=key)
        assert response.status_code == 401
        assert response.json() == {"message": "invalid api key."} == INVALID_KEY_BODY
    assert miso.records == []
    assert [entry.api_key_ok for entry in miso.requests] == [False, False, False]


def test_key_in_header_or_query_both_work(miso):
    """The key is accepted from the X-API-KEY header and from the api_key query parameter."""
    by_header = requests.post(
        miso.interactions_url, headers={"X-API-KEY": KEY}, json={"data": [PAGE_VIEW]}, timeout=10
    )
    by_query = post(miso, {"data": [SEARCH]})
    assert (by_header.status_code, by_query.status_code) == (200, 200)
    assert miso.records == [PAGE_VIEW, SEARCH]


def test_key_is_never_logged(miso):
    """Request logs keep the path without the query string and drop the api_key parameter."""
    params = {"api_key": KEY, "dry_run": "1"}
    assert requests.post(miso.interactions_url, params=params, json={"data": []}).ok
    (entry,) = miso.requests
    assert entry.path == "/v1/interactions"
    assert entry.query == (("dry_run", "1"),)
    assert KEY not in repr(entry)
    assert KEY.encode() not in entry.body


def test_product_ids_on_search_is_rejected(miso):
    """product_ids on a search record gets 422 naming data.0.product_ids; nothing is kept."""
    response = post(miso, {"data": [{**SEARCH, "product_ids": ["p1"]}]})
    assert response.status_code == 422
    body = response.json()
    assert body["errors"] is True
    assert body["message"] == SCHEMA_ERROR_MESSAGE
    assert body["data"] == [
        "data.0.product_ids is invalid. Additional properties are not allowed "
        "('product_ids' was unexpected)"
    ]
    assert miso.records == []
    assert miso.requests[0].n_records == 1


def test_mixed_batch_names_only_the_bad_record(miso):
    """A batch whose record 2 is invalid gets 422 naming data.2 only, and nothing is kept."""
    bad = {**PAGE_VIEW, "product_ids": "p1"}
    response = post(miso, {"data": [PAGE_VIEW, SEARCH, bad, PAGE_VIEW]})
    assert response.status_code == 422
    lines = response.json()["data"]
    assert lines == ["data.2.product_ids is invalid. 'p1' is not of type 'array'"]
    assert miso.records == []


@pytest.mark.parametrize(
    ("record", "line"),
    [
        ({**PAGE_VIEW, "timestamp": "yesterday"}, "data.0.timestamp is invalid. "),
        ({**PAGE_VIEW, "miso_id": "not-a-uuid"}, "data.0.miso_id is invalid. "),
        (
            {**PAGE_VIEW, "context": {"truncated_ip": "2001:db8::"}},
            "data.0.context.truncated_ip is invalid. ",
        ),
        (
            {**PAGE_VIEW, "context": {"page": {"title": "t"}}},
            "data.0.context.page.url is invalid. 'url' is a required property",
        ),
        ({"type": "custom"}, "data.0.custom_action_name is invalid. 'custom_action_name' is a"),
        ({"type": "purchase"}, "data.0.type is invalid. 'purchase' is not one of ["),
        ({"user_id": "u1"}, "data.0.type is invalid. 'type' is a required property"),
        ("a string", "data.0 is invalid. 'a string' is not of type 'object'"),
    ],
)
def test_schema_errors_name_the_field(miso, record, line):
    """Formats, nested required fields, unknown or missing types each get a Miso-style line."""
    response = post(miso, {"data": [record]})
    assert response.status_code == 422
    (only,) = response.json()["data"]
    assert only.startswith(line)


@pytest.mark.parametrize(
    ("data", "kwargs", "line"),
    [
        (b"{not json", {}, "body is invalid. The body is not valid JSON"),
        (b"[]", {}, "body is invalid. [] is not of type 'object'"),
        (b"{}", {}, "data is invalid. 'data' is a required property"),
        (b'{"data": {}}', {}, "data is invalid. {} is not of type 'array'"),
        (b"garbage", {"Content-Encoding": "gzip"}, "body is invalid. The body is not valid gzip"),
    ],
)
def test_bad_envelope_gets_422_without_an_index(miso, data, kwargs, line):
    """Malformed JSON, gzip or envelope gets 422 in Miso's shape with a line naming no record."""
    response = requests.post(
        miso.interactions_url, params={"api_key": KEY}, data=data, headers=kwargs, timeout=10
    )
    assert response.status_code == 422
    assert response.json()["message"] == SCHEMA_ERROR_MESSAGE
    (only,) = response.json()["data"]
    assert only.startswith(line)


def test_unsupported_content_encoding_gets_415(miso):
    """A Content-Encoding other than gzip is refused with 415."""
    response = requests.post(
        miso.interactions_url,
        params={"api_key": KEY},
        data=b"{}",
        headers={"Content-Encoding": "br"},
        timeout=10,
    )
    assert response.status_code == 415


def test_reject_records_predicate(miso):
    """reject_records makes a request holding a matching record 422 and keeps nothing."""
    miso.reject_records(lambda record: record.get("user_id") == "u1", field="user_id")
    response = post(miso, {"data": [SEARCH, PAGE_VIEW]})
    assert response.status_code == 422
    assert response.json()["data"] == [
        "data.1.user_id is invalid. The record was rejected by FakeMiso.reject_records."
    ]
    assert miso.records == []
    miso.reject_records(lambda record: "search" in record and "no searches today")
    assert post(miso, {"data": [SEARCH]}).json()["data"] == [
        "data.0.type is invalid. no searches today"
    ]
    miso.reject_records(None)
    assert post(miso, {"data": [SEARCH, PAGE_VIEW]}).status_code == 200
    assert miso.records == [SEARCH, PAGE_VIEW]


def test_fail_next_twice_then_ok(miso):
    """fail_next(500, times=2) fails the next two requests; the third is accepted."""
    miso.fail_next(500, times=2)
    statuses = [post(miso, {"data": [PAGE_VIEW]}).status_code for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert miso.records == [PAGE_VIEW]
    assert [entry.status for entry in miso.requests] == [500, 500, 200]


def test_faults_are_fifo_and_come_before_the_key_check(miso):
    """Queued faults are served in order, even to a request whose key is wrong."""
    miso.fail_next(503)
    miso.fail_next(502, body="bad gateway")
    assert post(miso, {"data": []}, key="wrong").status_code == 503
    response = post(miso, {"data": []})
    assert (response.status_code, response.text) == (502, "bad gateway")
    assert post(miso, {"data": []}, key="wrong").status_code == 401


def test_429_carries_retry_after(miso):
    """A 429 fault carries the given Retry-After header."""
    miso.fail_next(429, headers={"Retry-After": "1"})
    response = post(miso, {"data": [PAGE_VIEW]})
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert miso.records == []


def test_disconnect_next_drops_the_connection(miso):
    """disconnect_next makes the client see a connection error, then serving resumes."""
    miso.disconnect_next()
    with pytest.raises(requests.ConnectionError):
        post(miso, {"data": [PAGE_VIEW]})
    assert post(miso, {"data": [PAGE_VIEW]}).status_code == 200
    assert [entry.status for entry in miso.requests] == [0, 200]


def test_set_delay_slows_answers(miso):
    """set_delay makes every answer at least that much slower."""
    miso.set_delay(0.3)
    started = time.monotonic()
    assert post(miso, {"data": [PAGE_VIEW]}).status_code == 200
    assert time.monotonic() - started >= 0.3
    miso.set_delay(0)
    started = time.monotonic()
    post(miso, {"data": [PAGE_VIEW]})
    assert time.monotonic() - started < 0.3


def test_set_valid_keys(miso):
    """set_valid_keys changes which keys are accepted while the server runs."""
    assert post(miso, {"data": [PAGE_VIEW]}, key="fixed").status_code == 401
    miso.set_valid_keys({"fixed", "other"})
    assert post(miso, {"data": [PAGE_VIEW]}, key="fixed").status_code == 200
    assert post(miso, {"data": [PAGE_VIEW]}).status_code == 401
    assert miso.api_key == KEY


def test_delete_records_user_ids(miso):
    """DELETE /v1/interactions with user_ids answers success and records the ids."""
    response = requests.delete(
        miso.interactions_url, headers={"X-API-KEY": KEY}, json={"user_ids": ["u1", "u2"]}
    )
    assert (response.status_code, response.json()) == (200, SUCCESS_BODY)
    assert miso.deleted_user_ids == ["u1", "u2"]
    wrong = requests.delete(miso.interactions_url, params={"api_key": "x"}, json={"user_ids": []})
    assert wrong.status_code == 401
    bad = requests.delete(miso.interactions_url, params={"api_key": KEY}, json={"users": []})
    assert bad.status_code == 422
    assert miso.deleted_user_ids == ["u1", "u2"]


def test_other_paths_and_methods(miso):
    """Unknown paths get a JSON 404 and other methods on the endpoint a JSON 405."""
    missing = requests.post(f"{miso.url}/v1/products", params={"api_key": KEY}, json={})
    assert (missing.status_code, missing.json()) == (404, {"message": "Not Found"})
    wrong_method = requests.get(miso.interactions_url, params={"api_key": KEY})
    assert wrong_method.status_code == 405
    assert wrong_method.json() == {"message": "Method Not Allowed"}


def test_keep_alive_session_makes_50_requests(miso):
    """One requests.Session reuses its connection for 50 requests, all answered correctly."""
    with requests.Session() as session:
        session.headers["X-API-KEY"] = KEY
        for i in range(50):
            body = {"data": [{**PAGE_VIEW, "user_id": f"u{i}"}]}
            if i % 10 == 9:
                body = {"data": [{**SEARCH, "product_ids": []}]}  # a 422 must not break the stream
            response = session.post(miso.interactions_url, json=body, timeout=10)
            assert response.status_code == (422 if i % 10 == 9 else 200)
    assert len(miso.records) == 45
    assert len(miso.requests) == 50


def test_wait_for_returns_records_sent_from_another_thread(miso):
    """wait_for blocks until records sent concurrently arrive."""
    sender = threading.Thread(target=lambda: (time.sleep(0.1), post(miso, {"data": [PAGE_VIEW]})))
    sender.start()
    assert miso.wait_for(1, timeout=5) == [PAGE_VIEW]
    sender.join()


def test_wait_for_timeout_says_how_many_arrived(miso):
    """wait_for raises AssertionError naming the expected and received counts."""
    post(miso, {"data": [PAGE_VIEW]})
    with pytest.raises(AssertionError, match=r"expected at least 3 .* got 1 "):
        miso.wait_for(3, timeout=0.2)


def test_gzip_body_is_accepted(miso):
    """A gzip-compressed body is decoded and accepted; the log keeps the decoded body."""
    raw = b'{"data": [{"type": "home_page_view", "anonymous_id": "a1"}]}'
    response = requests.post(
        miso.interactions_url,
        params={"api_key": KEY},
        data=gzip.compress(raw),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 200
    assert miso.records == [{"type": "home_page_view", "anonymous_id": "a1"}]
    assert miso.requests[0].body == raw
    assert miso.requests[0].content_encoding == "gzip"


def test_chunked_body_is_accepted(miso):
    """A body streamed with chunked transfer encoding is read whole."""
    chunks = iter([b'{"data": [', b'{"type": "like"}', b"]}"])
    response = requests.post(miso.interactions_url, params={"api_key": KEY}, data=chunks)
    assert response.status_code == 200
    assert miso.records == [{"type": "like"}]


def test_validate_false_accepts_invalid_records(miso):
    """With validate off, records the schema would refuse are accepted."""
    miso.validate = False
    bad = {**SEARCH, "product_ids": ["p1"], "currency": "EUR"}
    assert post(miso, {"data": [bad]}).status_code == 200
    assert miso.records == [bad]
    miso.validate = True
    assert post(miso, {"data": [bad]}).status_code == 422


def test_repr_hides_the_key():
    """repr shows the URL and state but never the API key."""
    secret = "sk-very-secret-123"
    with FakeMiso(api_key=secret) as fake:
        text = repr(fake)
        assert secret not in text
        assert fake.url in text
    assert secret not in repr(fake)
    assert "closed" in repr(fake)


def test_reset_clears_state(miso):
    """reset forgets records, requests, deleted ids, faults, rules and the delay."""
    post(miso, {"data": [PAGE_VIEW]})
    miso.fail_next(500)
    miso.reject_records(lambda record: True)
    miso.set_delay(5)
    miso.reset()
    assert (miso.records, miso.requests, miso.deleted_user_ids) == ([], [], [])
    assert post(miso, {"data": [PAGE_VIEW]}).status_code == 200


def test_snapshots_are_copies(miso):
    """Mutating the returned lists does not change the fake's state."""
    post(miso, {"data": [PAGE_VIEW]})
    miso.records.clear()
    miso.requests.clear()
    assert len(miso.records) == 1
    assert isinstance(miso.requests[0], RequestLog)


def test_failing_predicate_answers_500(miso):
    """A reject_records predicate that raises gets a 500 and is kept in server_errors."""
    miso.reject_records(lambda record: 1 / 0)
    response = post(miso, {"data": [PAGE_VIEW]})
    assert response.status_code == 500
    assert "ZeroDivisionError" in response.json()["message"]
    assert isinstance(miso.server_errors[0], ZeroDivisionError)


def test_close_ends_keep_alive_connections_and_thread():
    """close() stops the server thread and drops idle keep-alive connections."""
    fake = FakeMiso(api_key=KEY)
    with requests.Session() as session:
        assert session.post(fake.interactions_url, params={"api_key": KEY}, json={"data": []}).ok
        fake.close()
        assert not fake._thread.is_alive()
        with pytest.raises(requests.ConnectionError):
            session.post(fake.interactions_url, params={"api_key": KEY}, json={"data": []})
    fake.close()  # idempotent
    with pytest.raises(RuntimeError):
        fake.__enter__()


def test_close_does_not_wait_out_a_delay():
    """close() returns promptly even while an answer is being delayed."""
    fake = FakeMiso(api_key=KEY)
    fake.set_delay(30)
    errors = []

    def send():
        try:
            post(fake, {"data": [PAGE_VIEW]})
        except requests.ConnectionError as exc:
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.2)
    started = time.monotonic()
    fake.close()
    assert time.monotonic() - started < 5
    sender.join(10)
    assert len(errors) == 1
    assert fake.records == []


def test_missing_jsonschema_gives_install_hint(monkeypatch):
    """Without jsonschema, validation raises an ImportError telling how to install it."""
    monkeypatch.setattr(FakeMiso, "_validators", None)
    real_import = builtins.__import__

    def no_jsonschema(name, *args, **kwargs):
        if name.split(".")[0] == "jsonschema":
            raise ImportError("No module named 'jsonschema'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_jsonschema)
    with pytest.raises(ImportError, match=r"pip install 'miso-adapter\[test\]'"):
        FakeMiso()
    with FakeMiso(validate=False) as fake:
        assert post(fake, {"data": [{"type": "nope"}]}).status_code == 200


def test_command_line_serves_until_terminated():
    """python -m adapter.testing prints its URL and serves requests until terminated."""
    process = subprocess.Popen(
        [sys.executable, "-m", "adapter.testing", "--port", "0", "--api-key", "cli-key"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = process.stdout.readline()
        assert first.startswith("FakeMiso listening on http://127.0.0.1:")
        url = first.split()[3]
        response = requests.post(
            f"{url}/v1/interactions", params={"api_key": "cli-key"}, json={"data": [PAGE_VIEW]}
        )
        assert response.status_code == 200
        assert "cli-key" not in first
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert "POST /v1/interactions -> 200 (1 records)" in out
    assert f"  {orjson.dumps(PAGE_VIEW).decode()}" in out.splitlines()
    assert "1 records accepted" in out


# ------------------------------------------------------------------ the harness


def test_a_missing_redis_skips_a_test_unless_redis_is_required(monkeypatch):
    """No Redis at the URL: the test skips, naming it; with MISO_ADAPTER_REQUIRE_REDIS=1
    (as CI sets) the same reason fails it."""
    url = f"redis://127.0.0.1:{closed_port()}/0"
    monkeypatch.delenv(REQUIRE_REDIS, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"no Redis at {url}"):
        require_redis(url)
    monkeypatch.setenv(REQUIRE_REDIS, "1")
    with pytest.raises(pytest.fail.Exception, match=f"no Redis at {url}"):
        require_redis(url)
