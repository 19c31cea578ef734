"""The ``miso-adapter`` command line (README.md § Commands): the top-level parser and the table
of commands; each group of commands lives in a module of its own (``mappings``, ``replaying``,
``operating``).

Exit codes: 0 success, 1 the input or data was bad, 2 usage error (argparse's own).
"""

from __future__ import annotations

import argparse
import sys

from adapter.cli import mappings, operating, replaying
from adapter.cli.common import Command
from adapter.config import collect_less

__all__ = ["main"]


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


_GROUPS: dict[str, Command] = {**mappings.COMMANDS, **operating.COMMANDS, **replaying.COMMANDS}

# In the order the help lists them.
_COMMANDS: dict[str, Command] = {
    name: _GROUPS[name]
    for name in (
        "translate",
        "mappings",
        "serve",
        "forward",
        "replay",
        "sync",
        "consume",
        "identity",
        "dead-letters",
    )
}


def run() -> None:
    """The ``miso-adapter`` program: :func:`main` in a process of its own."""
    collect_less()
    sys.exit(main())
