"""What several ``miso-adapter`` commands share: the source and mapping table named on the
command line, the Mixpanel time options, the services' logging and durations."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from adapter.mapping import MappingError, Translator, load_mapping
from adapter.sources import Source, Window, make_source, translator_for

#: A command: its one-line summary, what adds its arguments, and what runs it (exit code).
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]


def time_args(parser: argparse.ArgumentParser) -> None:
    """``--time-offset`` / ``--project-timezone``, the local time of old Mixpanel exports."""
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


def source_of(args: argparse.Namespace) -> Source | None:
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


def load_table(source: str, folder: Path) -> Translator | None:
    """``folder``'s table for ``source``, or None after printing why it cannot be loaded."""
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


def translator_of(source: Source, folder: Path) -> Any:
    """The source's translator (its mapping table from ``folder``), or None after an error."""
    return translator_for(source, lambda table: load_table(table, folder))


def service_logging() -> None:
    """The services' logs (serve, forward, sync, consume): text on a terminal, else JSON
    lines (adapter.logs)."""
    from adapter import logs

    logs.configure()


def duration(text: str) -> float:
    """``900``, ``90s``, ``15m``, ``1h``: seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    value = text.strip().lower()
    try:
        if value and value[-1] in units:
            return float(value[:-1]) * units[value[-1]]
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 15m, 900, 1h)") from None
