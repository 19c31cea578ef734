"""End to end: identity reconciliation (README.md § Identity) through `serve` and `replay`.

The service runs as a user starts it (``miso-adapter serve`` in a subprocess, see
adapter/testing/service.py); the Mixpanel export goes through the real ``replay mixpanel``
command. Links are learned on intake and applied by the forwarder at send time, so each
test checks the records the fake Miso actually received over HTTP.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from adapter.store import open_store
from adapter.testing import FakeMiso, RequestLog
from adapter.testing.service import MISO_KEY, Service, message

#: Every record the fake Miso accepted in this module, whatever the test (none may ever be
#: sent without an id).
SENT: list[dict] = []


def _collect(entry: RequestLog) -> None:
    if entry.method == "POST" and entry.path == "/v1/interactions" and entry.status == 200:
        SENT.extend(orjson.loads(entry.body)["data"])


@pytest.fixture(scope="module")
def miso():
    with FakeMiso(api_key=MISO_KEY, on_request=_collect) as fake:
        yield fake


@pytest.fixture(scope="module")
def service(tmp_path_factory, miso):
    """One running service for the tests that do not restart it (ids are unique per test)."""
    running = Service(tmp_path_factory.mktemp("identity"), miso).start()
    yield running
    running.stop()


@pytest.fixture(autouse=True)
def _fresh_miso(miso):
    miso.reset()
    miso.set_valid_keys({MISO_KEY})


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def identify(user_id: str, anonymous_id: str) -> dict:
    """An analytics.js identify call as Segment's webhook delivers it."""
    return {
        "type": "identify",
        "messageId": f"ajs-next-{uuid.uuid4().hex}",
        "userId": user_id,
        "anonymousId": anonymous_id,
        "traits": {"email": f"{user_id}@example.com"},
        "timestamp": "2024-05-01T09:59:00.000Z",
        "context": {"library": {"name": "analytics.js"}},
    }


def server_track(user_id: str, product_id: str) -> dict:
    """A server-side track (analytics-python): userId only, no anonymousId."""
    msg = message(userId=user_id, product_id=product_id)
    del msg["anonymousId"]
    msg["context"] = {"library": {"name": "analytics-python"}}
    return msg


def spool(service: Service) -> int:
    """Items the service's store still holds for Miso (records, uploads, task checks)."""
    store = open_store(service.env["ADAPTER_STORE"], readonly=True)
    try:
        return store.stats()["spool"]
    finally:
        store.close()


def wait_until(condition: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def sent_records(miso: FakeMiso, status: int) -> list[dict]:
    """Records of the POSTs the fake Miso answered with ``status`` (a fault or a 200)."""
    return [
        record
        for entry in miso.requests
        if entry.method == "POST" and entry.path == "/v1/interactions" and entry.status == status
        for record in orjson.loads(entry.body)["data"]
    ]


def with_product(records: list[dict], product_id: str) -> list[dict]:
    return [r for r in records if r.get("product_ids") == [product_id]]


def accepted(service: Service, body, **counts) -> dict:
    """POST a signed webhook body; assert a 200 with the given counts; return the answer."""
    response = service.post("/segment", body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert {k: answer[k] for k in counts} == counts, answer
    return answer


class TestSegmentLinks:
    def test_identify_fills_both_sides(self, service, miso):
        """After identify(U, A), an anonymous-only and a user-only track both carry U and A."""
        user, anon = uid("u"), uid("anon")
        accepted(service, identify(user, anon), links=1, accepted=0)
        accepted(service, message(anonymousId=anon, product_id="id-anon"), accepted=1)
        [browser] = miso.wait_for(1)
        assert browser["type"] == "product_detail_page_view"
        assert (browser["user_id"], browser["anonymous_id"]) == (user, anon)
        accepted(service, server_track(user, "id-server"), accepted=1)
        miso.wait_for(2)
        [backend] = with_product(miso.records, "id-server")
        assert (backend["user_id"], backend["anonymous_id"]) == (user, anon)

    def test_alias_links_previous_id_to_user(self, service, miso):
        """alias(previousId P -> userId U2): a later track with only anonymousId P carries U2."""
        previous, user = uid("prev"), uid("u2")
        alias = {
            "type": "alias",
            "messageId": f"ajs-next-{uuid.uuid4().hex}",
            "previousId": previous,
            "userId": user,
            "timestamp": "2024-05-01T09:59:30.000Z",
        }
        accepted(service, alias, links=1, accepted=0)
        accepted(service, message(anonymousId=previous, product_id="alias-1"), accepted=1)
        [record] = miso.wait_for(1)
        assert (record["user_id"], record["anonymous_id"]) == (user, previous)

    def test_record_queued_before_the_link_goes_out_with_both(self, service, miso):
        """An anonymous-only record held back by 503s when identify arrives goes with both ids."""
        user, anon = uid("u"), uid("anon")
        miso.fail_next(503, times=100_000)
        accepted(service, message(anonymousId=anon, product_id="early-1"), accepted=1)
        # Proof it was queued and tried before any link: Miso refused it without a user_id.
        wait_until(lambda: with_product(sent_records(miso, 503), "early-1"), "a refused attempt")
        assert "user_id" not in with_product(sent_records(miso, 503), "early-1")[0]
        accepted(service, identify(user, anon), links=1)
        miso.reset()  # Miso recovers
        [record] = miso.wait_for(1, timeout=15)
        assert record["product_ids"] == ["early-1"]
        assert (record["user_id"], record["anonymous_id"]) == (user, anon)

    def test_delete_drops_queued_records_and_forwards_the_deletion(self, service, miso):
        """A delete for U while U's records wait: Miso gets the deletion and none of U's records."""
        user, anon = uid("gone"), uid("gone-anon")
        other, other_anon = uid("stays"), uid("stays-anon")
        accepted(service, identify(user, anon), links=1)
        miso.fail_next(503, times=100_000)
        queued = [
            server_track(user, "del-user"),  # U only
            message(anonymousId=anon, product_id="del-anon"),  # U's linked anonymous id only
            message(userId=other, anonymousId=other_anon, product_id="keep-other"),
        ]
        accepted(service, queued, accepted=3)
        for pid in ("del-user", "del-anon", "keep-other"):
            wait_until(lambda p=pid: with_product(sent_records(miso, 503), p), f"{pid} refused")
        delete = {"type": "delete", "userId": user, "messageId": f"del-{uuid.uuid4().hex}"}
        accepted(service, delete, deletions=1, accepted=0)
        miso.reset()  # Miso recovers
        wait_until(lambda: miso.deleted_user_ids, "the deletion", timeout=15)
        [kept] = miso.wait_for(1, timeout=15)
        assert kept["product_ids"] == ["keep-other"]
        assert (kept["user_id"], kept["anonymous_id"]) == (other, other_anon)
        time.sleep(2.0)  # anything still queued goes out within the 1 s flush plus backoff
        assert miso.deleted_user_ids == [user]
        mine = [r for r in miso.records if user in (r.get("user_id"), r.get("anonymous_id"))
                or r.get("anonymous_id") == anon]  # fmt: skip
        assert mine == []
        assert [r["product_ids"] for r in miso.records] == [["keep-other"]]

    def test_delete_while_a_send_is_in_flight(self, service, miso):
        """U's record in flight when the delete arrives, then refused, is not sent after it."""
        user = uid("gone")
        # Earlier tests' profile uploads and task checks are done: the next send is the record.
        wait_until(lambda: spool(service) == 0, "an idle forwarder")
        miso.set_delay(3.0)  # each request hangs 3 s: the forwarder holds the record's lease
        miso.fail_next(503)  # ... and that attempt is then refused
        accepted(service, server_track(user, "in-flight"), accepted=1)
        time.sleep(1.5)  # claimed within the 1 s flush; its answer comes 3 s after the claim
        assert sent_records(miso, 503) == []  # still in flight
        delete = {"type": "delete", "userId": user, "messageId": f"del-{uuid.uuid4().hex}"}
        accepted(service, delete, deletions=1)
        wait_until(lambda: with_product(sent_records(miso, 503), "in-flight"), "the refusal")
        miso.set_delay(0)
        wait_until(lambda: miso.deleted_user_ids, "the deletion", timeout=15)
        time.sleep(2.0)
        assert miso.deleted_user_ids == [user]
        assert [r for r in miso.records if r.get("user_id") == user] == []


def test_links_survive_a_restart(tmp_path, miso):
    """A link learned before a restart still fills user_id after it (same store)."""
    service = Service(tmp_path, miso).start()
    user, anon = uid("u"), uid("anon")
    try:
        accepted(service, identify(user, anon), links=1)
    finally:
        service.stop()
    service.start()
    try:
        accepted(service, message(anonymousId=anon, product_id="after-restart"), accepted=1)
        [record] = miso.wait_for(1, timeout=15)
    finally:
        service.stop()
    assert record["product_ids"] == ["after-restart"]
    assert (record["user_id"], record["anonymous_id"]) == (user, anon)


def test_mixpanel_identify_row_links_a_later_anonymous_row(tmp_path, miso):
    """replay mixpanel: $identify (D -> U) early in the file gives D's later row user_id U."""
    device, user = str(uuid.uuid4()), uid("mp-user")
    rows = [
        {"event": "$identify", "properties": {
            "time": 1714557600, "distinct_id": user, "$anon_id": device,
            "$identified_id": user, "$insert_id": uuid.uuid4().hex,
        }},
        {"event": "Product Viewed", "properties": {
            "time": 1714557660, "distinct_id": f"$device:{device}", "$device_id": device,
            "product_id": "mp-1", "$insert_id": uuid.uuid4().hex, "mp_lib": "web",
        }},
    ]  # fmt: skip
    export = tmp_path / "export.jsonl"
    export.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    replay = Service(tmp_path, miso).cli("replay", "mixpanel", str(export))
    assert replay.returncode == 0, replay.stderr[-4000:]
    [record] = miso.wait_for(1)
    assert record["type"] == "product_detail_page_view" and record["product_ids"] == ["mp-1"]
    assert (record["user_id"], record["anonymous_id"]) == (user, device)


def test_no_record_without_an_id_ever_reaches_miso(service, miso):
    """A track with neither id is skipped; no record this module sent to Miso lacks both ids."""
    nameless = message(product_id="no-id")
    del nameless["anonymousId"]
    answer = accepted(service, nameless, accepted=0)
    assert answer["skipped"] == {"no user_id or anonymous_id": 1}
    accepted(service, message(anonymousId=uid("anon"), product_id="marker"), accepted=1)
    miso.wait_for(1)
    assert len(SENT) >= 8, SENT
    assert with_product(SENT, "no-id") == []
    assert [r for r in SENT if not (r.get("user_id") or r.get("anonymous_id"))] == []


# --------------------------------------------------------------------------- Original ID Merge

#: 2024-05-01T10:00:00Z; rows of the Original ID Merge export follow each other by a minute.
T0 = 1714557600


class OriginalExport:
    """An export of an Original ID Merge project, as older mixpanel-js and a server send it.

    Devices browse under their own unprefixed ``distinct_id`` and no ``$device_id``; then
    ``$identify`` (``$anon_distinct_id`` → the user), ``$create_alias`` (``distinct_id``
    → ``alias``) or a server's ``$merge`` joins them to a user, whose later rows carry
    the user's id. ``expected`` is product tag → (user_id, anonymous_id) Miso must see.
    """

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.expected: dict[str, tuple[str, str]] = {}

    def row(self, event: str, **props) -> None:
        props.setdefault("$insert_id", uuid.uuid4().hex)
        props.setdefault("mp_lib", "web")
        self.rows.append(
            {"event": event, "properties": {"time": T0 + len(self.rows) * 60, **props}}
        )

    def viewed(self, distinct_id: str, ids: tuple[str, str], **props) -> None:
        tag = uid("p")
        self.expected[tag] = ids
        self.row("Product Viewed", distinct_id=distinct_id, product_id=tag, **props)

    def filler(self, n: int) -> None:
        """Rows of other visitors: the identity rows below land in a later chunk."""
        for _ in range(n):
            self.row("Page Viewed", distinct_id=f"$device:{uuid.uuid4()}", current_url_path="/")

    def write(self, path: Path) -> Path:
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in self.rows))
        return path


def original_id_merge_export(filler: int) -> OriginalExport:
    """Three sign-ins, one of each kind, each with anonymous rows before and user rows after."""
    export = OriginalExport()
    a, u = str(uuid.uuid4()), uid("user-identify")
    b, v = str(uuid.uuid4()), uid("user-alias")
    c, w = str(uuid.uuid4()), uid("user-merge")
    export.viewed(a, (u, a))
    export.viewed(a, (u, a))
    export.viewed(b, (v, b))
    export.viewed(c, (w, c), **{"$device_id": c})  # mixpanel-js 2.2x also sends $device_id
    export.filler(filler)
    export.row("$identify", distinct_id=u, **{"$anon_distinct_id": a})
    export.row("$create_alias", distinct_id=b, alias=v)
    export.row("$merge", distinct_id=w, **{"$distinct_ids": [c, w]})  # anonymous side first
    export.viewed(u, (u, a))
    export.viewed(v, (v, b))
    export.viewed(w, (w, c))
    return export


def ids_by_tag(records: list[dict]) -> dict[str, tuple[str | None, str | None]]:
    return {
        r["product_ids"][0]: (r.get("user_id"), r.get("anonymous_id"))
        for r in records
        if r.get("type") == "product_detail_page_view"
    }


def test_original_id_merge_replay_sends_every_row_with_both_ids(tmp_path, miso):
    """replay mixpanel of an Original ID Merge export ($identify, $create_alias, $merge,
    unprefixed device ids without $device_id, sign-ins 1,200 rows after the devices' first
    rows): every pre- and post-sign-in row reaches Miso with both ids."""
    export = original_id_merge_export(filler=1200)
    path = export.write(tmp_path / "original.jsonl")
    done = Service(tmp_path, miso).cli("replay", "mixpanel", str(path))
    assert done.returncode == 0, done.stderr[-4000:]
    records = miso.wait_for(len(export.expected), timeout=30)
    got = ids_by_tag(records)
    assert {t: got.get(t) for t in export.expected} == export.expected


def test_original_id_merge_upload_sends_every_row_with_both_ids(service, miso):
    """POST /mixpanel of an Original ID Merge export: the same rows reach Miso with both ids."""
    export = original_id_merge_export(filler=0)
    body = b"".join(orjson.dumps(r) + b"\n" for r in export.rows)
    response = service.post("/mixpanel", None, raw=body, **{"Content-Type": "application/x-ndjson"})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(export.expected)
    wait_until(lambda: len(ids_by_tag(miso.records)) >= len(export.expected), "the records")
    got = ids_by_tag(miso.records)
    assert {t: got.get(t) for t in export.expected} == export.expected


def test_a_link_from_an_earlier_replay_makes_a_later_exports_device_rows_anonymous(tmp_path, miso):
    """Last week's export links device A to user U; this week's rows of A alone (unprefixed,
    no $device_id) are A's anonymous rows: the preview shows A as anonymous_id, and Miso
    gets them with both ids."""
    device, user = str(uuid.uuid4()), uid("user")
    service = Service(tmp_path, miso)
    week1 = OriginalExport()
    week1.row("$identify", distinct_id=user, **{"$anon_distinct_id": device})
    week2 = OriginalExport()
    week2.viewed(device, (user, device))
    week2.viewed(device, (user, device))
    done = service.cli("replay", "mixpanel", str(week1.write(tmp_path / "week1.jsonl")))
    assert done.returncode == 0, done.stderr[-4000:]
    week2_path = week2.write(tmp_path / "week2.jsonl")
    preview = service.cli("replay", "mixpanel", str(week2_path), "--dry-run")
    assert preview.returncode == 0, preview.stderr[-4000:]
    shown = [orjson.loads(line) for line in preview.stdout.splitlines()]
    # The device's rows, with the user the forwarder would add from last week's link.
    assert [(r.get("user_id"), r["anonymous_id"]) for r in shown] == [(user, device)] * 2
    done = service.cli("replay", "mixpanel", str(week2_path))
    assert done.returncode == 0, done.stderr[-4000:]
    records = miso.wait_for(2, timeout=30)
    assert ids_by_tag(records) == week2.expected
