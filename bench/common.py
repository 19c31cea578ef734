"""Helpers shared by the benchmarks: timed subprocesses, a counting FakeMiso, medians.

Imported flat (``from common import ...``) by the scripts in ``bench/``, which put their
own folder on ``sys.path`` as ``python bench/replay.py`` does; ``python -m bench`` does
the same, so each module exists once whichever way it was started.
"""

from __future__ import annotations

import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adapter.testing.service import clean_env

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
MISO_KEY = "bench-key"

__all__ = [
    "BENCH",
    "MISO_KEY",
    "ROOT",
    "BenchError",
    "CountingMiso",
    "Run",
    "check",
    "clean_env",
    "cli",
    "median",
    "number",
    "run",
]


class BenchError(Exception):
    """A benchmark could not measure what it should (a command failed, a check failed)."""


@dataclass
class Run:
    """One subprocess: how long it took, its peak memory, what it printed."""

    seconds: float
    peak_mb: float
    returncode: int
    stdout: str
    stderr: str


# Run by a fresh, small interpreter (``python -S``): it forks, the child execs the command,
# and it reports the child's wall time and ``ru_maxrss`` on a pipe. Why not wait4 on our own
# child: Linux carries the RSS high-water mark across exec, so a child spawned straight from
# this (large) process would report *our* RSS whenever its own peak is smaller.
_LAUNCHER = """
import os, sys, time
fd, command = int(sys.argv[1]), sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.close(fd)
    os.execvp(command[0], command)
while True:
    try:
        _, status, usage = os.wait4(pid, 0)
        break
    except InterruptedError:
        continue
os.write(fd, b"%f %d" % (time.perf_counter() - start, usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run(command: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Run ``command`` to its end (in ``cwd``, if given); its wall time and its own peak
    RSS (see _LAUNCHER)."""
    read_end, write_end = os.pipe()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            process = subprocess.Popen(
                [sys.executable, "-S", "-c", _LAUNCHER, str(write_end), *command],
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=err,
                pass_fds=(write_end,),
            )
        finally:
            os.close(write_end)
        try:
            with os.fdopen(read_end, "rb") as report:
                measured = report.read()
            process.wait()
        except BaseException:  # Ctrl-C: do not leave the command running
            process.kill()
            process.wait()
            raise
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    if not measured:
        raise BenchError(f"could not run {command[0]}: {stderr[-2000:]}")
    seconds, max_kib = measured.split()
    return Run(float(seconds), int(max_kib) / 1024, process.returncode, stdout, stderr)


def cli(*args: str | Path) -> list[str]:
    """The ``miso-adapter`` command line, run by this interpreter."""
    return [sys.executable, "-m", "adapter.cli", *map(str, args)]


def check(label: str, result: Run) -> None:
    """Raise :class:`BenchError` with the end of stderr unless ``result`` exited 0."""
    if result.returncode != 0:
        raise BenchError(f"{label} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")


def number(text: str, label: str) -> int:
    """The count printed after ``label`` in a command's summary (-1 when absent)."""
    match = re.search(rf"{label}:? ([\d,]+)", text)
    return int(match.group(1).replace(",", "")) if match else -1


def median(values: Sequence[float]) -> float:
    """The median (NaN for no values)."""
    return statistics.median(values) if values else float("nan")


class CountingMiso:
    """A ``FakeMiso(validate=False)`` that counts what it accepted and remembers nothing.

    FakeMiso keeps every record and request body; over a million records that is
    gigabytes in this process. A janitor thread calls ``reset()`` twice a second and an
    ``on_request`` hook counts the records of every 200, so :attr:`delivered` stays exact.
    """

    def __init__(self, api_key: str = MISO_KEY) -> None:
        self.api_key = api_key
        self._delivered = 0
        self._requests = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._stack = contextlib.ExitStack()
        self.url = ""

    def _count(self, entry) -> None:
        if entry.status == 200:
            with self._lock:
                self._delivered += entry.n_records
                self._requests += 1

    @property
    def delivered(self) -> int:
        """Records in 200-answered POSTs so far."""
        with self._lock:
            return self._delivered

    def zero(self) -> None:
        """Start counting again from 0."""
        with self._lock:
            self._delivered = self._requests = 0

    def __enter__(self) -> CountingMiso:
        from adapter.testing import FakeMiso

        miso = self._stack.enter_context(
            FakeMiso(api_key=self.api_key, validate=False, on_request=self._count)
        )
        self.url = miso.url

        def forget() -> None:
            while not self._stop.wait(0.5):
                miso.reset()

        janitor = threading.Thread(target=forget, name="CountingMiso janitor", daemon=True)
        janitor.start()
        self._stack.callback(janitor.join)
        self._stack.callback(self._stop.set)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def wait_quiet(self, at_least: int, timeout: float, quiet: float = 3.0) -> tuple[int, float]:
        """Wait until ``at_least`` records arrived and none came for ``quiet`` seconds.

        Returns (records delivered, seconds waited); gives up after ``timeout`` seconds.
        """
        start = time.monotonic()
        received, last_change = self.delivered, start
        while time.monotonic() - start < timeout:
            time.sleep(0.25)
            now_received = self.delivered
            if now_received != received:
                received, last_change = now_received, time.monotonic()
            if received >= at_least and time.monotonic() - last_change > quiet:
                break
        return received, time.monotonic() - start
