"""Structured logs: one JSON line per record, event fields whitelisted, text on request."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from adapter import logs


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

    from test_service import MISO_KEY, SECRET, WRITE_KEY, Service, message

    from adapter.testing import FakeMiso

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
