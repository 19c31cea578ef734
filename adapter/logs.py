"""Structured logs: one JSON object per line, for the service's events of note.

``serve``, ``forward`` and the web app log this way unless their log stream is a terminal,
where a person reads it: there they write the classic one-line text. ``ADAPTER_LOG_FORMAT``
(``json`` or ``text``) overrides the choice; ``serve`` makes it once and hands it to its
children in that variable, so gunicorn's workers and the forwarder write what the
supervisor writes, whether or not they share its terminal.

Each JSON line carries ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``pid``,
``message`` and, for the events an operator watches, ``event`` (``start``, ``stop``,
``reload``, ``reload_rejected``, ``miso_error``, ``miso_paused``, ``miso_resumed``,
``dead_letter``, ``store_error``, ...) with the event's own fields (counts, statuses).
Log calls pass them as ``extra={"event": ..., ...}``; nothing else is copied from the
record, so an object in ``extra`` cannot leak.

Secrets never reach a log line: the code never logs keys, tokens or request bodies (see
docs/security.md), and the formatter adds only the whitelisted fields below.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["ENV", "EVENT_FIELDS", "TEXT_FORMAT", "JsonFormatter", "configure", "log_format"]

#: The variable that fixes the format (``json`` or ``text``) instead of the terminal test.
ENV = "ADAPTER_LOG_FORMAT"

#: Fields an ``extra={...}`` may add to a line, besides ``event``; anything else is ignored.
EVENT_FIELDS = frozenset(
    {
        "event", "count", "status", "reason", "path", "rules", "delay", "attempts",
        "bind", "workers", "threads", "child", "exit_code", "store", "miso_url",
    }
)  # fmt: skip

#: The text format's line (gunicorn's own messages use it too: adapter.gunicorn_conf).
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def log_format(stream: Any = None) -> str:
    """``json`` or ``text``: ``ADAPTER_LOG_FORMAT`` if set, else text on a terminal.

    ``stream`` is where the lines go (``sys.stderr`` when not given); a stream that is
    not a terminal (a file, a pipe, a log collector) gets JSON lines.
    """
    chosen = os.environ.get(ENV, "").strip().lower()
    if chosen in ("json", "text"):
        return chosen
    stream = sys.stderr if stream is None else stream
    try:
        return "text" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "json"


class JsonFormatter(logging.Formatter):
    """A log record as one compact JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        for name in EVENT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            line["traceback"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


def configure(level: str | int | None = None, stream: Any = None) -> None:
    """Set up the root logger once, in :func:`log_format`'s format, at ``ADAPTER_LOG_LEVEL``.

    Does nothing when the root logger already has a handler (an embedding application,
    or a test runner, configured logging its own way).
    """
    root = logging.getLogger()
    if root.handlers:
        return
    if level is None:
        level = os.environ.get("ADAPTER_LOG_LEVEL", "INFO").upper()
    if isinstance(level, str) and level not in logging.getLevelNamesMapping():
        level = "INFO"
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    if log_format(handler.stream) == "text":
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    else:
        handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(level)
