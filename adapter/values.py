"""Conversions from source values (Segment, Mixpanel) to Miso field values.

Each converter takes whatever JSON value a source event holds and returns the
value Miso expects, or ``None`` when there is nothing sendable ("missing").
The mapping compiler picks a converter from the *target* field, so a mapping
file never names a conversion: ``rating`` is always a number, ``timestamp``
always UTC with milliseconds, ``context.truncated_ip`` always a truncated IPv4.
Converters never raise on bad input: a value that cannot be converted is
missing, and the mapping's next fallback (or default) is tried.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson

__all__ = [
    "PLACEHOLDER_IDS",
    "Converter",
    "to_custom_value",
    "to_filters",
    "to_id",
    "to_number",
    "to_number_list",
    "to_positive_number",
    "to_rating",
    "to_string",
    "to_string_list",
    "to_text",
    "to_timestamp",
    "to_url_path",
    "to_uuid",
    "truncate_ipv4",
]

Converter = Callable[[Any], Any]

#: Id values that mean "no id", so a record never joins strangers under one placeholder;
#: after the distinct_id values Mixpanel's /import refuses (mappings/README.md § Conversions).
PLACEHOLDER_IDS = frozenset(
    {
        "",
        "anon",
        "anonymous",
        "null",
        "none",
        "nil",
        "<nil>",
        "undefined",
        "unknown",
        "n/a",
        "0",
        "-1",
        "00000000-0000-0000-0000-000000000000",
    }
)

# Miso accepts any RFC 3339 date-time, but we always send one exact shape so that
# records are comparable and sortable as strings.
_CANONICAL_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_IPV4 = re.compile(r"(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\Z")
# Epoch values above this are milliseconds (1e11 s is the year 5138).
_MS_THRESHOLD = 1e11
# Dates Miso can meaningfully use; anything outside is a broken clock or unit.
_MIN_EPOCH = 0.0
_EPOCH = datetime(1970, 1, 1)  # naive UTC: isoformat() then has no offset to strip
_MAX_EPOCH = 253402300799.0  # 9999-12-31T23:59:59Z
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


_NUMBER_TYPES = (int, float)  # a tuple: `int | float` would build a union on every call


def _is_number(value: Any) -> bool:
    # bool is an int subclass in Python but never a number in JSON.
    return isinstance(value, _NUMBER_TYPES) and not isinstance(value, bool)


def to_string(value: Any) -> str | None:
    """A non-empty, stripped string; numbers become their decimal text."""
    if value.__class__ is str or isinstance(value, str):
        value = value.strip()
        return value or None
    if _is_number(value):
        if isinstance(value, float):
            if not math.isfinite(value):
                return None
            if value.is_integer():
                # Ids exported as 1234.0 mean "1234".
                return str(int(value))
        return str(value)
    return None


def to_id(value: Any, max_length: int = 1024) -> str | None:
    """An identifier: a string or number, not a placeholder, not over ``max_length``."""
    # A plain string, as nearly every id is, without the call to to_string.
    text = value.strip() or None if value.__class__ is str else to_string(value)
    if text is None or len(text) > max_length or text.lower() in PLACEHOLDER_IDS:
        return None
    return text


def to_text(value: Any) -> str | None:
    """A string; an object or array is serialised as compact JSON (e.g. a structured query)."""
    if isinstance(value, dict | list):
        if not value:
            return None
        try:
            return orjson.dumps(value).decode()
        except (TypeError, orjson.JSONEncodeError):
            # Integers past 64 bits or odd keys: the stdlib writes them (it is rare).
            try:
                return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
            except (ValueError, RecursionError):
                return None
    return to_string(value)


def to_number(value: Any) -> int | float | None:
    """A finite number; numeric strings (``"5"``, ``" 4.5 "``) are parsed to float."""
    if _is_number(value):
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if not _INT_MIN <= value <= _INT_MAX:
            # orjson cannot serialise integers past 64 bits; the stdlib parser makes them.
            try:
                return float(value)
            except OverflowError:
                return None
        return value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def to_positive_number(value: Any) -> int | float | None:
    """A number greater than zero (quantities, durations of zero carry no signal)."""
    number = to_number(value)
    return number if number is not None and number > 0 else None


def to_rating(value: Any) -> int | float | None:
    """A rating on Miso's 0-5 scale; anything outside it cannot be sent faithfully."""
    number = to_number(value)
    return number if number is not None and 0 <= number <= 5 else None


def to_string_list(value: Any, max_length: int = 512) -> list[str] | None:
    """A list of ids; a scalar becomes a one-item list, unusable items are dropped."""
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        text = to_string(item)
        if text is not None and len(text) <= max_length:
            out.append(text)
    return out or None


def to_number_list(value: Any) -> list[int | float] | None:
    """A list of positive numbers; a scalar becomes a one-item list."""
    items = value if isinstance(value, list) else [value]
    out = [n for n in map(to_positive_number, items) if n is not None]
    return out or None


def to_timestamp(value: Any) -> str | None:
    """UTC ``YYYY-MM-DDTHH:MM:SS.mmmZ`` from ISO-8601 text or epoch seconds/milliseconds.

    ISO text without an offset is taken as UTC (Segment always sends UTC).
    """
    if value.__class__ is float and _MIN_EPOCH <= value <= _MS_THRESHOLD:
        # Epoch seconds, as the Mixpanel normaliser hands them over: the hot path.
        millis = round(value * 1000)
        return (_EPOCH + timedelta(milliseconds=millis)).isoformat(timespec="milliseconds") + "Z"
    if isinstance(value, str):
        if _CANONICAL_TS.match(value):
            return value
        text = value.strip()
        if not text:
            return None
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            number = to_number(text)
            return None if number is None else to_timestamp(number)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            epoch = moment.timestamp()
        except (OverflowError, ValueError):
            return None
    elif _is_number(value):
        epoch = float(value)
        if not math.isfinite(epoch):
            return None
        if abs(epoch) > _MS_THRESHOLD:
            epoch /= 1000.0
    else:
        return None
    if not _MIN_EPOCH <= epoch <= _MAX_EPOCH:
        return None
    # Round to whole milliseconds on the integer grid so 0.9995 s never prints as 1000 ms.
    millis = round(epoch * 1000)
    # Integer timedelta arithmetic + isoformat (C): twice as fast as strftime, same text.
    return (_EPOCH + timedelta(milliseconds=millis)).isoformat(timespec="milliseconds") + "Z"


def to_uuid(value: Any) -> str | None:
    """A UUID string in 8-4-4-4-12 form (Miso's ``miso_id``); anything else is missing."""
    if isinstance(value, str):
        value = value.strip()
        if _UUID.match(value):
            return value
    return None


def truncate_ipv4(value: Any) -> str | None:
    """IPv4 with the last octet zeroed; IPv6 and garbage are dropped (never forward a full IP).

    An IPv4-mapped IPv6 address (``::ffff:1.2.3.4``) is an IPv4 client seen through a
    dual-stack socket, so it is truncated like IPv4.
    """
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text[:7].lower() == "::ffff:":
        text = text[7:]
    match = _IPV4.match(text)
    if match is None:
        return None
    octets = [int(part) for part in match.groups()]
    if any(octet > 255 for octet in octets):
        return None
    return f"{octets[0]}.{octets[1]}.{octets[2]}.0"


def to_filters(value: Any) -> dict[str, list[str]] | None:
    """Search filters as Miso wants them: ``{field: [values]}``.

    Accepts Segment's ``[{"type": field, "value": v}, ...]`` (values of one field are
    gathered in order) and a plain ``{field: value-or-list}`` object.
    """
    pairs: list[tuple[Any, Any]]
    if isinstance(value, list):
        pairs = [(f.get("type"), f.get("value")) for f in value if isinstance(f, dict)]
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        return None
    out: dict[str, list[str]] = {}
    for field, raw in pairs:
        name = to_string(field)
        values = to_string_list(raw, max_length=1 << 16)
        if name is not None and values is not None:
            out.setdefault(name, []).extend(values)
    return out or None


def to_custom_value(value: Any) -> Any:
    """A value ``context.custom_context`` accepts: scalar, or a flat list of strings or numbers."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value if value else None
    if _is_number(value):
        return to_number(value)
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        if all(_is_number(v) for v in value):
            numbers = [to_number(v) for v in value]
            return None if None in numbers else numbers
        return None
    return None


def to_url_path(value: Any) -> str | None:
    """The path of a URL, or a path as given (``/products/1?x=1`` → ``/products/1``)."""
    text = to_string(value)
    if text is None:
        return None
    if "://" in text:
        try:
            return urlsplit(text).path or "/"
        except ValueError:
            return None
    for mark in "?#":
        text = text.partition(mark)[0]
    return text or None
