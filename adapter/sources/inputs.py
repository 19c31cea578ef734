"""Opening what a source is read from: a file, stdin, or an HTTP upload body.

Gzip is recognised once, here, by its first bytes (never by a name), and so is the byte
order mark editors on Windows put first; an HTTP body may also say ``Content-Encoding:
gzip``. Every input is a buffered byte stream plus how far its raw bytes are read (the
progress of a replay or an upload).
"""

from __future__ import annotations

import gzip
import io
import sys
import zlib
from pathlib import Path
from typing import IO, Any

__all__ = [
    "GZIP_MAGIC",
    "UNREADABLE",
    "Input",
    "InputError",
    "InputFailed",
    "gunzip_bounded",
    "open_body",
    "open_path",
]

GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
#: What a damaged gzip stream raises while it is read (callers catch these as one).
UNREADABLE = (gzip.BadGzipFile, EOFError, zlib.error)


class InputError(Exception):
    """An input that cannot be read as given, with the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class InputFailed(Exception):
    """An input that could not be read to its end (a download cut off midway).

    ``retry``: reading it again from the start may succeed; what was already stored from
    it is then recognised as duplicates.
    """

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.message = message
        self.retry = retry


class Input:
    """A byte stream to read a source from, decoded (gzip, BOM), with its raw position.

    ``name`` locates what is read from it (``export.jsonl:12``); ``size`` is the raw
    size when known (a file), for a progress bar. Close it when done.
    """

    def __init__(self, stream: IO[bytes], raw: Any, name: str, size: int | None = None) -> None:
        self.stream = stream
        self.name = name
        self.size = size
        self._raw = raw

    def position(self) -> int:
        """Raw bytes read so far (compressed bytes of a gzip input)."""
        consumed = getattr(self._raw, "consumed", None)
        if consumed is not None:
            return consumed
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        self.stream.close()
        if self._raw is not sys.stdin.buffer:
            self._raw.close()

    def __enter__(self) -> Input:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decoded(raw: IO[bytes], *, gzipped: bool | None = None) -> io.BufferedReader:
    """``raw`` buffered, gunzipped when it is gzip (by content unless told), BOM dropped."""
    buffered = raw if isinstance(raw, io.BufferedReader) else io.BufferedReader(raw)  # type: ignore[arg-type]
    if gzipped is None:
        gzipped = buffered.peek(2)[:2] == GZIP_MAGIC
    stream = io.BufferedReader(gzip.GzipFile(fileobj=buffered, mode="rb")) if gzipped else buffered  # type: ignore[arg-type]
    if stream.peek(3)[:3] == _BOM:
        stream.read(3)
    return stream


def open_path(path: str | Path) -> Input:
    """Open a file (``-``: stdin), plain or gzip; OSError when it cannot be opened."""
    if str(path) == "-":
        raw: Any = sys.stdin.buffer
        if not hasattr(raw, "peek"):  # a stdin replaced by an in-memory stream
            raw = io.BufferedReader(raw)
        return Input(_decoded(raw), raw, "stdin")
    file = open(path, "rb")  # noqa: SIM115 - closed with the Input
    try:
        size = Path(path).stat().st_size
        return Input(_decoded(file), file, str(path), size)
    except BaseException:
        file.close()
        raise


class _Bounded(io.RawIOBase):
    """A read-only stream that refuses to deliver more than ``limit`` bytes (413)."""

    def __init__(self, stream: Any, limit: int, what: str) -> None:
        self._stream = stream
        self._left = limit
        self._limit = limit
        self._what = what

    def readable(self) -> bool:
        return True

    @property
    def consumed(self) -> int:
        """Bytes delivered so far."""
        return self._limit - self._left

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(min(len(buffer), self._left + 1))
        if len(data) > self._left:
            raise InputError(413, f"{self._what} is over the limit of {self._limit} bytes")
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)


def _encoding(header: str | None) -> bool:
    """Whether a Content-Encoding header says gzip; InputError (415) for any other coding."""
    encoding = (header or "").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip"):
        raise InputError(415, f"unsupported Content-Encoding {encoding!r}: send gzip or none")
    return encoding in ("gzip", "x-gzip")


def open_body(
    body: IO[bytes],
    *,
    limit: int,
    content_encoding: str | None = None,
    content_length: int | None = None,
    name: str = "body",
) -> Input:
    """An upload body as an Input, bounded by ``limit`` bytes before and after gzip.

    Gzip is recognised by ``Content-Encoding`` or, as a browser sends a ``.gz`` file as it
    is, by the body's first bytes. Over the limit: InputError 413, when it is reached.
    """
    if content_length is not None and content_length > limit:
        raise InputError(413, f"body of {content_length} bytes is over the limit of {limit}")
    raw = _Bounded(body, limit, "body")
    buffered = io.BufferedReader(raw)
    gzipped = _encoding(content_encoding) or buffered.peek(2)[:2] == GZIP_MAGIC
    stream: IO[bytes] = buffered
    if gzipped:
        inflated = gzip.GzipFile(fileobj=buffered, mode="rb")
        stream = io.BufferedReader(_Bounded(inflated, limit, "decompressed body"))
    try:
        return Input(_decoded(stream, gzipped=False), raw, name)
    except UNREADABLE as exc:
        raise InputError(400, f"body is not valid gzip: {exc}") from None


def gunzip_bounded(raw: bytes, limit: int, content_encoding: str | None) -> bytes:
    """A whole small body, decompressed if its Content-Encoding says gzip, never holding
    more than ``limit`` bytes (no zip bombs); InputError 400/413/415 otherwise."""
    if not _encoding(content_encoding):
        return raw
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise InputError(400, f"body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise InputError(413, f"body is over the limit of {limit} bytes once decompressed")
    return out
