"""Benchmark: `miso-adapter replay mixpanel` on a large raw export, against a floor.

    python bench/replay.py [--lines 1000000] [--seed 20240301] [--file export.jsonl] [--runs 1]
                           [--segment-messages N]

Generates a deterministic Mixpanel raw export with ``adapter/testing/mixpanel_export.py`` (unless
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

With ``--segment-messages N`` it also measures ``miso-adapter replay segment --dry-run
--output /dev/null`` on a plain JSON Lines file of N Segment messages from
``adapter/testing/segment_archive.py`` (the lines of its S3 archive, 2% redelivered), beside its
own floor: read each line, ``orjson.loads`` it, build a minimal Miso-like record (type
from ``event``, else ``type``; ``user_id``/``anonymous_id`` from ``userId``/``anonymousId``;
``timestamp`` parsed and written back as ISO 8601 with milliseconds; ``product_ids`` from
``properties.product_id``) and ``orjson.dumps`` that (this script with ``--segment-floor
FILE``).
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

from adapter.testing.mixpanel_export import write_export  # noqa: E402
from adapter.testing.segment_archive import write_jsonl  # noqa: E402


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


def segment_floor_record(message: dict[str, Any]) -> dict[str, Any]:
    """A minimal Miso-like record from one Segment message: what any translation must build."""
    record: dict[str, Any] = {"type": message.get("event") or message.get("type")}
    user, anonymous = message.get("userId"), message.get("anonymousId")
    if user is not None:
        record["user_id"] = str(user)
    if anonymous is not None:
        record["anonymous_id"] = str(anonymous)
    when = message.get("timestamp")
    if isinstance(when, str):  # checked and written back in Miso's form
        record["timestamp"] = datetime.fromisoformat(when).isoformat(timespec="milliseconds")
    product = (message.get("properties") or {}).get("product_id")
    if product is not None:
        record["product_ids"] = [str(product)]
    return record


def segment_floor(path: Path) -> int:
    """The Segment floor (via --segment-floor): parse, build, serialise every line."""
    count = 0
    loads, dumps, build = orjson.loads, orjson.dumps, segment_floor_record
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


def measure_segment_floor(path: Path) -> tuple[Run, int]:
    """The Segment floor as its own subprocess; returns the run and the lines it read."""
    result = run([sys.executable, str(Path(__file__).resolve()), "--segment-floor", str(path)])
    check("Segment floor", result)
    return result, int(result.stdout.strip())


def measure_segment_dry_run(path: Path) -> Run:
    """``replay segment --dry-run --output /dev/null`` as a subprocess."""
    result = run(cli("replay", "segment", path, "--dry-run", "--output", "/dev/null"),
                 clean_env())  # fmt: skip
    check("Segment dry run", result)
    return result


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


def generate_segment(path: Path, messages: int, seed: int) -> str:
    """Write the Segment messages as one JSON Lines file; returns a description of it."""
    started = time.perf_counter()
    archive = write_jsonl(path, messages, seed=seed, collect=False)
    return (
        f"{archive.messages:,} messages + {archive.redelivered:,} redelivered, seed {seed}, "
        f"generated in {time.perf_counter() - started:.1f}s"
    )


@dataclass
class Rows:
    """Every run of each command, in the order they ran."""

    floor: list[Run]
    dry: list[Run]
    full: list[Run]
    segment_floor: list[Run]
    segment_dry: list[Run]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20240301)
    parser.add_argument("--file", type=Path, help="a Mixpanel export (default: generated)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each (medians shown)")
    parser.add_argument(
        "--segment-messages",
        type=int,
        default=0,
        metavar="N",
        help="also time `replay segment --dry-run` on N Segment messages (default: not)",
    )
    parser.add_argument("--floor", type=Path, help=argparse.SUPPRESS)  # the floor subprocess
    parser.add_argument("--segment-floor", type=Path, help=argparse.SUPPRESS)  # and Segment's
    args = parser.parse_args()
    if args.floor is not None:
        print(floor(args.floor))
        return
    if args.segment_floor is not None:
        print(segment_floor(args.segment_floor))
        return

    rows = Rows([], [], [], [], [])
    segment_note = ""
    try:
        with tempfile.TemporaryDirectory() as tmp, CountingMiso() as miso:
            path = args.file
            note = "given file"
            if path is None:
                path = Path(tmp) / "export.jsonl"
                note = generate(path, args.lines, args.seed)
            size = path.stat().st_size
            segment = Path(tmp) / "segment.jsonl"
            if args.segment_messages:
                segment_note = generate_segment(segment, args.segment_messages, args.seed)
            for _ in range(args.runs):
                base, lines = measure_floor(path)
                rows.floor.append(base)
                rows.dry.append(measure_dry_run(path))
                full, delivered = measure_replay(path, miso)
                rows.full.append(full)
                if args.segment_messages:
                    rows.segment_floor.append(measure_segment_floor(segment)[0])
                    rows.segment_dry.append(measure_segment_dry_run(segment))
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
        show(label, runs, rows.floor, lines)
    if args.segment_messages:
        written = number(rows.segment_dry[-1].stderr, "records written")
        print(f"\nSegment: {args.segment_messages:,} lines ({segment_note}); "
              f"{written:,} records written")  # fmt: skip
        show("floor: orjson parse + build + serialise", rows.segment_floor, rows.segment_floor,
             args.segment_messages)  # fmt: skip
        show("replay segment --dry-run --output /dev/null", rows.segment_dry, rows.segment_floor,
             args.segment_messages)  # fmt: skip


def show(label: str, runs: list[Run], floors: list[Run], lines: int) -> None:
    """One row of the table: the median rate and time, and the ratio to the same run's floor."""
    seconds = median([r.seconds for r in runs])
    ratio = median([r.seconds / b.seconds for r, b in zip(runs, floors, strict=True)])
    peak = max(r.peak_mb for r in runs)
    print(f"{label:<46}{lines / seconds:>11,.0f}{seconds:>10.2f}{ratio:>7.1f}x{peak:>13,.0f}")


if __name__ == "__main__":
    main()
