"""``replay``, ``sync`` and ``consume``: events from files, Mixpanel's Export API or Kafka,
translated, stored and sent to Miso."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from adapter.cli.common import (
    Command,
    duration,
    service_logging,
    source_of,
    time_args,
    translator_of,
)
from adapter.config import Config, mappings_dir
from adapter.sources import REGISTRY, make_source, source_class
from adapter.store import Store, StoreError, open_store


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
    time_args(parser)


def _replay(args: argparse.Namespace) -> int:
    from adapter.replay import forwarder_child, replay

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.output is not None and not args.dry_run:
        print("error: --output goes with --dry-run", file=sys.stderr)
        return 2
    source = source_of(args)
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
    translator = translator_of(source, mappings_dir(args.mappings))
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
    parser.add_argument("--every", type=duration, metavar="DURATION",
                        default=duration(os.environ.get("MIXPANEL_SYNC_EVERY") or "15m"),
                        help="the time between cycles: 900, 15m, 1h (default 15m)")  # fmt: skip
    parser.add_argument("--days-per-request", type=int, default=1, metavar="N",
                        help="days each request asks for (default 1)")  # fmt: skip
    parser.add_argument("--once", action="store_true", help="one cycle, then exit")
    parser.add_argument("--store-only", action="store_true",
                        help="store what is pulled and leave sending to a running forwarder "
                        "(serve runs the sync so)")  # fmt: skip
    parser.add_argument("--mappings", metavar="DIR", help="mapping folder (default: MAPPINGS_DIR)")
    time_args(parser)


def _sync(args: argparse.Namespace) -> int:
    from adapter.replay import forwarder_child
    from adapter.sources.mixpanel_api import ExportClient, ExportSettings
    from adapter.sync import Sync, check_cadence

    service_logging()
    config = Config()
    try:
        settings = ExportSettings.from_env()
        start = date.fromisoformat(args.start) if args.start else None
        check_cadence(args.lookback_days, args.days_per_request, args.every, config.DEDUP_HOURS)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if "--" in str(exc) else 1
    args.since = args.until = None
    first_source = source_of(args)
    if first_source is None:
        return 2
    translator = translator_of(first_source, mappings_dir(args.mappings))
    if translator is None:
        return 1
    store = _long_running_store(config, store_only=args.store_only)
    if store is None:
        return 1
    sync = Sync(
        client=ExportClient(settings),
        store=store,
        make_source=lambda: source_of(args),  # type: ignore[arg-type, return-value]
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

    service_logging()
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
    translator = translator_of(source, mappings_dir(args.mappings))
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


COMMANDS: dict[str, Command] = {
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
}
