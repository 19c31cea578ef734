"""What the service shows of its Kafka consumers: /readyz, /metrics and the console read
the state each consumer publishes in the store (no broker needed here)."""

from __future__ import annotations

import time

import pytest

from adapter import create_app
from adapter.consume import group_status, member_status_name
from adapter.sources import make_source
from adapter.sources.kafka import KafkaSettings, message_items
from adapter.store import current

TOKEN = "kafka-console-token"


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    monkeypatch.setenv("KAFKA_TOPICS", "events")
    monkeypatch.setenv("KAFKA_GROUP", "miso")
    app = create_app({
        "TESTING": True, "ADAPTER_STORE": f"sqlite:///{tmp_path}/k.db", "ADAPTER_TOKEN": TOKEN,
        "MAPPINGS_RELOAD_SECONDS": 0, "MISO_API_KEY": "k",
    })  # fmt: skip
    return app


def publish(app, member: str, *, ok: bool, lag: dict[str, int], age: float = 0.0) -> None:
    store = current(app)
    now = time.time() - age
    store.set_status(member_status_name("miso", member), {
        "group": "miso", "member": member, "topics": ["events"], "format": "segment", "ok": ok,
        "error": "" if ok else "_ALL_BROKERS_DOWN: 1/1 brokers are down", "lag": lag,
        "received": 10, "accepted": 8, "duplicates": 1, "skipped": 1, "updated_at": now,
    })  # fmt: skip
    members = (store.get_status("kafka:miso") or {"members": {}})["members"]
    store.set_status("kafka:miso", {"members": {**members, member: now}})


def test_readyz_metrics_and_console_show_each_consumer_and_its_lag(app):
    """Two live consumers: /readyz sums the lag, /metrics has it per partition, the console
    lists both; a consumer that lost its brokers makes /readyz say FAILING (still 200)."""
    client = app.test_client()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/readyz").json["checks"]["kafka"] == "no consumer running yet"
    publish(app, "host-a:1", ok=True, lag={"events/0": 5, "events/1": 7})
    publish(app, "host-b:2", ok=True, lag={"events/2": 0})
    assert client.get("/readyz").json["checks"]["kafka"] == (
        "ok: 2 consumer(s) of group miso, lag 12 messages"
    )
    metrics = client.get("/metrics", headers=bearer).get_data(as_text=True)
    assert 'miso_adapter_kafka_lag{partition="1",topic="events"} 7.0' in metrics
    assert "miso_adapter_kafka_consumers_ok 2.0" in metrics
    page = client.get("/console", headers=bearer).get_data(as_text=True)
    assert 'id="kafka"' in page and "host-a:1" in page and "host-b:2" in page
    publish(app, "host-b:2", ok=False, lag={})
    ready = client.get("/readyz")
    assert ready.json["checks"]["kafka"].startswith("FAILING: host-b:2: _ALL_BROKERS_DOWN")
    assert "FAILING" in client.get("/console", headers=bearer).get_data(as_text=True)


def test_a_consumer_silent_for_a_minute_is_no_longer_listed(app):
    """A member that stopped publishing (killed) drops out of the group's picture."""
    publish(app, "gone:1", ok=True, lag={"events/0": 3}, age=120)
    publish(app, "here:2", ok=True, lag={"events/1": 1})
    assert [m["member"] for m in group_status(current(app), "miso")] == ["here:2"]


def test_settings_name_what_is_missing_and_hide_the_password():
    """KAFKA_* or options; what is missing is named; the SASL password is never shown."""
    with pytest.raises(ValueError, match="--group"):
        KafkaSettings.from_options(bootstrap_servers="b:9092", topics=["t"], format="segment",
                                   env={})  # fmt: skip
    settings = KafkaSettings.from_options(env={
        "KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_TOPICS": "a, b", "KAFKA_GROUP": "g",
        "KAFKA_FORMAT": "miso", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u",
        "KAFKA_SASL_PASSWORD": "hunter2",
    })  # fmt: skip
    assert settings.topics == ("a", "b") and "hunter2" not in repr(settings)
    assert settings.client_config()["sasl.password"] == "hunter2"
    with pytest.raises(ValueError, match="--format"):
        KafkaSettings.from_options(env={"KAFKA_BOOTSTRAP_SERVERS": "b", "KAFKA_TOPICS": "t",
                                        "KAFKA_GROUP": "g", "KAFKA_FORMAT": "csv"})  # fmt: skip


def test_a_message_without_an_id_is_keyed_by_its_place_in_kafka():
    """No messageId: the key is kafka:<topic>:<partition>:<offset> (and its place in a
    batch); a messageId wins; a value that is not JSON is unusable input, located."""
    source = make_source("segment")
    bare = b'{"type": "track", "event": "Product Viewed", "userId": "u"}'
    [item] = message_items(source, "events", 2, 41, bare)
    assert (item.where, item.key) == ("events/2@41", "kafka:events:2:41")
    batch = (
        b'{"batch": [{"type": "track", "event": "A", "userId": "u"},'
        b' {"type": "track", "event": "B", "userId": "u", "messageId": "m-9"}]}'
    )
    assert [i.key for i in message_items(source, "events", 0, 7, batch)] == [
        "kafka:events:0:7:0", "segment:m-9",
    ]  # fmt: skip
    [bad] = message_items(source, "events", 1, 3, b"not json")
    assert bad.key is None and "malformed JSON" in bad.event.message


def test_without_the_kafka_client_consume_says_how_to_install_it(tmp_path):
    """confluent-kafka missing (a plain install): `consume kafka` exits 1 saying what to
    install, no traceback."""
    import subprocess
    import sys

    blocker = tmp_path / "confluent_kafka.py"
    blocker.write_text("raise ImportError('not installed here')\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin",
           "ADAPTER_STORE": f"sqlite:///{tmp_path}/k.db"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "adapter.cli", "consume", "kafka", "--bootstrap-servers", "b:9",
         "--topic", "t", "--group", "g", "--format", "segment", "--store-only"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "pip install 'miso-adapter[kafka]'" in done.stderr and "Traceback" not in done.stderr
