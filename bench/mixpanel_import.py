"""Peer benchmark: Mixpanel's own importer, ``mixpanel-import --dry-run --dedupe``, beside
``miso-adapter replay mixpanel --dry-run`` of the same export.

    python bench/mixpanel_import.py [--lines 1000000] [--seed 20240301] [--file export.jsonl]

`mixpanel-import <https://github.com/ak--47/mixpanel-import>`_ (npm, by ak--47 of
Mixpanel) streams files into Mixpanel. With ``--dry-run`` it reads, parses and transforms
every record and sends nothing (no token needed: it opens no socket at all, checked with
``strace -f -e trace=socket,connect``, and it runs the same under ``unshare -n``); with
``--dedupe`` it drops every record whose stable-stringified JSON hashes (murmurhash v3)
the same as an earlier one's, as our dry run drops repeated events. It is not downloaded
here: install it once with ``npm install --prefix bench/.peers mixpanel-import@3.1.43``
(``bench/.peers`` is git-ignored), or point ``$MIXPANEL_IMPORT`` at its executable or at its
``index.js`` (run with ``node``). Without it, ``python -m bench`` skips the row, saying how
to install it, and its exit status is unaffected; an importer that fails is an error.

Generates the export of the ``dry-run`` row (``adapter/testing/mixpanel_export.py``, same
seed) unless --file is given, then runs, each as its own subprocess on the same file, one after
the other:

* ours: ``miso-adapter replay mixpanel FILE --dry-run --output /dev/null``;
* the importer: ``mixpanel-import FILE --dry-run --dedupe --logs false`` in an empty
  temporary folder (it reads a ``.env`` from its working folder), without the ``MP_*``
  variables it would read credentials from. ``--logs false``: by default the CLI writes
  its summary, which in a dry run holds every transformed record, as indented JSON to
  ``./logs/``; the row times the work, not that file. Its ``STATS`` table must show every
  line read (``total``), none failed, and no ``ERROR:`` line (the CLI reports a failed
  pipeline that way and still exits 0).

The CLI's table does not count duplicates, so the dedupe is checked apart, untimed: the
importer's library API (``require(index.js)({}, FILE, {dryRun, dedupe})``, the function
the CLI calls) on the first 20,000 lines must count as duplicates exactly the lines
repeated there and keep every other one.

Both are timed from start to exit (interpreter start included); peak RSS as every row's
(``common.run``). The ratio is the importer's time over ours (higher is better for us).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

from common import BenchError, Run, clean_env, number, run  # noqa: E402

PIN = "mixpanel-import@3.1.43"
PEERS = BENCH / ".peers"
DEFAULT = PEERS / "node_modules" / ".bin" / "mixpanel-import"
INSTALL = f"npm install --prefix bench/.peers {PIN}"
CHECK_LINES = 20_000  # lines of the untimed dedupe check

# The dedupe check: the library API on a file, its counts as one JSON line.
_API = """
const [script, file] = process.argv.slice(1);
require(script)({}, file, {dryRun: true, dedupe: true, verbose: false, logs: false})
  .then((s) => {
    console.log(JSON.stringify({total: s.total, duplicates: s.duplicates,
                                kept: (s.dryRun || []).length, failed: s.failed}));
    process.exit(0);
  })
  .catch((e) => { console.error(e); process.exit(1); });
"""


class Missing(Exception):
    """The importer is not installed (the row is skipped, not failed)."""


@dataclass(frozen=True)
class Importer:
    """How to run the installed importer."""

    command: list[str]  # the CLI, without arguments
    script: Path | None  # its index.js, when known (for the dedupe check)
    version: str


@dataclass
class ImportRun:
    """One timed run of the importer's CLI."""

    run: Run
    total: int  # records read, from its STATS table


def find() -> Importer:
    """The importer in ``$MIXPANEL_IMPORT`` or ``bench/.peers``; :class:`Missing` if neither."""
    given = os.environ.get("MIXPANEL_IMPORT")
    path = Path(given) if given else DEFAULT
    if not path.exists():
        where = f"MIXPANEL_IMPORT={given} does not exist" if given else "not installed"
        raise Missing(f"{where}: {INSTALL}")
    real = path.resolve()
    script = real if real.suffix in (".js", ".cjs") else None
    if script is None:
        return Importer([str(path)], None, "unknown")
    node = shutil.which("node")
    if node is None:
        raise Missing(f"node is not on PATH (the importer needs Node.js >= 20.18): {path}")
    version = "unknown"
    for folder in script.parents:
        package = folder / "package.json"
        if package.is_file():
            meta = json.loads(package.read_text())
            if meta.get("name") == "mixpanel-import":
                version = str(meta.get("version", "unknown"))
                break
    return Importer([node, str(script)], script, version)


def peer_env() -> dict[str, str]:
    """This environment without the adapter's settings nor Mixpanel credentials."""
    return {k: v for k, v in clean_env().items() if not k.startswith("MP_")}


def _stat(text: str, label: str) -> int:
    """A count from the CLI's STATS table (``│ total │ '1,000' │``); -1 when absent."""
    match = re.search(rf"│\s*{label}\s*│\s*'?([\d,]+)'?\s*│", text)
    return int(match.group(1).replace(",", "")) if match else -1


def measure(importer: Importer, path: Path, lines: int, folder: Path) -> ImportRun:
    """``mixpanel-import FILE --dry-run --dedupe --logs false``, timed; checked."""
    with tempfile.TemporaryDirectory(prefix="bench-mpi-", dir=folder) as tmp:
        result = run([*importer.command, str(path.resolve()), "--dry-run", "--dedupe",
                      "--logs", "false"], peer_env(), cwd=Path(tmp))  # fmt: skip
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith(("ERROR", "UH OH"))]
    total, failed = _stat(result.stdout, "total"), _stat(result.stdout, "failed")
    if result.returncode != 0 or errors or total != lines or failed != 0:
        said = f": {' / '.join(errors)[:500]}" if errors else ""
        raise BenchError(
            f"mixpanel-import failed (exit {result.returncode}, total {total:,} of "
            f"{lines:,} lines, failed {failed:,}){said}\n{output[-3000:]}"
        )
    return ImportRun(result, total)


def head(source: Path, target: Path, lines: int) -> tuple[int, int]:
    """Write the first ``lines`` lines of ``source``; returns (lines, repeated lines)."""
    seen: set[bytes] = set()
    count = repeated = 0
    with source.open("rb") as src, target.open("wb") as out:
        for line in src:
            if count >= lines:
                break
            out.write(line)
            count += 1
            key = line.rstrip(b"\n")
            if key in seen:
                repeated += 1
            seen.add(key)
    return count, repeated


def check_dedupe(importer: Importer, path: Path, folder: Path) -> str:
    """The untimed dedupe check on the first lines of ``path``; returns what it found."""
    if importer.script is None:
        return "dedupe not checked (no index.js to load)"
    with tempfile.TemporaryDirectory(prefix="bench-mpi-", dir=folder) as tmp:
        sample = Path(tmp) / "head.jsonl"
        lines, repeated = head(path, sample, CHECK_LINES)
        result = run([importer.command[0], "-e", _API, str(importer.script), str(sample)],
                     peer_env(), cwd=Path(tmp))  # fmt: skip
    try:
        counts = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        counts = None
    expected = {"total": lines, "duplicates": repeated, "kept": lines - repeated, "failed": 0}
    if result.returncode != 0 or counts != expected:
        raise BenchError(
            f"mixpanel-import's dedupe check: got {counts}, expected {expected}:\n"
            f"{(result.stdout + result.stderr)[-2000:]}"
        )
    return f"--dedupe dropped the {repeated:,} repeated lines of its first {lines:,}"


def main() -> None:
    import replay

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20240301)
    parser.add_argument("--file", type=Path, help="a Mixpanel export (default: generated)")
    args = parser.parse_args()
    try:
        importer = find()
    except Missing as exc:
        sys.exit(f"mixpanel-import {exc}")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-mpi-") as tmp:
            path = args.file
            if path is None:
                path = Path(tmp) / "export.jsonl"
                print(replay.generate(path, args.lines, args.seed), file=sys.stderr)
            with path.open("rb") as stream:
                lines = sum(1 for _ in stream)
            dedupe = check_dedupe(importer, path, Path(tmp))
            ours = replay.measure_dry_run(path)
            theirs = measure(importer, path, lines, Path(tmp))
    except BenchError as exc:
        sys.exit(f"error: {exc}")
    print(f"file: {lines:,} lines; mixpanel-import {importer.version}: {dedupe}")
    print(f"{'work':<46}{'events/s':>11}{'seconds':>10}{'peak RSS MB':>13}")
    for label, measured in (
        ("replay --dry-run --output /dev/null", ours),
        ("mixpanel-import --dry-run --dedupe", theirs.run),
    ):
        print(f"{label:<46}{lines / measured.seconds:>11,.0f}{measured.seconds:>10.2f}"
              f"{measured.peak_mb:>13,.0f}")  # fmt: skip
    print(
        f"ours: {number(ours.stderr, 'records written'):,} records written, "
        f"{number(ours.stderr, 'duplicates'):,} duplicates; theirs: {theirs.total:,} read; "
        f"its time over ours: {theirs.run.seconds / ours.seconds:.2f}x"
    )


if __name__ == "__main__":
    main()
