"""FakeMiso's HTTP request handler: reads the body off the connection (Content-Length or
chunked), waits out an injected delay, asks the fake for the answer and sends it."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from adapter.testing._loopback import _FakeHandler
from adapter.testing.miso_checks import RequestLog, _Answer, _json_answer

if TYPE_CHECKING:
    from adapter.testing.miso import FakeMiso

_MAX_CHUNK_LINE = 1024


class _BadFraming(Exception):
    """The request body could not be read off the connection."""


class _Handler(_FakeHandler):
    server_version = "FakeMiso/1.0"

    def _handle(self) -> None:
        fake: FakeMiso = self.server.fake  # type: ignore[assignment]
        try:
            raw = self._read_body()
        except _BadFraming as exc:
            self.close_connection = True
            self._send(_json_answer(400, {"message": str(exc)}))
            return
        delay = fake._current_delay()
        if delay and fake._closing.wait(delay):
            self._drop()  # closed while sleeping: hang up, as a stopped server would
            return
        try:
            answer, entry = fake._answer(self.command, self.path, self.headers, raw)
        except Exception as exc:  # e.g. a reject_records predicate that raised
            fake.server_errors.append(exc)
            message = f"FakeMiso failed while answering: {type(exc).__name__}: {exc}"
            answer = _json_answer(500, {"message": message})
            entry = RequestLog(self.command, urlsplit(self.path).path, 500, 0, False, raw)
        fake._record_request(entry)
        if answer.disconnect:
            self._drop()
            return
        self._send(answer)

    def _send(self, answer: _Answer) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer.body)
        self.wfile.flush()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            raise _BadFraming(f"Invalid Content-Length: {length_header!r}") from None
        if length < 0:
            raise _BadFraming(f"Invalid Content-Length: {length_header!r}")
        body = self.rfile.read(length)
        if len(body) != length:
            raise _BadFraming("The body is shorter than its Content-Length")
        return body

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = self.rfile.readline(_MAX_CHUNK_LINE)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadFraming("Invalid chunk size line") from None
            if size == 0:
                # Skip trailers up to the blank line.
                while self.rfile.readline(_MAX_CHUNK_LINE) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise _BadFraming("Truncated chunk")
            parts.append(chunk)
            self.rfile.readline(_MAX_CHUNK_LINE)


# ====================================================================== fake Mixpanel
