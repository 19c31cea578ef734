"""The fields of Miso's UserRecord and the conversion of a value to each.

Miso's Users API (``POST /v1/users``) takes one whole UserRecord per user; each of its fields
accepts one kind of value (``age`` an integer, ``created_at`` an ISO date-time or date,
``profile_image`` an http(s) URL...).  Each conversion returns the value in the form its field
accepts, or None when there is none, so a record built from them has the shape Miso's schema
requires.  ``adapter.users`` maps a user's merged traits through them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import date
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from adapter import values

__all__ = [
    "ATTRIBUTE_FIELD",
    "USER_FIELDS",
    "to_age",
    "to_attribute_value",
    "to_profile_image",
    "to_user_date",
    "to_user_id",
]

#: UserRecord's field for everything it has no field of its own for.
ATTRIBUTE_FIELD = "custom_attributes"

_USER_ID_MAX = 512  # UserRecord.user_id maxLength
_URI_MAX = 65536  # UserRecord.profile_image maxLength
_AGE_MAX = 150  # older is a unit or a birth year, not an age


def to_user_id(value: Any) -> str | None:
    """A user id as for interactions (no placeholders, at most 512 characters); Miso also
    refuses ids starting with ``_``."""
    text = values.to_id(value, max_length=_USER_ID_MAX)
    if text is None or text.startswith("_"):
        return None
    return text


def to_age(value: Any) -> int | None:
    """A whole number of years, 0 to 150, from a number or numeric text (``"33"``)."""
    number = values.to_number(value)
    if number is None or isinstance(number, bool):
        return None
    if isinstance(number, float) and not number.is_integer():
        return None
    age = int(number)
    return age if 0 <= age <= _AGE_MAX else None


_DATE = re.compile(r"\d{4}-\d\d-\d\d\Z")


def to_user_date(value: Any) -> str | None:
    """``YYYY-MM-DD`` as given (a valid date), else a date-time as for ``timestamp``: ISO-8601
    with any offset (none = UTC) or epoch seconds/milliseconds, to UTC with milliseconds."""
    if isinstance(value, str):
        text = value.strip()
        if _DATE.match(text):
            try:
                date.fromisoformat(text)
            except ValueError:
                return None
            return text
    return values.to_timestamp(value)


_URI_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f<>\"\\^`{|}]")


def to_profile_image(value: Any) -> str | None:
    """An absolute ``http``/``https`` URL with a host, without spaces, at most 65,536
    characters; anything else (a relative path, a data: URI, a number) is missing."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not text or len(text) > _URI_MAX or _URI_FORBIDDEN.search(text):
        return None
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return text


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (not isinstance(value, float) or math.isfinite(value))
    )


def _scalar(value: Any) -> Any:
    """A string, number or boolean custom attributes accept; None for anything else."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip() or None
    if _is_number(value):
        return values.to_number(value)
    return None


def to_attribute_value(value: Any) -> Any:
    """A value UserRecord's ``custom_attributes`` accept: a boolean, number or string; a
    non-empty list of strings or of numbers; or a list of flat objects whose values are
    strings, numbers or booleans (empty and null entries left out). Objects, mixed lists
    and lists of lists are missing: map their parts one by one."""
    if not isinstance(value, list):
        return _scalar(value)
    if not value:
        return None
    if all(isinstance(v, str) for v in value):
        texts = [v.strip() for v in value if v.strip()]
        return texts or None
    if all(_is_number(v) for v in value):
        return [values.to_number(v) for v in value]
    if all(isinstance(v, dict) for v in value):
        rows = []
        for item in value:
            row = {}
            for key, inner in item.items():
                got = _scalar(inner)
                if got is None and inner is not None and inner != "":
                    return None  # a nested object or list: not a flat object
                if got is not None:
                    row[str(key)] = got
            if row:
                rows.append(row)
        return rows or None
    return None


#: UserRecord's fields (besides custom_attributes), each with its conversion.
USER_FIELDS: dict[str, Callable[[Any], Any]] = {
    "user_id": to_user_id,
    "name": values.to_string,
    "age": to_age,
    "gender": values.to_string,
    "description": values.to_string,
    "city": values.to_string,
    "state": values.to_string,
    "country": values.to_string,
    "created_at": to_user_date,
    "updated_at": to_user_date,
    "profile_image": to_profile_image,
    "group_id": partial(values.to_id, max_length=1024),
}
