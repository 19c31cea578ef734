"""A replay waits for what it stored, not for traffic that keeps arriving after it."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator

import orjson

from adapter.forwarder import Forwarder, ForwarderSettings
from adapter.mapping import default_mappings_dir, load_mapping
from adapter.miso import MisoClient
from adapter.replay import replay
from adapter.sources import make_source
from adapter.store import Incoming
from adapter.store.sqlite import SqliteStore
from adapter.testing import FakeMiso
from adapter.testing.mixpanel_export import record_key, write_export


@contextlib.contextmanager
def another_source_storing(store: SqliteStore, every: float) -> Iterator[None]:
    """Meanwhile, another source (webhooks) stores a record of its own every ``every`` s;
    their product ids start with ``w-``."""
    stop = threading.Event()

    def webhooks() -> None:
        n = 0
        while not stop.wait(every):
            n += 1
            body = orjson.dumps({"type": "like", "user_id": f"w{n}", "product_ids": [f"w-{n}"]})
            store.accept([Incoming(None, [body], source="segment")], 3600)

    traffic = threading.Thread(target=webhooks)
    traffic.start()
    try:
        yield
    finally:
        stop.set()
        traffic.join()


def replayed(records: list[dict]) -> set:
    """The keys of the records that are not the other source's."""
    return {
        record_key(r) for r in records if not (r.get("product_ids") or [""])[0].startswith("w-")
    }


def test_webhooks_arriving_during_the_final_wait_do_not_hold_the_replay(tmp_path):
    """With a steady stream of other records, the replay ends once its own are delivered."""
    export = write_export(tmp_path / "export.jsonl", 500)
    store = SqliteStore(tmp_path / "adapter.db")
    with FakeMiso(api_key="k") as miso, another_source_storing(store, every=0.02):
        started = time.monotonic()
        summary = replay(
            make_source("mixpanel"),
            [export.path],
            translator=load_mapping(default_mappings_dir() / "mixpanel.yaml"),
            store=store,
            dedup_ttl=3600,
            forwarder=Forwarder(store, MisoClient(miso.url, "k"), ForwarderSettings()),
            errors=io.StringIO(),
            wait_for_delivery=30,
        )
        took = time.monotonic() - started
        assert summary.delivered_wait == "delivered: everything accepted has reached Miso"
        assert took < 15, f"the replay waited {took:.1f}s"
        assert replayed(miso.records) == set(export.expected)


def test_a_replay_beside_a_storing_service_exits_0_once_its_own_records_are_delivered(
    tmp_path, monkeypatch, capsys
):
    """The exit status says whether the replay's records reached Miso, not whether the
    spool is empty: a service storing into the same store keeps adding records of its
    own while the replay ends."""
    from adapter import cli

    export = write_export(tmp_path / "export.jsonl", 500)
    store = SqliteStore(tmp_path / "adapter.db")
    with FakeMiso(api_key="k") as miso:
        monkeypatch.setenv("ADAPTER_STORE", f"sqlite:///{tmp_path / 'adapter.db'}")
        monkeypatch.setenv("MISO_API_URL", miso.url)
        monkeypatch.setenv("MISO_API_KEY", "k")
        with another_source_storing(store, every=0.01):
            code = cli.main(["replay", "mixpanel", str(export.path)])
            waiting = store.stats()["spool"]
        err = capsys.readouterr().err
        assert "delivered: everything accepted has reached Miso" in err
        assert code == 0, err[-2000:]
        assert waiting > 0  # the service's newest records, not the replay's
        assert replayed(miso.records) == set(export.expected)
