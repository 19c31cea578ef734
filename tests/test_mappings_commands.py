"""`mappings test` and `mappings coverage` as a user runs them."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest

from adapter import cli

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = str(ROOT / "examples" / "segment-events.jsonl")


@pytest.mark.parametrize(
    "folder",
    ["mappings", "mappings/examples/content-site", "mappings/examples/page-paths"],
)
def test_shipped_mapping_tests_pass(folder, capsys):
    """The shipped tables pass their own cases: exit 0 and 'N passed, 0 failed'."""
    assert cli.main(["mappings", "test", "--dir", str(ROOT / folder)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.endswith(" passed, 0 failed") and int(last.split()[0]) >= 18


def test_broken_default_rule_fails_readably(tmp_path, capsys):
    """A changed fallback order in segment.yaml fails with expected and actual side by side."""
    folder = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", folder, ignore=shutil.ignore_patterns("examples"))
    path = folder / "segment.yaml"
    text = path.read_text()
    old = "revenue: [properties.revenue, properties.total]"
    assert old in text
    path.write_text(text.replace(old, "revenue: [properties.total, properties.revenue]"))
    assert cli.main(["mappings", "test", "--dir", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "FAIL " in out and "--- expected" in out and "+++ actual" in out
    assert '-    "revenue": 25,' in out and '+    "revenue": 27.5,' in out
    assert out.strip().splitlines()[-1].endswith(" passed, 1 failed")


def test_coverage_text_and_json(capsys):
    """coverage prints counts by outcome and stubs; --format json is machine-readable."""
    assert cli.main(["mappings", "coverage", "segment", EXAMPLE]) == 0
    text = capsys.readouterr().out
    assert "16 events: 11 mapped, 2 skipped on purpose, 3 not covered" in text
    assert "  - events: [Cart Viewed]" in text and "  - pages: ['^/about$']" in text
    assert cli.main(["mappings", "coverage", "segment", EXAMPLE, "--format", "json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    outcomes = {row["key"]: row["outcome"] for row in report["rows"]}
    assert outcomes["Product Viewed"] == "mapped" and outcomes["Cart Viewed"] == "uncovered"


def test_coverage_usage_errors(tmp_path, capsys):
    """coverage needs SOURCE and an existing FILE."""
    assert cli.main(["mappings", "coverage"]) == 2
    assert cli.main(["mappings", "coverage", "segment", str(tmp_path / "nope.jsonl")]) == 1
    assert "no such file" in capsys.readouterr().err
