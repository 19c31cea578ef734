"""The fake Export API's wire: its path, limits and error bodies, the request log entry, and
the handler that streams answers (JSON Lines in pieces, gzip, chunking, injected cuts)."""

from __future__ import annotations

import itertools
import json
import math
import re
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from adapter.testing._loopback import _FakeHandler, _json_bytes

if TYPE_CHECKING:
    from adapter.testing.mixpanel import FakeMixpanel

#: The Raw Event Export endpoint; a trailing slash is accepted too.
EXPORT_PATH = "/api/2.0/export"
#: Bodies larger than this many bytes are gzip-compressed for clients that accept gzip.
GZIP_MIN_BYTES = 1400
#: The largest ``limit`` the export accepts.
MAX_EXPORT_LIMIT = 100_000
#: The text Mixpanel puts on the last line of a 200 answer that stopped before the end.
TERMINATED_EARLY = "terminated early"

_PIECE_BYTES = 64 * 1024  # a streamed answer is written in pieces of about this size
_MS_PER_DAY = 86_400_000
_EPOCH_DAY = date(1970, 1, 1)
_MS_THRESHOLD = 100_000_000_000  # a stored `time` at least this large is milliseconds
_DATE_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}")
_FRAMINGS = ("chunked", "content-length")
_MIXPANEL_FAULT_MESSAGES = {
    429: "Rate limit exceeded. Please retry later.",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service temporarily unavailable",
    504: "Gateway timeout",
}


def _mixpanel_error_body(message: str) -> bytes:
    """An error body in the shape the fake uses for every error: ``{"error", "status": 0}``."""
    return _json_bytes({"error": message, "status": 0})


@dataclass(frozen=True)
class MixpanelRequest:
    """One request FakeMixpanel answered.

    ``query`` maps each query parameter to its first value.  ``headers`` holds the request
    headers as sent, Authorization included (so it is left out of the repr); :meth:`header`
    looks one up whatever its case.  ``username`` is the account named by Basic credentials
    (None without them) and ``auth_ok`` whether account and secret were right.  ``status`` is
    the status sent (a cut answer is logged with the status its headers carried); ``rows`` is
    the number of event rows in the answer as planned (before any cut), ``gzip`` whether the
    body was gzip-encoded, ``fault`` the injected fault that shaped the answer (``"fail"``,
    ``"cut"``, ``"terminate"``, ``"delay"``) or None.  ``time`` is the wall-clock time
    (``time.time()``) when the request arrived.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str] = field(repr=False)
    status: int
    time: float
    username: str | None = None
    auth_ok: bool = False
    rows: int = 0
    gzip: bool = False
    fault: str | None = None

    def header(self, name: str) -> str | None:
        """The value of request header ``name`` (any case), or None."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True)
class _StoredRow:
    day: date  # the day the export files the row under (UTC, or project-local)
    ms: int  # `time` as served, in milliseconds
    event: str
    row: dict[str, Any]


@dataclass(frozen=True)
class _MixpanelFault:
    kind: str  # "fail", "delay", "cut" or "terminate"
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    seconds: float = 0.0
    after_bytes: int = 0
    framing: str = "chunked"
    after_rows: int | None = None
    newline: bool = False


@dataclass
class _Plan:
    """What to send: status, headers, and the body as an iterable of byte strings."""

    status: int
    headers: list[tuple[str, str]]
    lines: Iterable[bytes]
    gzip_ok: bool = False
    cut: _MixpanelFault | None = None


def _is_export_path(path: str) -> bool:
    return path in (EXPORT_PATH, EXPORT_PATH + "/")


def _accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding header allows gzip (``gzip``, ``x-gzip`` or ``*``, q > 0)."""
    if not header:
        return False
    for item in header.split(","):
        name, *options = (part.strip() for part in item.split(";"))
        if name.lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for option in options:
            key, _, value = option.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


def _retry_after_text(seconds: float) -> str:
    return str(max(0, math.ceil(seconds)))


def _export_line(stored: _StoredRow, in_ms: bool) -> bytes:
    """One JSON Lines row as the export writes it, ``time`` in whole seconds or in ms."""
    served = stored.ms if in_ms else stored.ms // 1000
    properties = {**stored.row.get("properties", {}), "time": served}
    value = {"event": stored.event, "properties": properties}
    try:
        return orjson.dumps(value) + b"\n"
    except (orjson.JSONEncodeError, TypeError):  # e.g. integers beyond 64 bits
        return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _pieces(lines: Iterable[bytes], size: int = _PIECE_BYTES) -> Iterator[bytes]:
    """Join ``lines`` into pieces of about ``size`` bytes."""
    buffer: list[bytes] = []
    held = 0
    for line in lines:
        buffer.append(line)
        held += len(line)
        if held >= size:
            yield b"".join(buffer)
            buffer, held = [], 0
    if buffer:
        yield b"".join(buffer)


def _gzipped(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Gzip ``pieces`` as one stream, flushing after each so the client gets it piece by piece."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for piece in pieces:
        out = compressor.compress(piece) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if out:
            yield out
    yield compressor.flush()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _MixpanelHandler(_FakeHandler):
    server_version = "FakeMixpanel/1.0"

    def _handle(self) -> None:
        fake: FakeMixpanel = self.server.fake  # type: ignore[assignment]
        arrived = time.time()
        self._discard_body()
        fault = None
        if self.command == "GET" and _is_export_path(urlsplit(self.path).path):
            fault = fake._take_fault()
        if fault is not None and fault.kind == "delay" and fake._closing.wait(fault.seconds):
            self._drop()  # closed while waiting: hang up, as a stopped server would
            return
        try:
            plan, entry = fake._answer(self.command, self.path, self.headers, fault, arrived)
        except Exception as exc:
            fake.server_errors.append(exc)
            message = f"FakeMixpanel failed while answering: {type(exc).__name__}: {exc}"
            plan = _Plan(
                500, [("Content-Type", "application/json")], [_mixpanel_error_body(message)]
            )
            entry = MixpanelRequest(
                self.command, urlsplit(self.path).path, {}, dict(self.headers.items()), 500, arrived
            )
        self._send(plan, entry, fake)

    def _discard_body(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True  # not worth parsing: answer, then close
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
            self.close_connection = True
        if length > 0:
            self.rfile.read(length)

    def _head(self, plan: _Plan, framing: tuple[str, str], gzip_used: bool) -> None:
        self.send_response(plan.status)
        for name, value in plan.headers:
            self.send_header(name, value)
        if gzip_used:
            self.send_header("Content-Encoding", "gzip")
        if plan.status == 200:
            self.send_header("Vary", "Accept-Encoding")
        self.send_header(*framing)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send(self, plan: _Plan, entry: MixpanelRequest, fake: FakeMixpanel) -> None:
        lines = iter(plan.lines)
        # Read ahead just far enough to know whether the body is over the gzip threshold.
        first: list[bytes] = []
        size = 0
        exhausted = True
        for line in lines:
            first.append(line)
            size += len(line)
            if size > GZIP_MIN_BYTES:
                exhausted = False
                break
        use_gzip = plan.gzip_ok and size > GZIP_MIN_BYTES
        pieces = _pieces(itertools.chain(first, lines))
        wire = _gzipped(pieces) if use_gzip else pieces
        if use_gzip:
            entry = replace(entry, gzip=True)
        fake._record_request(entry)
        cut = plan.cut
        if cut is not None:
            self.close_connection = True
            if cut.framing == "content-length":
                body = b"".join(wire)
                declared = max(len(body), cut.after_bytes + 1)
                self._head(plan, ("Content-Length", str(declared)), use_gzip)
                self.wfile.write(body[: cut.after_bytes])
            else:
                self._head(plan, ("Transfer-Encoding", "chunked"), use_gzip)
                remaining = cut.after_bytes
                for piece in wire:
                    if remaining <= 0:
                        break
                    part = piece[:remaining]
                    if part:
                        self.wfile.write(_chunk(part))
                    remaining -= len(part)
            self.wfile.flush()
            self._drop()
            return
        if exhausted and not use_gzip:
            body = b"".join(first)
            self._head(plan, ("Content-Length", str(len(body))), use_gzip)
            self.wfile.write(body)
        else:
            self._head(plan, ("Transfer-Encoding", "chunked"), use_gzip)
            for piece in wire:
                if piece:
                    self.wfile.write(_chunk(piece))
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
