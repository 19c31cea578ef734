"""End to end: `miso-adapter replay segment` on a Segment archive, into a fake Miso.

Every test runs the real command line in a subprocess with a clean environment, on a
deterministic archive from ``adapter/testing/segment_archive.py``: the layout Segment's Amazon S3
destination writes (``segment-logs/<source-id>/<day>/<hour>.<hex>.gz``, gzip JSON Lines),
three sources (a web shop, an iOS app, a backend), anonymous visitors who sign in later,
and 2% of messages redelivered by Segment in a later file. Each message that maps to a
record carries a unique tag (``s-<n>``), so what the fake Miso received can be compared
with what the archive holds: each record once, of the right type, with both ids where a
sign-in linked the visitor to an account.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from adapter.testing import FakeMiso
from adapter.testing.segment_archive import Archive, Entry, read_jsonl, record_key, write_archive
from adapter.testing.service import Service as RunningService
from adapter.testing.service import clean_env

MISO_KEY = "miso-replay-key"
HOUR_MS = 3_600_000


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

    def replay(self, *args: str | Path, expect: int = 0) -> subprocess.CompletedProcess:
        """``replay segment ARGS``; asserts the exit code, shows stderr when it differs."""
        done = subprocess.run(
            self.command("replay", "segment", *args), env=self.env, capture_output=True,
            text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == expect, f"exit {done.returncode}:\n{done.stderr[-4000:]}"
        return done

    def start(self, *args: str | Path, log: Path) -> subprocess.Popen:
        """``replay segment ARGS`` in its own process group (it and its forwarder child)."""
        with log.open("wb") as out:
            return subprocess.Popen(
                self.command("replay", "segment", *args), env=self.env,
                stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip

    def spool(self) -> int:
        """Records (not user uploads) the store holds for Miso (0 before the store exists)."""
        path = Path(self.store_url.removeprefix("sqlite:///"))
        if not path.exists():
            return 0
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as db:
            try:
                return db.execute("SELECT COUNT(*) FROM spool WHERE kind = 'record'").fetchone()[0]
            except sqlite3.Error:
                return 0


class Service(RunningService):
    """`miso-adapter serve` on the same store, in its own process group, log kept."""

    def __init__(self, folder: Path, miso: FakeMiso) -> None:
        super().__init__(folder, miso, miso_key=MISO_KEY)

    def post(self, messages: list[dict]) -> dict:  # type: ignore[override]
        """One signed ``POST /segment`` of a Webhooks (Actions) batch; its JSON answer."""
        response = super().post("/segment", messages, timeout=30)
        assert response.status_code == 200, f"{response.status_code} {response.text[:500]}"
        return response.json()


def keys(records: list[dict]) -> list[str]:
    return [record_key(r) for r in records]


def assert_exactly_once(records: list[dict], expected: dict) -> None:
    """Every expected message reached Miso once, as the right type, and nothing else did."""
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


def assert_linked_ids(
    records: list[dict], archive: Archive, *, besides: frozenset[str] = frozenset()
) -> None:
    """Each record has the ids the archive's links give it: an anonymous visit that ends in
    a sign-in goes out with the user too, a backend message with one of the user's devices.

    ``besides``: tags not checked (records a webhook sent as they came, before their link).
    """
    native = {e.tag: e.message() for e in archive.entries if e.tag and not e.copy}
    wrong, before_sign_in = [], 0
    for record in records:
        tag = record_key(record)
        if tag in besides:
            continue
        want = archive.expected[tag]
        anonymous = record.get("anonymous_id")
        ok_anonymous = anonymous in want.anonymous_ids if want.anonymous_ids else anonymous is None
        if record.get("user_id") != want.user_id or not ok_anonymous:
            wrong.append((tag, record.get("user_id"), anonymous, want.user_id))
            before_sign_in += "userId" not in native[tag] and want.user_id is not None
    assert wrong == [], (
        f"{len(wrong)} records with the wrong ids (tag, user_id, anonymous_id, expected user), "
        f"{before_sign_in} of them an anonymous visit's records sent without the user its "
        f"later sign-in links it to: {wrong[:5]}"
    )


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
def archive(tmp_path_factory) -> Archive:
    """10,000 messages over 3 days of May 2024, 2% redelivered, in the S3 layout."""
    return write_archive(tmp_path_factory.mktemp("bucket"), 10_000)


def _hour(entry: Entry) -> int:
    return int(entry.file.name.split(".", 1)[0])


def test_archive_holds_what_the_tests_rely_on(archive):
    """The archive has days, sources, later-file redeliveries, later sign-ins, late events."""
    layout = {f.relative_to(archive.root).parts[:2] for f in archive.files}
    assert layout == {("segment-logs", source) for source in archive.sources.values()}
    assert {f.parent.name for f in archive.files} == {"1714521600000", "1714608000000",
                                                      "1714694400000"}  # fmt: skip
    assert all(re.fullmatch(r"\d{13}\.[0-9a-f]{12}\.gz", f.name) for f in archive.files)
    assert 150 < archive.redelivered < 250 and archive.lines == 10_000
    first_file = {}
    for entry in archive.entries:
        first_file.setdefault(entry.message_id, entry.file)
        if entry.copy:
            assert entry.file > first_file[entry.message_id]
    native = {e.tag: e.message() for e in archive.entries if e.tag and not e.copy}
    linked_later = [
        t for t, e in archive.expected.items() if e.user_id and "userId" not in native[t]
    ]
    assert len(linked_later) > 100
    assert archive.late > 10


def test_archive_after_webhook_delivers_each_record_once(cli, miso, archive, tmp_path):
    """Webhook first, then the archive: each record reaches Miso once, linked ids and all."""
    # The webhook was switched on for the archive's last six hours.
    last = max(_hour(e) for e in archive.entries)
    posted = sorted((e for e in archive.entries if _hour(e) > last - 6 * HOUR_MS),
                    key=_hour)  # fmt: skip
    posted_tags = frozenset(e.tag for e in posted if e.tag)
    assert len(posted_tags) > 300
    with Service(tmp_path, miso) as service:
        for start in range(0, len(posted), 20):
            service.post([e.message() for e in posted[start : start + 20]])
        miso.wait_for(len(posted_tags), timeout=60)
    assert set(keys(miso.records)) == posted_tags

    done = cli.replay(archive.root)
    assert "delivered: everything accepted has reached Miso" in done.stderr
    fresh = len(archive.expected) - len(posted_tags)
    assert summary_number(done.stderr, "records accepted") == fresh
    # Every other tagged line is a redelivery, or was delivered through the webhook.
    tagged_lines = sum(1 for e in archive.entries if e.tag)
    assert summary_number(done.stderr, "duplicates") >= tagged_lines - fresh
    assert_exactly_once(miso.records, archive.expected)
    assert_linked_ids(miso.records, archive, besides=posted_tags)
    assert miso.server_errors == []


def test_killed_mid_replay_then_resume_delivers_each_record_once(cli, miso, archive, tmp_path):
    """kill -9 half way, then --resume: stored files are skipped, each record arrives once."""
    # Miso answers 503 until the kill: nothing is delivered, the spool shows the progress.
    miso.fail_next(503, times=100_000)
    log = tmp_path / "run1.log"
    process = cli.start(archive.root, log=log)
    try:
        deadline = time.monotonic() + 60
        while cli.spool() < 1500:
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the spool never grew"
            time.sleep(0.005)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    stored = cli.spool()
    assert 0 < stored < len(archive.expected), f"not killed half way: {stored} records stored"
    assert miso.records == []
    miso.reset()  # Miso is healthy again
    second = cli.replay(archive.root, "--resume")
    assert summary_number(second.stderr, "resumed") > 0
    assert summary_number(second.stderr, "records accepted") == len(archive.expected) - stored
    assert_exactly_once(miso.records, archive.expected)
    assert_linked_ids(miso.records, archive)


def test_dry_run_writes_exactly_the_expected_records(cli, miso, archive, tmp_path):
    """--dry-run --output FILE writes each expected record once, and sends and stores nothing."""
    out = tmp_path / "records.jsonl"
    done = cli.replay(archive.root, "--dry-run", "--output", out)
    records = read_jsonl(out)
    assert_exactly_once(records, archive.expected)
    late = [(record_key(r), r["timestamp"]) for r in records
            if r["timestamp"] != archive.expected[record_key(r)].timestamp]  # fmt: skip
    assert late == []
    assert summary_number(done.stderr, "records written") == len(records)
    assert done.stdout == ""
    assert miso.requests == []
    assert not (tmp_path / "adapter.db").exists()


def test_stray_files_are_reported_and_skipped(cli, miso, tmp_path):
    """Non-JSON files in the folders are named on stderr and skipped; the rest is replayed."""
    small = write_archive(tmp_path / "bucket", 1500, days=1, seed=11)
    readme = small.root / "segment-logs" / "README.txt"
    readme.write_text("Segment S3 destination bucket, exported for the data team.\n")
    inventory = small.files[0].parent / "inventory.csv"
    inventory.write_text("key,size\nsegment-logs/x/1.gz,1234\n")
    done = cli.replay(small.root)
    assert "README.txt" in done.stderr and "inventory.csv" in done.stderr
    assert "delivered: everything accepted has reached Miso" in done.stderr
    assert_exactly_once(miso.records, small.expected)


def test_since_until_keep_the_event_time_window(cli, miso, archive, tmp_path):
    """--since/--until keep the messages' own time window; a bare --until date is whole."""
    out = tmp_path / "records.jsonl"
    cli.replay(archive.root, "--dry-run", "--output", out,
               "--since", "2024-05-02", "--until", "2024-05-02")  # fmt: skip
    wanted = {t for t, e in archive.expected.items() if e.timestamp.startswith("2024-05-02")}
    day_two_file = {e.tag: e.file.parent.name == "1714608000000" for e in archive.entries
                    if e.tag and not e.copy}  # fmt: skip
    # Late messages make the two differ both ways (iOS apps send hours after the event).
    assert {t for t in wanted if not day_two_file[t]}
    assert {t for t, in_file in day_two_file.items() if in_file and t not in wanted}
    assert max(archive.expected[t].timestamp for t in wanted) > "2024-05-02T23:"
    assert set(keys(read_jsonl(out))) == wanted
    assert miso.requests == []
