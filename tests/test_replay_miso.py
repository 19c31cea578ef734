"""End to end: `miso-adapter replay miso` of records already in Miso's shape, into a fake Miso.

Every test runs the real command line in a subprocess with a clean environment. The files
hold valid records of many types and about 5% invalid ones (a wrong type, a missing
field, a number for an id, no id at all): each invalid record is reported with its place
and Miso's field and reason, and never sent; every valid one arrives exactly once, as it
was written.
"""

from __future__ import annotations

import gzip
import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from adapter.testing import FakeMiso
from adapter.testing.service import clean_env

MISO_KEY = "miso-records-key"


class Cli:
    """The miso-adapter command line against one store and the fake Miso."""

    def __init__(self, folder: Path, miso: FakeMiso) -> None:
        self.env = clean_env(
            MISO_API_URL=miso.url,
            MISO_API_KEY=MISO_KEY,
            ADAPTER_STORE=f"sqlite:///{folder}/adapter.db",
            ADAPTER_BACKOFF_BASE="0.05",
            ADAPTER_BACKOFF_CAP="0.3",
        )

    def replay(self, *args: str | Path, expect: int) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-m", "adapter.cli", "replay", "miso", *map(str, args)],
            env=self.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == expect, f"exit {done.returncode}:\n{done.stderr[-4000:]}"
        return done


def valid_record(rng: random.Random, n: int) -> dict:
    """A valid record of one of several types; its user is its own, so no link fills it."""
    stamp = f"2024-05-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00.000Z"
    ids = {"user_id": f"u-{n}"} if n % 3 else {"anonymous_id": f"a-{n}"}
    kind = rng.choice(["product_detail_page_view", "add_to_cart", "checkout", "search", "like"])
    record: dict = {"type": kind, "timestamp": stamp, **ids}
    if kind == "search":
        record["search"] = {"keywords": f"tent {n}"}
    else:
        record["product_ids"] = [f"m-{n}"]
    if kind == "checkout":
        record["revenue"] = round(rng.uniform(5, 500), 2)
    return record


#: Invalid records, each with the field and the reason its error must name (a like has no
#: revenue in Miso's schema).
INVALID = [
    ({"type": "purchase", "user_id": "x", "product_ids": ["p"]}, "type: Must be one of"),
    ({"type": "like", "user_id": "x", "product_ids": "p"}, "product_ids: Not a valid list"),
    ({"type": "like", "user_id": "x", "product_ids": ["p"], "revenue": 10},
     "revenue: Unknown field"),
    ({"type": "like", "user_id": "x", "product_ids": [42]}, "product_ids.0: Not a valid string"),
    ({"type": "like", "product_ids": ["p"]}, "neither user_id nor anonymous_id"),
    ({"type": "like", "user_id": "x", "product_ids": ["p"], "timestamp": "yesterday"},
     "timestamp:"),
]  # fmt: skip


def records_file(path: Path, count: int, *, seed: int = 5) -> tuple[list[dict], dict[int, str]]:
    """JSON Lines of ``count`` records, ~5% invalid; (valid records, line → expected error)."""
    rng = random.Random(seed)
    valid: list[dict] = []
    invalid: dict[int, str] = {}
    lines = []
    for n in range(1, count + 1):
        if n % 20 == 7:
            record, reason = INVALID[(n // 20) % len(INVALID)]
            invalid[n] = reason
        else:
            record = valid_record(rng, n)
            valid.append(record)
        lines.append(orjson.dumps(record))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return valid, invalid


@pytest.fixture(scope="module")
def miso():
    with FakeMiso(api_key=MISO_KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_miso(miso):
    miso.reset()


def canonical(records: list[dict]) -> list[bytes]:
    return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in records)


def test_valid_records_arrive_once_unchanged_and_invalid_ones_are_reported(tmp_path, miso):
    """1,000 records with 5% invalid: each valid one reaches Miso once, as written; each
    invalid one is named by file:line with Miso's field and reason; exit 1; a second load
    sends nothing."""
    path = tmp_path / "records.jsonl"
    valid, invalid = records_file(path, 1000)
    assert len(invalid) == 50
    cli = Cli(tmp_path, miso)
    done = cli.replay(path, expect=1)
    assert canonical(miso.wait_for(len(valid), timeout=30)) == canonical(valid)
    reported = [line for line in done.stderr.splitlines() if ": error: invalid record: " in line]
    shown = {int(line.split(":", 2)[1]): line for line in reported if line.startswith(str(path))}
    assert len(reported) == 20  # the first 20 named one by one; the rest counted
    for number, line in shown.items():
        assert invalid[number] in line, line
    assert "... 30 more" in done.stderr
    assert "50 malformed" in done.stderr
    miso.reset()
    again = cli.replay(path, expect=1)
    assert f"records accepted: 0   duplicates: {len(valid):,}" in again.stderr
    assert miso.records == []


@pytest.mark.parametrize("shape", ["data", "array", "gzip"])
def test_dojo_data_files_and_arrays_are_read_with_their_positions(tmp_path, miso, shape):
    """{"data": [...]} (what Dojo imports), a JSON array, and gzip: every valid record sent,
    an invalid one named by its index."""
    rng = random.Random(9)
    records = [valid_record(rng, n) for n in range(1, 6)]
    bad = {"type": "like", "user_id": "x", "product_ids": [1]}
    body = [*records[:2], bad, *records[2:]]
    path = tmp_path / "records.json"
    data = orjson.dumps({"data": body} if shape == "data" else body)
    path.write_bytes(gzip.compress(data) if shape == "gzip" else data)
    done = Cli(tmp_path, miso).replay(path, expect=1)
    where = f"{path}:1, data.2" if shape == "data" else f"{path} item 3"
    assert f"{where}: error: invalid record: product_ids.0: Not a valid string." in done.stderr
    assert canonical(miso.wait_for(5, timeout=30)) == canonical(records)


def test_a_file_with_only_valid_records_exits_0_and_dry_run_shows_them(tmp_path, miso):
    """No invalid record: exit 0. --dry-run first prints exactly those records, sends nothing."""
    rng = random.Random(3)
    records = [valid_record(rng, n) for n in range(1, 41)]
    path = tmp_path / "records.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    cli = Cli(tmp_path, miso)
    preview = cli.replay(path, "--dry-run", expect=0)
    assert canonical([orjson.loads(x) for x in preview.stdout.splitlines()]) == canonical(records)
    assert miso.requests == []
    cli.replay(path, expect=0)
    assert canonical(miso.wait_for(40, timeout=30)) == canonical(records)


def test_a_record_with_both_ids_links_them_for_the_others(tmp_path, miso):
    """A record carrying both ids teaches the link: the user's other records go out with
    the anonymous id too, as translated ones do."""
    rows = [
        {"type": "like", "user_id": "u-link", "anonymous_id": "a-link", "product_ids": ["x1"]},
        {"type": "like", "user_id": "u-link", "product_ids": ["x2"]},
    ]
    path = tmp_path / "records.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    done = Cli(tmp_path, miso).replay(path, expect=0)
    assert "identity links learned: 1" in done.stderr
    sent = miso.wait_for(2, timeout=30)
    assert {r["product_ids"][0]: r.get("anonymous_id") for r in sent} == {
        "x1": "a-link",
        "x2": "a-link",
    }
