"""Gunicorn settings that a command-line flag cannot express (``serve`` passes this file).

Only what changes how a worker behaves (under load, in its logs, for metrics) lives
here; binds, worker counts and timeouts stay on the command line
(:func:`adapter.serve.gunicorn_command`).
"""

from __future__ import annotations

import os
import sys

from adapter import logs, metrics
from adapter.config import collect_less as _collect_less  # gunicorn reads public names

#: Seconds a thread may hold the interpreter lock before another may take it (Python's
#: default: 5 ms). A request thread that committed to SQLite (the lock released for the
#: fsync) waits this long to get back in while the other threads parse and translate,
#: and it holds the store's write lock meanwhile: at 5 ms, single-message webhooks saw a
#: p99 of ~45 ms; at 1 ms ~30 ms (bench/webhook.py, 16 keep-alive clients).
SWITCH_INTERVAL = 0.001

# Gunicorn's own messages (workers booting, timeouts) in the service's log format too:
# under serve, the ADAPTER_LOG_FORMAT its supervisor chose; run alone, text on a terminal
# and JSON lines otherwise (adapter.logs.log_format).
_FORMATTER = (
    {"format": logs.TEXT_FORMAT}
    if logs.log_format(sys.stderr) == "text"
    else {"()": "adapter.logs.JsonFormatter"}
)
_LEVEL = os.environ.get("ADAPTER_LOG_LEVEL", "INFO").upper()
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"adapter": _FORMATTER},
    # Gunicorn merges this over its defaults: both of its handler names are redefined.
    "handlers": {
        name: {
            "class": "logging.StreamHandler",
            "formatter": "adapter",
            "stream": "ext://sys.stderr",
        }
        for name in ("console", "error_console")
    },
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
    # The app's own loggers (adapter.*) reach the root: same format, ADAPTER_LOG_LEVEL.
    "root": {
        "level": _LEVEL if _LEVEL in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO",
        "handlers": ["console"],
    },
}


def post_worker_init(worker: object) -> None:
    """Gunicorn hook: runs in each worker once it has started (and loaded the app)."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    _collect_less()


def child_exit(server: object, worker: object) -> None:
    """Gunicorn hook, in the master: a worker's metric files are no longer live."""
    metrics.process_exited(worker.pid)  # type: ignore[attr-defined]
