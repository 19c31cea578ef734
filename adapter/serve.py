"""``miso-adapter serve``: gunicorn for the routes, plus one forwarder, as one service.

A small supervisor starts two children: gunicorn (``adapter:create_app()``, threaded
workers, so keep-alive clients are served) and ``miso-adapter forward``; with
``MIXPANEL_SYNC=1`` ``miso-adapter sync mixpanel --store-only`` (its options from
``MIXPANEL_SYNC_*``), and with ``KAFKA_BOOTSTRAP_SERVERS`` and ``KAFKA_TOPICS`` set
``miso-adapter consume kafka --store-only`` (its settings from ``KAFKA_*``). It restarts a
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

import logging
import os
import shutil
import signal
import sys
import time

import gunicorn

from adapter import logs, metrics
from adapter.config import runs_kafka_consumer, runs_mixpanel_sync
from adapter.supervise import Child, forwarder_command

__all__ = ["gunicorn_command", "serve"]

log = logging.getLogger("adapter.serve")

# gunicorn 27 opens a control socket at one fixed path per user: two services on a host
# would fight over it, and supervision is ours. Older versions have no such socket.
_NO_CONTROL_SOCKET = ["--no-control-socket"] if gunicorn.version_info >= (27,) else []


#: Worker processes by default: one per core of a small host.
WORKERS = 2
#: Threads per worker by default. A webhook's time is mostly its wait for the commit
#: that makes it durable, and the requests in flight when a commit starts share it
#: (one fsync): with a thread per client, 16 keep-alive clients made groups big enough
#: for ~2,000 signed single-message webhooks/s on 2 cores, where 4 threads gave ~1,300.
THREADS = 16


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
        Child("web", gunicorn_command(bind, workers, threads), env),
        Child("forwarder", forwarder_command(), env),
    ]
    if runs_mixpanel_sync():
        # The service's forwarder sends what the sync stores.
        sync = [sys.executable, "-m", "adapter.cli", "sync", "mixpanel", "--store-only"]
        children.append(Child("mixpanel-sync", sync, env))
    if runs_kafka_consumer():
        consume = [sys.executable, "-m", "adapter.cli", "consume", "kafka", "--store-only"]
        children.append(Child("kafka-consumer", consume, env))
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
