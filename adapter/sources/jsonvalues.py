"""The one JSON reader: JSON Lines, a JSON array, or one document, each value located.

Every input format of every source is one of these shapes, so each source only says what
a value means. Memory stays flat: lines are parsed one at a time and an array's items
are built one at a time from a streaming parser (ijson), with a depth limit. Only a
single document spread over several lines (a pretty-printed ``{"batch": [...]}``) is
held whole, as it has to be.

A value that is not JSON is yielded as a :class:`ReadError` with its location, and
reading goes on (JSON Lines); an array cannot be resynchronised after a syntax error,
so there reading stops at the error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import IO, Any

import ijson
import orjson

__all__ = ["MAX_DEPTH", "ReadError", "parse_document", "read_values", "values_naming"]

MAX_DEPTH = 64  # deepest nesting accepted in a JSON array (events are a few levels deep)


class ReadError:
    """An input that is not valid JSON, with what went wrong."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"ReadError({self.message!r})"


def parse_document(data: bytes) -> Any:
    """One JSON document held whole (a webhook body, signed over its exact bytes);
    ValueError saying where it is malformed."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"malformed JSON: {exc}") from None


def _line(name: str, number: int) -> str:
    return f"{name}:{number}" if name else f"line {number}"


def _item(name: str, index: int) -> str:
    return f"{name} item {index}" if name else f"item {index}"


def read_values(stream: IO[bytes], name: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``(where, value)`` for each JSON value of ``stream`` (buffered, decoded).

    ``where`` is ``name:12`` (JSON Lines; ``line 12`` without a name), ``name item 3``
    (array items) or ``name`` (one document). A stream whose first non-blank byte is ``[``
    is one array; otherwise JSON Lines, unless the first line is the unfinished start of
    a document spread over several lines, which is then read as one.
    """
    number = 0  # lines passed
    while True:  # blank space first: peeked, never a whole one-line array read at once
        head = stream.peek(1)  # type: ignore[attr-defined]
        if not head:
            return
        blank = len(head) - len(head.lstrip(b" \t\r\n"))
        number += head.count(b"\n", 0, blank)
        if blank < len(head):
            stream.read(blank)
            break
        stream.read(blank)
    if stream.peek(1)[:1] == b"[":  # type: ignore[attr-defined]
        yield from _array(stream, name)
        return
    first = stream.readline()
    number += 1
    try:
        value = orjson.loads(first)
    except orjson.JSONDecodeError as exc:
        if exc.pos >= len(first.rstrip()):  # cut short: a document over several lines
            yield from _document(first + stream.read(), name)
            return
        value = ReadError(f"invalid JSON: {exc}")
    yield _line(name, number), value
    prefix = _line(name, 0)[:-1]  # the hot loop formats locations inline
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    for raw in stream:
        number += 1
        try:
            yield f"{prefix}{number}", loads(raw)
        except decode_error as exc:
            if raw.strip():
                yield f"{prefix}{number}", ReadError(f"invalid JSON: {exc}")


def _document(data: bytes, name: str) -> Iterator[tuple[str, Any]]:
    try:
        yield name or "input", orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        yield name or "input", ReadError(f"invalid JSON: {exc}")


def _array(stream: Any, name: str) -> Iterator[tuple[str, Any]]:
    """Items of a JSON array, built from ijson's prefix-free events with a depth limit.

    ``ijson.items`` keeps a prefix string per nesting level, so memory grows with the
    square of the depth: a 60 KB body nested 30,000 deep took 2 GB. Anything deeper than
    MAX_DEPTH is refused.
    """
    index = depth = 0
    builder: ijson.common.ObjectBuilder | None = None
    events = ijson.basic_parse(stream, use_float=True)
    try:
        first = next(events, None)
        if first is None or first[0] != "start_array":
            yield name or "input", ReadError("invalid JSON array: expected '['")
            return
        for event, value in events:
            if event in ("start_map", "start_array"):
                depth += 1
                if depth > MAX_DEPTH:
                    yield (
                        _item(name, index + 1),
                        ReadError(f"nested deeper than {MAX_DEPTH} levels"),
                    )
                    return
            elif event in ("end_map", "end_array"):
                if depth == 0:
                    return  # the end of the top-level array
                depth -= 1
            if builder is None:
                builder = ijson.common.ObjectBuilder()
            builder.event(event, value)
            if depth == 0:
                index += 1
                yield _item(name, index), builder.value
                builder = None
    except ijson.JSONError as exc:
        where = f"{name} after item {index}" if name else f"after item {index}"
        yield where, ReadError(f"invalid JSON array: {exc}")


def values_naming(stream: IO[bytes], name: str, pattern: re.Pattern[bytes]) -> Iterator[Any]:
    """A quick pass: the values of JSON Lines whose line matches ``pattern`` (only those
    are parsed), or every item of a JSON array. Unreadable values are passed over (the
    full read reports them).
    """
    if stream.peek(64).lstrip(b" \t\r\n").startswith(b"["):  # type: ignore[attr-defined]
        for _, value in read_values(stream, name):
            if not isinstance(value, ReadError):
                yield value
        return
    for line in _lines_matching(stream, pattern):
        try:
            yield orjson.loads(line)
        except orjson.JSONDecodeError:
            continue


def _lines_matching(stream: IO[bytes], pattern: re.Pattern[bytes]) -> Iterator[bytes]:
    """The lines of ``stream`` in which ``pattern`` occurs, in order.

    Searched a megabyte at a time by one regular expression (in C): a Python test of
    each line cost a tenth of a dry run, a search per name a twentieth.
    """
    rest = b""
    while True:
        block = stream.read(1 << 20)
        if not block:
            break
        block = rest + block
        cut = block.rfind(b"\n") + 1
        block, rest = block[:cut], block[cut:]
        yield from _matching_lines(block, pattern)
    yield from _matching_lines(rest, pattern)


def _matching_lines(block: bytes, pattern: re.Pattern[bytes]) -> Iterator[bytes]:
    end = -1
    for match in pattern.finditer(block):
        if match.start() <= end:
            continue  # a second match on a line already given
        start = block.rfind(b"\n", 0, match.start()) + 1
        end = block.find(b"\n", match.end())
        yield block[start:] if end < 0 else block[start:end]
        if end < 0:
            return
