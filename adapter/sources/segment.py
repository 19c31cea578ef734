"""Segment messages: the source, its envelopes, and webhook signatures.

Segment sends one message per request (Webhooks classic, Actions unbatched), a bare
JSON array of messages (Webhooks (Actions) with batching), or — through its HTTP
Tracking API — ``{"batch": [...], "context": ..., "integrations": ...}`` whose
top-level ``context``/``integrations`` merge into every item. Its Amazon S3 and Google
Cloud Storage destinations archive the same messages as gzip JSON Lines, one message
per line. :class:`SegmentSource` reads all of these; a message's ``messageId`` is its
dedup key, so a message delivered twice (a retry, a redelivered archive line, a webhook
and then the archive) is stored once. Nothing here is Miso-specific: the mapping table
turns messages into records.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, ClassVar

from adapter import values
from adapter.identity import Link
from adapter.sources import OUTSIDE, BaseSource, Item, Window, learn_first
from adapter.sources.jsonvalues import values_naming

__all__ = [
    "NOT_SEGMENT",
    "SegmentSource",
    "dedup_key",
    "iter_messages",
    "js_stringify",
    "json_type",
    "signature_ok",
]

#: The skip reason (a prefix) of a value that is not a Segment message.
NOT_SEGMENT = "not a Segment message"

_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type (object, array, string, ...)."""
    return _TYPE_NAMES.get(type(value), "number")


def iter_messages(where: str, body: Any) -> Iterator[tuple[str, dict | None, str | None]]:
    """Yield ``(where, message, None)`` per message in ``body``, or ``(where, None, error)``.

    ``where`` locates the body (``line 3``); items of an array or batch get
    ``line 3, item 2`` so a bad one can be found in the input.
    """
    if isinstance(body, list):
        for index, item in enumerate(body, start=1):
            yield _one(f"{where}, item {index}" if where else f"item {index}", item)
        return
    if isinstance(body, dict) and "batch" in body and "type" not in body:
        batch = body["batch"]
        if not isinstance(batch, list):
            yield where, None, f"'batch' must be an array of messages, got {json_type(batch)}"
            return
        shared = {k: body[k] for k in ("context", "integrations") if isinstance(body.get(k), dict)}
        for index, item in enumerate(batch, start=1):
            place = f"{where}, batch item {index}" if where else f"batch item {index}"
            if isinstance(item, dict) and shared:
                item = _merge_shared(item, shared)
            yield _one(place, item)
        return
    yield _one(where, body)


def _one(where: str, item: Any) -> tuple[str, dict | None, str | None]:
    if isinstance(item, dict):
        return where, item, None
    return where, None, f"expected a Segment message (JSON object), got {json_type(item)}"


def _merge_shared(item: dict, shared: dict[str, dict]) -> dict:
    """Batch-level context/integrations are defaults; the item's own keys win."""
    merged = dict(item)
    for key, defaults in shared.items():
        own = item.get(key)
        merged[key] = {**defaults, **own} if isinstance(own, dict) else dict(defaults)
    return merged


# --------------------------------------------------------------------------- signatures


def js_stringify(value: Any) -> str:
    """``JSON.stringify(value)`` as JavaScript writes it: compact, keys in their order.

    Segment signs batched webhook bodies over ``JSON.stringify(body[0])``, so checking
    such a signature means re-serialising the first element exactly as Node would.
    Numbers are the one place Python and JavaScript differ (``1.0`` vs ``1``, ``1e-07``
    vs ``1e-7``); strings match ``json.dumps(..., ensure_ascii=False)``.
    """
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _js_number(value)
    if isinstance(value, list):
        return "[" + ",".join(map(js_stringify, value)) + "]"
    if isinstance(value, dict):
        return (
            "{"
            + ",".join(
                f"{json.dumps(str(k), ensure_ascii=False)}:{js_stringify(v)}"
                for k, v in value.items()
            )
            + "}"
        )
    raise TypeError(f"not JSON: {type(value).__name__}")


def _js_number(number: float) -> str:
    """ECMAScript Number::toString for a finite double (shortest round-trip digits)."""
    if not math.isfinite(number):
        return "null"  # JSON.stringify(NaN) === "null"
    if number == 0:
        return "0"  # also -0
    sign = "-" if number < 0 else ""
    _, digit_tuple, exponent = Decimal(repr(abs(number))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    k, n = len(digits), len(digits) + int(exponent)  # n: position of the decimal point
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = f"{digits[:n]}.{digits[n:]}"
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        mantissa = digits[0] + (f".{digits[1:]}" if k > 1 else "")
        text = f"{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return sign + text


def signature_ok(secret: str, raw: bytes, body: Any, header: str | None) -> bool:
    """Does ``X-Signature`` hold the hex HMAC-SHA1 (keyed by the shared secret) Segment computes?

    Accepted: a signature over the raw body (classic webhooks; unbatched Actions; a
    batch if Segment ever signs the whole array), or over ``JSON.stringify`` of the first
    element of a bare array (Webhooks (Actions) batching). Compared in constant time.
    """
    if not header:
        return False
    given = header.strip().lower().encode()
    key = secret.encode()
    candidates = [raw]
    if isinstance(body, list) and body:
        # Too deep to stringify: no sender could have signed it that way either.
        with contextlib.suppress(RecursionError, TypeError):
            candidates.append(js_stringify(body[0]).encode())
    valid = False
    for candidate in candidates:
        expected = hmac.new(key, candidate, hashlib.sha1).hexdigest().encode()
        # Evaluate every candidate: the time taken does not depend on which one matched.
        valid |= hmac.compare_digest(expected, given)
    return valid


# --------------------------------------------------------------------------- the source


def dedup_key(message: dict) -> str | None:
    """``segment:<messageId>``; None when the message has none (it cannot be deduplicated)."""
    message_id = message.get("messageId")
    if isinstance(message_id, str) and message_id.strip():
        return f"segment:{message_id}"
    return None


def event_time(message: dict) -> float | None:
    """The message's own time: ``timestamp`` (Segment's, corrected for the device's clock),
    else ``originalTimestamp``, else when Segment received it; epoch seconds."""
    for field in ("timestamp", "originalTimestamp", "receivedAt"):
        stamp = values.to_timestamp(message.get(field))
        if stamp is not None:
            return datetime.fromisoformat(stamp).timestamp()
    return None


class SegmentSource(BaseSource):
    """Segment messages in any envelope Segment uses, or archived one per line."""

    name: ClassVar[str] = "segment"
    table: ClassVar[str | None] = "segment"
    describes: ClassVar[str] = "Segment messages"
    foreign: ClassVar[str] = NOT_SEGMENT
    expected: ClassVar[str] = "Segment messages, one JSON object per line"
    unit: ClassVar[str] = "Segment messages"

    def __init__(self, *, window: Window | None = None) -> None:
        self.window = window or Window()

    def prepare(self, paths: Sequence[Path], learn: Callable[[list[Link]], None] | None) -> None:
        """Learn the links of every ``identify`` and ``alias`` first (a quick scan), so an
        anonymous visit read before its sign-in is sent with the user too."""
        learn_first(paths, _identity_links, learn)

    def not_of_this_source(self, skipped: Mapping[str, int], received: int) -> str | None:
        if received == sum(n for reason, n in skipped.items() if reason.startswith(NOT_SEGMENT)):
            return "no Segment messages in the body: expected JSON objects with a 'type'"
        return None

    def items(self, where: str, value: Any) -> list[Item]:
        """One item per message of ``value`` (a message, an array, or a batch)."""
        out = []
        for place, message, problem in iter_messages(where, value):
            if message is None:
                out.append(Item(place, None, f"{NOT_SEGMENT}: {problem}"))
            elif self.window and not self.window.holds(event_time(message) or -1.0):
                out.append(Item(place, None, OUTSIDE))
            else:
                out.append(Item(place, dedup_key(message), message))
        return out


_IDENTITY_CALLS = re.compile(rb'"type"\s*:\s*"(?:identify|alias)"')


def _identity_links(stream: IO[bytes], name: str) -> Iterator[Link]:
    """The links ``identify`` (anonymousId -> userId) and ``alias`` (previousId -> userId)
    messages of a file make, whatever their envelope."""
    for value in values_naming(stream, name, _IDENTITY_CALLS):
        for _, message, _ in iter_messages("", value):
            if message is None or message.get("type") not in ("identify", "alias"):
                continue
            user = values.to_id(message.get("userId"))
            other = message.get("anonymousId" if message["type"] == "identify" else "previousId")
            anonymous = values.to_id(other)
            if user is not None and anonymous is not None and anonymous != user:
                yield Link(anonymous, user)
