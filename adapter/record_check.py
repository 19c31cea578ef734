"""The fast path of record validation: plain-Python predicates compiled from the record model.

``adapter.records`` validates every record the forwarder sends, and marshmallow costs about fifty
times a JSON round trip.  :func:`compile_validator` walks the bound Schema instances of the model
once, at import (their fields, required flags, Length validators, Meta.unknown and hooks), so
the marshmallow model stays the single source of truth: only the per-kind primitives
(timestamp, UUID, IPv4, number...) are written again here, and tests/test_records_fast.py
checks them against marshmallow differentially.  Anything in the model the compiler does not
know (a new field class, validator or hook) fails the import instead of letting the two paths
drift apart.

A predicate returns True only when marshmallow would report no errors.  It is also exact
(False only when marshmallow reports errors) for records built from exactly the builtin JSON
types: dict/list containers, str keys and strings, int/float/bool/None scalars (the open
extras of context and search may hold anything: they go through ``json_problem``, as in
marshmallow's path).  Subclasses of those types (OrderedDict, IntEnum, numpy floats...) and
marshmallow's ``missing`` make it answer False, and the caller then asks marshmallow, so the
public functions of ``adapter.records`` are exact for every input.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Callable, Mapping

from marshmallow import INCLUDE, RAISE, Schema, fields, validate
from marshmallow.decorators import VALIDATES, VALIDATES_SCHEMA

from adapter.record_fields import (
    RFC3339,
    UUID_PATTERN,
    CustomContext,
    Dict,
    Ipv4,
    List,
    Nested,
    Number,
    OpenObject,
    Quantities,
    String,
    Timestamp,
    TypedRecord,
    Uuid,
    field_names,
    json_problem,
)

__all__ = ["compile_validator"]

_Check = Callable[[object], bool]

# Exactly what ipaddress.IPv4Address accepts from a str: four dot-separated ASCII decimal
# octets, 0-255, no leading zeros.
_IPV4_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IPV4 = re.compile(rf"{_IPV4_OCTET}\.{_IPV4_OCTET}\.{_IPV4_OCTET}\.{_IPV4_OCTET}")
_isfinite = math.isfinite


def _fast_string(value: object) -> bool:
    return type(value) is str


def _fast_number(value: object) -> bool:
    # type() is never int for a bool, so booleans are refused like Number does.
    kind = type(value)
    return kind is int or (kind is float and _isfinite(value))


def _fast_quantities(value: object) -> bool:
    kind = type(value)
    if kind is int or (kind is float and _isfinite(value)):
        return True
    if kind is not list:
        return False
    for item in value:
        kind = type(item)
        if kind is not int and (kind is not float or not _isfinite(item)):
            return False
    return True


def _fast_timestamp(value: object) -> bool:
    if type(value) is not str:
        return False
    match = RFC3339.fullmatch(value)
    if match is None:
        return False
    year, month, day = match.groups()
    if year == "0000":
        return False
    # Days 01-28 exist in every month; only 00 and 29-99 need the calendar.
    return "01" <= day <= "28" or (
        day != "00" and int(day) <= calendar.monthrange(int(year), int(month))[1]
    )


def _fast_uuid(value: object) -> bool:
    return type(value) is str and UUID_PATTERN.fullmatch(value) is not None


def _fast_ipv4(value: object) -> bool:
    return type(value) is str and _IPV4.fullmatch(value) is not None


def _fast_custom_array(items: list) -> bool:
    # The first item decides which of the array shapes of CustomContext can still fit.
    if not items:
        return True
    kind = type(items[0])
    if kind is str:
        return all(type(item) is str for item in items)
    if kind is int or kind is float:
        for item in items:
            kind = type(item)
            if kind is not int and (kind is not float or not _isfinite(item)):
                return False
        return True
    if kind is not dict:
        return False
    for item in items:
        if type(item) is not dict:
            return False
        for key, scalar in item.items():
            if type(key) is not str:
                return False
            kind = type(scalar)
            if kind is float:
                if not _isfinite(scalar):
                    return False
            elif kind is not str and kind is not bool and kind is not int:
                return False
    return True


def _fast_custom_context(value: object) -> bool:
    # CustomContext's check with exact types and no isinstance on unions (slow in 3.11).
    if type(value) is not dict:
        return False
    for key, item in value.items():
        if type(key) is not str:
            return False
        kind = type(item)
        if kind is str or kind is int or kind is bool:
            continue
        if kind is float:
            if not _isfinite(item):
                return False
        elif kind is not list or not _fast_custom_array(item):
            return False
    return True


def _fast_json(value: object) -> bool:
    return json_problem(value) is None


def _fast_bounded_string(max_length: int) -> _Check:
    def check(value: object) -> bool:
        return type(value) is str and len(value) <= max_length

    return check


def _fast_equal_string(text: str) -> _Check:
    def check(value: object) -> bool:
        return type(value) is str and value == text

    return check


def _fast_string_list(max_length: int | None) -> _Check:
    # The common case (product_ids...) inlined: no call per item.
    limit = math.inf if max_length is None else max_length

    def check(value: object) -> bool:
        if type(value) is not list:
            return False
        # A plain loop: all() over a generator costs more than the whole check for short lists.
        for item in value:  # noqa: SIM110
            if type(item) is not str or len(item) > limit:
                return False
        return True

    return check


def _fast_dict(key_check: _Check, value_check: _Check) -> _Check:
    def check(value: object) -> bool:
        if type(value) is not dict:
            return False
        return all(map(key_check, value)) and all(map(value_check, value.values()))

    return check


_FAST_LEAVES: dict[type[fields.Field], _Check] = {
    String: _fast_string,
    Timestamp: _fast_timestamp,
    Uuid: _fast_uuid,
    Ipv4: _fast_ipv4,
    Number: _fast_number,
    Quantities: _fast_quantities,
    CustomContext: _fast_custom_context,
}


def _string_max_length(field: fields.Field) -> int | None:
    """The max of a String's only Length(max=...) validator (None without one)."""
    max_length = None
    for validator in field.validators:
        if not (
            type(field) is String
            and type(validator) is validate.Length
            and validator.min is None
            and validator.equal is None
            and max_length is None
        ):
            raise TypeError(f"no fast check for validator {validator!r} on {field!r}")
        max_length = validator.max
    return max_length


def _compile_field(field: fields.Field) -> _Check:
    """Compile one bound marshmallow field into a predicate on the raw value."""
    kind = type(field)
    # attribute= would only rename the loaded key, but nothing here needs it: refuse it.
    if field.attribute is not None:
        raise TypeError(f"no fast check for attribute= on {field!r}")
    max_length = _string_max_length(field)
    if max_length is not None:
        check = _fast_bounded_string(max_length)
    elif kind in _FAST_LEAVES:
        check = _FAST_LEAVES[kind]
    elif kind is List and type(field.inner) is String and not field.inner.allow_none:
        check = _fast_string_list(_string_max_length(field.inner))
    elif kind is Dict and field.key_field is not None and field.value_field is not None:
        check = _fast_dict(_compile_field(field.key_field), _compile_field(field.value_field))
    elif kind is Nested and not field.many and not field.schema.many:
        check = _compile_schema(field.schema, field.unknown)
    else:
        raise TypeError(f"no fast check for field {field!r}")
    if field.allow_none:
        raise TypeError(f"no fast check for allow_none on {field!r}")
    return check


def _compile_schema(schema: Schema, unknown: str | None = None) -> _Check:
    """Compile a bound Schema instance into a predicate on the raw object it loads."""
    if schema.many or schema.partial:
        raise TypeError(f"no fast check for many/partial on {schema!r}")
    names = field_names(schema)
    checks = {name: _compile_field(field) for name, field in names.items()}
    required = tuple(name for name, field in names.items() if field.required)
    json_extras = False
    for tag, hooks in schema._hooks.items():
        for attr_name, _, hook_kwargs in hooks:
            method = getattr(type(schema), attr_name)
            if tag == VALIDATES and method is TypedRecord._type_matches:
                for field_name in hook_kwargs["field_names"]:
                    field = schema.fields[field_name]
                    if type(field) is not String or field.validators:
                        raise TypeError(f"no fast check for {attr_name} on {field!r}")
                    checks[field.data_key or field_name] = _fast_equal_string(schema.TYPE)
            elif tag == VALIDATES_SCHEMA and method is OpenObject._extras_are_json:
                json_extras = True
            else:
                raise TypeError(f"no fast check for hook {attr_name} of {schema!r}")
    # The two shapes the model uses: closed records, and open objects whose extras are JSON.
    unknown = schema.unknown if unknown is None else unknown
    if unknown == RAISE and not json_extras:
        extra_check = None
    elif unknown == INCLUDE and json_extras:
        extra_check = _fast_json
    else:
        raise TypeError(f"no fast check for unknown={unknown!r} on {schema!r}")
    get_check = checks.get

    def check(value: object) -> bool:
        if type(value) is not dict:
            return False
        for key, item in value.items():
            # A str subclass could hash or compare unlike str: leave it to marshmallow.
            if type(key) is not str:
                return False
            field_check = get_check(key)
            if field_check is None:
                if extra_check is None or not extra_check(item):
                    return False
            elif not field_check(item):
                return False
        for name in required:  # noqa: SIM110 (see _fast_string_list)
            if name not in value:
                return False
        return True

    return check


def compile_validator(schemas: Mapping[str, Schema]) -> _Check:
    """Compile the record schemas, by type name, into one predicate on a raw record.

    The predicate is True only if marshmallow finds no errors (exact for builtin JSON types,
    see the module docstring), and never raises.
    """
    checks = {type_name: _compile_schema(schema) for type_name, schema in schemas.items()}

    def fast_valid(record: object) -> bool:
        try:
            if type(record) is not dict:
                return False
            type_name = record.get("type")
            if type(type_name) is not str:
                return False
            check = checks.get(type_name)
            return check is not None and check(record)
        except Exception:
            # Only json_problem can raise (on a hostile object in an open part); marshmallow's
            # path, which calls it too, then reports it with its own message.
            return False

    return fast_valid
