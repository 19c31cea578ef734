"""Benchmark: `miso-adapter replay mixpanel` on a large raw export, against a floor.

    python bench/replay.py [--lines 1000000] [--seed 20240301] [--file export.jsonl] [--runs 1]

Generates a deterministic Mixpanel raw export with ``bench/mixpanel_export.py`` (unless
--file is given; about 1 KB a line, 90 days, mixpanel-js and server-side rows, identity
rows, autocapture, hot shards, 2% duplicate lines), then runs, each as its own
subprocess on the same file, one after the other:

* floor: read each line, ``orjson.loads`` it, build a minimal Miso-like record from it
  (type from ``event``; ``anonymous_id`` or ``user_id`` from ``distinct_id``; an ISO
  timestamp from ``properties.time``; ``product_ids`` from ``product_id``) and
  ``orjson.dumps`` that (this script with ``--floor FILE``): the least any replay must do;
* dry run: ``miso-adapter replay mixpanel FILE --dry-run --output /dev/null``: reading,
  normalising, mapping and serialising, nothing stored;
* replay: ``miso-adapter replay mixpanel FILE`` into a fresh SQLite store (in ``$TMPDIR``,
  ``synchronous=FULL``) and a ``FakeMiso(validate=False)`` served by this process, timed
  until the command exits, i.e. until every accepted record was delivered to the fake.

Events/s counts input lines. Seconds are wall clock of the whole subprocess, interpreter
start included. Peak RSS is the largest resident set of the subprocess or of a child it
waited for (``common.run``: a launcher's ``os.wait4``, so not this process's RSS).
The ratio is each run's time over the floor's (same run). With --runs N each of the
three runs N times, interleaved, and the table shows medians (peak RSS: the largest).
On a 2-core machine the fake Miso (parsing each 1,000-record POST) shares the CPU with
the replay, as a real network would not.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

from common import (  # noqa: E402
    MISO_KEY,
    BenchError,
    CountingMiso,
    Run,
    check,
    clean_env,
    cli,
    median,
    number,
    run,
)
from mixpanel_export import write_export  # noqa: E402


def floor_record(row: dict[str, Any]) -> dict[str, Any]:
    """A minimal Miso-like record from one export row: what any translation must build."""
    props = row.get("properties") or {}
    distinct = str(props.get("distinct_id", ""))
    record: dict[str, Any] = {"type": row.get("event")}
    if distinct.startswith("$device:"):
        record["anonymous_id"] = distinct[8:]
    else:
        record["user_id"] = distinct
    when = props.get("time")
    if isinstance(when, int | float):
        record["timestamp"] = datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
    product = props.get("product_id")
    if product is not None:
        record["product_ids"] = [str(product)]
    return record


def floor(path: Path) -> int:
    """Parse, build a record, serialise it, for every line: the floor (via --floor)."""
    count = 0
    loads, dumps, build = orjson.loads, orjson.dumps, floor_record
    with path.open("rb") as stream:
        for line in stream:
            dumps(build(loads(line)))
            count += 1
    return count


def measure_floor(path: Path) -> tuple[Run, int]:
    """The floor as its own subprocess; returns the run and the lines it read."""
    result = run([sys.executable, str(Path(__file__).resolve()), "--floor", str(path)])
    check("floor", result)
    return result, int(result.stdout.strip())


def measure_dry_run(path: Path) -> Run:
    """``replay mixpanel --dry-run --output /dev/null`` as a subprocess."""
    result = run(cli("replay", "mixpanel", path, "--dry-run", "--output", "/dev/null"),
                 clean_env())  # fmt: skip
    check("dry run", result)
    return result


def measure_replay(path: Path, miso: CountingMiso) -> tuple[Run, int]:
    """The real replay into a fresh store and ``miso``; returns the run and records delivered.

    The replay exits once every record it accepted was delivered, so ``miso`` has them
    all when this returns; the caller compares with the "records accepted" it printed.
    """
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        miso.zero()
        env = clean_env(
            MISO_API_URL=miso.url,
            MISO_API_KEY=MISO_KEY,
            ADAPTER_STORE=f"sqlite:///{Path(tmp).resolve()}/adapter.db",
        )
        result = run(cli("replay", "mixpanel", path), env)
        check("replay", result)
        delivered = miso.delivered
    accepted = number(result.stderr, "records accepted")
    if delivered != accepted:
        raise BenchError(
            f"FakeMiso received {delivered:,} records, the replay accepted {accepted:,}"
        )
    return result, delivered


def generate(path: Path, lines: int, seed: int) -> str:
    """Write the export; returns a description of it."""
    started = time.perf_counter()
    export = write_export(path, lines, seed=seed, collect=False)
    return (
        f"{export.events:,} events + {export.duplicates:,} duplicate lines, seed {seed}, "
        f"generated in {time.perf_counter() - started:.1f}s"
    )


@dataclass
class Rows:
    """Every run of each command, in the order they ran."""

    floor: list[Run]
    dry: list[Run]
    full: list[Run]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20240301)
    parser.add_argument("--file", type=Path, help="a Mixpanel export (default: generated)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each (medians shown)")
    parser.add_argument("--floor", type=Path, help=argparse.SUPPRESS)  # the floor subprocess
    args = parser.parse_args()
    if args.floor is not None:
        print(floor(args.floor))
        return

    rows = Rows([], [], [])
    try:
        with tempfile.TemporaryDirectory() as tmp, CountingMiso() as miso:
            path = args.file
            note = "given file"
            if path is None:
                path = Path(tmp) / "export.jsonl"
                note = generate(path, args.lines, args.seed)
            size = path.stat().st_size
            for _ in range(args.runs):
                base, lines = measure_floor(path)
                rows.floor.append(base)
                rows.dry.append(measure_dry_run(path))
                full, delivered = measure_replay(path, miso)
                rows.full.append(full)
    except BenchError as exc:
        sys.exit(f"error: {exc}")

    dry, full = rows.dry[-1], rows.full[-1]
    print(f"file: {lines:,} lines, {size / 1e6:,.1f} MB ({note}); median of {args.runs} run(s)")
    print(
        f"dry run: {number(dry.stderr, 'records written'):,} records written; replay: "
        f"{number(full.stderr, 'records accepted'):,} records accepted, "
        f"{number(full.stderr, 'duplicates'):,} duplicates, {delivered:,} delivered to FakeMiso"
    )
    print(f"{'work':<46}{'events/s':>11}{'seconds':>10}{'ratio':>8}{'peak RSS MB':>13}")
    table = [
        ("floor: orjson parse + build + serialise", rows.floor),
        ("replay --dry-run --output /dev/null", rows.dry),
        ("replay into FakeMiso (until delivered)", rows.full),
    ]
    for label, runs in table:
        seconds = median([r.seconds for r in runs])
        ratio = median([r.seconds / b.seconds for r, b in zip(runs, rows.floor, strict=True)])
        peak = max(r.peak_mb for r in runs)
        print(f"{label:<46}{lines / seconds:>11,.0f}{seconds:>10.2f}{ratio:>7.1f}x{peak:>13,.0f}")


if __name__ == "__main__":
    main()
