"""Records already in Miso's shape: what Miso's Dojo imports as a data file.

A file is ``{"data": [record, ...]}`` (the body of ``POST /v1/interactions``), a JSON
array of records, or JSON Lines of records (a line may also be ``{"data": [...]}``).
Each record is checked against Miso's schema as it is read: an invalid one is reported
with its place (``records.jsonl:12``, ``records.json item 3``, ``body:1, data.4``) and
Miso's field and reason, and never sent. A record carrying neither ``user_id`` nor
``anonymous_id`` is refused too: the adapter sends no record without an id. Valid
records go through the spool, identity filling and the forwarder like translated ones;
their dedup key is a hash of their content, so loading a file twice sends nothing twice
(within the dedup window, ``ADAPTER_DEDUP_HOURS``).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, ClassVar

import orjson

from adapter import records, values
from adapter.identity import Link
from adapter.mapping import Translation
from adapter.sources import OUTSIDE, BaseSource, Item, ReadError, Window
from adapter.sources.segment import json_type

__all__ = ["MisoSource", "RecordPassThrough", "dedup_key", "problems"]


def problems(errors: Any, path: str = "") -> list[str]:
    """marshmallow's nested messages as ``field.sub: reason`` lines."""
    if isinstance(errors, dict):
        out: list[str] = []
        for key, value in errors.items():
            out += problems(value, f"{path}.{key}" if path else str(key))
        return out
    if isinstance(errors, list) and all(isinstance(e, str) for e in errors):
        return [f"{path or 'record'}: {' '.join(errors)}"]
    if isinstance(errors, list):
        return [line for e in errors for line in problems(e, path)]
    return [f"{path or 'record'}: {errors}"]


def dedup_key(record: dict) -> str:
    """``miso:<timestamp>:<content hash>``: the same record is the same key; the time first
    keeps a time-ordered file's keys side by side in the store's index."""
    digest = hashlib.blake2b(
        orjson.dumps(record, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS),
        digest_size=16,
    ).hexdigest()
    stamp = record.get("timestamp")
    return f"miso:{stamp if isinstance(stamp, str) else ''}:{digest}"


class RecordPassThrough:
    """The translator of Miso records: each is its own record; both ids make a link."""

    def translate(self, record: dict) -> Translation:
        user, anonymous = record.get("user_id"), record.get("anonymous_id")
        links = (
            [Link(anonymous, user)] if isinstance(user, str) and isinstance(anonymous, str) else []
        )
        return Translation([record], links, [], None)


class MisoSource(BaseSource):
    """Miso interaction records, validated as they are read."""

    name: ClassVar[str] = "miso"
    table: ClassVar[str | None] = None
    describes: ClassVar[str] = "Miso interaction records"
    expected: ClassVar[str] = 'Miso records: {"data": [...]}, a JSON array, or JSON Lines'
    unit: ClassVar[str] = "Miso records"

    def __init__(self, *, window: Window | None = None) -> None:
        self.window = window or Window()
        self._translator = RecordPassThrough()

    def translator(self) -> RecordPassThrough:
        return self._translator

    def items(self, where: str, value: Any) -> list[Item]:
        if isinstance(value, dict) and "data" in value and "type" not in value:
            data = value["data"]
            if not isinstance(data, list):
                return [
                    Item(
                        where,
                        None,
                        ReadError(f"'data' must be an array of records, got {json_type(data)}"),
                    )
                ]
            return [
                self._item(f"{where}, data.{index}", record) for index, record in enumerate(data)
            ]
        return [self._item(where, value)]

    def _item(self, where: str, record: Any) -> Item:
        if not isinstance(record, dict):
            return Item(
                where,
                None,
                ReadError(f"invalid record: expected a JSON object, got {json_type(record)}"),
            )
        errors = records.record_errors(record)
        if errors:
            return Item(where, None, ReadError("invalid record: " + "; ".join(problems(errors))))
        if record.get("user_id") is None and record.get("anonymous_id") is None:
            return Item(
                where,
                None,
                ReadError(
                    "invalid record: neither user_id nor anonymous_id (the adapter sends no "
                    "record without an id)"
                ),
            )
        if self.window:
            stamp = values.to_timestamp(record.get("timestamp"))
            if stamp is None or not self.window.holds(datetime.fromisoformat(stamp).timestamp()):
                return Item(where, None, OUTSIDE)
        return Item(where, dedup_key(record), record)
