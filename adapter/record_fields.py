"""JSON-strict marshmallow fields and object shapes the Miso record model is declared with.

marshmallow's own fields accept more than a request body can carry (bytes, tuples, any Mapping,
numeric strings) and convert what they load; these accept exactly JSON values and return them
unchanged.  Each field made by :func:`string`, :func:`string_list` or :func:`number` carries its
kind in ``metadata["kind"]``, from which ``adapter.records`` derives its public tables.
"""

from __future__ import annotations

import calendar
import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from marshmallow import (
    INCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    validate,
    validates,
    validates_schema,
)

__all__ = [
    "RFC3339",
    "UUID_PATTERN",
    "CustomContext",
    "Dict",
    "Ipv4",
    "List",
    "Nested",
    "Number",
    "OpenObject",
    "Quantities",
    "String",
    "Timestamp",
    "TypedRecord",
    "Uuid",
    "field_names",
    "json_problem",
    "number",
    "string",
    "string_list",
]

_NON_FINITE = "NaN and Infinity are not permitted (they cannot be serialised as JSON)."
_NON_STRING_KEY = "Object keys must be strings."
_CUSTOM_CONTEXT_VALUE = (
    "Must be a boolean, a number, a string, or an array of numbers, of strings or of objects "
    "whose values are strings, numbers or booleans."
)

# Same grammar as rfc3339-validator (what jsonschema uses for "date-time"), which jsonschema
# applies to the upper-cased string: hence the lower-case "t" and "z" alternatives.
RFC3339 = re.compile(
    r"(\d{4})-(0[1-9]|1[0-2])-(\d{2})[Tt]"
    r"(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d+)?"
    r"(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)",
    re.ASCII,
)
UUID_PATTERN = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def _is_number(value: object) -> bool:
    # bool is an int subclass, but JSON Schema's "number" excludes booleans.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite(value: int | float) -> bool:
    # math.isfinite() on a huge int overflows converting to float; ints are always finite.
    return not isinstance(value, float) or math.isfinite(value)


def json_problem(value: object) -> str | None:
    """Return why ``value`` has no JSON representation, or None if it has one."""
    # Iterative with a seen-set so deep or self-referencing input cannot raise RecursionError.
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, str | bool | int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return _NON_FINITE
            continue
        if isinstance(item, list | dict):
            if id(item) in seen:
                continue
            seen.add(id(item))
            if isinstance(item, dict):
                if not all(isinstance(key, str) for key in item):
                    return _NON_STRING_KEY
                stack.extend(item.values())
            else:
                stack.extend(item)
            continue
        return f"Not a JSON value: {type(item).__name__}."
    return None


def _custom_context_problem(value: object) -> str | None:
    """Return why ``value`` is not allowed as a custom_context value, or None if it is."""
    if isinstance(value, str | bool):
        return None
    if _is_number(value):
        return None if _is_finite(value) else _NON_FINITE
    if not isinstance(value, list):
        return _CUSTOM_CONTEXT_VALUE
    if all(isinstance(item, str) for item in value):
        return None
    if all(_is_number(item) for item in value):
        return None if all(_is_finite(item) for item in value) else _NON_FINITE
    if not all(isinstance(item, dict) for item in value):
        return _CUSTOM_CONTEXT_VALUE
    for item in value:
        for key, scalar in item.items():
            if not isinstance(key, str):
                return _NON_STRING_KEY
            if isinstance(scalar, str | bool):
                continue
            if not _is_number(scalar):
                return _CUSTOM_CONTEXT_VALUE
            if not _is_finite(scalar):
                return _NON_FINITE
    return None


class String(fields.String):
    """A JSON string; marshmallow's String would also accept and decode bytes."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        return value


class Timestamp(String):
    """An RFC 3339 date-time string with a time-zone offset, kept as a string."""

    default_error_messages: ClassVar[dict[str, str]] = {
        "format": "Not a valid RFC 3339 date-time (e.g. 2024-01-01T00:00:00Z; offset required).",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        match = RFC3339.fullmatch(text)
        if match is None:
            raise self.make_error("format")
        year, month, day = (int(part) for part in match.groups())
        if year == 0 or not 1 <= day <= calendar.monthrange(year, month)[1]:
            raise self.make_error("format")
        return text


class Uuid(String):
    """A UUID string in canonical hyphenated form, kept as a string."""

    default_error_messages: ClassVar[dict[str, str]] = {"format": "Not a valid UUID."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if UUID_PATTERN.fullmatch(text) is None:
            raise self.make_error("format")
        return text


class Ipv4(String):
    """A dotted-quad IPv4 address string (Miso's schema rejects IPv6 here)."""

    default_error_messages: ClassVar[dict[str, str]] = {"format": "Not a valid IPv4 address."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise self.make_error("format") from None
        return text


class Number(fields.Field):
    """A finite JSON number; unlike fields.Float it never converts strings or booleans."""

    default_error_messages: ClassVar[dict[str, str]] = {
        "invalid": "Not a valid number.",
        "special": _NON_FINITE,
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not _is_number(value):
            raise self.make_error("invalid")
        if not _is_finite(value):
            raise self.make_error("special")
        return value


class Quantities(fields.Field):
    """A finite number or a list of them (the schema's anyOf for quantities)."""

    default_error_messages: ClassVar[dict[str, str]] = {
        "invalid": "Must be a number or a list of numbers.",
        "item": "Not a valid number.",
        "special": _NON_FINITE,
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if _is_number(value):
            if not _is_finite(value):
                raise self.make_error("special")
            return value
        if not isinstance(value, list):
            raise self.make_error("invalid")
        errors: dict[int, list[str]] = {}
        for index, item in enumerate(value):
            if not _is_number(item):
                errors[index] = [self.error_messages["item"]]
            elif not _is_finite(item):
                errors[index] = [self.error_messages["special"]]
        if errors:
            raise ValidationError(errors)
        return value


class List(fields.List):
    """A JSON array; marshmallow's List would also accept tuples, sets and other iterables."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, list):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class Dict(fields.Dict):
    """A JSON object; marshmallow's Dict would also accept any Mapping."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class Nested(fields.Nested):
    """A nested JSON object; marshmallow's Nested would also accept any Mapping."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise self.make_error("type")
        return super()._deserialize(value, attr, data, **kwargs)


class CustomContext(fields.Field):
    """custom_context: an object of scalars, flat arrays or arrays of flat objects."""

    default_error_messages: ClassVar[dict[str, str]] = {"invalid": "Not a valid object."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise self.make_error("invalid")
        errors: dict[Any, list[str]] = {}
        for key, item in value.items():
            problem = _NON_STRING_KEY if not isinstance(key, str) else _custom_context_problem(item)
            if problem is not None:
                errors[key] = [problem]
        if errors:
            raise ValidationError(errors)
        return value


def string(kind: str = "string", max_length: int | None = None, **kwargs: Any) -> String:
    """A String of the given kind, at most ``max_length`` characters when given."""
    validators = [] if max_length is None else [validate.Length(max=max_length)]
    return String(validate=validators, metadata={"kind": kind}, **kwargs)


def string_list(max_length: int | None = None) -> List:
    """A list of strings, each at most ``max_length`` characters when given."""
    return List(string(max_length=max_length), metadata={"kind": "string_list"})


def number() -> Number:
    """A finite number."""
    return Number(metadata={"kind": "number"})


class OpenObject(Schema):
    """A JSON object whose undeclared keys are allowed (no additionalProperties: false)."""

    class Meta:
        unknown = INCLUDE

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _extras_are_json(self, data: Any, original_data: Any, **kwargs: Any) -> None:
        # The schema leaves undeclared keys unconstrained, but they still have to serialise.
        if not isinstance(original_data, Mapping):
            return
        declared = field_names(self)
        errors: dict[Any, list[str]] = {}
        for key, value in original_data.items():
            if not isinstance(key, str):
                errors[key] = [_NON_STRING_KEY]
            elif key not in declared:
                problem = json_problem(value)
                if problem is not None:
                    errors[key] = [problem]
        if errors:
            raise ValidationError(errors)


class TypedRecord(Schema):
    """A closed JSON object whose required ``type`` must equal the subclass's TYPE."""

    TYPE: ClassVar[str] = ""

    class Meta:
        unknown = RAISE

    type = string(kind="type", required=True)

    @validates("type")
    def _type_matches(self, value: str, **kwargs: Any) -> None:
        if value != self.TYPE:
            raise ValidationError(f"Must be equal to {self.TYPE}.")


def field_names(schema: Schema) -> dict[str, fields.Field]:
    """A bound schema's loaded fields by the key they read in the input."""
    return {field.data_key or name: field for name, field in schema.load_fields.items()}
