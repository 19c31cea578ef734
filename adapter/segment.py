"""Segment envelopes: the shapes Segment delivers messages in, unwrapped to messages.

Segment sends one message per request (Webhooks classic, Actions unbatched), a bare
JSON array of messages (Webhooks (Actions) with batching), or — through its HTTP
Tracking API — ``{"batch": [...], "context": ..., "integrations": ...}`` whose
top-level ``context``/``integrations`` merge into every item. Nothing here is
Miso-specific: the mapping table turns messages into records.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["iter_messages"]

_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def _json_type(value: Any) -> str:
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
            yield where, None, f"'batch' must be an array of messages, got {_json_type(batch)}"
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
    return where, None, f"expected a Segment message (JSON object), got {_json_type(item)}"


def _merge_shared(item: dict, shared: dict[str, dict]) -> dict:
    """Batch-level context/integrations are defaults; the item's own keys win."""
    merged = dict(item)
    for key, defaults in shared.items():
        own = item.get(key)
        merged[key] = {**defaults, **own} if isinstance(own, dict) else dict(defaults)
    return merged
