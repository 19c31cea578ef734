"""Hot reload: a good edit goes live in every worker; a bad one is refused and reported."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import requests

from adapter import create_app
from adapter.reload import MappingWatcher
from adapter.testing import FakeMiso

ROOT = Path(__file__).resolve().parent.parent
NEW_RULE = "\n  - events: [Newsletter Subscribed]\n    type: subscribe\n"
NEWSLETTER = {
    "type": "track",
    "event": "Newsletter Subscribed",
    "userId": "u1",
    "messageId": "n-1",
    "timestamp": "2024-05-01T10:00:00Z",
}


def save(path: Path, text: str) -> None:
    """Save as editors do: write a new file, then rename it over the old one."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@pytest.fixture
def folder(tmp_path) -> Path:
    target = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", target, ignore=shutil.ignore_patterns("tests", "*.md"))
    return target


@pytest.fixture
def app(folder, tmp_path):
    return create_app(
        {"TESTING": True, "MAPPINGS_DIR": str(folder), "MISO_API_KEY": "k",
         "ADAPTER_STORE": f"sqlite:///{tmp_path}/reload.db"}
    )  # fmt: skip


def watcher(app, folder) -> MappingWatcher:
    return MappingWatcher(
        folder,
        app.extensions["miso-adapter.translators"],
        app.extensions["miso-adapter.mapping-rejections"],
    )


def test_good_edit_goes_live(app, folder):
    """A new rule saved over the file is used by the next request, without a restart."""
    client, watch = app.test_client(), watcher(app, folder)
    assert client.post("/segment", json=NEWSLETTER).json["skipped"] == {
        "no rule for event 'Newsletter Subscribed'": 1
    }
    save(folder / "segment.yaml", (folder / "segment.yaml").read_text() + NEW_RULE)
    assert watch.check() == ["segment"]
    assert client.post("/segment", json={**NEWSLETTER, "messageId": "n-2"}).json["accepted"] == 1
    assert watch.check() == []  # nothing changed since


def test_bad_edit_is_refused_and_reported(app, folder, caplog):
    """A syntax error changes nothing live; /readyz and the log name file and line."""
    client, watch = app.test_client(), watcher(app, folder)
    path = folder / "segment.yaml"
    good = path.read_text()
    save(path, good.replace("unmatched: skip", "unmatched: [skip"))
    watch.check()
    ready = client.get("/readyz")
    assert ready.status_code == 200  # the last good table still serves
    line = good[: good.index("unmatched: skip")].count("\n") + 1
    assert (
        f"REJECTED edits, serving the last good version: {path}:"
        in ready.json["checks"]["mappings"]
    )
    assert "YAML syntax error" in ready.json["checks"]["mappings"]
    assert f"(started at line {line})" in caplog.text  # the unclosed '[' is named
    assert f"rejected edit of {path}, the last good version stays live: {path}:" in caplog.text
    view = {**NEWSLETTER, "event": "Product Viewed", "properties": {"product_id": "p"}}
    assert client.post("/segment", json=view).json["accepted"] == 1
    save(path, good + NEW_RULE)
    watch.check()
    assert "REJECTED" not in client.get("/readyz").json["checks"]["mappings"]


def test_removed_file_keeps_last_good(app, folder):
    """Deleting a table file does not unload it from a running service."""
    watch = watcher(app, folder)
    (folder / "segment.yaml").unlink()
    assert watch.check() == ["segment"]
    assert "segment" in app.extensions["miso-adapter.translators"]


def test_running_service_picks_up_edits(tmp_path, folder):
    """With serve running: a new rule reaches Miso as the new type; a bad edit changes nothing."""
    from adapter.testing.service import MISO_KEY, Service

    with FakeMiso(api_key=MISO_KEY) as miso:
        service = Service(tmp_path, miso)
        service.env["MAPPINGS_DIR"] = str(folder)
        service.env["ADAPTER_RELOAD_SECONDS"] = "0.5"
        service.start()
        try:
            path = folder / "segment.yaml"
            good = path.read_text()
            save(path, good + NEW_RULE)
            deadline = time.monotonic() + 15
            n = 0
            while not any(r["type"] == "subscribe" for r in miso.records):
                assert time.monotonic() < deadline, service.tail()
                n += 1
                service.post("/segment", {**NEWSLETTER, "messageId": f"live-{n}"})
                time.sleep(0.5)
            save(path, good.replace("unmatched: skip", "unmatched: [skip") + NEW_RULE)
            deadline = time.monotonic() + 15
            while (
                "REJECTED" not in (ready := requests.get(f"{service.url}/readyz", timeout=5)).text
            ):
                assert time.monotonic() < deadline, service.tail()
                time.sleep(0.3)
            assert f"{path}:" in ready.json()["checks"]["mappings"]
            # The last good table still maps the new event while the bad edit is refused.
            answer = service.post("/segment", {**NEWSLETTER, "messageId": "after-bad-edit"})
            assert answer.json()["accepted"] == 1, answer.text
            deadline = time.monotonic() + 60
            while not any(r.get("timestamp") and r["type"] == "subscribe"
                          and r.get("user_id") == "u1" for r in miso.records[1:]):  # fmt: skip
                assert time.monotonic() < deadline, service.tail()
                time.sleep(0.3)
        finally:
            service.stop()
    log = service.tail()
    assert "rejected edit of" in log and f"{path}:" in log


def test_workers_converge_on_the_last_good_version(tmp_path, folder):
    """A worker that missed a good edit serves it anyway once a bad edit follows."""
    apps = [
        create_app({"TESTING": True, "MAPPINGS_DIR": str(folder), "MISO_API_KEY": "k",
                    "ADAPTER_STORE": f"sqlite:///{tmp_path}/shared.db"})
        for _ in range(2)
    ]  # fmt: skip
    first, second = (
        MappingWatcher(folder, a.extensions["miso-adapter.translators"],
                       a.extensions["miso-adapter.mapping-rejections"],
                       store=a.extensions["miso-adapter.store"])
        for a in apps
    )  # fmt: skip
    path = folder / "segment.yaml"
    good = path.read_text()
    save(path, good + NEW_RULE)
    first.check()  # the first worker sees the good edit; the second does not look in time
    save(path, good.replace("unmatched: skip", "unmatched: [skip") + NEW_RULE)
    first.check()
    second.check()
    for app in apps:
        answer = app.test_client().post("/segment", json={**NEWSLETTER, "messageId": str(id(app))})
        assert answer.json["accepted"] == 1
        assert app.extensions["miso-adapter.mapping-rejections"]["segment"]
