"""The replay's progress reporting and summary, without running a replay."""

from __future__ import annotations

import io

from adapter.ingest import IngestResult
from adapter.replay import Progress, ReplaySummary


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_when_not_a_terminal(monkeypatch):
    """Off a terminal, progress is periodic plain lines: events, rate, share of file, ETA."""
    monkeypatch.setattr(Progress, "interval", 0.0)
    out = io.StringIO()
    progress = Progress(total=2_000_000, label="export.jsonl", stream=out)
    progress.update(position=500_000, events=12_345)
    progress.close()
    [line] = out.getvalue().splitlines()
    assert line.startswith("export.jsonl: 12,345 events (")
    assert "/s), 25% of 2.0 MB, ETA " in line


def test_bar_on_a_terminal():
    """On a terminal, a tqdm bar shows bytes done, events and events/s."""
    out = Terminal()
    progress = Progress(total=1000, label="export.jsonl", stream=out)
    progress.update(position=500, events=42)
    progress.close()
    text = out.getvalue()
    assert "export.jsonl" in text and "42 events" in text and "50%" in text


def test_summary_counts_what_this_run_sent():
    """The summary says what was sent, dead-lettered and left waiting by this run only."""
    result = IngestResult(received=10, accepted=8, duplicates=1)
    result.skipped["no rule for event 'X'"] = 1
    summary = ReplaySummary(files=1, rows=10, result=result)
    summary.start_stats = {"spool": 5, "dead_letters": 2, "oldest_age": 0}
    summary.end_stats = {"spool": 6, "dead_letters": 3, "oldest_age": 0}
    lines = summary.lines(dry_run=False)
    assert lines[0] == "read 10 rows from 1 file(s); 0 malformed"
    assert "records accepted: 8   duplicates: 1" in lines
    assert "sent to Miso: 6   dead letters: 1   still waiting: 1" in lines
    assert "           1  no rule for event 'X'" in lines


def test_inputs_of_unknown_size_are_counted_instead_of_bytes(monkeypatch):
    """Days of an export API have no size known ahead: progress counts them."""
    monkeypatch.setattr(Progress, "interval", 0.0)
    out = io.StringIO()
    progress = Progress(total=6, label="6 inputs", stream=out, unit="input")
    progress.update(position=3, events=900)
    [line] = out.getvalue().splitlines()
    assert "50% of 6 inputs" in line
