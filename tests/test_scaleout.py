"""End to end: several adapter hosts sharing one Redis store act as one (docs/deployment.md).

Each "host" is a real `miso-adapter serve` (gunicorn workers + forwarder) or `replay`
process; they share nothing but ``ADAPTER_STORE=redis://...`` (a key prefix of their
own per test, removed afterwards). Deliveries are checked in the fake Miso.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
import requests

from adapter.testing import FakeMiso
from adapter.testing.mixpanel_export import record_key, write_export
from adapter.testing.service import MISO_KEY, Service, message, product_ids, signature
from adapter.testing.stores import REDIS, require_redis


@pytest.fixture
def store_url():
    """A Redis store URL with a prefix of its own; its keys are deleted afterwards (no Redis:
    skipped, or failed under MISO_ADAPTER_REQUIRE_REDIS=1)."""
    client = require_redis(REDIS)
    prefix = f"test-scaleout-{uuid.uuid4().hex[:12]}:"
    yield f"{REDIS}?prefix={prefix}"
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)


@pytest.fixture
def miso():
    with FakeMiso(api_key=MISO_KEY) as fake:
        yield fake


class BlackHole:
    """A 'Miso' that accepts connections and never answers: its sends all time out."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def host(folder: Path, miso: FakeMiso, store_url: str, **env: str) -> Service:
    """A `serve` host on the shared store (short leases, so a dead host's work returns fast)."""
    folder.mkdir(parents=True, exist_ok=True)
    service = Service(folder, miso)
    service.env.update(ADAPTER_STORE=store_url, ADAPTER_LEASE_SECONDS="3", **env)
    return service


def wait_for(condition, timeout: float, what) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what()
        time.sleep(0.2)


def test_a_killed_host_loses_nothing_its_peer_delivers_each_event_once(tmp_path, miso, store_url):
    """Traffic over two hosts, kill -9 of one mid-stream: every 200'd event reaches Miso once.

    Host A cannot reach Miso (its sends hang), so whatever it accepted — queued, leased
    by its forwarder, or waiting for a retry — can only be delivered by host B, which
    takes over A's leases when they expire.
    """
    hole = BlackHole()
    a = host(tmp_path / "a", miso, store_url, MISO_API_URL=hole.url)
    b = host(tmp_path / "b", miso, store_url)
    a.start()
    b.start()
    acknowledged: Counter[str] = Counter()
    by_host: Counter[str] = Counter()
    stop = threading.Event()

    def stream() -> None:
        sessions = {a.url: requests.Session(), b.url: requests.Session()}
        n = 0
        while not stop.is_set():
            n += 1
            url = (a.url, b.url)[n % 2]
            raw = orjson.dumps(message(product_id=f"k-{n}", anonymousId=f"anon-{n % 7}"))
            try:
                response = sessions[url].post(
                    f"{url}/segment", data=raw, timeout=5,
                    headers={"Content-Type": "application/json", "X-Signature": signature(raw)},
                )  # fmt: skip
            except requests.RequestException:
                continue  # the killed host: not acknowledged
            if response.status_code == 200:
                acknowledged[f"k-{n}"] += 1
                by_host[url] += 1

    client = threading.Thread(target=stream)
    client.start()
    try:
        time.sleep(2.5)
        a.kill9()
        time.sleep(1.5)
    finally:
        stop.set()
        client.join()
        hole.close()
    try:
        assert by_host[a.url] > 20 and by_host[b.url] > 20, (by_host, a.tail(), b.tail())
        wait_for(
            lambda: set(acknowledged) <= set(product_ids(miso)),
            60,
            lambda: (
                f"{len(set(acknowledged) - set(product_ids(miso)))} acknowledged events "
                f"not delivered:\n{b.tail()}"
            ),
        )
        time.sleep(1.0)  # a second delivery would show up now
        delivered = Counter(product_ids(miso))
        assert [k for k, n in delivered.items() if n > 1] == []
        # A may have stored a message whose 200 the kill swallowed: delivered, not counted.
        assert len(set(delivered) - set(acknowledged)) <= 8
        assert all(r["anonymous_id"].startswith("anon-") for r in miso.records)
    finally:
        b.stop()


def test_links_learned_on_one_host_apply_to_records_sent_by_another(tmp_path, miso, store_url):
    """identify through host A, then an anonymous track through host B: Miso gets both ids."""
    a = host(tmp_path / "a", miso, store_url).start()
    b = host(tmp_path / "b", miso, store_url).start()
    try:
        identify = {
            "type": "identify", "messageId": f"id-{uuid.uuid4().hex}", "userId": "user-42",
            "anonymousId": "anon-shared", "timestamp": "2024-05-01T10:00:00.000Z",
        }  # fmt: skip
        assert a.post("/segment", identify).status_code == 200
        view = message(product_id="linked-1", anonymousId="anon-shared")
        assert b.post("/segment", view).status_code == 200
        wait_for(lambda: "linked-1" in product_ids(miso), 20, lambda: b.tail())
        (record,) = [r for r in miso.records if "linked-1" in r.get("product_ids", [])]
        assert (record["anonymous_id"], record.get("user_id")) == ("anon-shared", "user-42")
        shown = b.cli("identity", "show", "anon-shared", "--json")
        assert orjson.loads(shown.stdout)["user"]["user_id"] == "user-42", shown.stderr
    finally:
        a.stop()
        b.stop()


def test_one_export_replayed_from_two_hosts_at_once_is_sent_once(tmp_path, miso, store_url):
    """Two `replay mixpanel` processes of the same file on one store: each event once."""
    export = write_export(tmp_path / "export.jsonl", 3000)
    env = Service(tmp_path, miso).env
    env.update(ADAPTER_STORE=store_url, ADAPTER_LEASE_SECONDS="3")
    command = [sys.executable, "-m", "adapter.cli", "replay", "mixpanel", str(export.path)]
    runs = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=180) for run in runs]
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err[-3000:]
    accepted = [int(err.split("records accepted: ")[1].split()[0].replace(",", ""))
                for _, err in outputs]  # fmt: skip
    assert sum(accepted) == len(export.expected), outputs  # each event stored by one of them
    delivered = Counter(record_key(r) for r in miso.records)
    assert [k for k, n in delivered.items() if n > 1] == []
    assert set(delivered) == set(export.expected)
    wrong = [k for k, r in ((record_key(r), r) for r in miso.records)
             if r["type"] != export.expected[k].type]  # fmt: skip
    assert wrong == []


def test_serve_and_forward_refuse_to_start_on_an_unreachable_redis(tmp_path, miso):
    """A wrong Redis host or password stops `serve`/`forward` at start, password unshown."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = Service(tmp_path, miso).env
    env["ADAPTER_STORE"] = f"redis://:hunter2-secret@127.0.0.1:{port}/0"
    for command in (["forward"], ["serve", "--bind", "127.0.0.1:0"]):
        done = subprocess.run([sys.executable, "-m", "adapter.cli", *command], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 1, done.stderr
        assert f"127.0.0.1:{port}" in done.stderr
        assert "hunter2-secret" not in done.stderr + done.stdout
