"""The HTTP routes, through Flask's test client: shapes, auth, limits, status codes.

End-to-end behaviour over real HTTP (gunicorn, the fake Miso, Segment's own client)
is in test_service.py; here each rule of README.md § Routes is pinned down quickly.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import io
from typing import ClassVar

import orjson
import pytest

from adapter import create_app
from adapter.forwarder import MISO_STATUS
from adapter.miso import key_id
from adapter.store import StoreError

SECRET = "s3cret-shared"

VIEW = {
    "type": "track",
    "event": "Product Viewed",
    "messageId": "m-1",
    "userId": "u1",
    "timestamp": "2024-05-01T10:00:00.000Z",
    "properties": {"product_id": "p1", "price": 9.5},
}
VIEW_RECORD = {
    "type": "product_detail_page_view",
    "user_id": "u1",
    "timestamp": "2024-05-01T10:00:00.000Z",
    "product_ids": ["p1"],
}


@pytest.fixture
def app(tmp_path):
    """A fresh app per test, on its own store."""
    return create_app(
        {
            "TESTING": True,
            "ADAPTER_STORE": f"sqlite:///{tmp_path}/web.db",
            "MISO_API_KEY": "k",
        }
    )


@pytest.fixture
def client(app):
    return app.test_client()


def spooled(app) -> list[dict]:
    """Every record now durable in the spool."""
    store = app.extensions["miso-adapter.store"]
    return [orjson.loads(c.body) for c in store.claim("record", 10_000, 1 << 30, 0, "test")]


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def post(client, path, body, **headers):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers.setdefault("Content-Type", "application/json")
    return client.post(path, data=data, headers=headers)


class TestSegmentRoute:
    def test_single_message(self, app, client):
        """A classic webhook message is translated, stored, and counted."""
        response = post(client, "/segment", VIEW)
        assert response.status_code == 200
        assert response.json == {
            "received": 1, "accepted": 1, "duplicates": 0, "skipped": {}, "links": 0,
            "deletions": 0,
            "profiles": 0,
        }  # fmt: skip
        assert spooled(app) == [VIEW_RECORD]

    def test_bare_array_and_batch(self, app, client):
        """A Webhooks (Actions) array and a {"batch": [...]} body are both unwrapped."""
        second = {**VIEW, "messageId": "m-2", "userId": "u2"}
        assert post(client, "/segment", [VIEW, second]).json["accepted"] == 2
        third = {**VIEW, "messageId": "m-3", "userId": "u3"}
        assert post(client, "/segment", {"batch": [third]}).json["accepted"] == 1
        assert [r["user_id"] for r in spooled(app)] == ["u1", "u2", "u3"]

    def test_unmapped_event_is_skipped_not_an_error(self, client):
        """An event no rule covers answers 200 and is counted as skipped with the reason."""
        response = post(client, "/segment", {**VIEW, "event": "Coupon Applied"})
        assert response.status_code == 200
        assert response.json["skipped"] == {"no rule for event 'Coupon Applied'": 1}
        assert response.json["accepted"] == 0

    def test_same_message_id_is_a_duplicate(self, app, client):
        """A message re-sent with the same messageId is stored once."""
        assert post(client, "/segment", VIEW).json["accepted"] == 1
        again = post(client, "/segment", [VIEW]).json
        assert (again["accepted"], again["duplicates"]) == (0, 1)
        assert len(spooled(app)) == 1

    def test_non_object_items_are_skipped_with_reason(self, app, client):
        """A bad item in an array does not cost the good ones."""
        response = post(client, "/segment", [VIEW, 7])
        assert response.status_code == 200
        assert response.json["accepted"] == 1
        assert response.json["skipped"] == {
            "not a Segment message: expected a Segment message (JSON object), got number": 1
        }

    def test_identify_and_delete_counts(self, app, client):
        """identify teaches a link; delete queues a deletion for the forwarder."""
        body = [
            {"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "i1"},
            {"type": "delete", "userId": "u1", "messageId": "d1"},
        ]
        result = post(client, "/segment", body).json
        assert (result["links"], result["deletions"], result["accepted"]) == (1, 1, 0)
        store = app.extensions["miso-adapter.store"]
        [item] = store.claim("delete", 10, 1 << 20, 30, "t")
        assert orjson.loads(item.body) == {"user_ids": ["u1"]}

    @pytest.mark.parametrize(
        ("body", "message"),
        [
            (b'{"type": "track",', "malformed JSON: "),
            (b"   ", "empty body: expected JSON"),
            (b'"just a string"', "expected a Segment message (JSON object) or an array"),
            (b'{"batch": 5}', "'batch' must be an array of messages, got number"),
        ],
        ids=["truncated", "empty", "string", "batch-not-list"],
    )
    def test_bad_bodies_are_400_saying_what(self, client, body, message):
        """Malformed or wrong-shaped bodies are 400 with a message saying what is wrong."""
        response = post(client, "/segment", body)
        assert response.status_code == 400
        assert response.json["error"].startswith(message)
        assert response.json["status"] == 400

    def test_malformed_json_says_where(self, client):
        """The 400 for broken JSON names the line and column."""
        response = post(client, "/segment", b'{"type": "track", "event": }')
        assert "line 1 column 28" in response.json["error"]

    def test_unsupported_content_type_is_415(self, client):
        """A form post is refused with 415 naming the accepted types."""
        response = client.post(
            "/segment", data="a=1", content_type="application/x-www-form-urlencoded"
        )
        assert response.status_code == 415
        assert "application/json" in response.json["error"]

    def test_oversize_is_413(self, app, client):
        """A body over the limit is refused before it is read."""
        app.config["SEGMENT_MAX_BODY"] = 1000
        response = post(client, "/segment", b"[" + b" " * 2000 + b"]")
        assert response.status_code == 413

    def test_gzip_body_and_bomb(self, app, client):
        """gzip bodies are accepted; one inflating past the limit is 413, not memory."""
        response = post(client, "/segment", gzip.compress(orjson.dumps(VIEW)),
                        **{"Content-Encoding": "gzip"})  # fmt: skip
        assert response.json["accepted"] == 1
        app.config["SEGMENT_MAX_BODY"] = 10_000
        bomb = gzip.compress(b"[" + b" " * 5_000_000 + b"]")
        response = post(client, "/segment", bomb, **{"Content-Encoding": "gzip"})
        assert response.status_code == 413

    def test_store_failure_is_503(self, app, client):
        """When the store cannot persist, Segment is told to retry (503), nothing is claimed."""
        store = app.extensions["miso-adapter.store"]

        def broken(*args, **kwargs):
            raise StoreError("disk full")

        store.accept = broken
        response = post(client, "/segment", VIEW)
        assert response.status_code == 503
        assert response.json["error"] == "cannot store the events right now; retry later"


class TestSignature:
    @pytest.fixture
    def signed(self, app):
        app.config["SEGMENT_SHARED_SECRET"] = SECRET
        return app.test_client()

    def test_signature_over_raw_body(self, app, signed):
        """A classic webhook signed over its raw bytes is accepted."""
        raw = orjson.dumps(VIEW)
        response = post(signed, "/segment", raw, **{"X-Signature": sign(raw)})
        assert response.status_code == 200

    def test_batch_signed_over_first_element(self, app, signed):
        """A Webhooks (Actions) array signed over JSON.stringify(body[0]) is accepted."""
        first = {"b": 1.0, "a": "é", **VIEW}  # key order and 1.0 must be kept as JS writes them
        body = (
            b"[ " + orjson.dumps(first) + b" , " + orjson.dumps({**VIEW, "messageId": "2"}) + b"]"
        )
        stringified = orjson.dumps(first).replace(b'"b":1.0', b'"b":1')
        response = post(signed, "/segment", body, **{"X-Signature": sign(stringified)})
        assert response.status_code == 200
        assert response.json["accepted"] == 2

    def test_batch_signed_over_whole_body(self, signed):
        """An array signed over the whole raw body (a possible future Segment) is accepted."""
        raw = orjson.dumps([VIEW])
        assert post(signed, "/segment", raw, **{"X-Signature": sign(raw)}).status_code == 200

    @pytest.mark.parametrize(
        "header", [None, "", "deadbeef", sign(b"something else"), sign(orjson.dumps(VIEW), "x")]
    )
    def test_bad_or_missing_signature_is_401(self, app, signed, header):
        """Wrong, foreign-secret or missing signatures are refused; nothing is stored."""
        headers = {"X-Signature": header} if header is not None else {}
        response = post(signed, "/segment", VIEW, **headers)
        assert response.status_code == 401
        assert "X-Signature" in response.json["error"]
        assert spooled(app) == []


class TestTrackingApi:
    @pytest.fixture
    def keyed(self, app):
        app.config["SEGMENT_WRITE_KEYS"] = frozenset({"wk-1", "wk-2"})
        return app.test_client()

    @staticmethod
    def basic(key: str) -> str:
        return "Basic " + base64.b64encode(f"{key}:".encode()).decode()

    def test_track_with_basic_auth(self, app, keyed):
        """/v1/track with the write key as Basic user answers like Segment."""
        body = {k: v for k, v in VIEW.items() if k != "type"}
        response = post(keyed, "/v1/track", body, Authorization=self.basic("wk-2"))
        assert (response.status_code, response.json) == (200, {"success": True})
        assert spooled(app) == [VIEW_RECORD]

    def test_write_key_in_body(self, keyed):
        """A writeKey in the body (analytics.js) authenticates too."""
        response = post(
            keyed, "/v1/t", {**VIEW, "writeKey": "wk-1"}, **{"Content-Type": "text/plain"}
        )
        assert response.status_code == 200

    @pytest.mark.parametrize("auth", [None, "wrong", "Basic !!!"])
    def test_wrong_or_missing_write_key_is_401(self, keyed, auth):
        """Unknown or missing write keys are refused."""
        headers = {}
        if auth == "wrong":
            headers["Authorization"] = self.basic("nope")
        elif auth:
            headers["Authorization"] = auth
        response = post(keyed, "/v1/track", VIEW, **headers)
        assert response.status_code == 401

    def test_batch_merges_context(self, app, keyed):
        """/v1/batch merges top-level context into each item, as Segment does."""
        body = {"batch": [VIEW], "context": {"locale": "fr-FR"}, "writeKey": "wk-1"}
        assert post(keyed, "/v1/batch", body).json == {"success": True}
        assert spooled(app) == [{**VIEW_RECORD, "context": {"locale": "fr-FR"}}]

    def test_browser_batch_path(self, app, keyed):
        """analytics.js batching posts {"batch": [...]} as text/plain to /v1/b."""
        body = {"batch": [VIEW], "writeKey": "wk-1", "sentAt": "2024-05-01T10:00:01.000Z"}
        response = post(keyed, "/v1/b", body, **{"Content-Type": "text/plain"})
        assert (response.status_code, response.json) == (200, {"success": True})
        assert spooled(app) == [VIEW_RECORD]

    def test_message_over_32kb_is_413(self, client):
        """A single Tracking API call over 32 KB is refused like Segment refuses it."""
        big = {**VIEW, "properties": {"blob": "x" * 40_000}}
        assert post(client, "/v1/track", big).status_code == 413

    def test_unknown_call_is_404(self, client):
        """Only Segment's calls exist under /v1/."""
        assert post(client, "/v1/purchase", VIEW).status_code == 404

    def test_cors_for_browsers(self, client):
        """analytics.js in a browser gets CORS headers and a preflight answer."""
        preflight = client.options("/v1/track")
        assert preflight.status_code == 200
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
        response = post(client, "/v1/track", VIEW)
        assert response.headers["Access-Control-Allow-Origin"] == "*"


class TestHealth:
    def test_healthz(self, client):
        """/healthz answers while the process lives."""
        assert client.get("/healthz").json == {"status": "ok"}

    def test_ready(self, client):
        """Store writable, mappings loaded, key set and not refused: ready."""
        response = client.get("/readyz")
        assert response.status_code == 200
        assert response.json == {
            "ready": True,
            "checks": {"store": "ok", "mappings": "mixpanel, segment", "miso": "ok"},
        }

    def test_not_ready_without_key(self, app, client):
        """Without MISO_API_KEY the service accepts events but says it is not ready."""
        app.config["MISO_API_KEY"] = None
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json["checks"]["miso"].startswith("MISO_API_KEY is not set")

    def test_not_ready_when_miso_refused_the_key(self, app, client):
        """The forwarder's report of a refused key shows in /readyz, without the key."""
        app.extensions["miso-adapter.store"].set_status(
            MISO_STATUS,
            {"ready": False, "reason": "Miso refused the API key (401): invalid api key."},
        )
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json["checks"]["miso"] == "Miso refused the API key (401): invalid api key."
        assert "k" not in response.json["checks"]["miso"].split()

    def test_refusal_of_another_key_does_not_block(self, app, client):
        """After a restart with a new key, an old key's refusal no longer counts."""
        app.extensions["miso-adapter.store"].set_status(
            MISO_STATUS, {"ready": False, "reason": "Miso refused the API key (401).",
                          "key_id": key_id("the-old-key")},
        )  # fmt: skip
        assert client.get("/readyz").status_code == 200
        app.config["MISO_API_KEY"] = "the-old-key"
        assert client.get("/readyz").status_code == 503


def test_unexpected_errors_hide_details(app, client, caplog):
    """A bug answers a plain 500 JSON without traceback; the log has the details."""

    def boom():
        raise RuntimeError("secret detail")

    app.view_functions["adapter.healthz"] = boom
    response = client.get("/healthz")
    assert response.status_code == 500
    assert response.json == {"error": "internal error", "status": 500}
    assert "secret detail" in caplog.text


def test_start_up_warnings_when_open(tmp_path, caplog):
    """Without secrets configured, the app warns loudly at start."""
    create_app({"ADAPTER_STORE": f"sqlite:///{tmp_path}/x.db"})
    text = caplog.text
    assert "SEGMENT_SHARED_SECRET is not set" in text
    assert "SEGMENT_WRITE_KEYS is not set" in text
    assert "MISO_API_KEY is not set" in text


def test_request_stream_is_bounded(app):
    """The body is read with a bound even when Content-Length lies or is absent."""
    app.config["SEGMENT_MAX_BODY"] = 100
    environ_body = io.BytesIO(b"[" + b" " * 500 + b"]")
    with app.test_request_context(
        "/segment", method="POST", input_stream=environ_body, content_type="application/json"
    ):
        from adapter.http import ApiError
        from adapter.web import _read_body

        with pytest.raises(ApiError) as caught:
            _read_body(100, ("application/json",))
        assert caught.value.code == 413


def test_tracking_route_names_the_call(app, client):
    """/v1/page is a page call whatever the body's own `type` says."""
    body = {"type": "track", "userId": "u1", "properties": {"path": "/", "url": "https://s.io/"}}
    assert post(client, "/v1/page", body).status_code == 200
    assert spooled(app) == [
        {"type": "home_page_view", "user_id": "u1", "context": {"page": {"url": "https://s.io/"}}}
    ]


class TestMixpanelRoute:
    ROWS: ClassVar[list[dict]] = [
        {"event": "Product Viewed", "properties": {"time": 1718035220, "distinct_id": "u1",
                                                   "$insert_id": "i1", "product_id": "P1"}},
        {"event": "$mp_click", "properties": {"time": 1718035221, "distinct_id": "u1"}},
        {"event": "Add To Cart", "properties": {"time": 1718035222, "distinct_id": "u1",
                                                "$insert_id": "i2", "sku": "S2", "quantity": 2}},
    ]  # fmt: skip

    @staticmethod
    def jsonl(rows) -> bytes:
        return b"".join(orjson.dumps(r) + b"\n" for r in rows)

    def test_jsonl_export_is_stored_with_counts(self, app, client):
        """A JSON Lines export is translated, stored, and answered with counts."""
        response = post(client, "/mixpanel", self.jsonl(self.ROWS),
                        **{"Content-Type": "application/x-ndjson"})  # fmt: skip
        assert response.status_code == 200
        assert response.json == {
            "received": 3, "accepted": 2, "duplicates": 0,
            "skipped": {"Mixpanel autocapture event": 1}, "links": 0, "deletions": 0,
            "profiles": 0, "malformed": 0, "errors": [],
            "types": {"product_detail_page_view": 1, "add_to_cart": 1},
        }  # fmt: skip
        assert spooled(app) == [
            {"type": "product_detail_page_view", "user_id": "u1",
             "timestamp": "2024-06-10T16:00:20.000Z", "product_ids": ["P1"]},
            {"type": "add_to_cart", "user_id": "u1", "timestamp": "2024-06-10T16:00:22.000Z",
             "product_ids": ["S2"], "quantities": [2]},
        ]  # fmt: skip

    def test_array_gzip_and_redelivery(self, app, client):
        """A gzipped JSON array works; posting the same export again stores nothing new."""
        body = gzip.compress(orjson.dumps(self.ROWS))
        first = post(client, "/mixpanel", body, **{"Content-Encoding": "gzip"})
        again = post(client, "/mixpanel", body, **{"Content-Encoding": "gzip"})
        assert (first.json["accepted"], again.json["accepted"], again.json["duplicates"]) == (
            2,
            0,
            2,
        )
        assert len(spooled(app)) == 2

    def test_malformed_lines_are_counted(self, client):
        """A broken line is reported with its line number; the others are stored."""
        body = self.jsonl(self.ROWS[:1]) + b"{broken\n" + self.jsonl(self.ROWS[2:])
        response = post(client, "/mixpanel", body, **{"Content-Type": "text/plain"})
        assert response.status_code == 200
        assert (response.json["accepted"], response.json["malformed"]) == (2, 1)
        assert response.json["errors"][0].startswith("body:2: invalid JSON")

    def test_nothing_readable_is_400(self, client):
        """A body with no readable row is a 400 saying why."""
        response = post(client, "/mixpanel", b"not json at all\n", **{"Content-Type": "text/plain"})
        assert response.status_code == 400
        assert response.json["error"].startswith("no readable Mixpanel rows: body:1: invalid JSON")

    def test_rows_that_are_no_events_at_all_are_400(self, client):
        """Objects without an event name are refused when no row is an event; else skipped."""
        response = post(client, "/mixpanel", b"{}\n" + self.jsonl([{"properties": {}}]))
        assert response.status_code == 400
        assert "rows need an event name ('event' or 'event_name')" in response.json["error"]
        mixed = post(client, "/mixpanel", self.jsonl(self.ROWS[:1]) + b"{}\n")
        assert mixed.status_code == 200
        assert mixed.json["skipped"]["not a Mixpanel event: no event name"] == 1

    def test_project_timezone_query(self, app, client):
        """?project_timezone= converts a pre-2023 project's local times to UTC."""
        url = "/mixpanel?project_timezone=America/Los_Angeles"
        assert post(client, url, self.jsonl(self.ROWS[:1])).status_code == 200
        assert spooled(app)[0]["timestamp"] == "2024-06-10T23:00:20.000Z"  # PDT is UTC-7
        bad = post(client, "/mixpanel?project_timezone=Nowhere/Land", self.jsonl(self.ROWS))
        assert bad.status_code == 400 and "bad query parameter" in bad.json["error"]

    def test_token_required_when_set(self, app):
        """With ADAPTER_TOKEN set, /mixpanel needs the bearer token."""
        app.config["ADAPTER_TOKEN"] = "op-token"
        client = app.test_client()
        body = self.jsonl(self.ROWS)
        assert post(client, "/mixpanel", body).status_code == 401
        assert post(client, "/mixpanel", body, Authorization="Bearer nope").status_code == 401
        ok = post(client, "/mixpanel", body, Authorization="Bearer op-token")
        assert ok.status_code == 200
        assert "op-token" not in post(client, "/mixpanel", body).get_data(as_text=True)

    def test_limits(self, app, client):
        """Over the limit is 413 (declared, or once decompressed); odd types are 415."""
        app.config["MIXPANEL_MAX_BODY"] = 2000
        assert post(client, "/mixpanel", b" " * 3000).status_code == 413
        bomb = gzip.compress(self.jsonl(self.ROWS * 100))
        assert post(client, "/mixpanel", bomb, **{"Content-Encoding": "gzip"}).status_code == 413
        form = client.post(
            "/mixpanel", data="a=1", content_type="application/x-www-form-urlencoded"
        )
        assert form.status_code == 415
