"""``miso-adapter serve``: gunicorn for the routes, plus one forwarder, as one service.

A small supervisor starts two children: gunicorn (``adapter:create_app()``, threaded
workers, so keep-alive clients are served) and ``miso-adapter forward``. It restarts a
child that dies, stops both on SIGTERM/SIGINT, and on Linux its children die with it
(``PR_SET_PDEATHSIG``), so ``kill -9`` of the service leaves nothing bound to the port.
Running the forwarder as its own process keeps it out of gunicorn's fork/respawn cycle:
one forwarder per host, and leases make extra ones (``forward`` elsewhere) safe.

Both children share one fresh ``PROMETHEUS_MULTIPROC_DIR`` (a temporary directory unless
the user named one), so ``/metrics`` in any worker shows the counts of every worker and
of the forwarder (:mod:`adapter.metrics`). They also get ``ADAPTER_LOG_FORMAT`` as the
supervisor chose it (text on a terminal, JSON otherwise: :func:`adapter.logs.log_format`),
so the service's log is in one format whatever the children's own streams are.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import gunicorn

from adapter import logs, metrics

__all__ = ["gunicorn_command", "serve", "spawn"]

log = logging.getLogger("adapter.serve")

_PR_SET_PDEATHSIG = 1
# gunicorn 27 opens a control socket at one fixed path per user: two services on a host
# would fight over it, and supervision is ours. Older versions have no such socket.
_NO_CONTROL_SOCKET = ["--no-control-socket"] if gunicorn.version_info >= (27,) else []


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


def gunicorn_command(bind: str, workers: int, threads: int) -> list[str]:
    """The gunicorn command line for the web part of the service."""
    return [
        sys.executable, "-m", "gunicorn",
        "--bind", bind,
        "--workers", str(workers),
        "--worker-class", "gthread",
        "--threads", str(threads),
        "--timeout", "30",
        "--graceful-timeout", "20",
        "--keep-alive", "5",
        "--config", "python:adapter.gunicorn_conf",
        *_NO_CONTROL_SOCKET,
        "adapter:create_app()",
    ]  # fmt: skip


class _Child:
    """One supervised child process, restarted with backoff when it dies."""

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

    def check(self, now: float) -> None:
        """Restart if it exited: quickly at first, then backing off up to 30 s."""
        if self.process is None:
            if now >= self.next_start:
                self.start()
            return
        code = self.process.poll()
        if code is None:
            return
        metrics.process_exited(self.process.pid, (self.env or {}).get(metrics.ENV))
        self.restarts += 1
        delay = min(30.0, 0.5 * 2 ** min(self.restarts, 6))
        log.error(
            "%s exited with %s; restarting in %.1fs",
            self.name,
            code,
            delay,
            extra={"event": "child_exited", "child": self.name, "exit_code": code},
        )
        self.process, self.next_start = None, now + delay

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, deadline: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("%s did not stop in time; killing it", self.name)
            self.process.kill()
            self.process.wait()


def serve(bind: str, workers: int, threads: int) -> int:
    """Run gunicorn and the forwarder until SIGTERM/SIGINT; returns the exit code."""
    metrics_dir, temporary = metrics.prepare_multiprocess_dir()
    env = {**os.environ, metrics.ENV: metrics_dir, logs.ENV: logs.log_format(sys.stderr)}
    try:
        return _supervise(bind, workers, threads, env)
    finally:
        if temporary:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(bind: str, workers: int, threads: int, env: dict[str, str]) -> int:
    children = [
        _Child("web", gunicorn_command(bind, workers, threads), env),
        _Child("forwarder", [sys.executable, "-m", "adapter.cli", "forward"], env),
    ]
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("serving on %s with %d workers x %d threads (pid %d)", bind, workers, threads,
             os.getpid(), extra={"event": "start", "bind": bind, "workers": workers,
                                 "threads": threads})  # fmt: skip
    if os.environ.get("ADAPTER_TOKEN"):
        log.info("operator console: http://%s/console (sign in with ADAPTER_TOKEN)", bind)
    else:
        log.info("operator console and /metrics are off: set ADAPTER_TOKEN to use them")
    for child in children:
        child.start()
    while not stopping:
        time.sleep(0.2)
        for child in children:
            child.check(time.monotonic())
    log.info("stopping", extra={"event": "stop"})
    for child in children:
        child.stop()
    deadline = time.monotonic() + 25
    for child in children:
        child.wait(deadline)
    return 0
