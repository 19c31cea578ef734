"""The benchmark suite: every performance target, each beside its floor from the same run.

    python -m bench [--quick] [--only NAME[,NAME]] [--runs N] [--json FILE]

Rows (NAME for --only), all on data generated here, deterministically:

* ``dry-run``: ``miso-adapter replay mixpanel --dry-run --output /dev/null`` of a
  1,000,000-line export (``adapter/testing/mixpanel_export.py``), one process, deduplicating within
  the run as a replay does (no store to consult), with the scaling
  curve (the same at 10,000 and 100,000 lines: events/s and peak RSS); floor: orjson
  parse + build a minimal record + serialise of each line (``bench/replay.py``);
* ``replay``: ``miso-adapter replay mixpanel`` of the same file into a fresh SQLite store
  and a ``FakeMiso(validate=False)``, until delivered; same floor;
* ``export-api``: ``miso-adapter replay mixpanel --from-api`` pulling 200,000 rows of the
  same generator, spread over the 7 days that end now, one request a day, from a
  ``FakeMixpanel(per_second=None, per_hour=None)`` served by this process (holding the
  rows only while the row runs), into a fresh SQLite store and the ``FakeMiso``, until
  delivered (``bench/export_api.py``); floor: ``replay mixpanel FILE`` of the same rows
  written as a file, the same way, in the same run. No target: the row shows the rate
  beside the file replay's;
* ``segment-dry-run``: ``miso-adapter replay segment --dry-run --output /dev/null`` of one
  plain JSON Lines file of 1,000,000 Segment messages (``adapter/testing/segment_archive.py``: the
  lines of a web, iOS and backend S3 archive, 2% redelivered), one process; floor: orjson
  parse + build a minimal record + serialise of each line (``bench/replay.py``);
* ``webhook``: ``miso-adapter serve --workers 2`` taking signed single-message Segment
  webhooks from 16 keep-alive clients (``bench/webhook.py``); floor: a bare Flask
  endpoint on the same gunicorn settings;
* ``actions``: the same service taking Webhooks (Actions) arrays of 1,000 messages, each
  message with its own messageId (``bench/webhook.py --batch 1000``); same floor;
* ``drain``: ``miso-adapter forward --until-empty`` draining a 1,000,000-record spool into
  a ``FakeMiso(validate=False)`` (``bench/drain.py``); floor: read the bodies out of
  SQLite 1,000 at a time and POST them with ``requests``;
* ``drain-redis``: ``miso-adapter forward --until-empty`` draining a 500,000-record spool
  in Redis (``$BENCH_REDIS_URL``, else ``redis://127.0.0.1:6379/0``; a key prefix of its
  own, deleted afterwards) into a ``FakeMiso(validate=False)``, by TWO forwarder processes
  started at once (``bench/drain.py --store``); floor: ONE forwarder draining the same
  spool, filled again, in the same run; every record must arrive exactly once. No Redis:
  the row fails, saying so;
* ``kafka``: ``miso-adapter consume kafka --store-only --format segment`` reading 200,000
  Segment messages (the ``segment-dry-run`` generator's, 2% redelivered) from a topic of
  3 partitions on a Tansu broker (``adapter.testing.TansuBroker``, in memory, on
  loopback) into a fresh SQLite store, timed from its partitions' assignment until the
  store holds every record (the command has no "until empty": it is watched, then gets
  SIGTERM and must exit 0) (``bench/kafka.py``); floor: a plain confluent-kafka consumer
  with the same group settings, in a fresh group, reading the same topic, timed from its
  assignment to its last message. No target: the row shows the rate beside the floor's;
* ``mixpanel-import``: a peer, Mixpanel's own importer (npm ``mixpanel-import``, installed
  beforehand: ``npm install --prefix bench/.peers mixpanel-import@3.1.43``, or
  ``$MIXPANEL_IMPORT``), ``mixpanel-import FILE --dry-run --dedupe`` of the ``dry-run``
  row's 1,000,000-line export, beside our ``replay mixpanel --dry-run`` of it (the
  ``dry-run`` row's run of the same pass when there is one; else its own)
  (``bench/mixpanel_import.py``). Not installed: the row is skipped, saying how to
  install it.

Prints one table: events/s (records/s for ``drain`` and ``drain-redis``, rows served for
``export-api``, our dry run's lines/s for ``mixpanel-import``), the floor's (the
importer's for ``mixpanel-import``), the ratio to the floor (time over the floor's time
for the offline rows and ``kafka``, so lower is better; rate over the floor's rate for the
two ``serve`` rows, ``drain-redis`` and ``mixpanel-import``, so higher is better), p50/p99
per request, peak RSS, and whether the target is met; then the scaling curve. Each number
is the median of the row's runs (peak RSS: the largest). Every run of a row measures its
floor too, right before or after, so each ratio compares numbers taken in the same minute
or two.

By default every row runs once, then again (up to 3 times in all) while it fits in a
9.25-minute budget, cheapest rows first: going by how long each row's last run took, a
row starts a new run only if that would still end within the budget, so the short, noisy
``serve`` rows get the most runs. Every row runs at least once: the first pass alone takes
about 10 minutes on 2 cores, plus 3-7 for the ``mixpanel-import`` peer when installed. The
table's ``runs`` column says how many each got. ``--runs N`` runs every row N times.
``--quick`` is a smoke run on small sizes (one run, under a minute): its numbers say
that everything works, not how fast. Exit status 0 when every row measured and passed
its checks (records delivered, no errors), whether or not targets are met, a skipped
peer row included; 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

import drain  # noqa: E402
import export_api  # noqa: E402
import kafka  # noqa: E402
import mixpanel_import  # noqa: E402
import replay  # noqa: E402
import webhook  # noqa: E402
from common import BenchError, CountingMiso, Run, median, number  # noqa: E402

# fmt: off
ROWS = ("dry-run", "replay", "export-api", "segment-dry-run", "webhook", "actions", "drain",
        "drain-redis", "kafka", "mixpanel-import")
# fmt: on
BUDGET = 555.0  # seconds: no second or third run that would end later than this
MAX_RUNS = 3
# "Flat" peak RSS from the smallest to the largest dry run: at most this much growth.
FLAT = 1.2


@dataclass(frozen=True)
class Sizes:
    """How big each row's work is."""

    lines: int  # Mixpanel export lines (dry-run, replay)
    scaling: tuple[int, ...]  # smaller dry runs for the curve (the full one is `lines`)
    api_rows: int  # rows served by the fake Export API (export-api)
    messages: int  # Segment messages (segment-dry-run)
    records: int  # spool records (drain)
    seconds: float  # measured seconds per server (webhook, actions)
    warmup: float
    bodies: int  # unique single-message webhooks
    batches: int  # unique Actions arrays
    batch: int = 1000
    kafka_messages: int = 200_000  # Segment messages in the Kafka topic (kafka)
    redis_records: int = 500_000  # spool records in Redis (drain-redis)
    importer_lines: int = 1_000_000  # lines given to mixpanel-import (the first of `lines`)


FULL = Sizes(
    lines=1_000_000,
    scaling=(10_000, 100_000),
    api_rows=200_000,
    messages=1_000_000,
    records=1_000_000,
    seconds=10,
    warmup=2,
    bodies=80_000,
    batches=1_500,
)
QUICK = Sizes(
    lines=20_000,
    scaling=(2_000, 10_000),
    api_rows=10_000,
    messages=20_000,
    records=20_000,
    seconds=2,
    warmup=1,
    bodies=20_000,
    batches=300,
    kafka_messages=10_000,
    redis_records=20_000,
    importer_lines=20_000,
)


@dataclass
class Measure:
    """One run of one row."""

    rate: float  # events (records) per second of the work
    floor_rate: float  # the same for its floor, same run
    ratio: float  # time over the floor's time, or rate over the floor's rate
    p50_ms: float | None = None
    p99_ms: float | None = None
    peak_mb: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    """A row of the table: what it measures, its target, and its runs."""

    name: str
    work: str
    ratio_kind: str  # "time" (lower is better) or "rate" (higher is better)
    target: str
    runs: list[Measure] = field(default_factory=list)
    error: str | None = None
    met: bool | None = None
    skipped: str | None = None  # why a peer row did not run (not a failure)

    def summary(self) -> dict[str, float | None]:
        """Medians over the runs (peak RSS: the largest)."""

        def med(pick: Callable[[Measure], float | None]) -> float | None:
            values = [v for v in map(pick, self.runs) if v is not None]
            return median(values) if values else None

        peaks = [m.peak_mb for m in self.runs if m.peak_mb is not None]
        return {
            "rate": med(lambda m: m.rate),
            "floor_rate": med(lambda m: m.floor_rate),
            "ratio": med(lambda m: m.ratio),
            "p50_ms": med(lambda m: m.p50_ms),
            "p99_ms": med(lambda m: m.p99_ms),
            "peak_mb": max(peaks) if peaks else None,
        }


@dataclass
class Point:
    """One size of the dry-run scaling curve, one run."""

    lines: int
    rate: float
    floor_rate: float
    peak_mb: float


def make_rows(sizes: Sizes) -> dict[str, Row]:
    """The table's rows with their targets (docs/performance.md § Targets)."""
    return {
        "dry-run": Row(
            "dry-run",
            f"replay --dry-run, {sizes.lines:,} lines",
            "time",
            f">= 60,000/s, <= 3.5x floor time, peak RSS <= 150 MB and flat (<= {FLAT:g}x "
            "from smallest to largest)",
        ),
        "replay": Row(
            "replay", f"replay into FakeMiso, {sizes.lines:,} lines", "time", ">= 40,000/s"
        ),
        "export-api": Row(
            "export-api",
            f"replay --from-api, {sizes.api_rows:,} rows",
            "time",
            "none: beside replay of the same rows as a file",
        ),
        "segment-dry-run": Row(
            "segment-dry-run",
            f"replay segment --dry-run, {sizes.messages:,}",
            "time",
            ">= 60,000/s, <= 3.5x floor time",
        ),
        "webhook": Row(
            "webhook", "serve: single-message webhooks", "rate", ">= 0.6x floor rate, p99 <= 25 ms"
        ),
        "actions": Row(
            "actions", f"serve: Actions arrays of {sizes.batch:,}", "rate", ">= 40,000 events/s"
        ),
        "drain": Row(
            "drain", f"forward --until-empty, {sizes.records:,}", "time", ">= 60,000 records/s"
        ),
        "drain-redis": Row(
            "drain-redis",
            f"forward x2 vs x1 on Redis, {sizes.redis_records:,}",
            "rate",
            "two forwarders >= 1.6x one",
        ),
        "kafka": Row(
            "kafka",
            f"consume kafka --store-only, {sizes.kafka_messages:,}",
            "time",
            "<= 2x the time of a plain confluent-kafka consumer (>= 0.5x its rate)",
        ),
        "mixpanel-import": Row(
            "mixpanel-import",
            f"dry run vs mixpanel-import, {sizes.importer_lines:,}",
            "rate",
            ">= 20x: mixpanel-import's time over ours",
        ),
    }


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """What these numbers were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory = round(int(first.split()[1]) / 1024 / 1024, 1)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tmpdir": tempfile.gettempdir(),
        "wrk": shutil.which("wrk"),
    }


# --------------------------------------------------------------------------- the runs


@dataclass
class Context:
    """What every run shares: generated files, the fake Miso, the options."""

    sizes: Sizes
    selected: list[str]
    rows: dict[str, Row]
    folder: Path
    miso: CountingMiso
    export: Path | None = None
    api_export: export_api.ApiExport | None = None  # the rows of export-api, as a file
    segment: Path | None = None  # the Segment messages (segment-dry-run)
    kafka_data: kafka.KafkaData | None = None  # the Segment messages of the kafka row
    seed: int = 20240301
    redis: str | None = None  # the Redis of drain-redis, once it answered
    importer: mixpanel_import.Importer | None = None  # the peer, when installed
    importer_file: Path | None = None  # the lines it is given (the export or its head)
    dry_run: Run | None = None  # this pass's full dry run (dry-run row), for mixpanel-import
    scaling_files: list[tuple[int, Path]] = field(default_factory=list)
    template: Path | None = None
    scaling: dict[int, list[Point]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    costs: dict[str, float] = field(default_factory=dict)  # seconds of each row's last run


def say(text: str) -> None:
    """Progress, on stderr (the table goes to stdout)."""
    print(text, file=sys.stderr, flush=True)


def prefix(source: Path, target: Path, lines: int) -> None:
    """The first ``lines`` lines of ``source``: the same as generating ``lines`` lines
    with the same seed, since the generator draws rows one after the other."""
    with source.open("rb") as src, target.open("wb") as out:
        for number, line in enumerate(src):
            if number >= lines:
                break
            out.write(line)


def prepare(ctx: Context, seed: int) -> None:
    """Generate the data every selected row needs, once."""
    sizes = ctx.sizes
    importer = "mixpanel-import" in ctx.selected
    if importer:
        try:
            ctx.importer = mixpanel_import.find()
        except mixpanel_import.Missing as exc:
            ctx.rows["mixpanel-import"].skipped = str(exc)
            importer = False
    if {"dry-run", "replay"} & set(ctx.selected) or importer:
        ctx.export = ctx.folder / "export.jsonl"
        say(f"generating a {sizes.lines:,}-line Mixpanel export ...")
        ctx.notes.append(f"export: {replay.generate(ctx.export, sizes.lines, seed)}")
        if "dry-run" in ctx.selected:
            for lines in sizes.scaling:
                path = ctx.folder / f"export-{lines}.jsonl"
                prefix(ctx.export, path, lines)
                ctx.scaling_files.append((lines, path))
    if importer and ctx.importer is not None and ctx.export is not None:
        ctx.importer_file = ctx.export
        if sizes.importer_lines < sizes.lines:
            ctx.importer_file = ctx.folder / f"export-{sizes.importer_lines}.jsonl"
            prefix(ctx.export, ctx.importer_file, sizes.importer_lines)
        say(f"checking mixpanel-import {ctx.importer.version}'s --dedupe ...")
        try:
            checked = mixpanel_import.check_dedupe(ctx.importer, ctx.importer_file, ctx.folder)
            ctx.notes.append(f"mixpanel-import {ctx.importer.version}: {checked}")
        except BenchError as exc:
            ctx.rows["mixpanel-import"].error = str(exc)
    if "export-api" in ctx.selected:
        say(f"generating {sizes.api_rows:,} Mixpanel rows over the last {export_api.DAYS} days ...")
        ctx.api_export = export_api.generate(ctx.folder / "export-api.jsonl", sizes.api_rows, seed)
        ctx.notes.append(f"Export API rows: {ctx.api_export.note}")
    if "segment-dry-run" in ctx.selected:
        ctx.segment = ctx.folder / "segment.jsonl"
        say(f"generating {sizes.messages:,} Segment messages ...")
        ctx.notes.append(
            f"Segment messages: {replay.generate_segment(ctx.segment, sizes.messages, seed)}"
        )
    if "kafka" in ctx.selected:
        say(f"generating {sizes.kafka_messages:,} Segment messages for Kafka ...")
        ctx.kafka_data = kafka.generate(ctx.folder / "kafka.jsonl", sizes.kafka_messages, seed)
        ctx.notes.append(f"Kafka messages: {ctx.kafka_data.note}, {kafka.PARTITIONS} partitions")
    if "drain" in ctx.selected:
        say(f"filling a spool with {sizes.records:,} records ...")
        try:
            ctx.template, average, took = drain.prepare(ctx.folder, sizes.records, seed)
            ctx.notes.append(
                f"spool: {sizes.records:,} records, {average:.0f} bytes each on average, "
                f"filled in {took:.1f}s"
            )
        except BenchError as exc:
            ctx.rows["drain"].error = str(exc)
    if "drain-redis" in ctx.selected:
        url = drain.redis_url()
        problem = drain.redis_problem(url)
        if problem is None and not drain.has_until_empty():
            problem = "this adapter's `miso-adapter forward` has no --until-empty option yet"
        if problem is None:
            ctx.redis = url
        else:
            ctx.rows["drain-redis"].error = problem


def mixpanel_rows(ctx: Context, wanted: set[str]) -> None:
    """One run of the dry-run (with its curve) and/or replay rows, sharing one floor run."""
    assert ctx.export is not None
    want_dry = "dry-run" in wanted and ctx.rows["dry-run"].error is None
    want_replay = "replay" in wanted and ctx.rows["replay"].error is None
    if not (want_dry or want_replay):
        return
    say("  floor: orjson parse + build + serialise ...")
    began = time.monotonic()
    base, lines = replay.measure_floor(ctx.export)
    floor_rate = lines / base.seconds
    floor_cost = time.monotonic() - began  # counted in both rows' cost, for the schedule
    if want_dry:
        began = time.monotonic()
        with row_errors(ctx.rows["dry-run"]):
            for size, path in ctx.scaling_files:
                say(f"  dry run, {size:,} lines ...")
                small_floor, _ = replay.measure_floor(path)
                small = replay.measure_dry_run(path)
                ctx.scaling.setdefault(size, []).append(
                    Point(size, size / small.seconds, size / small_floor.seconds, small.peak_mb)
                )
            say(f"  dry run, {lines:,} lines ...")
            dry = replay.measure_dry_run(ctx.export)
            ctx.dry_run = dry
            ctx.scaling.setdefault(lines, []).append(
                Point(lines, lines / dry.seconds, floor_rate, dry.peak_mb)
            )
            ctx.rows["dry-run"].runs.append(offline(lines, dry, base))
        ctx.costs["dry-run"] = floor_cost + time.monotonic() - began
    if want_replay:
        began = time.monotonic()
        with row_errors(ctx.rows["replay"]):
            say(f"  replay into FakeMiso, {lines:,} lines ...")
            full, delivered = replay.measure_replay(ctx.export, ctx.miso)
            measure = offline(lines, full, base)
            measure.detail["delivered"] = delivered
            ctx.rows["replay"].runs.append(measure)
        ctx.costs["replay"] = floor_cost + time.monotonic() - began


def segment_row(ctx: Context) -> None:
    """One run of the segment-dry-run row: its floor, then the dry run, on the same file."""
    row = ctx.rows["segment-dry-run"]
    if row.error is not None or ctx.segment is None:
        return
    with row_errors(row):
        say("  Segment floor: orjson parse + build + serialise ...")
        base, lines = replay.measure_segment_floor(ctx.segment)
        say(f"  replay segment --dry-run, {lines:,} messages ...")
        dry = replay.measure_segment_dry_run(ctx.segment)
        measure = offline(lines, dry, base)
        measure.detail["records_written"] = number(dry.stderr, "records written")
        row.runs.append(measure)


def export_api_row(ctx: Context) -> None:
    """One run of the export-api row: the file replay (its floor), then the pull."""
    row = ctx.rows["export-api"]
    if row.error is not None or ctx.api_export is None:
        return
    with row_errors(row):
        say(f"  replay of the file, then {row.work} ...")
        result = export_api.measure(ctx.api_export, ctx.miso)
        measure = offline(result.lines, result.api, result.file)
        measure.detail.update(
            delivered=result.accepted, requests=result.requests, floor_peak_mb=result.file.peak_mb
        )
        row.runs.append(measure)


class Timed(Protocol):
    """What a measured run gives a row: its seconds and peak RSS."""

    seconds: float
    peak_mb: float


def offline(count: int, work: Timed, base: Timed, *, by_rate: bool = False, **detail) -> Measure:
    """A subprocess row: ``count`` items over its time, beside its floor's; the ratio is
    time over the floor's time, or with ``by_rate`` rate over the floor's rate (for rows
    where higher is better). ``detail`` adds to the run's JSON."""
    return Measure(
        rate=count / work.seconds,
        floor_rate=count / base.seconds,
        ratio=(base.seconds / work.seconds) if by_rate else (work.seconds / base.seconds),
        peak_mb=work.peak_mb,
        detail={"seconds": work.seconds, "floor_seconds": base.seconds, "items": count, **detail},
    )


def serve_row(ctx: Context, name: str) -> None:
    """One run of a ``serve`` row (webhook or actions)."""
    row = ctx.rows[name]
    if row.error is not None:
        return
    sizes = ctx.sizes
    argv = ["--seconds", str(sizes.seconds), "--warmup", str(sizes.warmup)]
    if name == "actions":
        argv += ["--batch", str(sizes.batch), "--bodies", str(sizes.batches)]
    else:
        argv += ["--bodies", str(sizes.bodies)]
    with row_errors(row):
        if shutil.which("wrk") is None:
            raise BenchError(webhook.WRK_MISSING)
        say(f"  {row.work} ...")
        args = webhook.parse_args(argv)
        result = webhook.measure(args)
        problems = result.failures()
        if problems:
            raise BenchError("; ".join(problems))
        adapter, floor = result.adapter, result.floor
        row.runs.append(
            Measure(
                rate=result.events_per_second(adapter),
                floor_rate=result.events_per_second(floor),
                ratio=result.ratio,
                p50_ms=adapter.p50_ms,
                p99_ms=adapter.p99_ms,
                detail={
                    "requests_per_s": adapter.rate,
                    "floor_requests_per_s": floor.rate,
                    "floor_p50_ms": floor.p50_ms,
                    "floor_p99_ms": floor.p99_ms,
                    "connections": args.connections,
                    "split": adapter.split,
                    "floor_split": floor.split,
                    "lopsided": adapter.lopsided or floor.lopsided,
                    "body_bytes": result.body_bytes,
                    "delivery": str(result.delivery),
                },
            )
        )


def drain_row(ctx: Context) -> None:
    """One run of the drain row."""
    row = ctx.rows["drain"]
    if row.error is not None or ctx.template is None:
        return
    with row_errors(row):
        say(f"  {row.work} (and its floor) ...")
        result = drain.measure(ctx.template, ctx.sizes.records, ctx.miso)
        row.runs.append(offline(ctx.sizes.records, result.drain, result.floor))


def drain_redis_row(ctx: Context) -> None:
    """One run of the drain-redis row: one forwarder (the floor), then two, same spool size."""
    row = ctx.rows["drain-redis"]
    if row.error is not None or ctx.redis is None:
        return
    count = ctx.sizes.redis_records
    with row_errors(row), drain.DistinctMiso() as miso:
        say(f"  forward --until-empty on Redis, {count:,} records: one forwarder ...")
        one = drain.measure_shared(ctx.redis, count, ctx.seed, 1, miso)
        say("  ... then two at once ...")
        two = drain.measure_shared(ctx.redis, count, ctx.seed, 2, miso)
        if not row.runs:
            ctx.notes.append(
                f"Redis spool: {count:,} records, {one.average:.0f} bytes each on average, "
                f"filled in {one.filled:.1f}s ({ctx.redis})"
            )
        row.runs.append(
            offline(count, two, one, by_rate=True, floor_peak_mb=one.peak_mb,
                    fill_seconds=[one.filled, two.filled], record_bytes=one.average)
        )  # fmt: skip


def mixpanel_import_row(ctx: Context) -> float:
    """One run of the mixpanel-import row: our dry run (this pass's, if the dry-run row ran
    on the same file), then the importer; returns the seconds of a reused dry run."""
    row = ctx.rows["mixpanel-import"]
    importer, path = ctx.importer, ctx.importer_file
    if row.error is not None or row.skipped is not None or importer is None or path is None:
        return 0.0
    lines = ctx.sizes.importer_lines
    reused = 0.0
    with row_errors(row):
        ours = ctx.dry_run if path == ctx.export else None
        if ours is None:
            say(f"  dry run, {lines:,} lines (beside mixpanel-import) ...")
            ours = replay.measure_dry_run(path)
        else:
            reused = ours.seconds
        say(f"  mixpanel-import --dry-run --dedupe, {lines:,} lines ...")
        theirs = mixpanel_import.measure(importer, path, lines, ctx.folder).run
        source = " (the dry-run row's run)" if reused else ""
        ctx.notes.append(
            f"mixpanel-import {importer.version}: {lines:,} lines in {theirs.seconds:.1f}s "
            f"({lines / theirs.seconds:,.0f}/s), peak RSS {theirs.peak_mb:,.0f} MB; our dry "
            f"run {ours.seconds:.1f}s{source}"
        )
        row.runs.append(
            offline(lines, ours, theirs, by_rate=True, floor_peak_mb=theirs.peak_mb,
                    reused_dry_run=bool(reused),
                    records_written=number(ours.stderr, "records written"),
                    importer_version=importer.version)
        )  # fmt: skip
    return reused


def kafka_row(ctx: Context, run: int) -> None:
    """One run of the kafka row: a fresh broker holding the messages, the floor, the command."""
    row = ctx.rows["kafka"]
    if row.error is not None or ctx.kafka_data is None:
        return
    with row_errors(row):
        say(f"  {row.work} (and its floor) ...")
        result = kafka.measure(ctx.kafka_data, run)
        command, floor = result.command, result.floor
        row.runs.append(
            Measure(
                rate=result.messages / command.seconds,
                floor_rate=result.messages / floor.seconds,
                ratio=command.seconds / floor.seconds,
                peak_mb=command.peak_mb,
                detail={
                    "seconds": command.seconds,
                    "floor_seconds": floor.seconds,
                    "items": result.messages,
                    "records_stored": result.records,
                    "wall_seconds": command.wall,
                    "floor_wall_seconds": floor.wall,
                    "floor_peak_mb": floor.peak_mb,
                    "produce_seconds": result.produce_seconds,
                    **command.detail,
                },
            )
        )


@contextlib.contextmanager
def row_errors(row: Row) -> Iterator[None]:
    """A failed row is marked failed and left out of later runs; the others go on."""
    try:
        yield
    except BenchError as exc:
        row.error = str(exc)
        say(f"  {row.name}: FAILED: {str(exc).splitlines()[0] if str(exc) else exc!r}")


def one_run(ctx: Context, wanted: list[str]) -> None:
    """One run of each row in ``wanted``; sets ``ctx.costs`` to how long each took."""
    ctx.dry_run = None  # set by this pass's dry-run row, if it runs
    mixpanel = [name for name in wanted if name in ("dry-run", "replay")]
    if mixpanel:
        try:
            mixpanel_rows(ctx, set(mixpanel))
        except BenchError as exc:  # the shared floor failed: both rows lose this run
            for name in mixpanel:
                ctx.rows[name].error = str(exc)
    for name in wanted:
        began = time.monotonic()
        if name in ("webhook", "actions"):
            serve_row(ctx, name)
        elif name == "segment-dry-run":
            segment_row(ctx)
        elif name == "export-api":
            export_api_row(ctx)
        elif name == "drain":
            drain_row(ctx)
        elif name == "drain-redis":
            drain_redis_row(ctx)
        elif name == "mixpanel-import":
            # A reused dry run is counted in its cost: a later pass may have to run its own.
            began -= mixpanel_import_row(ctx)
        elif name == "kafka":
            kafka_row(ctx, len(ctx.rows["kafka"].runs))
        else:
            continue
        ctx.costs[name] = time.monotonic() - began


def schedule(ctx: Context, run: int, budget: float | None, elapsed: float) -> list[str]:
    """The rows to run in run number ``run`` (0-based).

    Without a budget: every row still measuring. With one, run 0 takes every row; later
    runs take, cheapest first, each row whose last run still fits in what is left of the
    budget, so the short and noisy ``serve`` rows get the most runs and a slow row may
    keep one.
    """
    live = [n for n in ctx.selected if ctx.rows[n].error is None and ctx.rows[n].skipped is None]
    if budget is None or run == 0:
        return live
    wanted: list[str] = []
    for name in sorted(live, key=lambda n: ctx.costs.get(n, 0.0)):
        cost = ctx.costs.get(name, 0.0)
        if elapsed + cost <= budget:
            wanted.append(name)
            elapsed += cost
    return [name for name in ctx.selected if name in wanted]  # table order


# --------------------------------------------------------------------------- verdicts


def judge(ctx: Context) -> None:
    """Set each measured row's ``met`` from its medians."""
    for row in ctx.rows.values():
        s = row.summary()
        if row.error is not None or not row.runs:
            continue
        rate, ratio, p99, peak = s["rate"], s["ratio"], s["p99_ms"], s["peak_mb"]
        assert rate is not None and ratio is not None
        if row.name == "dry-run":
            assert peak is not None
            row.met = rate >= 60_000 and ratio <= 3.5 and peak <= 150 and flat(ctx) is True
        elif row.name == "replay":
            row.met = rate >= 40_000
        elif row.name == "segment-dry-run":
            row.met = rate >= 60_000 and ratio <= 3.5
        elif row.name == "webhook":
            row.met = ratio >= 0.6 and p99 is not None and p99 <= 25
        elif row.name == "actions":
            row.met = rate >= 40_000
        elif row.name == "drain":
            row.met = rate >= 60_000
        elif row.name == "drain-redis":
            row.met = ratio >= 1.6
        elif row.name == "kafka":
            row.met = ratio <= 2
        elif row.name == "mixpanel-import":
            row.met = ratio >= 20


def flat(ctx: Context) -> bool | None:
    """Peak RSS of the largest dry run within FLAT x the smallest's (None: no curve)."""
    if len(ctx.scaling) < 2:
        return None
    sizes = sorted(ctx.scaling)
    smallest = max(p.peak_mb for p in ctx.scaling[sizes[0]])
    largest = max(p.peak_mb for p in ctx.scaling[sizes[-1]])
    return largest <= FLAT * smallest


# --------------------------------------------------------------------------- output


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def table(ctx: Context) -> str:
    """The results table and the scaling curve, as text."""
    out = [
        f"{'work':<40}{'events/s':>10}{'floor/s':>10}{'vs floor':>12}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'RSS MB':>8}{'runs':>5}  {'met':<5}target"
    ]
    for name in ctx.selected:
        row = ctx.rows[name]
        if row.skipped is not None:
            out.append(f"{row.work:<40}skipped: {row.skipped}")
            continue
        if row.error is not None and not row.runs:
            out.append(f"{row.work:<40}FAILED: {row.error.splitlines()[0][:120]}")
            continue
        s = row.summary()
        met = {True: "yes", False: "no", None: "-"}[row.met]
        if row.error is not None:
            met = "FAIL"
        out.append(
            f"{row.work:<40}{fmt(s['rate'], ',.0f'):>10}{fmt(s['floor_rate'], ',.0f'):>10}"
            f"{fmt(s['ratio'], '.2f', 'x ' + row.ratio_kind):>12}{fmt(s['p50_ms'], '.1f'):>9}"
            f"{fmt(s['p99_ms'], '.1f'):>9}{fmt(s['peak_mb'], '.0f'):>8}{len(row.runs):>5}  "
            f"{met:<5}{row.target}"
        )
    out += [
        "",
        "Each number is the median of the row's runs (RSS: the largest peak; serve rows: not "
        "measured).",
        "vs floor: 'x time' = the work's time over its floor's (lower is better); 'x rate' = "
        "the work's rate over its floor's (higher is better): the service's over the bare Flask "
        "floor's (serve rows), two forwarders' over one's (drain-redis), our dry run's over "
        "mixpanel-import's, i.e. its time over ours (mixpanel-import).",
        "events/s: input lines (Mixpanel rows, from a file or the Export API; Segment "
        "messages; Kafka messages), messages in 200-answered requests (serve rows), records "
        "(drain; drain-redis: two forwarders, floor/s one), our dry run's lines "
        "(mixpanel-import, floor/s: the importer's). "
        "p50/p99: per request, serve rows.",
    ]
    if ctx.scaling:
        out += ["", "scaling: replay --dry-run --output /dev/null, one process"]
        out.append(f"{'lines':>12}{'events/s':>12}{'floor/s':>12}{'peak RSS MB':>14}")
        for lines in sorted(ctx.scaling):
            points = ctx.scaling[lines]
            out.append(
                f"{lines:>12,}{median([p.rate for p in points]):>12,.0f}"
                f"{median([p.floor_rate for p in points]):>12,.0f}"
                f"{max(p.peak_mb for p in points):>14,.0f}"
            )
        verdict = flat(ctx)
        if verdict is not None:
            out.append(
                f"peak RSS {'flat' if verdict else 'NOT flat'} (largest <= {FLAT:g}x smallest)"
            )
    return "\n".join(out)


def to_json(ctx: Context, passes: int, wall: float, options: dict[str, Any]) -> dict[str, Any]:
    """Everything measured, for --json."""
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "options": options,
        "sizes": asdict(ctx.sizes),
        "passes": passes,
        "wall_seconds": round(wall, 1),
        "notes": ctx.notes,
        "rows": [
            {
                "name": row.name,
                "work": row.work,
                "ratio": f"x {row.ratio_kind}",
                "target": row.target,
                "met": row.met,
                "error": row.error,
                "skipped": row.skipped,
                "median": row.summary(),
                "runs": [asdict(m) for m in row.runs],
            }
            for row in (ctx.rows[name] for name in ctx.selected)
        ],
        "scaling": {
            str(lines): [asdict(p) for p in points] for lines, points in ctx.scaling.items()
        },
        "scaling_flat": flat(ctx),
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, one run: a smoke run (< 1 minute)"
    )
    parser.add_argument(
        "--only",
        metavar="NAME[,NAME]",
        help=f"comma-separated rows to run, of: {', '.join(ROWS)} (default: all)",
    )
    parser.add_argument(
        "--runs",
        type=int,
        metavar="N",
        help=f"runs of each row, medians shown (default: up to {MAX_RUNS} within "
        f"{BUDGET / 60:g} minutes; 1 with --quick)",
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="also write every result to this file"
    )
    parser.add_argument("--seed", type=int, default=20240301, help="data generation seed")
    args = parser.parse_args(argv)
    selected = list(ROWS)
    if args.only:
        selected = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in selected if name not in ROWS]
        if unknown or not selected:
            parser.error(f"--only takes names among {', '.join(ROWS)}; got {args.only!r}")
        selected = [name for name in ROWS if name in selected]  # table order
    args.selected = selected
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through every cleanup, as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    sizes = QUICK if args.quick else FULL
    if args.runs is not None:
        max_runs, budget = args.runs, None
    else:
        max_runs, budget = (1, None) if args.quick else (MAX_RUNS, BUDGET)
    started = time.monotonic()
    info = machine()
    say(
        f"bench: {', '.join(args.selected)}; {'quick' if args.quick else 'full'} sizes; "
        f"{info['cpu']}, {info['cores']} cores; temp files in {info['tmpdir']}"
    )
    runs = 0
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-") as tmp,
            CountingMiso() as miso,
        ):
            ctx = Context(sizes, args.selected, make_rows(sizes), Path(tmp), miso, seed=args.seed)
            prepare(ctx, args.seed)
            for run in range(max_runs):
                elapsed = time.monotonic() - started
                wanted = schedule(ctx, run, budget, elapsed)
                if not wanted:
                    break
                say(f"run {run + 1} (at {elapsed:.0f}s): {', '.join(wanted)} ...")
                one_run(ctx, wanted)
                runs = run + 1
            if budget is not None:
                short = [n for n in ctx.selected if 0 < len(ctx.rows[n].runs) < max_runs]
                if short:
                    full = len(short) < sum(1 for n in ctx.selected if ctx.rows[n].runs)
                    ctx.notes.append(
                        f"runs within the {budget / 60:g}-minute budget: "
                        + ", ".join(f"{n} {len(ctx.rows[n].runs)}" for n in short)
                        + (f" (the others {max_runs})" if full else "")
                    )
            judge(ctx)
    except KeyboardInterrupt:
        say("\ninterrupted: servers stopped, temp files removed")
        return 130
    wall = time.monotonic() - started
    print()
    print(
        f"{info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; Python "
        f"{info['python']}; {'quick' if args.quick else 'full'} sizes; wall time {wall:.0f}s"
    )
    for note in ctx.notes:
        print(note)
    print()
    print(table(ctx))
    if args.json is not None:
        options = {"quick": args.quick, "only": args.selected, "runs": args.runs}
        args.json.write_bytes(
            orjson.dumps(to_json(ctx, runs, wall, options), option=orjson.OPT_INDENT_2)
        )
        say(f"wrote {args.json}")
    failed = [row for name in args.selected if (row := ctx.rows[name]).error is not None]
    for row in failed:
        print(f"\n{row.name} failed: {row.error}", file=sys.stderr)
    for name in args.selected:
        if ctx.rows[name].skipped is not None:
            print(f"\n{name} skipped: {ctx.rows[name].skipped}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
