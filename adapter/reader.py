"""Reading JSON input the way users hand it to us: one document, an array, or JSON Lines.

Every value comes with a location (``line 12``, ``item 3``) so a bad input can be
reported precisely and skipped, never ending the run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

import orjson

__all__ = ["ReadError", "read_json_values"]


class ReadError:
    """An input that is not valid JSON, with what went wrong."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"ReadError({self.message!r})"


def read_json_values(stream: IO[bytes]) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, value)`` for each JSON value in ``stream``.

    A stream starting with ``[`` is one JSON array; its items are yielded one by
    one. Otherwise it is JSON Lines, one value per line; if the first line is not
    valid JSON on its own, the whole stream is read as one (pretty-printed)
    document. An unparsable line yields a :class:`ReadError` in place of a value.
    """
    line_no = 0
    first = b""
    for first in stream:
        line_no += 1
        if first.strip():
            break
    else:
        return
    first = first.removeprefix(b"\xef\xbb\xbf")  # editors on Windows save a BOM
    if first.lstrip().startswith(b"["):
        yield from _whole(first + stream.read(), array_items=True)
        return
    try:
        value = orjson.loads(first)
    except orjson.JSONDecodeError:
        yield from _whole(first + stream.read(), array_items=False)
        return
    yield f"line {line_no}", value
    for raw in stream:
        line_no += 1
        if not raw.strip():
            continue
        try:
            yield f"line {line_no}", orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield f"line {line_no}", ReadError(f"invalid JSON: {exc}")


def _whole(data: bytes, *, array_items: bool) -> Iterator[tuple[str, Any]]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        yield "input", ReadError(f"invalid JSON: {exc}")
        return
    if array_items and isinstance(value, list):
        for index, item in enumerate(value, start=1):
            yield f"item {index}", item
    else:
        yield "input", value
