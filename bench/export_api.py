"""Benchmark: `miso-adapter replay mixpanel --from-api` from a fake Export API, beside
`replay mixpanel FILE` of the same rows.

    python bench/export_api.py [--rows 200000] [--seed 20240301] [--runs 1]

Generates a deterministic Mixpanel raw export with ``adapter/testing/mixpanel_export.py`` (the
generator of the ``dry-run`` and ``replay`` rows: mixpanel-js and server-side rows,
identity rows, autocapture, hot shards, 2% duplicate lines), spread over the 7 days that
end now: the generator draws the times over 7 whole UTC days ending at today's midnight,
then every line's ``time`` (and its ``$mp_api_timestamp_ms``/``mp_processing_time_ms``) is
moved forward by the seconds since that midnight, since an Export API answers no day
after today. Then, each as its own subprocess, one after the other:

* floor: ``miso-adapter replay mixpanel FILE`` of that file into a fresh SQLite store (in
  ``$TMPDIR``, ``synchronous=FULL``) and a ``FakeMiso(validate=False)`` served by this
  process, timed until the command exits, i.e. until every accepted record was delivered
  (the ``replay`` row of ``python -m bench``, on these rows);
* export API: ``miso-adapter replay mixpanel --from-api --from-date D --to-date TODAY``
  into another fresh store and the same fake Miso, pulling the same rows from a
  ``FakeMixpanel(per_second=None, per_hour=None)`` served by this process: one request a
  day (the default ``--days-per-request 1``), gzip, streamed, within the command's own
  request budget (3 a second, 60 an hour), timed the same way.

The fake Export API holds the rows (parsed) only while the second command runs. Both
commands must read every line, deliver to the fake Miso exactly the records they
accepted, and accept the same number of records. Rows/s counts the lines served; the
ratio is the export API's time over the file's (lower is better), from the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from adapter.testing import FakeMixpanel

DAYS = 7  # the export's span, ending now
PROJECT_ID, USERNAME, SECRET = "4242", "bench-account", "bench-secret"
# Moved forward with `time` (milliseconds), so that each row stays self-consistent.
_MS_FIELDS = ("$mp_api_timestamp_ms", "mp_processing_time_ms")


@dataclass(frozen=True)
class ApiExport:
    """The generated rows, as a file, and the days the Export API is asked for."""

    path: Path
    lines: int
    first: date  # the first day holding rows (UTC)
    last: date  # today (UTC)
    note: str


def generate(path: Path, lines: int, seed: int, now: float | None = None) -> ApiExport:
    """Write ``lines`` export lines spread over the ``DAYS`` days that end at ``now``."""
    began = time.perf_counter()
    moment = int(time.time() if now is None else now)
    today = datetime.fromtimestamp(moment, UTC).date()
    start = today - timedelta(days=DAYS)
    midnight = int(datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp())
    shift = moment - midnight  # seconds: the generated span then ends at `moment`
    drawn = path.with_name(path.name + ".drawn")
    export = write_export(drawn, lines, seed=seed, start=start, days=DAYS, collect=False)
    with drawn.open("rb") as source, path.open("wb") as out:
        for line in source:
            row = orjson.loads(line)
            props = row["properties"]
            props["time"] += shift
            for name in _MS_FIELDS:
                if name in props:
                    props[name] += shift * 1000
            out.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
    drawn.unlink()
    note = (
        f"{export.events:,} events + {export.duplicates:,} duplicate lines, seed {seed}, "
        f"{start}..{today} (UTC), generated in {time.perf_counter() - began:.1f}s"
    )
    return ApiExport(path, export.lines, start, today, note)


@contextlib.contextmanager
def serving(export: ApiExport) -> Iterator[FakeMixpanel]:
    """A FakeMixpanel holding the export's rows, without rate limits; the rows are parsed
    here and dropped with the fake when the block ends."""
    from adapter.testing import FakeMixpanel

    with export.path.open("rb") as stream:
        rows = [orjson.loads(line) for line in stream]
    fake = FakeMixpanel(USERNAME, SECRET, PROJECT_ID, rows, per_second=None, per_hour=None)
    del rows
    with fake:
        yield fake


def _replay(label: str, argv: list[str | Path], miso: CountingMiso, **extra: str) -> Run:
    """One replay into a fresh store and ``miso``; checks that it delivered what it accepted."""
    with tempfile.TemporaryDirectory(prefix="bench-export-api-") as tmp:
        miso.zero()
        env = clean_env(
            MISO_API_URL=miso.url,
            MISO_API_KEY=MISO_KEY,
            ADAPTER_STORE=f"sqlite:///{Path(tmp).resolve()}/adapter.db",
            **extra,
        )
        result = run(cli("replay", "mixpanel", *argv), env)
        check(label, result)
        delivered = miso.delivered
    accepted = number(result.stderr, "records accepted")
    if delivered != accepted:
        raise BenchError(
            f"{label}: FakeMiso received {delivered:,} records, the replay accepted {accepted:,}"
        )
    return result


@dataclass
class Result:
    """One run: the export API's replay and its floor, the file's."""

    api: Run
    file: Run
    lines: int
    accepted: int
    requests: int  # answered by the fake Export API


def measure(export: ApiExport, miso: CountingMiso) -> Result:
    """The file replay (floor), then the export API replay of the same rows."""
    file_run = _replay("replay of the file", [export.path], miso)
    with serving(export) as fake:
        api_run = _replay(
            "replay --from-api",
            ["--from-api", "--from-date", export.first.isoformat(),
             "--to-date", export.last.isoformat()],
            miso,
            MIXPANEL_PROJECT_ID=PROJECT_ID,
            MIXPANEL_SERVICE_ACCOUNT=f"{USERNAME}:{SECRET}",
            MIXPANEL_EXPORT_URL=fake.url,
        )  # fmt: skip
        requests = len(fake.requests)
    for label, result in (("replay of the file", file_run), ("replay --from-api", api_run)):
        read = number(result.stderr, "read")
        if read != export.lines:
            raise BenchError(f"{label} read {read:,} rows, not {export.lines:,}")
    accepted = number(api_run.stderr, "records accepted")
    from_file = number(file_run.stderr, "records accepted")
    if accepted != from_file:
        raise BenchError(
            f"replay --from-api accepted {accepted:,} records, the file's replay {from_file:,}"
        )
    return Result(api_run, file_run, export.lines, accepted, requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="export lines (200000)")
    parser.add_argument("--seed", type=int, default=20240301)
    parser.add_argument("--runs", type=int, default=1, help="runs of each (medians shown)")
    args = parser.parse_args()
    results: list[Result] = []
    try:
        with tempfile.TemporaryDirectory() as tmp, CountingMiso() as miso:
            export = generate(Path(tmp) / "export-api.jsonl", args.rows, args.seed)
            for _ in range(args.runs):
                results.append(measure(export, miso))
    except BenchError as exc:
        sys.exit(f"error: {exc}")
    last = results[-1]
    print(f"rows: {export.lines:,} lines ({export.note}); median of {args.runs} run(s)")
    print(f"{last.accepted:,} records accepted and delivered by each; "
          f"{last.requests} requests to the fake Export API")  # fmt: skip
    print(f"{'work':<44}{'rows/s':>10}{'seconds':>10}{'ratio':>8}{'peak RSS MB':>13}")
    for label, pick in (
        ("floor: replay mixpanel FILE", lambda r: r.file),
        ("replay mixpanel --from-api", lambda r: r.api),
    ):
        seconds = median([pick(r).seconds for r in results])
        ratio = median([pick(r).seconds / r.file.seconds for r in results])
        peak = max(pick(r).peak_mb for r in results)
        print(f"{label:<44}{export.lines / seconds:>10,.0f}{seconds:>10.2f}{ratio:>7.2f}x"
              f"{peak:>13,.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
