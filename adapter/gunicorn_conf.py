"""Gunicorn settings that a command-line flag cannot express (``serve`` passes this file).

Only what changes how a worker behaves under load lives here; binds, worker counts
and timeouts stay on the command line (:func:`adapter.serve.gunicorn_command`).
"""

from __future__ import annotations

import sys

from adapter import metrics

#: Seconds a thread may hold the interpreter lock before another may take it (Python's
#: default: 5 ms). A request thread that committed to SQLite (the lock released for the
#: fsync) waits this long to get back in while the other threads parse and translate,
#: and it holds the store's write lock meanwhile: at 5 ms, single-message webhooks saw a
#: p99 of ~45 ms; at 1 ms ~30 ms (bench/webhook.py, 16 keep-alive clients).
SWITCH_INTERVAL = 0.001


def post_worker_init(worker: object) -> None:
    """Gunicorn hook: runs in each worker once it has started."""
    sys.setswitchinterval(SWITCH_INTERVAL)


def child_exit(server: object, worker: object) -> None:
    """Gunicorn hook, in the master: a worker's metric files are no longer live."""
    metrics.process_exited(worker.pid)  # type: ignore[attr-defined]
