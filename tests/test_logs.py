"""Structured logs: one JSON line per record, event fields whitelisted, text on a terminal."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import requests

from adapter import logs

#: A line of the text format: ``2024-05-01 10:00:00,123 INFO adapter.serve[42]: ...``.
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ([\w.]+)\[(\d+)\]: ")


@contextlib.contextmanager
def terminal():
    """A pseudo-terminal: its writable end as a text stream, and the fd to read it from."""
    leader, follower = pty.openpty()
    stream = os.fdopen(follower, "w", buffering=1)
    try:
        yield stream, leader
    finally:
        stream.close()
        os.close(leader)


@pytest.fixture
def bare_root():
    """The root logger without handlers, inside the test (pytest's are put back after)."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level

    class Bare:
        def __enter__(self):
            root.handlers = []
            return root

        def __exit__(self, *exc):
            root.handlers, root.level = saved_handlers, saved_level

    return Bare()


def test_a_record_is_one_json_line_with_its_event_fields():
    """message, level, logger, pid, time, and the whitelisted event fields, nothing else."""
    record = logging.LogRecord("adapter.forwarder", logging.ERROR, __file__, 1,
                               "dead-lettered %d records", (3,), None)  # fmt: skip
    record.event, record.count, record.status = "dead_letter", 3, 422
    record.api_key = "miso-secret-key"  # not whitelisted: never printed
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    data = orjson.loads(line)
    assert data["message"] == "dead-lettered 3 records"
    assert (data["level"], data["logger"], data["event"], data["count"], data["status"]) == (
        "error", "adapter.forwarder", "dead_letter", 3, 422,
    )  # fmt: skip
    assert data["time"].endswith("+00:00") and isinstance(data["pid"], int)
    assert "miso-secret-key" not in line


def test_a_traceback_stays_inside_the_one_line():
    """An exception's traceback is a field of the line, not extra lines."""
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed",
                                                   (), __import__("sys").exc_info())  # fmt: skip
    line = logs.JsonFormatter().format(record)
    assert line.count("\n") == 0
    assert "ValueError: boom" in orjson.loads(line)["traceback"]


def test_configure_writes_json_at_the_configured_level(bare_root, monkeypatch):
    """ADAPTER_LOG_LEVEL=WARNING drops info; the warning arrives as JSON."""
    monkeypatch.setenv("ADAPTER_LOG_LEVEL", "WARNING")
    monkeypatch.delenv("ADAPTER_LOG_FORMAT", raising=False)
    out = io.StringIO()
    with bare_root:
        logs.configure(stream=out)
        logging.getLogger("adapter.reload").info("not shown")
        logging.getLogger("adapter.reload").warning("rejected", extra={"event": "reload_rejected"})
    (line,) = out.getvalue().splitlines()
    assert orjson.loads(line)["event"] == "reload_rejected"


def test_text_format_on_request(bare_root, monkeypatch):
    """ADAPTER_LOG_FORMAT=text gives the classic one-line text format."""
    monkeypatch.setenv("ADAPTER_LOG_FORMAT", "text")
    out = io.StringIO()
    with bare_root:
        logs.configure(level="INFO", stream=out)
        logging.getLogger("adapter.serve").info("serving")
    assert out.getvalue().rstrip().endswith("INFO adapter.serve[" + str(
        __import__("os").getpid()) + "]: serving")  # fmt: skip


def test_the_format_follows_the_terminal_unless_set(monkeypatch):
    """Unset: text on a terminal, JSON elsewhere; ADAPTER_LOG_FORMAT wins over both."""
    monkeypatch.delenv("ADAPTER_LOG_FORMAT", raising=False)
    with terminal() as (tty, _):
        assert logs.log_format(tty) == "text"
        assert logs.log_format(io.StringIO()) == "json"
        monkeypatch.setenv("ADAPTER_LOG_FORMAT", "json")
        assert logs.log_format(tty) == "json"
        monkeypatch.setenv("ADAPTER_LOG_FORMAT", "TEXT")
        assert logs.log_format(io.StringIO()) == "text"


def test_configure_writes_text_to_a_terminal(bare_root, monkeypatch):
    """A log stream that is a terminal gets text lines without any setting."""
    monkeypatch.delenv("ADAPTER_LOG_FORMAT", raising=False)
    with terminal() as (tty, leader), bare_root:
        logs.configure(level="INFO", stream=tty)
        logging.getLogger("adapter.serve").info("serving", extra={"event": "start"})
        written = os.read(leader, 4096).decode()
    assert TEXT_LINE.match(written) and written.rstrip().endswith("]: serving"), written


def test_configure_leaves_existing_logging_alone(bare_root):
    """An application that configured logging keeps its handlers."""
    mine = logging.StreamHandler(io.StringIO())
    with bare_root as root:
        root.addHandler(mine)
        logs.configure()
        assert root.handlers == [mine]


def test_a_real_service_logs_json_lines_with_its_events(tmp_path):
    """serve's whole log is JSON lines: start, children, a Miso error; no secret in it."""
    import time

    from adapter.testing import FakeMiso
    from adapter.testing.service import MISO_KEY, SECRET, WRITE_KEY, Service, message

    with FakeMiso(api_key=MISO_KEY) as miso:
        service = Service(tmp_path, miso).start()
        try:
            miso.fail_next(500)
            assert service.post("/segment", message(product_id="logged-1")).status_code == 200
            deadline = time.monotonic() + 20
            while not miso.records:
                assert time.monotonic() < deadline, service.tail()
                time.sleep(0.1)
        finally:
            service.stop()
    text = service.log.read_text()
    lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
    events = {line.get("event") for line in lines}
    assert {"start", "child_started", "miso_error", "stop"} <= events, events
    (error,) = [line for line in lines if line.get("event") == "miso_error"]
    assert (error["status"], error["count"], error["level"]) == (500, 1, "warning")
    for secret in (MISO_KEY, SECRET, WRITE_KEY):
        assert secret not in text


@pytest.mark.parametrize("setting", [None, "json"])
def test_a_service_on_a_terminal_logs_one_format_throughout(tmp_path, setting):
    """serve on a terminal: supervisor, gunicorn, forwarder all write text (JSON when set)."""
    from adapter.testing import FakeMiso
    from adapter.testing.service import Service

    chunks: list[bytes] = []

    def drain(leader: int) -> None:
        with contextlib.suppress(OSError):  # EIO once every writer has closed the terminal
            while chunk := os.read(leader, 65536):
                chunks.append(chunk)

    with FakeMiso() as miso, terminal() as (tty, leader):
        service = Service(tmp_path, miso)
        if setting is not None:
            service.env["ADAPTER_LOG_FORMAT"] = setting
        reader = threading.Thread(target=drain, args=(leader,), daemon=True)
        reader.start()
        process = subprocess.Popen(
            [sys.executable, "-m", "adapter.cli", "serve", "--bind", f"127.0.0.1:{service.port}"],
            env=service.env, stdin=subprocess.DEVNULL, stdout=tty, stderr=tty,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while not (b"forwarding from" in b"".join(chunks) and b"Booting worker" in
                       b"".join(chunks)):  # fmt: skip
                assert process.poll() is None and time.monotonic() < deadline, b"".join(chunks)
                time.sleep(0.1)
            assert requests.get(f"{service.url}/healthz", timeout=5).status_code == 200
            # The choice is handed down, not re-made: it is in the forwarder's environment.
            forwarder = re.search(rb"forwarding from .* \(pid (\d+)\)", b"".join(chunks))[1]
            environ = Path(f"/proc/{forwarder.decode()}/environ")
            if environ.exists():
                variables = environ.read_bytes().split(b"\0")
                assert f"ADAPTER_LOG_FORMAT={setting or 'text'}".encode() in variables
        finally:
            process.terminate()
            process.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        tty.close()
        reader.join(timeout=5)
    lines = [line for line in b"".join(chunks).decode().splitlines() if line.strip()]
    if setting is None:
        parsed = [TEXT_LINE.match(line) for line in lines]
        assert all(parsed), lines
        loggers = {match[1] for match in parsed}
        pids = {match[2] for match in parsed}
    else:
        parsed = [orjson.loads(line) for line in lines]
        loggers = {line["logger"] for line in parsed}
        pids = {line["pid"] for line in parsed}
    assert {"adapter.serve", "gunicorn.error", "adapter.forwarder"} <= loggers, lines
    assert len(pids) >= 3, lines  # supervisor, gunicorn and its workers, forwarder
