"""Mixpanel's Export API: the request budget, the settings, and real runs of
`replay mixpanel --from-api` and `sync mixpanel` against FakeMixpanel and FakeMiso.

The command line runs in a subprocess with a clean environment, as a user runs it; the
fake Export API checks credentials, project id and dates, answers gzip, enforces
Mixpanel's limits and injects faults; the fake Miso records what was delivered.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import requests

from adapter.ingest import CHUNK
from adapter.sources.mixpanel_api import Budget, ExportSettings, day_ranges
from adapter.store import open_store
from adapter.testing import FakeMiso, FakeMixpanel
from adapter.testing.service import clean_env
from adapter.testing.stores import require_redis

MISO_KEY = "miso-export-key"
USER, SECRET, PROJECT = "svc.puller", "s3cr3t-d0-n0t-print", "4242"
TODAY = datetime.now(UTC).date()


# --------------------------------------------------------------------------- units


def test_the_budget_allows_3_a_second_and_60_an_hour():
    """Budget.take waits so that no second holds more than 3 requests, no hour more than 60."""
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    budget = Budget(clock=lambda: now[0], sleep=sleep)
    taken = []
    for _ in range(61):
        budget.take()
        taken.append(now[0])
    for start in taken:
        assert sum(1 for t in taken if start <= t < start + 1) <= 3
    assert taken[-1] >= 3600  # the 61st waited for the first to leave the hour
    assert len(taken) - 1 == 60 and taken[59] < 3600


def test_settings_come_from_the_environment_and_hide_the_secret():
    """MIXPANEL_* give project, account and host; a missing or bad one is named, the secret
    never."""
    env = {"MIXPANEL_PROJECT_ID": "7", "MIXPANEL_SERVICE_ACCOUNT": f"{USER}:{SECRET}"}
    settings = ExportSettings.from_env(env)
    assert (settings.project_id, settings.username, settings.host) == (
        "7", USER, "https://data.mixpanel.com",
    )  # fmt: skip
    assert SECRET not in repr(settings)
    assert ExportSettings.from_env({**env, "MIXPANEL_REGION": "eu"}).host == (
        "https://data-eu.mixpanel.com"
    )
    assert ExportSettings.from_env({**env, "MIXPANEL_REGION": "in"}).host == (
        "https://data-in.mixpanel.com"
    )
    own = ExportSettings.from_env({**env, "MIXPANEL_EXPORT_URL": "http://127.0.0.1:9/"})
    assert own.host == "http://127.0.0.1:9"
    for bad, said in (
        ({"MIXPANEL_SERVICE_ACCOUNT": env["MIXPANEL_SERVICE_ACCOUNT"]}, "MIXPANEL_PROJECT_ID"),
        ({**env, "MIXPANEL_SERVICE_ACCOUNT": SECRET}, "username:secret"),
        ({**env, "MIXPANEL_REGION": "mars"}, "MIXPANEL_REGION"),
    ):
        with pytest.raises(ValueError, match=said) as caught:
            ExportSettings.from_env(bad)
        assert SECRET not in str(caught.value)


def test_day_ranges_cover_the_days_inclusively():
    """One range per N days, first and last day included, none twice."""
    first, last = date(2024, 5, 1), date(2024, 5, 6)
    assert day_ranges(first, last) == [
        (first + timedelta(d), first + timedelta(d)) for d in range(6)
    ]
    assert day_ranges(first, last, 4) == [(first, date(2024, 5, 4)), (date(2024, 5, 5), last)]
    with pytest.raises(ValueError):
        day_ranges(last, first)


# --------------------------------------------------------------------------- end to end


def rows_for(days: list[date], per_day: int, tag: str) -> list[dict]:
    """Product Viewed rows, ``per_day`` on each day, each with a unique product tag."""
    out = []
    for day in days:
        midnight = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        for n in range(per_day):
            out.append({"event": "Product Viewed", "properties": {
                "time": int(midnight) + 60 + n * (86_000 // per_day), "distinct_id": f"u-{n % 7}",
                "$insert_id": uuid.uuid4().hex, "product_id": f"{tag}-{day.isoformat()}-{n}",
            }})  # fmt: skip
    return out


def tags(records: list[dict]) -> Counter[str]:
    return Counter(r["product_ids"][0] for r in records)


class Cli:
    """miso-adapter against one store, the fake Miso and the fake Export API."""

    def __init__(self, folder: Path, miso: FakeMiso, mixpanel: FakeMixpanel, **extra: str) -> None:
        """``extra``: environment variables that replace the defaults."""
        self.env = clean_env(
            MISO_API_URL=miso.url,
            MISO_API_KEY=MISO_KEY,
            ADAPTER_STORE=f"sqlite:///{folder}/adapter.db",
            ADAPTER_BACKOFF_BASE="0.05",
            ADAPTER_BACKOFF_CAP="0.3",
            MIXPANEL_PROJECT_ID=PROJECT,
            MIXPANEL_SERVICE_ACCOUNT=f"{USER}:{SECRET}",
            MIXPANEL_EXPORT_URL=mixpanel.url,
        )
        self.env.update(extra)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "adapter.cli", *args]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip


@pytest.fixture
def miso():
    with FakeMiso(api_key=MISO_KEY) as fake:
        yield fake


def days_back(n: int) -> list[date]:
    return [TODAY - timedelta(days=d) for d in range(n - 1, -1, -1)]


def test_a_backfill_survives_a_429_and_a_cut_off_day_and_sends_each_event_once(tmp_path, miso):
    """6 days, one 429 and one body cut halfway: each event reaches Miso once; never more than
    3 requests in a second; every request with project_id, the account and gzip."""
    days = days_back(6)
    rows = rows_for(days, 400, "b")
    with FakeMixpanel(USER, SECRET, PROJECT, rows) as mixpanel:
        mixpanel.fail_next(429, retry_after=1)
        mixpanel.cut_next(after_bytes=6_000)  # about half of a day's gzip'd answer
        cli = Cli(tmp_path, miso, mixpanel)
        first = cli.run("replay", "mixpanel", "--from-api", "--from-date", days[0].isoformat(),
                        "--to-date", days[-1].isoformat(), "--days-per-request", "1")  # fmt: skip
        assert first.returncode == 0, first.stderr[-3000:]
        assert tags(miso.wait_for(len(rows), timeout=30)) == Counter(
            r["properties"]["product_id"] for r in rows
        )
        log = mixpanel.requests
    assert [r.status for r in log].count(429) == 1
    assert [r.fault for r in log].count("cut") == 1
    assert "was cut off" in first.stderr
    for entry in log:
        assert entry.query["project_id"] == PROJECT
        assert entry.username == USER and entry.auth_ok
        assert "gzip" in (entry.header("Accept-Encoding") or "")
    arrivals = sorted(r.time for r in log)
    assert all(sum(1 for t in arrivals if a <= t < a + 1) <= 3 for a in arrivals)
    assert SECRET not in first.stderr


def test_a_day_cut_off_midway_is_fetched_again_and_its_stored_rows_are_duplicates(tmp_path, miso):
    """A body cut mid-stream, and one ending in 'terminated early', fail their day: it is
    fetched again; what was stored of it counts as duplicates, nothing is sent twice."""
    days = days_back(2)
    rows = rows_for(days, CHUNK + 1500, "c")
    with FakeMixpanel(USER, SECRET, PROJECT, rows, per_second=None) as mixpanel:
        mixpanel.cut_next(after_bytes=40_000)
        mixpanel.terminate_early_next(after_rows=CHUNK + 1000)  # a chunk stored, then cut
        cli = Cli(tmp_path, miso, mixpanel)
        done = cli.run("replay", "mixpanel", "--from-api", "--from-date", days[0].isoformat(),
                       "--to-date", days[-1].isoformat())  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stderr.count("reading") >= 2 and "again" in done.stderr
        records = miso.wait_for(len(rows), timeout=60)
    assert max(tags(records).values()) == 1 and len(tags(records)) == len(rows)
    duplicates = int(done.stderr.split("duplicates: ")[1].split()[0].replace(",", ""))
    assert duplicates >= CHUNK  # the chunk stored before 'terminated early' was read


def test_killed_mid_backfill_then_resumed_sends_each_event_once(tmp_path, miso):
    """kill -9 while day 4 of 6 is being fetched, then --resume: complete days are not fetched
    again, and every event reaches Miso exactly once."""
    days = days_back(6)
    rows = rows_for(days, 500, "k")
    with FakeMixpanel(USER, SECRET, PROJECT, rows, per_second=None) as mixpanel:
        cli = Cli(tmp_path, miso, mixpanel)
        args = ["replay", "mixpanel", "--from-api", "--from-date", days[0].isoformat(),
                "--to-date", days[-1].isoformat()]  # fmt: skip
        mixpanel.delay_next(0)
        mixpanel.delay_next(0)
        mixpanel.delay_next(0)
        mixpanel.delay_next(30)  # day 4 hangs: the replay is killed meanwhile
        process = subprocess.Popen(cli.command(*args), env=cli.env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 30
        while len(mixpanel.requests) < 3:  # a request is logged once answered
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        time.sleep(1.0)  # day 3 is stored; day 4's request waits on the fake
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        before = len(mixpanel.requests)
        resumed = cli.run(*args, "--resume")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "inputs already complete were skipped" in resumed.stderr
        assert len(mixpanel.requests) - before <= 4  # only the days not complete
        records = miso.wait_for(len(rows), timeout=60)
        time.sleep(0.5)
    assert tags(miso.records) == Counter(r["properties"]["product_id"] for r in rows)
    assert len(records) >= len(rows)


def test_wrong_credentials_stop_with_mixpanels_reason_and_send_nothing(tmp_path, miso):
    """A wrong secret: exit 1 with Mixpanel's own message; the secret is never printed."""
    with FakeMixpanel(USER, "the-right-one", PROJECT, rows_for(days_back(1), 5, "w")) as mixpanel:
        cli = Cli(tmp_path, miso, mixpanel)
        done = cli.run("replay", "mixpanel", "--from-api", "--from-date", TODAY.isoformat())
    assert done.returncode == 1
    assert "401" in done.stderr and "refused" in done.stderr
    assert SECRET not in done.stderr + done.stdout
    assert miso.requests == []


def test_sync_once_twice_sends_exactly_the_new_and_late_rows(tmp_path, miso):
    """sync --once, then late rows on a past day inside the lookback and new rows today, then
    sync --once again: exactly the new rows are delivered, and the second cycle starts from
    the stored cursor minus the lookback, not from --start."""
    days = days_back(3)
    early = rows_for(days, 50, "s1")
    with FakeMixpanel(USER, SECRET, PROJECT, early, per_second=None) as mixpanel:
        cli = Cli(tmp_path, miso, mixpanel)
        start = (TODAY - timedelta(days=2)).isoformat()
        first = cli.run("sync", "mixpanel", "--once", "--start", start, "--lookback-days", "2")
        assert first.returncode == 0, first.stderr[-3000:]
        assert tags(miso.wait_for(len(early), timeout=30)) == Counter(
            r["properties"]["product_id"] for r in early
        )
        first_from = min(r.query["from_date"] for r in mixpanel.requests)
        assert first_from == (TODAY - timedelta(days=4)).isoformat()
        miso.reset()
        later = rows_for([TODAY - timedelta(days=1)], 20, "late") + rows_for([TODAY], 30, "new")
        mixpanel.add_rows(later)
        seen = len(mixpanel.requests)
        second = cli.run("sync", "mixpanel", "--once", "--start", "2020-01-01",
                         "--lookback-days", "2")  # fmt: skip
        assert second.returncode == 0, second.stderr[-3000:]
        assert tags(miso.wait_for(len(later), timeout=30)) == Counter(
            r["properties"]["product_id"] for r in later
        )
        second_from = min(r.query["from_date"] for r in mixpanel.requests[seen:])
    assert second_from == (TODAY - timedelta(days=2)).isoformat()  # cursor (today) - 2
    time.sleep(0.5)
    assert len(miso.records) == len(later)
    store = open_store(cli.env["ADAPTER_STORE"])
    status = store.get_status(f"mixpanel-sync:{PROJECT}")
    store.close()
    assert status["cursor"] == TODAY.isoformat()
    assert status["last_cycle"]["ok"] and status["last_cycle"]["new"] == len(later)
    assert status["last_cycle"]["duplicates"] == len(early)


def test_a_cadence_over_the_hourly_budget_is_refused(tmp_path, miso):
    """--every too short for the lookback's requests: refused before anything is pulled."""
    with FakeMixpanel(USER, SECRET, PROJECT) as mixpanel:
        cli = Cli(tmp_path, miso, mixpanel)
        done = cli.run("sync", "mixpanel", "--every", "60", "--lookback-days", "5")
        assert done.returncode == 2 and "--every at least 360 s" in done.stderr
        assert mixpanel.requests == []


def test_two_hosts_on_one_redis_store_take_turns(tmp_path, miso):
    """Two `sync --once` on one Redis store at once: one pulls, the other waits for its
    lease; every row is delivered once."""
    import redis

    prefix = f"test-sync-{uuid.uuid4().hex[:8]}:"
    require_redis("redis://127.0.0.1:6379/0").close()
    rows = rows_for(days_back(2), 200, "r")
    with FakeMixpanel(USER, SECRET, PROJECT, rows, per_second=None) as mixpanel:
        mixpanel.delay_next(2)  # the first cycle's first request is slow: the other waits
        cli = Cli(tmp_path, miso, mixpanel,
                  ADAPTER_STORE=f"redis://127.0.0.1:6379/0?prefix={prefix}")  # fmt: skip
        args = cli.command("sync", "mixpanel", "--once", "--lookback-days", "1")
        hosts = [subprocess.Popen(args, env=cli.env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
        outputs = [h.communicate(timeout=120) for h in hosts]
        assert [h.returncode for h in hosts] == [0, 0], outputs
        assert sum("another host syncs" in err for _, err in outputs) == 1
        records = miso.wait_for(len(rows), timeout=30)
        time.sleep(0.5)
    assert tags(miso.records) == Counter(r["properties"]["product_id"] for r in rows)
    assert len(records) == len(rows)
    cleanup = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    for key in cleanup.scan_iter(match=f"{prefix}*"):
        cleanup.delete(key)


def test_serve_runs_the_sync_and_readyz_reports_a_failing_one(tmp_path, miso):
    """serve with MIXPANEL_SYNC=1 pulls and delivers; with a wrong secret, /readyz names the
    failing sync (and stays 200: the webhooks go on)."""
    from adapter.testing.service import Service

    rows = rows_for(days_back(1), 25, "sv")
    with FakeMixpanel(USER, SECRET, PROJECT, rows, per_second=None) as mixpanel:
        for secret, works in ((SECRET, True), ("wrong", False)):
            folder = tmp_path / ("good" if works else "bad")
            folder.mkdir()
            service = Service(folder, miso, miso_key=MISO_KEY)
            service.env.update(MIXPANEL_SYNC="1", MIXPANEL_PROJECT_ID=PROJECT,
                               MIXPANEL_SERVICE_ACCOUNT=f"{USER}:{secret}",
                               MIXPANEL_EXPORT_URL=mixpanel.url,
                               MIXPANEL_SYNC_LOOKBACK_DAYS="1")  # fmt: skip
            service.start()
            try:
                if works:
                    assert len(miso.wait_for(len(rows), timeout=30)) == len(rows)
                deadline = time.monotonic() + 30
                while True:
                    ready = requests.get(f"{service.url}/readyz", timeout=5).json()
                    sync = ready["checks"].get("mixpanel_sync", "")
                    if sync.startswith("ok" if works else "FAILING"):
                        break
                    assert time.monotonic() < deadline, ready
                    time.sleep(0.3)
                if not works:
                    assert "401" in sync and "wrong" not in sync
            finally:
                service.stop()
            miso.reset()


def test_the_console_and_readyz_show_the_sync(tmp_path, monkeypatch):
    """The console's overview shows the last cycle (window, rows, new, duplicates, cursor,
    error); /readyz names a failing sync and stays ready."""
    from adapter import create_app
    from adapter.store import current

    monkeypatch.setenv("MIXPANEL_PROJECT_ID", PROJECT)
    monkeypatch.setenv("MIXPANEL_SYNC", "1")
    app = create_app({
        "TESTING": True, "ADAPTER_STORE": f"sqlite:///{tmp_path}/c.db",
        "ADAPTER_TOKEN": "console-token", "MAPPINGS_RELOAD_SECONDS": 0, "MISO_API_KEY": "k",
    })  # fmt: skip
    client = app.test_client()
    bearer = {"Authorization": "Bearer console-token"}
    assert client.get("/readyz").json["checks"]["mixpanel_sync"] == "no cycle yet"
    cycle = {"ok": False, "first": "2024-05-01", "last": "2024-05-06", "requests": 6,
             "rows": 1234, "new": 1000, "duplicates": 234, "started_at": 1.0,
             "ended_at": 2.0, "error": "Mixpanel refused it (401): bad account"}  # fmt: skip
    current(app).set_status(f"mixpanel-sync:{PROJECT}", {
        "cursor": "2024-05-05", "last_cycle": cycle, "next_run_at": 3.0, "last_success_at": 1.5,
    })  # fmt: skip
    ready = client.get("/readyz")
    assert ready.status_code in (200, 503)
    assert ready.json["checks"]["mixpanel_sync"].startswith("FAILING: the last cycle")
    assert "401" in ready.json["checks"]["mixpanel_sync"]
    page = client.get("/console", headers=bearer).get_data(as_text=True)
    assert 'id="mixpanel-sync"' in page and "FAILED" in page and "bad account" in page
    for number in ("1,234", "1,000", "234", "2024-05-05"):
        assert number in page
    data = client.get("/console/api/overview", headers=bearer).json["sync"]
    assert data["cycle"]["new"] == 1000 and data["cursor"] == "2024-05-05"


def test_a_dry_run_from_the_api_prints_the_records_and_stores_nothing(tmp_path, miso):
    """--from-api --dry-run: the records of the pulled days on stdout, nothing stored or sent."""
    rows = rows_for(days_back(2), 30, "d")
    with FakeMixpanel(USER, SECRET, PROJECT, rows, per_second=None) as mixpanel:
        cli = Cli(tmp_path, miso, mixpanel)
        done = cli.run("replay", "mixpanel", "--from-api", "--from-date",
                       days_back(2)[0].isoformat(), "--dry-run")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(printed) == len(rows) and "records written: 60" in done.stderr
    assert miso.requests == [] and not (tmp_path / "adapter.db").exists()


def test_serve_with_a_sync_it_cannot_run_refuses_to_start(tmp_path):
    """MIXPANEL_SYNC=1 without an account: serve exits 1 at once, saying what is missing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIXPANEL_", "ADAPTER_"))}
    env.update(MIXPANEL_SYNC="1", MIXPANEL_PROJECT_ID=PROJECT,
               ADAPTER_STORE=f"sqlite:///{tmp_path}/a.db")  # fmt: skip
    command = [sys.executable, "-m", "adapter.cli", "serve", "--bind", "127.0.0.1:9"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    assert done.returncode == 1
    assert "MIXPANEL_SYNC=1: set MIXPANEL_SERVICE_ACCOUNT" in done.stderr
