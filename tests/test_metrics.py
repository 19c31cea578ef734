"""GET /metrics: Prometheus counts of ingestion, forwarding, Miso latency and the spool.

In-process tests use a Flask test client (no PROMETHEUS_MULTIPROC_DIR: one process's
counts); the last test runs the real `serve` and reads counts written by both gunicorn
workers and the forwarder process from one scrape (multiprocess mode).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import orjson
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from adapter import create_app, metrics
from adapter.forwarder import Forwarder, ForwarderSettings
from adapter.miso import MisoClient
from adapter.reload import MappingWatcher
from adapter.store import Incoming
from adapter.testing import FakeMiso
from adapter.testing.prometheus import parse
from adapter.testing.service import MISO_KEY, Service, message

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAST = ForwarderSettings(backoff_base=0.01, backoff_cap=0.05, pause_interval=0.2, lease=5)


@pytest.fixture(autouse=True)
def _fresh_metrics():
    """Each test starts from zero counts in this process."""
    metrics.reset()
    yield
    metrics.reset()


@pytest.fixture
def app(tmp_path):
    return create_app(
        {"TESTING": True, "ADAPTER_STORE": f"sqlite:///{tmp_path}/m.db", "ADAPTER_TOKEN": TOKEN}
    )


@pytest.fixture
def client(app):
    return app.test_client()


def value(samples: dict, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client) -> dict:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200, response.data
    return parse(response.get_data(as_text=True))


def view(product: str, **extra) -> dict:
    return {"type": "track", "event": "Product Viewed", "userId": "u1", "messageId": product,
            "properties": {"product_id": product}, **extra}  # fmt: skip


# --------------------------------------------------------------------------- access


def test_refused_while_no_token_is_configured(tmp_path):
    """Without ADAPTER_TOKEN, /metrics is never open: 403 (401 without credentials), saying
    to set it."""
    app = create_app({"TESTING": True, "ADAPTER_STORE": f"sqlite:///{tmp_path}/n.db"})
    client = app.test_client()
    for headers, status in ((AUTH, 403), ({"Authorization": "Bearer "}, 403), ({}, 401)):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == status
        assert response.json["status"] == status
        assert "ADAPTER_TOKEN is not set" in response.json["error"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {TOKEN}"}])  # fmt: skip
def test_refused_without_the_right_token(client, headers):
    """A missing, wrong or non-Bearer credential gets 401 in the one JSON error shape."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 401
    assert response.json == {"error": "missing or invalid bearer token", "status": 401}


def test_served_with_the_token_in_prometheus_text_format(client):
    """With the token: 200, text format 0.0.4, parseable, every family named miso_adapter_*."""
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = list(text_string_to_metric_families(response.get_data(as_text=True)))
    names = {f.name for f in families}
    assert {"miso_adapter_received", "miso_adapter_spool_depth",
            "miso_adapter_miso_request_seconds"} <= names  # fmt: skip
    assert all(name.startswith("miso_adapter_") for name in names)


# --------------------------------------------------------------------------- ingestion


def test_segment_counts_are_exact(client):
    """Received, accepted, duplicates, skipped by reason kind and records by type add up."""
    batch = [
        view("p1"),
        view("p2"),
        {**view("p3"), "event": "Product Added"},
        {**view("x1"), "event": "Banner Wiggled"},
        {**view("x2"), "event": "Footer Tapped"},
        7,
    ]
    assert client.post("/segment", json=batch).json["accepted"] == 3
    assert client.post("/segment", json=view("p1")).json["duplicates"] == 1
    assert (
        client.post("/v1/track", json={**view("p4"), "event": "Product Added"}).status_code == 200
    )
    s = scrape(client)
    assert value(s, "miso_adapter_received_total", source="segment") == 8
    assert value(s, "miso_adapter_accepted_total", source="segment") == 4
    assert value(s, "miso_adapter_duplicates_total", source="segment") == 1
    # Two different unmapped names, one time series: event names never become labels.
    assert value(s, "miso_adapter_skipped_total", source="segment",
                 reason="no rule for event") == 2  # fmt: skip
    assert value(s, "miso_adapter_skipped_total", source="segment",
                 reason="not a Segment message") == 1  # fmt: skip
    assert value(s, "miso_adapter_records_total", source="segment",
                 type="product_detail_page_view") == 2  # fmt: skip
    assert value(s, "miso_adapter_records_total", source="segment", type="add_to_cart") == 2
    assert not any("Banner" in str(key) or "Footer" in str(key) for key in s)


def test_mixpanel_upload_counts_rows_and_malformed_lines(client):
    """A /mixpanel upload counts its rows, records and unreadable lines under source=mixpanel."""
    row = {"event": "Product Viewed",
           "properties": {"time": 1718035220, "distinct_id": "u", "product_id": "p",
                          "$insert_id": "i1"}}  # fmt: skip
    body = orjson.dumps(row) + b"\n{not json\n"
    response = client.post("/mixpanel", data=body, content_type="application/x-ndjson",
                           headers=AUTH)  # fmt: skip
    assert response.status_code == 200, response.json
    s = scrape(client)
    assert value(s, "miso_adapter_received_total", source="mixpanel") == 2
    assert value(s, "miso_adapter_accepted_total", source="mixpanel") == 1
    assert value(s, "miso_adapter_skipped_total", source="mixpanel", reason="malformed") == 1
    assert value(s, "miso_adapter_records_total", source="mixpanel",
                 type="product_detail_page_view") == 1  # fmt: skip


def identify(message_id: str, traits: dict | None = None, **ids: str) -> dict:
    ids = ids or {"userId": "u1"}
    return {"type": "identify", "messageId": message_id, **ids,
            **({"traits": traits} if traits is not None else {})}  # fmt: skip


def test_profile_changes_and_stored_profiles_are_counted(client):
    """Profile changes stored count per source (a redelivery or an identify without
    traits adds none); the profile gauges are the store's users and anonymous profiles."""
    post = [
        identify("i-1", {"name": "Ann", "plan": "pro"}),
        {"type": "group", "userId": "u1", "groupId": "g1", "messageId": "g-1"},
        identify("i-2", {"name": "Bo"}, userId="u2"),
        identify("i-3", {"plan": "free"}, anonymousId="a9"),
        identify("i-4", userId="u3", anonymousId="a3"),  # a link, no profile change
    ]
    assert client.post("/segment", json=post).status_code == 200
    assert client.post("/segment", json=identify("i-1", {"name": "Ann"})).json["duplicates"] == 1
    s = scrape(client)
    assert value(s, "miso_adapter_profile_changes_total", source="segment") == 4
    assert value(s, "miso_adapter_profile_changes_total", source="mixpanel") == 0
    assert value(s, "miso_adapter_profiles") == 2  # u1, u2
    assert value(s, "miso_adapter_anonymous_profiles") == 1  # a9, until a link names its user
    link = identify("i-5", userId="u9", anonymousId="a9")
    assert client.post("/segment", json=link).status_code == 200
    s = scrape(client)
    assert value(s, "miso_adapter_profiles") == 3
    assert value(s, "miso_adapter_anonymous_profiles") == 0


def test_profile_gauges_are_left_out_when_the_store_has_no_profile_counts(app, client, monkeypatch):
    """A store whose stats hold no profile counts gets no profile gauges, not a false 0."""
    store = app.extensions["miso-adapter.store"]
    stats = store.stats
    monkeypatch.setattr(store, "stats", lambda: {k: v for k, v in stats().items()
                                                 if "profiles" not in k})  # fmt: skip
    s = scrape(client)
    assert value(s, "miso_adapter_spool_depth") == 0 and value(s, "miso_adapter_store_up") == 1
    assert not any(name in ("miso_adapter_profiles", "miso_adapter_anonymous_profiles")
                   for name, _ in s)  # fmt: skip


def test_user_uploads_count_under_kind_user(app, client):
    """User uploads the forwarder reports count as forwarded, retried and dead-lettered
    under kind=user, apart from records; the help texts say so."""
    store = app.extensions["miso-adapter.store"]
    store.upload_delay = 0.0  # the uploads are ready at once, to be claimed here
    for n in range(3):
        traits = identify(f"i-{n}", {"name": f"N{n}"}, userId=f"u{n}")
        assert client.post("/segment", json=traits).status_code == 200
    users = store.claim("user", 10, 1 << 20, 30, "test")
    assert [u.kind for u in users] == ["user"] * 3
    metrics.count_forwarded(users[:2])
    metrics.count_retried(users[2:])
    metrics.count_dead_lettered("user", "rejected", 1)
    response = client.get("/metrics", headers=AUTH)
    text = response.get_data(as_text=True)
    s = parse(text)
    assert value(s, "miso_adapter_forwarded_total", kind="user") == 2
    assert value(s, "miso_adapter_forwarded_total", kind="record") == 0
    assert value(s, "miso_adapter_retried_total", kind="user") == 1
    assert value(s, "miso_adapter_dead_lettered_total", kind="user", reason="rejected") == 1
    docs = {f.name: f.documentation for f in text_string_to_metric_families(text)}
    for name in ("miso_adapter_forwarded", "miso_adapter_retried", "miso_adapter_dead_lettered"):
        assert "user" in docs[name], docs[name]


def test_skip_reasons_are_bounded():
    """The adapter's reasons are bucketed; a mapping's own reasons are kept up to a cap."""
    assert metrics.reason_kind("no rule for event 'Anything'") == "no rule for event"
    assert metrics.reason_kind("no value for product_ids") == "no value for a required field"
    assert metrics.reason_kind("identity call, not an interaction") == (
        "identity call, not an interaction"
    )
    kinds = {metrics.reason_kind(f"custom skip {n}") for n in range(metrics.MAX_REASONS * 2)}
    assert len(kinds) == metrics.MAX_REASONS and "other" in kinds


# --------------------------------------------------------------------------- forwarding


def test_forwarding_counts_and_miso_latency(tmp_path, app, client):
    """Through a fake Miso: a 500 then OK moves retried, forwarded, dead-lettered, latency."""
    store = app.extensions["miso-adapter.store"]
    good = [{"type": "like", "user_id": f"u{n}", "product_ids": [f"p{n}"]} for n in range(3)]
    anonymous = {"type": "like", "product_ids": ["p9"]}  # no id: dead-lettered before sending
    store.accept([Incoming(None, [orjson.dumps(r) for r in [*good, anonymous]])], 3600)
    with FakeMiso(api_key="miso-key") as miso:
        miso.fail_next(500)
        fwd = Forwarder(store, MisoClient(miso.url, "miso-key", timeout=(2, 5)), FAST)
        deadline = time.monotonic() + 10
        while store.stats()["spool"]:
            assert time.monotonic() < deadline, "forwarder did not finish"
            if not fwd.step():
                time.sleep(0.01)
        assert len(miso.records) == 3
    response = client.get("/metrics", headers=AUTH)
    text = response.get_data(as_text=True)
    s = parse(text)
    assert value(s, "miso_adapter_forwarded_total", kind="record") == 3
    assert value(s, "miso_adapter_retried_total", kind="record") == 3
    assert value(s, "miso_adapter_dead_lettered_total", kind="record", reason="invalid") == 1
    assert value(s, "miso_adapter_miso_request_seconds_count", outcome="retry") == 1
    assert value(s, "miso_adapter_miso_request_seconds_count", outcome="ok") == 1
    assert value(s, "miso_adapter_dead_letters") == store.stats()["dead_letters"] == 1
    assert "miso-key" not in text and TOKEN not in text and "127.0.0.1" not in text


def test_spool_gauges_are_read_from_the_store(app, client):
    """Spool depth and oldest age are the store's stats at scrape time."""
    client.post("/segment", json=[view("s1"), view("s2")])
    s = scrape(client)
    stats = app.extensions["miso-adapter.store"].stats()
    assert value(s, "miso_adapter_spool_depth") == stats["spool"] == 2
    assert 0 <= value(s, "miso_adapter_spool_oldest_age_seconds") <= stats["oldest_age"] + 1
    assert value(s, "miso_adapter_store_up") == 1


def test_mapping_reloads_are_counted(tmp_path, client):
    """A good edit counts as ok, a bad one as rejected, per table."""
    folder = tmp_path / "mappings"
    folder.mkdir()
    table = folder / "segment.yaml"
    shutil.copy(ROOT / "mappings" / "segment.yaml", table)
    watcher = MappingWatcher(folder, {}, {}, interval=60)
    table.write_text(table.read_text() + "\n# edited\n")
    assert watcher.check() == ["segment"]
    table.write_text("rules: [\n")
    assert watcher.check() == ["segment"]
    s = scrape(client)
    assert value(s, "miso_adapter_mapping_reloads_total", table="segment", outcome="ok") == 1
    assert value(s, "miso_adapter_mapping_reloads_total", table="segment", outcome="rejected") == 1


# --------------------------------------------------------------------------- processes


def test_supervisor_empties_a_named_multiprocess_dir(tmp_path, monkeypatch):
    """A PROMETHEUS_MULTIPROC_DIR the user named is reused but emptied of old counts."""
    named = tmp_path / "prom"
    named.mkdir()
    (named / "counter_123.db").write_bytes(b"old")
    (named / "keep.txt").write_text("not ours")
    monkeypatch.setenv(metrics.ENV, str(named))
    assert metrics.prepare_multiprocess_dir() == (str(named), False)
    assert sorted(p.name for p in named.iterdir()) == ["keep.txt"]
    monkeypatch.delenv(metrics.ENV)
    made, temporary = metrics.prepare_multiprocess_dir()
    assert temporary and Path(made).is_dir() and not list(Path(made).iterdir())
    Path(made).rmdir()


def test_serve_merges_every_process_in_one_scrape(tmp_path):
    """Under `serve`: both workers' and the forwarder's counts appear in one scrape."""
    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    with FakeMiso(api_key=MISO_KEY) as miso:
        service = Service(tmp_path, miso)
        service.env.update(ADAPTER_TOKEN=TOKEN, MAPPINGS_DIR=str(mappings),
                           ADAPTER_RELOAD_SECONDS="0.2")  # fmt: skip
        service.env.pop(metrics.ENV, None)
        service.start()
        try:
            for n in range(3):
                assert service.post("/segment", message(product_id=f"e2e-{n}")).status_code == 200
            assert service.post("/segment", message(event="Nobody Maps This")).status_code == 200
            miso.wait_for(3)
            # Every worker reloads the edited table: one count per worker process.
            table = mappings / "segment.yaml"
            table.write_text(table.read_text() + "\n# edited\n")

            def current() -> dict:
                response = requests.get(f"{service.url}/metrics", headers=AUTH, timeout=5)
                assert response.status_code == 200, response.text
                return parse(response.text)

            deadline = time.monotonic() + 15
            while True:
                s = current()
                done = (
                    value(s, "miso_adapter_forwarded_total", kind="record") == 3
                    and value(s, "miso_adapter_mapping_reloads_total", table="segment",
                              outcome="ok") == 2
                )  # fmt: skip
                if done or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert value(s, "miso_adapter_forwarded_total", kind="record") == 3, service.tail()
            assert value(s, "miso_adapter_mapping_reloads_total", table="segment",
                         outcome="ok") == 2, service.tail()  # fmt: skip
            assert value(s, "miso_adapter_received_total", source="segment") == 4
            assert value(s, "miso_adapter_accepted_total", source="segment") == 3
            assert value(s, "miso_adapter_skipped_total", source="segment",
                         reason="no rule for event") == 1  # fmt: skip
            assert value(s, "miso_adapter_miso_request_seconds_count", outcome="ok") >= 1
            assert value(s, "miso_adapter_spool_depth") == 0
            assert requests.get(f"{service.url}/metrics", timeout=5).status_code == 401
        finally:
            service.stop()
