"""Benchmark: `miso-adapter replay mixpanel` on a large raw export, against a parse floor.

    python bench/replay.py [--lines 1000000] [--seed 20240301] [--file export.jsonl]

Generates a deterministic Mixpanel raw export with ``bench/mixpanel_export.py`` (unless
--file is given; about 1 KB a line, 90 days, mixpanel-js and server-side rows, identity
rows, autocapture, hot shards, 2% duplicate lines), then runs, each as its own
subprocess on the same file, one after the other:

* floor: read each line, ``orjson.loads`` it, ``orjson.dumps`` it back (this script with
  ``--floor FILE``) — the least any replay must do;
* dry run: ``miso-adapter replay mixpanel FILE --dry-run --output /dev/null`` — reading,
  normalising, mapping and serialising, nothing stored;
* replay: ``miso-adapter replay mixpanel FILE`` into a fresh SQLite store (in ``$TMPDIR``,
  ``synchronous=FULL``) and a ``FakeMiso(validate=False)`` served by this process, timed
  until the command exits, i.e. until every accepted record was delivered to the fake.

Events/s counts input lines. Seconds are wall clock of the whole subprocess, interpreter
start included. Peak RSS is the subprocess's own maximum resident set (``os.wait4``).
The ratio is each run's time over the floor's. On a 2-core machine the fake Miso (parsing
each 1,000-record POST) shares the CPU with the replay, as a real network would not.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from mixpanel_export import write_export  # noqa: E402

MISO_KEY = "bench-key"


@dataclass
class Run:
    """One subprocess: how long it took, its peak memory, what it printed."""

    seconds: float
    peak_mb: float
    returncode: int
    stdout: str
    stderr: str


def run(command: list[str], env: dict[str, str] | None = None) -> Run:
    """Run ``command`` to its end; wall time and the child's own peak RSS."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Run(
            seconds,
            usage.ru_maxrss / 1024,  # KiB on Linux
            process.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def floor(path: Path) -> int:
    """Parse and re-serialise every line: the floor (run in a subprocess via --floor)."""
    count = 0
    loads, dumps = orjson.loads, orjson.dumps
    with path.open("rb") as stream:
        for line in stream:
            dumps(loads(line))
            count += 1
    return count


def clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MISO_", "SEGMENT_", "ADAPTER_", "MAPPINGS_"))
    }


def cli(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "adapter.cli", *map(str, args)]


def check(label: str, result: Run) -> None:
    if result.returncode != 0:
        sys.exit(f"{label} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")


def number(text: str, label: str) -> int:
    match = re.search(rf"{label}:? ([\d,]+)", text)
    return int(match.group(1).replace(",", "")) if match else -1


def full_replay(path: Path, folder: Path) -> tuple[Run, int]:
    """The real replay into a FakeMiso; returns the run and the records Miso accepted."""
    from adapter.testing import FakeMiso

    delivered = 0
    lock = threading.Lock()

    def count(entry) -> None:
        nonlocal delivered
        if entry.status == 200:
            with lock:
                delivered += entry.n_records

    stop = threading.Event()
    with FakeMiso(api_key=MISO_KEY, validate=False, on_request=count) as miso:

        def forget() -> None:
            # FakeMiso keeps every record and request body; drop them, we only count.
            while not stop.wait(0.5):
                miso.reset()

        janitor = threading.Thread(target=forget, daemon=True)
        janitor.start()
        env = clean_env()
        env.update(
            MISO_API_URL=miso.url,
            MISO_API_KEY=MISO_KEY,
            ADAPTER_STORE=f"sqlite:///{folder.resolve()}/adapter.db",
        )
        try:
            result = run(cli("replay", "mixpanel", path), env)
        finally:
            stop.set()
            janitor.join()
    return result, delivered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20240301)
    parser.add_argument("--file", type=Path, help="a Mixpanel export (default: generated)")
    parser.add_argument("--floor", type=Path, help=argparse.SUPPRESS)  # the floor subprocess
    args = parser.parse_args()
    if args.floor is not None:
        print(floor(args.floor))
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = args.file
        note = "given file"
        if path is None:
            path = folder / "export.jsonl"
            started = time.perf_counter()
            export = write_export(path, args.lines, seed=args.seed, collect=False)
            note = (
                f"{export.events:,} events + {export.duplicates:,} duplicate lines, seed "
                f"{args.seed}, generated in {time.perf_counter() - started:.1f}s"
            )
        size = path.stat().st_size

        base = run([sys.executable, str(Path(__file__).resolve()), "--floor", str(path)])
        check("floor", base)
        lines = int(base.stdout.strip())
        dry = run(cli("replay", "mixpanel", path, "--dry-run", "--output", "/dev/null"),
                  clean_env())  # fmt: skip
        check("dry run", dry)
        full, delivered = full_replay(path, folder)
        check("replay", full)

    accepted = number(full.stderr, "records accepted")
    print(f"file: {lines:,} lines, {size / 1e6:,.1f} MB ({note})")
    print(
        f"dry run: {number(dry.stderr, 'records written'):,} records written; replay: "
        f"{accepted:,} records accepted, {number(full.stderr, 'duplicates'):,} duplicates, "
        f"{delivered:,} delivered to FakeMiso"
    )
    print(f"{'work':<46}{'events/s':>11}{'seconds':>10}{'ratio':>8}{'peak RSS MB':>13}")
    rows = [
        ("floor: orjson parse + serialise", base),
        ("replay --dry-run --output /dev/null", dry),
        ("replay into FakeMiso (until delivered)", full),
    ]
    for label, result in rows:
        print(
            f"{label:<46}{lines / result.seconds:>11,.0f}{result.seconds:>10.2f}"
            f"{result.seconds / base.seconds:>7.1f}x{result.peak_mb:>13,.0f}"
        )
    if delivered != accepted:
        sys.exit(f"FakeMiso received {delivered:,} records, the replay accepted {accepted:,}")


if __name__ == "__main__":
    main()
