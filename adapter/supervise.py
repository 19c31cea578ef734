"""Child processes: started so they die with their parent, and restarted when they exit.

``serve`` supervises gunicorn and the forwarder; a replay supervises its forwarder. Both
use :class:`Child`, so a child that dies is restarted the same way everywhere: at once
the first time, then backing off up to 30 s, so a child that cannot start (a bad
setting) does not spin.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
import time

from adapter import metrics

__all__ = ["Child", "forwarder_command", "spawn"]

log = logging.getLogger("adapter.supervise")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGKILL this child when the supervisor dies, even by kill -9."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: children outlive a killed supervisor, as with any supervisor


def spawn(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a child process that dies with this one (Linux), even on ``kill -9``."""
    return subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)


def forwarder_command() -> list[str]:
    """``miso-adapter forward`` with this interpreter."""
    return [sys.executable, "-m", "adapter.cli", "forward"]


class Child:
    """One supervised child process, restarted with backoff when it exits."""

    def __init__(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.command = command
        self.env = env
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.next_start = 0.0

    def start(self) -> None:
        self.process = spawn(self.command, self.env)
        log.info(
            "started %s (pid %d)",
            self.name,
            self.process.pid,
            extra={"event": "child_started", "child": self.name},
        )

    def check(self, now: float | None = None) -> None:
        """Restart it if it exited: at once the first time, then backing off up to 30 s."""
        now = time.monotonic() if now is None else now
        if self.process is None:
            if now >= self.next_start:
                self.start()
            return
        code = self.process.poll()
        if code is None:
            return
        metrics.process_exited(self.process.pid, (self.env or {}).get(metrics.ENV))
        delay = 0.0 if self.restarts == 0 else min(30.0, 0.5 * 2 ** min(self.restarts, 6))
        self.restarts += 1
        log.error(
            "%s exited with %s; restarting in %.1fs",
            self.name,
            code,
            delay,
            extra={"event": "child_exited", "child": self.name, "exit_code": code},
        )
        self.process, self.next_start = None, now + delay
        if delay == 0.0:
            self.start()

    def stop(self) -> None:
        """Ask it to stop (SIGTERM); :meth:`wait` for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        """Wait until it has stopped, killing it at ``deadline`` (a monotonic time)."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("%s did not stop in time; killing it", self.name)
            self.process.kill()
            self.process.wait()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop it and wait up to ``timeout`` seconds."""
        self.stop()
        self.wait(time.monotonic() + timeout)
