"""End to end: `miso-adapter replay mixpanel` as a user runs it, into a fake Miso.

Every test runs the real command line in a subprocess with a clean environment, on a
deterministic export from ``adapter/testing/mixpanel_export.py`` (mixpanel-js rows, server-side
imports, identity rows, hot shards, duplicate lines, unsorted times), and compares what
the fake Miso received with what the export holds: each event that maps to a record
carries a unique tag (``p-<n>``, ``q-<n>``, ``h-<n>``) and its true UTC time.
"""

from __future__ import annotations

import gzip
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from adapter.replay import checkpoint_name
from adapter.store import StoreError, open_store
from adapter.testing import FakeMiso, RequestLog
from adapter.testing.mixpanel_export import Export, read_jsonl, record_key, write_export
from adapter.testing.service import clean_env

MISO_KEY = "miso-replay-key"
LA = "America/Los_Angeles"


class Replay:
    """The miso-adapter command line against one store and the fake Miso."""

    def __init__(self, folder: Path, miso: FakeMiso) -> None:
        self.folder = folder
        self.store_url = f"sqlite:///{folder}/adapter.db"  # folder is absolute: 4 slashes
        self.env = clean_env(
            MISO_API_URL=miso.url,
            MISO_API_KEY=MISO_KEY,
            ADAPTER_STORE=self.store_url,
            ADAPTER_BACKOFF_BASE="0.05",
            ADAPTER_BACKOFF_CAP="0.3",
            ADAPTER_LEASE_SECONDS="3",
        )

    def command(self, *args: str | Path) -> list[str]:
        return [sys.executable, "-m", "adapter.cli", *map(str, args)]

    def run(self, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(*args), env=self.env, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip

    def replay(self, *args: str | Path, expect: int = 0) -> subprocess.CompletedProcess:
        """``replay mixpanel ARGS``; asserts the exit code, shows stderr when it differs."""
        done = self.run("replay", "mixpanel", *args)
        assert done.returncode == expect, f"exit {done.returncode}:\n{done.stderr[-4000:]}"
        return done

    def start(self, *args: str | Path, log: Path) -> subprocess.Popen:
        with log.open("wb") as out:
            return subprocess.Popen(
                self.command("replay", "mixpanel", *args), env=self.env,
                stdout=out, stderr=out,
            )  # fmt: skip

    def checkpoint(self, path: Path) -> int:
        """Rows of ``path`` the store has committed as done (0 before the first chunk)."""
        try:
            store = open_store(self.store_url)
        except StoreError:
            return 0
        try:
            saved = store.get_status(checkpoint_name(path))
        except StoreError:
            saved = None
        finally:
            store.close()
        return int(saved["rows"]) if saved else 0


def keys(records: list[dict]) -> list[str]:
    return [record_key(r) for r in records]


def assert_exactly_once(records: list[dict], expected: dict) -> None:
    """Every expected event reached Miso once, as the right type, and nothing else did."""
    counts = Counter(keys(records))
    twice = sorted(k for k, n in counts.items() if n > 1)
    missing = sorted(set(expected) - set(counts))
    extra = sorted(set(counts) - set(expected))
    assert (twice, missing, extra) == ([], [], []), (
        f"{len(twice)} sent twice {twice[:5]}, {len(missing)} missing {missing[:5]}, "
        f"{len(extra)} unexpected {extra[:5]}"
    )
    wrong = [(record_key(r), r["type"]) for r in records
             if r["type"] != expected[record_key(r)].type]  # fmt: skip
    assert wrong == []


def summary_number(stderr: str, label: str) -> int:
    """A count from the replay's final summary, e.g. ``duplicates: 1,234``."""
    match = re.search(rf"{label}:? ([\d,]+)", stderr)
    assert match, f"no {label!r} in:\n{stderr}"
    return int(match.group(1).replace(",", ""))


@pytest.fixture(scope="module")
def miso():
    with FakeMiso(api_key=MISO_KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_miso(miso):
    miso.reset()
    miso.on_request = None
    yield
    miso.on_request = None


@pytest.fixture
def cli(tmp_path, miso) -> Replay:
    return Replay(tmp_path, miso)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Export:
    """2,000 lines over 90 days of 2024, UTC times, with a few duplicate lines."""
    return write_export(tmp_path_factory.mktemp("export") / "export.jsonl", 2000)


def test_same_file_twice_delivers_each_event_once(cli, miso, export):
    """Replaying the same export twice delivers each of its events to Miso exactly once."""
    assert export.duplicates > 0
    first = cli.replay(export.path)
    assert "delivered: everything accepted has reached Miso" in first.stderr
    assert_exactly_once(miso.records, export.expected)
    second = cli.replay(export.path)
    assert summary_number(second.stderr, "records accepted") == 0
    assert summary_number(second.stderr, "duplicates") >= len(export.expected)
    assert_exactly_once(miso.records, export.expected)
    assert miso.server_errors == []


def test_overlapping_exports_deliver_each_event_once(cli, miso, tmp_path):
    """Two exports sharing a day (Mixpanel's inclusive date chunks) deliver each event once."""
    a = write_export(tmp_path / "jan-feb.jsonl", 3000, window=(0, 45))
    b = write_export(tmp_path / "feb-mar.jsonl", 3000, window=(45, 89))
    shared = set(a.expected) & set(b.expected)
    assert len(shared) > 10 and set(a.expected) - shared and set(b.expected) - shared
    cli.replay(a.path)
    second = cli.replay(b.path)
    assert summary_number(second.stderr, "duplicates") >= len(shared)
    assert_exactly_once(miso.records, {**a.expected, **b.expected})


def test_killed_while_reading_resume_delivers_each_event_once(cli, miso, tmp_path):
    """SIGKILL mid-file, then --resume: the done rows are skipped, every event arrives once."""
    big = write_export(tmp_path / "big.jsonl", 20_000, dup_rate=0.01)
    # Miso answers 503 until the kill: a batch in flight then cannot have been accepted
    # (Miso has no idempotency, so an accepted-but-unacknowledged batch would come twice).
    miso.fail_next(503, times=10_000)
    process = cli.start(big.path, log=tmp_path / "run1.log")
    try:
        deadline = time.monotonic() + 30
        while (done := cli.checkpoint(big.path)) < 1000:
            assert process.poll() is None, (tmp_path / "run1.log").read_text()
            assert time.monotonic() < deadline, "the checkpoint never advanced"
            time.sleep(0.005)
    finally:
        process.kill()
        process.wait()
    done = cli.checkpoint(big.path)
    assert 0 < done < big.lines, f"not killed mid-file: checkpoint {done} of {big.lines}"
    assert miso.records == []
    miso.reset()  # Miso is healthy again
    second = cli.replay(big.path, "--resume")
    assert summary_number(second.stderr, "resumed") == done
    assert summary_number(second.stderr, "read") == big.lines - done
    assert_exactly_once(miso.records, big.expected)


def test_killed_while_sending_resume_delivers_each_event_once(cli, miso, tmp_path):
    """SIGKILL after Miso got part of it, then --resume: every event arrives exactly once."""
    data = write_export(tmp_path / "export.jsonl", 5000)
    process: subprocess.Popen | None = None

    def kill_on_second_batch(entry: RequestLog) -> None:
        # After the first 200, the next answer is a 503 and the replay dies before it
        # arrives: the forwarder sends one batch at a time, so every 200 was acknowledged.
        if entry.status == 200 and len(miso.requests) == 1:
            miso.fail_next(503, times=2)
        elif entry.status == 503 and process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)

    miso.on_request = kill_on_second_batch
    process = cli.start(data.path, log=tmp_path / "run1.log")
    try:
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "run1.log").read_text()
    received = len(miso.records)
    assert 0 < received < len(data.expected)
    miso.on_request = None
    second = cli.replay(data.path, "--resume")
    assert summary_number(second.stderr, "resumed") > 0
    assert_exactly_once(miso.records, data.expected)
    assert [r.status for r in miso.requests][:2] == [200, 503]


@pytest.fixture(scope="module")
def pacific(tmp_path_factory) -> Export:
    """A pre-2023 project's export in Pacific wall-clock time, across the March 2022 DST."""
    path = tmp_path_factory.mktemp("pacific") / "pacific.jsonl"
    return write_export(path, 1500, tz=LA, start="2022-02-01", days=90)


def _utc(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def test_project_timezone_gives_true_utc_across_dst(cli, miso, pacific):
    """--project-timezone America/Los_Angeles turns local export times into true UTC."""
    offsets = {_utc(e.exported_time) != e.timestamp for e in pacific.expected.values()}
    hours = {
        (datetime.fromisoformat(e.timestamp).timestamp() - e.exported_time) / 3600
        for e in pacific.expected.values()
    }
    assert offsets == {True} and hours == {7.0, 8.0}  # PST and PDT both present
    cli.replay(pacific.path, "--project-timezone", LA)
    assert_exactly_once(miso.records, pacific.expected)
    wrong = [(record_key(r), r["timestamp"], pacific.expected[record_key(r)].timestamp)
             for r in miso.records
             if r["timestamp"] != pacific.expected[record_key(r)].timestamp]  # fmt: skip
    assert wrong == []


def test_time_offset_is_a_fixed_shift(cli, miso, pacific, tmp_path):
    """--time-offset -8 adds 8 h to every local time, DST or not (an hour off in summer)."""
    out = tmp_path / "records.jsonl"
    cli.replay(pacific.path, "--dry-run", "--output", out, "--time-offset", "-8")
    records = read_jsonl(out)
    assert set(keys(records)) == set(pacific.expected)
    shifted = {r["timestamp"] != _utc(pacific.expected[record_key(r)].exported_time + 8 * 3600)
               for r in records}  # fmt: skip
    assert shifted == {False}
    summer = {record_key(r) for r in records
              if r["timestamp"] != pacific.expected[record_key(r)].timestamp}  # fmt: skip
    assert summer and summer < set(pacific.expected)
    assert miso.requests == []


def test_miso_429_and_500_are_retried_until_delivered(cli, miso, tmp_path):
    """Miso answering 500s and a 429 (Retry-After: 1) mid-replay: all delivered, none dead."""
    data = write_export(tmp_path / "export.jsonl", 4000)

    def misbehave(entry: RequestLog) -> None:
        if entry.status == 200 and len(miso.requests) == 1:
            miso.fail_next(500, times=3)
            miso.fail_next(429, headers={"Retry-After": "1"})
            miso.fail_next(500, times=2)

    miso.on_request = misbehave
    done = cli.replay(data.path)
    assert "delivered: everything accepted has reached Miso" in done.stderr
    assert "dead letters: 0" in done.stderr
    assert_exactly_once(miso.records, data.expected)
    assert [r.status for r in miso.requests][:7] == [200, 500, 500, 500, 429, 500, 500]
    listed = cli.run("dead-letters", "list")
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "", "0 dead letters\n")


def test_dry_run_writes_records_and_sends_nothing(cli, miso, export, tmp_path):
    """--dry-run --output FILE writes every record to the file and sends nothing."""
    out = tmp_path / "records.jsonl"
    done = cli.replay(export.path, "--dry-run", "--output", out)
    records = read_jsonl(out)
    assert set(keys(records)) == set(export.expected)
    assert summary_number(done.stderr, "records written") == len(records)
    assert done.stdout == ""
    assert miso.requests == []


def test_dry_run_shows_exactly_what_the_replay_then_sends(cli, miso, tmp_path):
    """On an export full of duplicate lines that overlaps one already replayed, --dry-run
    writes exactly the records the replay then sends, and writes nothing to the store."""
    full = write_export(tmp_path / "full.jsonl", 1500, dup_rate=0.3, seed=7)
    lines = full.path.read_bytes().splitlines(keepends=True)
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_bytes(b"".join(lines[:600]))
    cli.replay(earlier)
    miso.reset()
    store_file = tmp_path / "adapter.db"
    before = store_file.read_bytes()
    out = tmp_path / "preview.jsonl"
    preview = cli.replay(full.path, "--dry-run", "--output", out)
    assert store_file.read_bytes() == before
    shown = Counter(keys(read_jsonl(out)))
    assert summary_number(preview.stderr, "duplicates") > full.duplicates > 100
    done = cli.replay(full.path)
    sent = Counter(keys(miso.records))
    assert shown == sent
    assert max(sent.values()) == 1 and 0 < len(sent) < len(set(full.expected))
    assert summary_number(preview.stderr, "records written") == summary_number(
        done.stderr, "records accepted"
    )


def test_dry_run_records_are_the_records_miso_receives_ids_and_all(cli, miso, tmp_path):
    """Within one chunk (links stored with the records they complete), the dry run's records
    are, field for field, the records Miso then receives: ids filled from links included."""
    full = write_export(tmp_path / "small.jsonl", 900, dup_rate=0.2, seed=11)
    lines = full.path.read_bytes().splitlines(keepends=True)
    earlier = tmp_path / "earlier.jsonl"
    earlier.write_bytes(b"".join(lines[:300]))
    cli.replay(earlier)  # links and dedup keys already in the store
    miso.reset()
    out = tmp_path / "preview.jsonl"
    cli.replay(full.path, "--dry-run", "--output", out)
    cli.replay(full.path)

    def canonical(records: list[dict]) -> list[bytes]:
        return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records)

    shown = read_jsonl(out)
    assert canonical(shown) == canonical(miso.records)
    both = [r for r in shown if r.get("user_id") and r.get("anonymous_id")]
    assert len(both) > 10  # the comparison covers records completed from links


def test_since_until_filter_by_date(cli, miso, export, tmp_path):
    """--since/--until keep events from the first day through the last, both included."""
    out = tmp_path / "records.jsonl"
    cli.replay(export.path, "--dry-run", "--output", out,
               "--since", "2024-02-01", "--until", "2024-02-10")  # fmt: skip
    days = {k: e.timestamp[:10] for k, e in export.expected.items()}
    wanted = {k for k, day in days.items() if "2024-02-01" <= day <= "2024-02-10"}
    assert {"2024-02-01", "2024-02-10"} <= {days[k] for k in wanted}
    assert set(keys(read_jsonl(out))) == wanted
    assert miso.requests == []


def test_malformed_line_is_reported_and_the_rest_delivered(cli, miso, tmp_path):
    """A broken line is named by file and line on stderr, counted, and the rest delivered."""
    data = write_export(tmp_path / "export.jsonl", 1000, malformed_at=(37,))
    done = cli.replay(data.path, expect=1)
    assert re.search(rf"^{re.escape(str(data.path))}:37: error: invalid JSON", done.stderr, re.M)
    assert re.search(rf"^read {data.lines:,} rows from 1 file\(s\); 1 malformed$", done.stderr,
                     re.M), done.stderr  # fmt: skip
    assert_exactly_once(miso.records, data.expected)


def test_gzip_export_replays_like_the_plain_one(cli, miso, export, tmp_path):
    """A gzip export gives the same records as the plain one, and is delivered in full."""
    packed = write_export(tmp_path / "export.jsonl.gz", 2000, gzip=True)
    with gzip.open(packed.path, "rb") as stream:
        assert stream.read() == export.path.read_bytes()
    plain_out, packed_out = tmp_path / "plain.jsonl", tmp_path / "packed.jsonl"
    cli.replay(export.path, "--dry-run", "--output", plain_out)
    cli.replay(packed.path, "--dry-run", "--output", packed_out)
    assert packed_out.read_bytes() == plain_out.read_bytes()
    cli.replay(packed.path)
    assert_exactly_once(miso.records, packed.expected)


def test_a_replay_shows_on_the_console(cli, miso, export):
    """A replay's counts (events read, records stored, sent to Miso) land in the store's
    activity tallies, so the operator console shows replays beside webhooks."""
    done = cli.replay(export.path)
    store = open_store(cli.store_url)
    try:
        totals: Counter[tuple[str, str]] = Counter()
        for _, metric, source, _, n in store.activity(0):
            totals[metric, source] += n
    finally:
        store.close()
    assert totals["received", "mixpanel"] == export.lines
    assert totals["stored", "mixpanel"] == summary_number(done.stderr, "records accepted")
    assert totals["duplicates", "mixpanel"] == summary_number(done.stderr, "duplicates")
    # The forwarder child process tallies what Miso took.
    assert totals["forwarded", ""] == len(miso.records) == len(export.expected)
