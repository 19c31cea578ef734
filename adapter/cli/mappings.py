"""``translate`` and ``mappings``: the mapping tables at work on files, without sending anything."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import IO

import orjson

from adapter.cli.common import Command, load_table, source_of, time_args, translator_of
from adapter.config import mappings_dir
from adapter.mapping import MappingError, Translator, load_mapping
from adapter.sources import REGISTRY, source_class

#: Sources whose events a table of their own name maps (what `mappings coverage` reads).
MAPPED = tuple(name for name in REGISTRY if source_class(name).table == name)


def _translate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=list(REGISTRY), help="where the events come from")
    parser.add_argument("file", nargs="?", default="-", help="input file, or - for stdin")
    parser.add_argument("--mappings", metavar="DIR", help="mapping folder (default: MAPPINGS_DIR)")
    time_args(parser)


def _translate(args: argparse.Namespace) -> int:
    """Print the records of an input's events; skipped and bad inputs, located, on stderr."""
    from adapter.sources.inputs import UNREADABLE, open_path
    from adapter.sources.jsonvalues import ReadError, read_values

    source = source_of(args)
    if source is None:
        return 2
    translator = translator_of(source, mappings_dir(args.mappings))
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


def _summary(counts: Counter[str]) -> int:
    """The closing line of `translate`, and its exit code (1 when an input was bad)."""
    print(
        f"{counts['inputs']} inputs: {counts['records']} records, {counts['skipped']} skipped, "
        f"{counts['errors']} errors, {counts['links']} identity links, "
        f"{counts['deletions']} deletions",
        file=sys.stderr,
    )
    return 1 if counts["errors"] else 0


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
    translator = load_table(args.source, mappings_dir(args.dir))
    if translator is None:
        return 1
    report = coverage(args.source, args.file, translator)
    if args.format == "json":
        print(orjson.dumps(render_json(report), option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_text(report))
    return 0


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


COMMANDS: dict[str, Command] = {
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
}
