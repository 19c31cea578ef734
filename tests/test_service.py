"""End to end: `miso-adapter serve` (gunicorn + forwarder) over real HTTP, the fake Miso.

These tests start the service exactly as a user does, send what Segment sends (and
what Segment's own Python client sends), and check what the fake Miso received.
"""

from __future__ import annotations

import base64
import threading
import time

import orjson
import pytest
import requests

from adapter.testing import FakeMiso
from adapter.testing.service import (
    MISO_KEY,
    WRITE_KEY,
    Service,
    message,
    product_ids,
    signature,
)


@pytest.fixture(scope="module")
def miso():
    with FakeMiso(api_key=MISO_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def service(tmp_path_factory, miso):
    """One running service shared by the tests that do not restart it."""
    running = Service(tmp_path_factory.mktemp("service"), miso).start()
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _fresh_miso(miso):
    miso.reset()
    miso.set_valid_keys({MISO_KEY})


class TestDelivery:
    def test_classic_single_message(self, service, miso):
        """A signed classic webhook message reaches Miso as the right record."""
        msg = message(product_id="classic-1")
        response = service.post("/segment", msg)
        assert response.status_code == 200 and response.json()["accepted"] == 1
        [record] = miso.wait_for(1)
        assert record == {
            "type": "product_detail_page_view",
            "anonymous_id": "anon-1",
            "timestamp": "2024-05-01T10:00:00.000Z",
            "context": {"truncated_ip": "203.0.113.0"},
            "product_ids": ["classic-1"],
        }

    def test_actions_array_signed_over_first_element(self, service, miso):
        """A Webhooks (Actions) bare array signed over JSON.stringify(body[0]) is delivered."""
        batch = [message(product_id=f"arr-{n}") for n in range(3)]
        batch[0]["properties"]["price"] = 12.0  # JS writes 12: the signature must agree
        raw = orjson.dumps(batch)
        first = orjson.dumps(batch[0]).replace(b"12.0", b"12")
        response = service.post("/segment", None, raw=raw, **{"X-Signature": signature(first)})
        assert response.status_code == 200, response.text
        miso.wait_for(3)
        assert sorted(product_ids(miso)) == ["arr-0", "arr-1", "arr-2"]

    def test_batch_envelope(self, service, miso):
        """A {"batch": [...]} body is delivered too."""
        body = {"batch": [message(product_id="b-1"), message(product_id="b-2")]}
        assert service.post("/segment", body).status_code == 200
        miso.wait_for(2)
        assert sorted(product_ids(miso)) == ["b-1", "b-2"]

    def test_segment_python_client_delivers(self, service, miso):
        """Segment's own analytics-python, pointed at the adapter, gets its events to Miso."""
        from segment.analytics.client import Client

        errors = []
        client = Client(
            write_key=WRITE_KEY, host=service.url, sync_mode=True,
            on_error=lambda e, batch: errors.append(e), max_retries=1,
        )  # fmt: skip
        order = {"revenue": 25.5, "products": [{"product_id": "sdk-1", "quantity": 2}]}
        client.track(
            user_id="u-42", event="Order Completed", anonymous_id="anon-42", properties=order
        )
        client.page(
            anonymous_id="anon-42", name="Home", properties={"path": "/", "url": "https://s.io/"}
        )
        client.identify(user_id="u-42", anonymous_id="anon-42", traits={"email": "x@y.z"})
        client.flush()
        assert errors == []
        records = miso.wait_for(2)
        by_type = {r["type"]: r for r in records}
        checkout = by_type["checkout"]
        assert checkout["product_ids"] == ["sdk-1"] and checkout["quantities"] == [2]
        assert checkout["revenue"] == 25.5 and checkout["user_id"] == "u-42"
        assert checkout["anonymous_id"] == "anon-42"
        assert by_type["home_page_view"]["context"]["page"]["url"] == "https://s.io/"

    def test_same_message_id_reaches_miso_once(self, service, miso):
        """Segment retrying a message (same messageId) does not duplicate it in Miso."""
        msg = message(product_id="once")
        for _ in range(3):
            assert service.post("/segment", msg).status_code == 200
        service.post("/segment", message(product_id="marker"))
        miso.wait_for(2)
        time.sleep(1.5)  # a duplicate would be sent within the forwarder's 1 s flush
        assert sorted(product_ids(miso)) == ["marker", "once"]


class TestRefusals:
    def test_bad_signature_is_401(self, service):
        """A webhook with a wrong signature is refused."""
        response = service.post("/segment", message(), **{"X-Signature": "0" * 40})
        assert response.status_code == 401
        assert response.json() == {
            "error": "missing or invalid X-Signature for the configured shared secret",
            "status": 401,
        }

    def test_wrong_write_key_is_401(self, service):
        """The Tracking API refuses an unknown write key."""
        auth = "Basic " + base64.b64encode(b"not-the-key:").decode()
        response = service.post("/v1/track", message(), Authorization=auth)
        assert response.status_code == 401

    def test_malformed_json_is_400_with_where(self, service):
        """Broken JSON is a 400 naming line and column; the service keeps running."""
        raw = b'{"type": "track", "event": "X",,}'
        response = service.post("/segment", None, raw=raw)
        assert response.status_code == 400
        assert "malformed JSON" in response.json()["error"]
        assert "line 1 column 32" in response.json()["error"]
        assert requests.get(f"{service.url}/healthz", timeout=5).status_code == 200

    def test_oversize_is_413(self, service):
        """A body over 4 MB is refused with 413."""
        raw = b"[" + b" " * (4 * 1024 * 1024 + 10) + b"]"
        response = service.post("/segment", None, raw=raw)
        assert response.status_code == 413

    def test_unmapped_event_is_200_and_counted(self, service, miso):
        """An event no rule covers is accepted as skipped, and nothing is sent."""
        response = service.post("/segment", message("Coupon Applied"))
        assert response.status_code == 200
        assert response.json()["skipped"] == {"no rule for event 'Coupon Applied'": 1}


class TestMisoFailures:
    def test_500s_then_429_then_ok(self, service, miso):
        """Miso answering 500 three times, then 429 Retry-After 1, then OK: all delivered."""
        for _ in range(3):
            miso.fail_next(500)
        miso.fail_next(429, headers={"Retry-After": "1"})
        msgs = [message(product_id=f"flaky-{n}") for n in range(4)]
        assert service.post("/segment", msgs).status_code == 200
        miso.wait_for(4, timeout=20)
        assert sorted(product_ids(miso)) == [f"flaky-{n}" for n in range(4)]
        sends = [r.status for r in miso.requests if r.path == "/v1/interactions"]
        assert sends[:5] == [500, 500, 500, 429, 200]

    def test_422_dead_letters_one_and_retry_resends(self, service, miso):
        """One record refused: dead-lettered with Miso's message; the others delivered."""
        miso.reject_records(lambda r: r.get("product_ids") == ["refused"], field="product_ids",
                            message="This product is not in the catalog.")  # fmt: skip
        msgs = [message(product_id=p) for p in ("ok-1", "refused", "ok-2")]
        assert service.post("/segment", msgs).status_code == 200
        miso.wait_for(2, timeout=20)
        assert sorted(product_ids(miso)) == ["ok-1", "ok-2"]
        deadline = time.monotonic() + 10
        while True:
            listed = service.cli("dead-letters", "list", "--json")
            lines = [orjson.loads(x) for x in listed.stdout.splitlines()]
            if lines or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        [dead] = lines
        assert dead["reason"] == (
            "Miso refused it (422): product_ids is invalid. This product is not in the catalog."
        )
        assert dead["body"]["product_ids"] == ["refused"]
        assert MISO_KEY not in listed.stdout
        miso.reject_records(None)
        retried = service.cli("dead-letters", "retry", "--all")
        assert retried.returncode == 0 and "requeued 1" in retried.stdout
        miso.wait_for(3, timeout=20)
        assert "refused" in product_ids(miso)
        assert service.cli("dead-letters", "list").stdout == ""


def test_refused_key_reports_not_ready_and_resumes_with_good_key(tmp_path, miso):
    """Miso answering 401: /readyz says why, nothing is lost; a good key delivers it all."""
    service = Service(tmp_path, miso, miso_key="revoked-key").start()
    try:
        msgs = [message(product_id=f"held-{n}") for n in range(5)]
        assert service.post("/segment", msgs).status_code == 200
        deadline = time.monotonic() + 20
        while (ready := requests.get(f"{service.url}/readyz", timeout=5)).status_code == 200:
            assert time.monotonic() < deadline, "never reported not-ready"
            time.sleep(0.2)
        assert ready.status_code == 503
        assert ready.json()["checks"]["miso"] == "Miso refused the API key (401): invalid api key."
        assert "revoked-key" not in ready.text
        assert miso.records == []
    finally:
        service.stop()
    assert "revoked-key" not in service.tail()
    service.env["MISO_API_KEY"] = MISO_KEY
    service.start()
    try:
        miso.wait_for(5, timeout=20)
        assert sorted(product_ids(miso)) == [f"held-{n}" for n in range(5)]
        assert requests.get(f"{service.url}/readyz", timeout=5).status_code == 200
    finally:
        service.stop()


def test_kill_9_loses_nothing_that_got_a_200(tmp_path, miso):
    """Kill -9 the whole service while a client streams: every 200'd event reaches Miso."""
    service = Service(tmp_path, miso)
    # What the killed forwarder had leased comes back when its lease ends: keep it short.
    service.env["ADAPTER_LEASE_SECONDS"] = "3"
    service.start()
    acknowledged: list[str] = []
    stop = threading.Event()

    def stream() -> None:
        session = requests.Session()
        n = 0
        while not stop.is_set():
            n += 1
            msg = message(product_id=f"k-{n}")
            raw = orjson.dumps(msg)
            try:
                response = session.post(
                    f"{service.url}/segment", data=raw, timeout=5,
                    headers={"Content-Type": "application/json", "X-Signature": signature(raw)},
                )  # fmt: skip
            except requests.RequestException:
                time.sleep(0.05)
                continue
            if response.status_code == 200:
                acknowledged.append(f"k-{n}")

    client = threading.Thread(target=stream)
    client.start()
    try:
        time.sleep(2.0)
        service.kill9()
        time.sleep(0.5)
    finally:
        stop.set()
        client.join()
    assert len(acknowledged) > 20, service.tail()
    service.start()
    try:
        deadline = time.monotonic() + 30
        while not set(acknowledged) <= set(product_ids(miso)):
            missing = set(acknowledged) - set(product_ids(miso))
            assert time.monotonic() < deadline, f"{len(missing)} acknowledged events lost"
            time.sleep(0.2)
    finally:
        service.stop()


def test_gunicorn_workers_get_a_short_switch_interval():
    """serve loads adapter.gunicorn_conf, whose worker hook shortens the GIL switch interval."""
    import sys as _sys

    from adapter import gunicorn_conf
    from adapter.serve import gunicorn_command

    command = gunicorn_command("127.0.0.1:0", 2, 4)
    assert command[command.index("--config") + 1] == "python:adapter.gunicorn_conf"
    before = _sys.getswitchinterval()
    try:
        gunicorn_conf.post_worker_init(object())
        assert _sys.getswitchinterval() == pytest.approx(0.001)
    finally:
        _sys.setswitchinterval(before)
