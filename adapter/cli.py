"""The ``miso-adapter`` command line (SPEC §3.3).

Exit codes: 0 success, 1 the input or data was bad, 2 usage error (argparse's own).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO

import orjson

from adapter import segment
from adapter.config import mappings_dir
from adapter.mapping import MappingError, Translator, load_mapping
from adapter.reader import ReadError, read_json_values

__all__ = ["main"]

SOURCES = ("segment",)


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
    parser.add_argument("source", choices=SOURCES, help="where the events come from")
    parser.add_argument("file", nargs="?", default="-", help="input file, or - for stdin")
    parser.add_argument("--mappings", metavar="DIR", help="mapping folder (default: MAPPINGS_DIR)")


def _mappings_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["check"], help="check: validate every *.yaml")
    parser.add_argument("--dir", metavar="DIR", help="mapping folder (default: MAPPINGS_DIR)")


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


def _open_input(name: str) -> IO[bytes] | None:
    if name == "-":
        return sys.stdin.buffer
    try:
        return open(name, "rb")
    except OSError as exc:
        print(f"error: cannot read {name}: {exc.strerror}", file=sys.stderr)
        return None


def _translate(args: argparse.Namespace) -> int:
    translator = _load(args.source, mappings_dir(args.mappings))
    if translator is None:
        return 1
    stream = _open_input(args.file)
    if stream is None:
        return 1
    out = sys.stdout.buffer
    err = sys.stderr
    counts: Counter[str] = Counter()
    try:
        for where, value in read_json_values(stream):
            if isinstance(value, ReadError):
                counts["errors"] += 1
                print(f"{where}: error: {value.message}", file=err)
                continue
            for place, message, problem in segment.iter_messages(where, value):
                counts["inputs"] += 1
                if message is None:
                    counts["errors"] += 1
                    print(f"{place}: error: {problem}", file=err)
                    continue
                result = translator.translate(message)
                counts["links"] += len(result.links)
                counts["deletions"] += len(result.deletions)
                for record in result.records:
                    out.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
                counts["records"] += len(result.records)
                if result.skipped is not None:
                    counts["skipped"] += 1
                    print(f"{place}: skipped: {result.skipped}{_extras(result)}", file=err)
    finally:
        out.flush()
        if stream is not sys.stdin.buffer:
            stream.close()
    print(
        f"{counts['inputs']} inputs: {counts['records']} records, {counts['skipped']} skipped, "
        f"{counts['errors']} errors, {counts['links']} identity links, "
        f"{counts['deletions']} deletions",
        file=err,
    )
    return 1 if counts["errors"] else 0


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


_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = {
    "translate": (
        "print the Miso records for source events as JSON Lines (sends nothing)",
        _translate_args,
        _translate,
    ),
    "mappings": (
        "check mapping tables: mappings check [--dir DIR]",
        _mappings_args,
        _mappings_check,
    ),
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
