"""The ``miso-adapter`` command line (README.md § Commands).

Exit codes: 0 success, 1 the input or data was bad, 2 usage error (argparse's own).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from adapter.config import (
    Config,
    collect_less,
    mappings_dir,
    runs_kafka_consumer,
    runs_mixpanel_sync,
)
from adapter.mapping import MappingError, Translator, load_mapping
from adapter.sources import REGISTRY, Source, Window, make_source, source_class, translator_for
from adapter.store import Store, StoreError, open_store

if TYPE_CHECKING:
    from adapter.forwarder import Forwarder

__all__ = ["main"]

#: Sources whose events a table of their own name maps (what `mappings coverage` reads).
MAPPED = tuple(name for name in REGISTRY if source_class(name).table == name)


def main(argv: list[str] | None = None) -> int:
    """Run one ``miso-adapter`` command; returns the process exit code."""
    top = argparse.ArgumentParser(
        prog="miso-adapter",
        description="Feed Miso's Interactions API from Segment and Mixpanel.",
        epilog="commands:\n"
        + "\n".join(f"  {name:<12}{summary}" for name, (summary, _, _) in _COMMANDS.items())
        + "\n\nRun `miso-adapter COMMAND -h` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("command", nargs="?", choices=_COMMANDS, metavar="COMMAND")
    top.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parsed = top.parse_args(argv)
    if parsed.command is None:
        top.print_help(sys.stderr)
        return 2
    summary, build, run = _COMMANDS[parsed.command]
    parser = argparse.ArgumentParser(prog=f"miso-adapter {parsed.command}", description=summary)
    build(parser)
    # Intermixed: options may come before or after the optional FILE positional
    # (plain parse_args would reject `translate segment --mappings DIR FILE`).
    args = parser.parse_intermixed_args(parsed.args)
    try:
        return run(args)
    except BrokenPipeError:
        # `miso-adapter translate … | head` closes our stdout early: not an error.
        sys.stderr.close()
        return 0


def _translate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=list(REGISTRY), help="where the events come from")
    parser.add_argument("file", nargs="?", default="-", help="input file, or - for stdin")
    parser.add_argument("--mappings", metavar="DIR", help="mapping folder (default: MAPPINGS_DIR)")
    _time_args(parser)


def _time_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--time-offset",
        type=float,
        metavar="HOURS",
        help="Mixpanel projects created before 2023 export local time: the project's fixed "
        "UTC offset (e.g. -8) to undo",
    )
    group.add_argument(
        "--project-timezone",
        metavar="TZ",
        help="the same, DST-aware: the project's timezone (e.g. America/Los_Angeles)",
    )


def _source(args: argparse.Namespace) -> Source | None:
    """The source named on the command line with its options, or None after a usage error."""
    time_options = {"time_offset": args.time_offset, "timezone": args.project_timezone}
    if args.source != "mixpanel" and any(v is not None for v in time_options.values()):
        print("error: --time-offset and --project-timezone are for Mixpanel exports",
              file=sys.stderr)  # fmt: skip
        return None
    try:
        window = Window.parse(getattr(args, "since", None), getattr(args, "until", None))
        options = time_options if args.source == "mixpanel" else {}
        if args.source == "mixpanel" and args.time_offset is None and not args.project_timezone:
            options["timezone"] = os.environ.get("MIXPANEL_PROJECT_TIMEZONE") or None
        return make_source(args.source, window=window, **options)
    except (ValueError, OverflowError, ZoneInfoNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _mappings_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["check", "test", "coverage"],
        help="check: validate every *.yaml; test: run DIR/tests/*.yaml; "
        "coverage SOURCE FILE: which events of a file the table maps",
    )
    parser.add_argument("source", nargs="?", choices=MAPPED, help="coverage: " + "|".join(MAPPED))
    parser.add_argument("file", nargs="?", type=Path, help="coverage: the events file")
    parser.add_argument("--dir", metavar="DIR", help="mapping folder (default: MAPPINGS_DIR)")
    parser.add_argument("--format", choices=["text", "json"], default="text",
                        help="coverage: output format")  # fmt: skip


def _mappings(args: argparse.Namespace) -> int:
    if args.action == "check":
        return _mappings_check(args)
    if args.action == "test":
        from adapter.mapping_tests import render, run_mapping_tests

        if args.source or args.file:
            print("error: mappings test takes no SOURCE or FILE (use --dir)", file=sys.stderr)
            return 2
        report = run_mapping_tests(mappings_dir(args.dir))
        print(render(report))
        return 0 if report.ok else 1
    from adapter.coverage import coverage, render_json, render_text

    if args.source is None or args.file is None:
        print("error: usage: miso-adapter mappings coverage SOURCE FILE", file=sys.stderr)
        return 2
    if not args.file.is_file():
        print(f"error: no such file: {args.file}", file=sys.stderr)
        return 1
    translator = _load(args.source, mappings_dir(args.dir))
    if translator is None:
        return 1
    report = coverage(args.source, args.file, translator)
    if args.format == "json":
        print(orjson.dumps(render_json(report), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_text(report))
    return 0


def _load(source: str, folder: Path) -> Translator | None:
    path = folder / f"{source}.yaml"
    if not path.is_file():
        print(f"error: no {source} mapping: {path} does not exist", file=sys.stderr)
        return None
    try:
        return load_mapping(path)
    except MappingError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return None


def _translator(source: Source, folder: Path) -> Any:
    """The source's translator (its mapping table from ``folder``), or None after an error."""
    return translator_for(source, lambda table: _load(table, folder))


def _translate(args: argparse.Namespace) -> int:
    """Print the records of an input's events; skipped and bad inputs, located, on stderr."""
    from adapter.sources.inputs import UNREADABLE, open_path
    from adapter.sources.jsonvalues import ReadError, read_values

    source = _source(args)
    if source is None:
        return 2
    translator = _translator(source, mappings_dir(args.mappings))
    if translator is None:
        return 1
    out = sys.stdout.buffer
    counts: Counter[str] = Counter()
    try:
        opened = open_path(args.file)
    except OSError as exc:
        print(f"error: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except UNREADABLE as exc:  # gzip, but damaged or cut short
        print(f"error: cannot read {args.file}: {exc}", file=sys.stderr)
        return 1
    name = "" if opened.name == "stdin" else opened.name
    try:
        with opened:
            for where, value in read_values(opened.stream, name):
                if isinstance(value, ReadError):
                    counts["errors"] += 1
                    print(f"{where}: error: {value.message}", file=sys.stderr)
                    continue
                items = list(source.items(where, value))
                source.end_chunk()
                for item in items:
                    counts["inputs"] += 1
                    if isinstance(item.event, ReadError):
                        counts["errors"] += 1
                        print(f"{item.where}: error: {item.event.message}", file=sys.stderr)
                    elif isinstance(item.event, str):
                        counts["skipped"] += 1
                        print(f"{item.where}: skipped: {item.event}", file=sys.stderr)
                    else:
                        _emit(translator, item.event, item.where, counts, out)
    except UNREADABLE as exc:  # gzip, but damaged or cut short
        print(f"error: cannot read {args.file}: {exc}", file=sys.stderr)
        return 1
    finally:
        out.flush()
    return _summary(counts)


def _replay_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        choices=list(REGISTRY),
        help="what the files hold: "
        + "; ".join(f"{name}: {source_class(name).describes}" for name in REGISTRY),
    )
    parser.add_argument(
        "files",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="files (JSON Lines, a JSON array or one document; plain or gzip, recognised by "
        "content) or directories, read recursively in name order",
    )
    api = parser.add_argument_group(
        "Mixpanel's Export API (instead of files; MIXPANEL_PROJECT_ID, MIXPANEL_SERVICE_ACCOUNT, "
        "MIXPANEL_REGION or MIXPANEL_EXPORT_URL)"
    )
    api.add_argument("--from-api", action="store_true", help="pull the days from Mixpanel")
    api.add_argument("--from-date", metavar="DAY", help="the first day (YYYY-MM-DD), inclusive")
    api.add_argument("--to-date", metavar="DAY", help="the last day, inclusive (default: today)")
    api.add_argument("--days-per-request", type=int, default=1, metavar="N",
                     help="days each request asks for (default 1)")  # fmt: skip
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="write the records a replay would send now, instead of storing and sending "
        "them: duplicates within the files are dropped, and so are events the configured "
        "store (ADAPTER_STORE) has already seen, when it exists; the store is only read, "
        "never written or created",
    )
    parser.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="with --dry-run: where to write the records (default stdout)",
    )
    parser.add_argument("--since", metavar="DATE", help="only events at or after this date/time")
    parser.add_argument(
        "--until", metavar="DATE", help="only events before this time, or on or before this date"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue each file after its last stored chunk; with --from-api, fetch only "
        "the days not complete yet",
    )
    parser.add_argument("--mappings", metavar="DIR", help="mapping folder (default: MAPPINGS_DIR)")
    _time_args(parser)


def _replay(args: argparse.Namespace) -> int:
    from adapter.replay import forwarder_child, replay

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.output is not None and not args.dry_run:
        print("error: --output goes with --dry-run", file=sys.stderr)
        return 2
    source = _source(args)
    if source is None:
        return 2
    if args.from_api:
        inputs: list[Any] | None = _export_ranges(args)
        if inputs is None:
            return 2
    else:
        if not args.files:
            print("error: give files or folders to replay (or --from-api for Mixpanel)",
                  file=sys.stderr)  # fmt: skip
            return 2
        if args.from_date or args.to_date:
            print("error: --from-date and --to-date go with --from-api", file=sys.stderr)
            return 2
        missing = [str(p) for p in args.files if not p.exists()]
        if missing:
            print(f"error: no such file or directory: {', '.join(missing)}", file=sys.stderr)
            return 1
        inputs = args.files
    translator = _translator(source, mappings_dir(args.mappings))
    if translator is None:
        return 1
    config = Config()
    if args.dry_run:
        try:
            seen: Store | None = open_store(config.ADAPTER_STORE, readonly=True)
        except StoreError as exc:
            seen = None
            print(f"note: {exc}: duplicates are dropped within these files only", file=sys.stderr)
        output = args.output.open("wb") if args.output else sys.stdout.buffer
        try:
            summary = replay(source, inputs, translator=translator, store=seen, dedup_ttl=0,
                             dry_run=True, output=output)  # fmt: skip
        except StoreError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            if args.output:
                output.close()
            if seen is not None:
                seen.close()
        for line in summary.lines(dry_run=True):
            print(line, file=sys.stderr)
        return 1 if summary.malformed or summary.failed else 0
    if not config.MISO_API_KEY:
        print(
            "error: MISO_API_KEY is not set: set it, or use --dry-run to see the records",
            file=sys.stderr,
        )
        return 1
    try:
        store = open_store(config.ADAPTER_STORE)
        summary = replay(
            source,
            inputs,
            translator=translator,
            store=store,
            dedup_ttl=config.DEDUP_HOURS * 3600,
            resume=args.resume,
            forwarder=forwarder_child(),  # its own process: sending gets the other core
        )
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in summary.lines(dry_run=False):
        print(line, file=sys.stderr)
    # Delivered is the replay's own records: a service writing to the same store keeps
    # adding records of its own while the replay ends.
    return 1 if summary.malformed or summary.failed or not summary.delivered else 0


def _export_ranges(args: argparse.Namespace) -> list[Any] | None:
    """The day ranges of ``--from-api``, or None after a usage error."""
    from adapter.sources.mixpanel_api import ExportClient, ExportRange, ExportSettings, day_ranges

    if args.source != "mixpanel":
        print("error: --from-api is for Mixpanel", file=sys.stderr)
        return None
    if args.files:
        print("error: give files or --from-api, not both", file=sys.stderr)
        return None
    try:
        settings = ExportSettings.from_env()
        if not args.from_date:
            raise ValueError("--from-api needs --from-date (and --to-date, default today)")
        first = date.fromisoformat(args.from_date)
        last = date.fromisoformat(args.to_date) if args.to_date else project_today(args)
        ranges = day_ranges(first, last, args.days_per_request)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    client = ExportClient(settings)
    return [ExportRange(client, a, b) for a, b in ranges]


def project_today(args: argparse.Namespace) -> date:
    """Today in the project's timezone (the days of a pre-2023 project are local ones)."""
    zone = args.project_timezone or os.environ.get("MIXPANEL_PROJECT_TIMEZONE") or None
    if zone:
        return datetime.now(ZoneInfo(zone)).date()
    if args.time_offset is not None:
        return (datetime.now(UTC) + timedelta(hours=args.time_offset)).date()
    return datetime.now(UTC).date()


def _duration(text: str) -> float:
    """``900``, ``90s``, ``15m``, ``1h``: seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    value = text.strip().lower()
    try:
        if value and value[-1] in units:
            return float(value[:-1]) * units[value[-1]]
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 15m, 900, 1h)") from None


def _sync_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=["mixpanel"], help="what to pull (Mixpanel's Export API)")
    parser.add_argument(
        "--start",
        metavar="DAY",
        default=os.environ.get("MIXPANEL_SYNC_START") or None,
        help="the first day, for a store with no cursor yet (default today; MIXPANEL_SYNC_START)",
    )
    parser.add_argument("--lookback-days", type=int, metavar="N",
                        default=int(os.environ.get("MIXPANEL_SYNC_LOOKBACK_DAYS") or 5),
                        help="days before the cursor pulled again each cycle, for late events "
                        "(default 5)")  # fmt: skip
    parser.add_argument("--every", type=_duration, metavar="DURATION",
                        default=_duration(os.environ.get("MIXPANEL_SYNC_EVERY") or "15m"),
                        help="the time between cycles: 900, 15m, 1h (default 15m)")  # fmt: skip
    parser.add_argument("--days-per-request", type=int, default=1, metavar="N",
                        help="days each request asks for (default 1)")  # fmt: skip
    parser.add_argument("--once", action="store_true", help="one cycle, then exit")
    parser.add_argument("--store-only", action="store_true",
                        help="store what is pulled and leave sending to a running forwarder "
                        "(serve runs the sync so)")  # fmt: skip
    parser.add_argument("--mappings", metavar="DIR", help="mapping folder (default: MAPPINGS_DIR)")
    _time_args(parser)


def _sync(args: argparse.Namespace) -> int:
    from adapter.replay import forwarder_child
    from adapter.sources.mixpanel_api import ExportClient, ExportSettings
    from adapter.sync import Sync, check_cadence

    _logging()
    config = Config()
    try:
        settings = ExportSettings.from_env()
        start = date.fromisoformat(args.start) if args.start else None
        check_cadence(args.lookback_days, args.days_per_request, args.every, config.DEDUP_HOURS)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if "--" in str(exc) else 1
    args.since = args.until = None
    first_source = _source(args)
    if first_source is None:
        return 2
    translator = _translator(first_source, mappings_dir(args.mappings))
    if translator is None:
        return 1
    store = _long_running_store(config, store_only=args.store_only)
    if store is None:
        return 1
    sync = Sync(
        client=ExportClient(settings),
        store=store,
        make_source=lambda: _source(args),  # type: ignore[arg-type, return-value]
        translator=translator,
        today=lambda: project_today(args),
        dedup_ttl=config.DEDUP_HOURS * 3600,
        lookback_days=args.lookback_days,
        every=args.every,
        days_per_request=args.days_per_request,
        start=start,
        forwarder=(lambda: None) if args.store_only else forwarder_child,
        errors=sys.stderr,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    logging.getLogger("adapter.sync").info(
        "syncing Mixpanel project %s every %g s (lookback %d days)",
        settings.project_id, args.every, args.lookback_days,
    )  # fmt: skip
    return sync.run(stop, once=args.once)


def _long_running_store(config: Config, *, store_only: bool) -> Store | None:
    """The store of ``sync``/``consume``, writable; None after saying why not (also when
    they would send with no Miso key)."""
    if not store_only and not config.MISO_API_KEY:
        print("error: MISO_API_KEY is not set: set it, or use --store-only beside a running "
              "forwarder", file=sys.stderr)  # fmt: skip
        return None
    try:
        store = open_store(config.ADAPTER_STORE)
        store.ping()
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    return store


def _consume_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("transport", choices=["kafka"], help="where the events stream from")
    parser.add_argument("--bootstrap-servers", metavar="HOST:PORT[,...]",
                        help="the brokers (KAFKA_BOOTSTRAP_SERVERS)")  # fmt: skip
    parser.add_argument("--topic", action="append", dest="topics", metavar="TOPIC",
                        help="a topic; repeat for more (KAFKA_TOPICS, a comma list)")  # fmt: skip
    parser.add_argument("--group", help="the consumer group (KAFKA_GROUP)")
    parser.add_argument("--format", choices=["segment", "mixpanel", "miso"],
                        help="what a message holds (KAFKA_FORMAT)")  # fmt: skip
    parser.add_argument("--dead-letter-topic", metavar="TOPIC",
                        help="where to copy messages not JSON or not of the format")  # fmt: skip
    parser.add_argument("--store-only", action="store_true",
                        help="store what is read and leave sending to a running forwarder "
                        "(serve runs consumers so)")  # fmt: skip
    parser.add_argument("--mappings", metavar="DIR", help="mapping folder (default: MAPPINGS_DIR)")


def _consume(args: argparse.Namespace) -> int:
    from adapter.sources.kafka import KafkaSettings, kafka_client_missing

    missing = kafka_client_missing()
    if missing is not None:
        print(f"error: {missing}", file=sys.stderr)
        return 1
    from adapter.consume import Consumer, check_brokers
    from adapter.replay import forwarder_child

    _logging()
    config = Config()
    try:
        settings = KafkaSettings.from_options(
            bootstrap_servers=args.bootstrap_servers, topics=args.topics, group=args.group,
            format=args.format, dead_letter_topic=args.dead_letter_topic,
        )  # fmt: skip
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source = make_source(settings.format)
    translator = _translator(source, mappings_dir(args.mappings))
    if translator is None:
        return 1
    store = _long_running_store(config, store_only=args.store_only)
    if store is None:
        return 1
    problem = check_brokers(settings)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    forwarder = None if args.store_only else forwarder_child()
    if forwarder is not None:
        forwarder.start()
    logging.getLogger("adapter.consume").info(
        "consuming %s from %s as group %s (%s)", ", ".join(settings.topics),
        settings.bootstrap_servers, settings.group, settings.format,
        extra={"event": "start"},
    )  # fmt: skip
    consumer = Consumer(
        settings,
        store,
        source,
        translator,
        dedup_ttl=config.DEDUP_HOURS * 3600,
        stop=stop,
        check_forwarder=forwarder.check if forwarder else lambda: None,
    )
    try:
        return consumer.run()
    finally:
        if forwarder is not None:
            forwarder.shutdown()


def _summary(counts: Counter[str]) -> int:
    """The closing line of `translate`, and its exit code (1 when an input was bad)."""
    print(
        f"{counts['inputs']} inputs: {counts['records']} records, {counts['skipped']} skipped, "
        f"{counts['errors']} errors, {counts['links']} identity links, "
        f"{counts['deletions']} deletions",
        file=sys.stderr,
    )
    return 1 if counts["errors"] else 0


def _emit(
    translator: Translator, event: dict, where: str, counts: Counter[str], out: IO[bytes]
) -> None:
    """Translate one event for `translate`: records to ``out``, a skip line to stderr."""
    result = translator.translate(event)
    counts["links"] += len(result.links)
    counts["deletions"] += len(result.deletions)
    for record in result.records:
        out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
    counts["records"] += len(result.records)
    if result.skipped is not None:
        counts["skipped"] += 1
        print(f"{where}: skipped: {result.skipped}{_extras(result)}", file=sys.stderr)


def _extras(result: object) -> str:
    links = getattr(result, "links", [])
    deletions = getattr(result, "deletions", [])
    notes = []
    if links:
        notes.append(f"{len(links)} identity link{'s' if len(links) > 1 else ''}")
    if deletions:
        notes.append(f"deletion of user {', '.join(map(repr, deletions))}")
    return f" ({'; '.join(notes)})" if notes else ""


def _mappings_check(args: argparse.Namespace) -> int:
    folder = mappings_dir(args.dir)
    if not folder.is_dir():
        print(f"error: {folder} is not a folder", file=sys.stderr)
        return 1
    files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not files:
        print(f"error: no mapping files (*.yaml) in {folder}", file=sys.stderr)
        return 1
    failed = 0
    for path in files:
        try:
            translator = load_mapping(path)
        except MappingError as exc:
            failed += 1
            for problem in exc.problems:
                print(f"error: {problem}", file=sys.stderr)
            continue
        print(
            f"ok: {path}: {translator.rule_count} rules, {len(translator.event_names)} event names"
        )
    return 1 if failed else 0


def _serve_args(parser: argparse.ArgumentParser) -> None:
    from adapter.serve import THREADS, WORKERS

    parser.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT (default %(default)s)")
    parser.add_argument(
        "--workers",
        type=int,
        default=WORKERS,
        help="gunicorn worker processes (default %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=THREADS, help="threads per worker (default %(default)s)"
    )


def _logging() -> None:
    """The service's logs (serve, forward): text on a terminal, else JSON lines (adapter.logs)."""
    from adapter import logs

    logs.configure()


def _preflight(*, mappings: bool = True) -> Config | None:
    """Check what a service needs before starting anything: tables (for web) and store."""
    config = Config()
    folder = Path(config.MAPPINGS_DIR)
    problems = []
    for path in sorted(folder.glob("*.yaml")) if mappings else ():
        try:
            load_mapping(path)
        except MappingError as exc:
            problems += [str(p) for p in exc.problems]
    if mappings and not (folder / "segment.yaml").is_file():
        problems.append(f"{folder / 'segment.yaml'}: missing (MAPPINGS_DIR={folder})")
    try:
        store = open_store(config.ADAPTER_STORE)
        try:
            store.ping()  # a Redis store connects lazily: a wrong host or password shows here
        finally:
            store.close()
    except StoreError as exc:
        problems.append(str(exc))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return None if problems else config


def _serve(args: argparse.Namespace) -> int:
    from adapter.serve import serve

    _logging()
    if args.workers < 1 or args.threads < 1:
        print("error: --workers and --threads must be at least 1", file=sys.stderr)
        return 2
    config = _preflight()
    if config is None:
        return 1
    if runs_mixpanel_sync():
        from adapter.sources.mixpanel_api import ExportSettings
        from adapter.sync import check_cadence

        try:  # the sync child would only fail, again and again: say why now
            ExportSettings.from_env()
            lookback = int(os.environ.get("MIXPANEL_SYNC_LOOKBACK_DAYS") or 5)
            every = _duration(os.environ.get("MIXPANEL_SYNC_EVERY") or "15m")
            check_cadence(lookback, 1, every, config.DEDUP_HOURS)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            print(f"error: MIXPANEL_SYNC=1: {exc}", file=sys.stderr)
            return 1
    if runs_kafka_consumer():
        from adapter.sources.kafka import KafkaSettings, kafka_client_missing

        try:  # the consumer child would only fail, again and again: say why now
            KafkaSettings.from_options()
            missing = kafka_client_missing()
            if missing is not None:
                raise ValueError(missing)
        except ValueError as exc:
            print(f"error: KAFKA_BOOTSTRAP_SERVERS and KAFKA_TOPICS are set: {exc}",
                  file=sys.stderr)  # fmt: skip
            return 1
    return serve(args.bind, args.workers, args.threads)


def _forward(args: argparse.Namespace) -> int:
    from adapter.forwarder import Forwarder, settings_from_env
    from adapter.miso import MisoClient

    _logging()
    config = _preflight(mappings=False)  # the forwarder sends records; it never translates
    if config is None:
        return 1
    store = open_store(config.ADAPTER_STORE)
    settings = settings_from_env()
    # A send must end before its lease does, or another forwarder could send it again.
    timeout = (min(5.0, settings.lease / 3), min(20.0, settings.lease * 2 / 3))
    client = None
    if config.MISO_API_KEY:
        client = MisoClient(config.MISO_API_URL, config.MISO_API_KEY, timeout=timeout)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    logging.getLogger("adapter.forwarder").info(
        "forwarding from %s to %s (pid %d)", store, config.MISO_API_URL, os.getpid()
    )
    forwarder = Forwarder(store, client, settings)
    if not args.until_empty:
        forwarder.run(stop)
        return 0
    return _drain(forwarder, store, stop)


def _drain(forwarder: Forwarder, store: Store, stop: threading.Event) -> int:
    """``forward --until-empty``: send what is ready, say what is left, exit 1 if anything is."""
    from adapter.forwarder import refusal

    if forwarder.client is None:
        print("error: MISO_API_KEY is not set: nothing can be sent", file=sys.stderr)
        return 1
    started = time.monotonic()
    try:
        taken = forwarder.drain(stop)
        stats = store.stats()
        refused = refusal(store)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds = time.monotonic() - started
    print(f"forwarded {taken:,} items in {seconds:.1f}s ({taken / max(seconds, 1e-9):,.0f}/s); "
          f"spool: {stats['spool']:,} waiting, {stats['dead_letters']:,} dead letters",
          file=sys.stderr)  # fmt: skip
    if stats["spool"] == 0:
        return 0
    if refused is not None:
        print(f"error: not sent: {refused['reason']}", file=sys.stderr)
    else:
        print("error: records wait for a retry (Miso was unavailable); run it again later, "
              "or keep `miso-adapter forward` running", file=sys.stderr)  # fmt: skip
    return 1


def _forward_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--until-empty",
        action="store_true",
        help="send what is ready, then exit: 0 when the spool is empty, 1 when records remain",
    )


def _dead_letters_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "retry", "purge"])
    parser.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead letters to retry")
    parser.add_argument("--all", action="store_true", help="retry every dead letter")
    parser.add_argument("--json", action="store_true", help="list as JSON Lines")


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dead_letters(args: argparse.Namespace) -> int:
    try:
        store = open_store(Config().ADAPTER_STORE)
        if args.action == "list":
            letters = store.dead_letters()
            for d in letters:
                body = orjson.loads(d.body)
                if args.json:
                    line = {
                        "id": d.id,
                        "kind": d.kind,
                        "source": d.source,
                        "reason": d.reason,
                        "attempts": d.attempts,
                        "dead_at": _when(d.dead_at),
                        "body": body,
                    }
                    print(orjson.dumps(line).decode())
                else:
                    print(
                        f"#{d.id} {_when(d.dead_at)} {d.source} {d.kind}, "
                        f"{d.attempts} attempt(s): {d.reason}"
                    )
                    print(f"    {orjson.dumps(body).decode()}")
            print(f"{len(letters)} dead letters", file=sys.stderr)
            return 0
        if args.action == "retry":
            if args.all == bool(args.ids):
                print("error: give dead-letter IDs or --all", file=sys.stderr)
                return 2
            moved = store.requeue_dead(None if args.all else args.ids)
            print(f"requeued {moved} dead letters; the running forwarder sends them")
            return 0 if args.all or moved == len(set(args.ids)) else 1
        print(f"purged {store.purge_dead()} dead letters")
        return 0
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _identity_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["show"])
    parser.add_argument("id", help="a user id or an anonymous id")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _identity(args: argparse.Namespace) -> int:
    """`identity show ID`: what an id is linked to, as anonymous id and as user id, and
    its stored profile with the user record it uploads as."""
    from adapter.users import UsersTables

    config = Config()
    try:
        store = open_store(config.ADAPTER_STORE)
        links = store.links_of(args.id)
        profile = store.profile_of(args.id)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    record = None
    if profile is not None and not profile["anonymous"]:
        record = UsersTables(config.MAPPINGS_DIR).record(args.id, profile["data"])
    if args.json:
        print(orjson.dumps({"id": args.id, **links, "profile": profile,
                            "user_record": record}).decode())  # fmt: skip
        return 0
    user, anonymous = links["user"], links["anonymous"]
    if user is None and not anonymous:
        print(f"{args.id}: no links known")
    if user is not None:
        print(f"{args.id} is an anonymous id of user {user['user_id']} "
              f"(linked {_when(user['linked_at'])})")  # fmt: skip
    if anonymous:
        print(f"{args.id} is a user with {len(anonymous)} anonymous id(s), most recent first:")
        for link in anonymous:
            print(f"  {link['anonymous_id']}  (linked {_when(link['linked_at'])})")
    if profile is None:
        print(f"{args.id}: no profile stored")
        return 0
    kept = "kept for its user until a link names them" if profile["anonymous"] else "stored"
    print(f"profile {kept} (changed {_when(profile['updated_at'])}):")
    print(f"  {orjson.dumps(profile['data']).decode()}")
    if record is not None:
        print(f"uploads to Miso as:\n  {orjson.dumps(record).decode()}")
    return 0


_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = {
    "translate": (
        "print the Miso records for source events as JSON Lines (sends nothing)",
        _translate_args,
        _translate,
    ),
    "mappings": (
        "mapping tables: mappings check | test | coverage SOURCE FILE  [--dir DIR]",
        _mappings_args,
        _mappings,
    ),
    "serve": (
        "run the web service (gunicorn) and the forwarder",
        _serve_args,
        _serve,
    ),
    "forward": ("run the forwarder alone [--until-empty]", _forward_args, _forward),
    "replay": (
        f"replay files into Miso: replay {'|'.join(REGISTRY)} PATH... [options]",
        _replay_args,
        _replay,
    ),
    "sync": (
        "pull Mixpanel's Export API on a schedule: sync mixpanel [--once] [options]",
        _sync_args,
        _sync,
    ),
    "consume": (
        "consume a Kafka topic: consume kafka --bootstrap-servers ... --topic T --group G "
        "--format F",
        _consume_args,
        _consume,
    ),
    "identity": (
        "what an id is linked to, and its profile: identity show ID [--json]",
        _identity_args,
        _identity,
    ),
    "dead-letters": (
        "inspect and resend what Miso refused: list | retry [--all | ID...] | purge",
        _dead_letters_args,
        _dead_letters,
    ),
}


def run() -> None:
    """The ``miso-adapter`` program: :func:`main` in a process of its own."""
    collect_less()
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
