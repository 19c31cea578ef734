"""Marshmallow model of the 29 Miso interaction record types.

The contract is Miso's request-body JSON Schema for ``POST /v1/interactions``, vendored at
``adapter/data/miso-interactions.schema.json``.  This module mirrors it in marshmallow so records
can be checked before sending without a JSON Schema engine at runtime.  ``tests/test_records.py``
proves that the two agree on a large table of valid and invalid records.

Where the model is deliberately stricter than the schema as checked by ``jsonschema``:

* Values that have no JSON representation are rejected: NaN and +/-Infinity, object keys that are
  not strings, and (inside the open parts of ``context`` and ``search``) values other than
  None/bool/int/float/str/list/dict.  ``jsonschema`` accepts them because it validates Python
  objects, but they cannot be serialised into a request body.
* Numbers must be ``int`` or ``float`` (never ``bool``); ``jsonschema`` also accepts any
  ``numbers.Number`` such as ``Decimal``, which JSON encoders reject.
* ``miso_id`` must be a canonical 8-4-4-4-12 hex UUID.  ``jsonschema``'s checker parses with
  ``uuid.UUID`` and so also accepts oddities such as ``_`` between hex digits or a stray ``}``.
* ``timestamp`` must not end in a newline; ``rfc3339-validator``'s regex anchors with ``$``,
  which lets one trailing ``\\n`` through.

Validation never converts values: strings stay strings (timestamps are not parsed into
``datetime``) and numeric strings are not numbers.

Valid records never reach marshmallow: a plain-Python predicate per type, compiled at import from
the same Schema instances (see "fast path" below), accepts them in a few microseconds, and
marshmallow only runs to word the errors of records it does not accept.
"""

from __future__ import annotations

import calendar
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
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
from marshmallow.decorators import VALIDATES, VALIDATES_SCHEMA

__all__ = [
    "ALLOWED_FIELDS",
    "CONTEXT_FIELDS",
    "FIELD_KINDS",
    "INTERACTION_TYPES",
    "MAX_LENGTHS",
    "batch_errors",
    "is_valid",
    "record_errors",
]

MAX_LENGTHS: dict[str, int] = {
    "user_id": 512,
    "anonymous_id": 1024,
    "product_ids": 512,
    "product_group_ids": 512,
    "question_id": 512,
}

_NON_FINITE = "NaN and Infinity are not permitted (they cannot be serialised as JSON)."
_NON_STRING_KEY = "Object keys must be strings."
_CUSTOM_CONTEXT_VALUE = (
    "Must be a boolean, a number, a string, or an array of numbers, of strings or of objects "
    "whose values are strings, numbers or booleans."
)

# Same grammar as rfc3339-validator (what jsonschema uses for "date-time"), which jsonschema
# applies to the upper-cased string: hence the lower-case "t" and "z" alternatives.
_RFC3339 = re.compile(
    r"(\d{4})-(0[1-9]|1[0-2])-(\d{2})[Tt]"
    r"(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d+)?"
    r"(?:[Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)",
    re.ASCII,
)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _is_number(value: object) -> bool:
    # bool is an int subclass, but JSON Schema's "number" excludes booleans.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite(value: int | float) -> bool:
    # math.isfinite() on a huge int overflows converting to float; ints are always finite.
    return not isinstance(value, float) or math.isfinite(value)


def _json_problem(value: object) -> str | None:
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


class _String(fields.String):
    """A JSON string; marshmallow's String would also accept and decode bytes."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        return value


class _Timestamp(_String):
    """An RFC 3339 date-time string with a time-zone offset, kept as a string."""

    default_error_messages: ClassVar[dict[str, str]] = {
        "format": "Not a valid RFC 3339 date-time (e.g. 2024-01-01T00:00:00Z; offset required).",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        match = _RFC3339.fullmatch(text)
        if match is None:
            raise self.make_error("format")
        year, month, day = (int(part) for part in match.groups())
        if year == 0 or not 1 <= day <= calendar.monthrange(year, month)[1]:
            raise self.make_error("format")
        return text


class _Uuid(_String):
    """A UUID string in canonical hyphenated form, kept as a string."""

    default_error_messages: ClassVar[dict[str, str]] = {"format": "Not a valid UUID."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if _UUID.fullmatch(text) is None:
            raise self.make_error("format")
        return text


class _Ipv4(_String):
    """A dotted-quad IPv4 address string (Miso's schema rejects IPv6 here)."""

    default_error_messages: ClassVar[dict[str, str]] = {"format": "Not a valid IPv4 address."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise self.make_error("format") from None
        return text


class _Number(fields.Field):
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


class _Quantities(fields.Field):
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


class _List(fields.List):
    """A JSON array; marshmallow's List would also accept tuples, sets and other iterables."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, list):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class _Dict(fields.Dict):
    """A JSON object; marshmallow's Dict would also accept any Mapping."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class _Nested(fields.Nested):
    """A nested JSON object; marshmallow's Nested would also accept any Mapping."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise self.make_error("type")
        return super()._deserialize(value, attr, data, **kwargs)


class _CustomContext(fields.Field):
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


def _string(kind: str = "string", max_length: int | None = None, **kwargs: Any) -> _String:
    validators = [] if max_length is None else [validate.Length(max=max_length)]
    return _String(validate=validators, metadata={"kind": kind}, **kwargs)


def _string_list(max_length: int | None = None) -> _List:
    return _List(_string(max_length=max_length), metadata={"kind": "string_list"})


def _number() -> _Number:
    return _Number(metadata={"kind": "number"})


class _OpenObject(Schema):
    """A JSON object whose undeclared keys are allowed (no additionalProperties: false)."""

    class Meta:
        unknown = INCLUDE

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _extras_are_json(self, data: Any, original_data: Any, **kwargs: Any) -> None:
        # The schema leaves undeclared keys unconstrained, but they still have to serialise.
        if not isinstance(original_data, Mapping):
            return
        declared = {field.data_key or name for name, field in self.load_fields.items()}
        errors: dict[Any, list[str]] = {}
        for key, value in original_data.items():
            if not isinstance(key, str):
                errors[key] = [_NON_STRING_KEY]
            elif key not in declared:
                problem = _json_problem(value)
                if problem is not None:
                    errors[key] = [problem]
        if errors:
            raise ValidationError(errors)


class _Campaign(_OpenObject):
    name = _string()
    source = _string()
    medium = _string()
    term = _string()
    content = _string()


class _Page(_OpenObject):
    url = _string(required=True)
    referrer = _string()
    title = _string()


class _WebBasedContext(_OpenObject):
    campaign = _Nested(_Campaign)
    truncated_ip = _Ipv4(metadata={"kind": "ipv4"})
    locale = _string()
    region = _string()
    page = _Nested(_Page)
    user_agent = _string()
    custom_context = _CustomContext(metadata={"kind": "custom_context"})


class _SearchInformation(_OpenObject):
    keywords = _string()
    filters = _Dict(keys=_String(), values=_List(_String()))


class _Record(Schema):
    """Fields every interaction type accepts; subclasses set TYPE and add their own fields."""

    TYPE: ClassVar[str] = ""

    class Meta:
        unknown = RAISE

    type = _string(kind="type", required=True)
    user_id = _string(max_length=MAX_LENGTHS["user_id"])
    anonymous_id = _string(max_length=MAX_LENGTHS["anonymous_id"])
    timestamp = _Timestamp(metadata={"kind": "timestamp"})
    miso_id = _Uuid(metadata={"kind": "uuid"})
    context = _Nested(_WebBasedContext, metadata={"kind": "context"})

    @validates("type")
    def _type_matches(self, value: str, **kwargs: Any) -> None:
        if value != self.TYPE:
            raise ValidationError(f"Must be equal to {self.TYPE}.")


class _ProductRecord(_Record):
    product_ids = _string_list(MAX_LENGTHS["product_ids"])
    product_group_ids = _string_list(MAX_LENGTHS["product_group_ids"])


class _ProductDetailPageView(_ProductRecord):
    TYPE = "product_detail_page_view"
    duration = _number()


class _Search(_Record):
    TYPE = "search"
    search = _Nested(_SearchInformation, metadata={"kind": "search"})


class _AddToCart(_ProductRecord):
    TYPE = "add_to_cart"
    quantities = _Quantities(metadata={"kind": "number_list"})


class _RemoveFromCart(_ProductRecord):
    TYPE = "remove_from_cart"


class _Checkout(_ProductRecord):
    TYPE = "checkout"
    quantities = _Quantities(metadata={"kind": "number_list"})
    revenue = _number()


class _Refund(_ProductRecord):
    TYPE = "refund"


class _Subscribe(_ProductRecord):
    TYPE = "subscribe"


class _Unsubscribe(_ProductRecord):
    TYPE = "unsubscribe"


class _AddToCollection(_ProductRecord):
    TYPE = "add_to_collection"


class _RemoveFromCollection(_ProductRecord):
    TYPE = "remove_from_collection"


class _Read(_ProductRecord):
    TYPE = "read"
    duration = _number()


class _Watch(_ProductRecord):
    TYPE = "watch"
    duration = _number()


class _Listen(_ProductRecord):
    TYPE = "listen"
    duration = _number()


class _Like(_ProductRecord):
    TYPE = "like"


class _Dislike(_ProductRecord):
    TYPE = "dislike"


class _Share(_ProductRecord):
    TYPE = "share"


class _Rate(_ProductRecord):
    TYPE = "rate"
    rating = _number()


class _Bookmark(_ProductRecord):
    TYPE = "bookmark"


class _Complete(_ProductRecord):
    TYPE = "complete"


class _Feedback(_Record):
    TYPE = "feedback"
    question_id = _string(max_length=MAX_LENGTHS["question_id"])
    result_type = _string()
    value = _string()


class _Impression(_ProductRecord):
    TYPE = "impression"


class _ViewableImpression(_ProductRecord):
    TYPE = "viewable_impression"


class _Click(_ProductRecord):
    TYPE = "click"


class _Submit(_ProductRecord):
    TYPE = "submit"


class _HomePageView(_Record):
    TYPE = "home_page_view"
    duration = _number()


class _CategoryPageView(_Record):
    TYPE = "category_page_view"
    category = _string_list()
    duration = _number()


class _PromoPageView(_ProductRecord):
    TYPE = "promo_page_view"
    duration = _number()


class _ProductImageView(_ProductRecord):
    TYPE = "product_image_view"


class _Custom(_ProductRecord):
    TYPE = "custom"
    custom_action_name = _string(required=True)


# Same order as the anyOf in InteractionBulkIn.data.items.
_RECORD_CLASSES: tuple[type[_Record], ...] = (
    _ProductDetailPageView,
    _Search,
    _AddToCart,
    _RemoveFromCart,
    _Checkout,
    _Refund,
    _Subscribe,
    _Unsubscribe,
    _AddToCollection,
    _RemoveFromCollection,
    _Read,
    _Watch,
    _Listen,
    _Like,
    _Dislike,
    _Share,
    _Rate,
    _Bookmark,
    _Complete,
    _Feedback,
    _Impression,
    _ViewableImpression,
    _Click,
    _Submit,
    _HomePageView,
    _CategoryPageView,
    _PromoPageView,
    _ProductImageView,
    _Custom,
)

# One reusable instance per type: building a Schema instance deep-copies its fields.
_SCHEMAS: dict[str, _Record] = {cls.TYPE: cls() for cls in _RECORD_CLASSES}

INTERACTION_TYPES: tuple[str, ...] = tuple(_SCHEMAS)


def _field_names(schema: Schema) -> dict[str, fields.Field]:
    return {field.data_key or name: field for name, field in schema.load_fields.items()}


ALLOWED_FIELDS: dict[str, frozenset[str]] = {
    type_name: frozenset(_field_names(schema)) for type_name, schema in _SCHEMAS.items()
}

FIELD_KINDS: dict[str, str] = {
    name: field.metadata["kind"]
    for schema in _SCHEMAS.values()
    for name, field in _field_names(schema).items()
}


def _context_kinds(schema: Schema, prefix: str = "") -> dict[str, str]:
    kinds: dict[str, str] = {}
    for name, field in _field_names(schema).items():
        if isinstance(field, fields.Nested):
            kinds.update(_context_kinds(field.schema, f"{prefix}{name}."))
        else:
            kinds[f"{prefix}{name}"] = field.metadata["kind"]
    return kinds


CONTEXT_FIELDS: dict[str, str] = _context_kinds(_WebBasedContext())

# --------------------------------------------------------------------------- fast path
#
# record_errors runs for every record the forwarder sends, and marshmallow costs about fifty
# times a JSON round trip.  The predicates below are compiled once, at import, by walking the
# Schema instances in _SCHEMAS (their fields, required flags, Length validators, Meta.unknown
# and hooks), so the marshmallow model stays the single source of truth: only the per-kind
# primitives (timestamp, UUID, IPv4, number...) are written again here, and
# tests/test_records_fast.py checks them against marshmallow differentially.  Anything in the
# model the compiler does not know (a new field class, validator or hook) fails the import
# instead of letting the two paths drift apart.
#
# A predicate returns True only when marshmallow would report no errors.  It is also exact
# (False only when marshmallow reports errors) for records built from exactly the builtin JSON
# types: dict/list containers, str keys and strings, int/float/bool/None scalars (the open
# extras of context and search may hold anything: they go through _json_problem, as in
# marshmallow's path).  Subclasses of those types (OrderedDict, IntEnum, numpy floats...) and
# marshmallow's ``missing`` make it answer False, and the caller then asks marshmallow, so the
# public functions are exact for every input.

_Check = Callable[[object], bool]

# Exactly what ipaddress.IPv4Address accepts from a str: four dot-separated ASCII decimal
# octets, 0-255, no leading zeros.
_IPV4_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IPV4 = re.compile(rf"{_IPV4_OCTET}\.{_IPV4_OCTET}\.{_IPV4_OCTET}\.{_IPV4_OCTET}")
_isfinite = math.isfinite


def _fast_string(value: object) -> bool:
    return type(value) is str


def _fast_number(value: object) -> bool:
    # type() is never int for a bool, so booleans are refused like _Number does.
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
    match = _RFC3339.fullmatch(value)
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
    return type(value) is str and _UUID.fullmatch(value) is not None


def _fast_ipv4(value: object) -> bool:
    return type(value) is str and _IPV4.fullmatch(value) is not None


def _fast_custom_array(items: list) -> bool:
    # The first item decides which of _custom_context_problem's array shapes can still fit.
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
    # _custom_context_problem with exact types and no isinstance on unions (slow in 3.11).
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
    return _json_problem(value) is None


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
    _String: _fast_string,
    _Timestamp: _fast_timestamp,
    _Uuid: _fast_uuid,
    _Ipv4: _fast_ipv4,
    _Number: _fast_number,
    _Quantities: _fast_quantities,
    _CustomContext: _fast_custom_context,
}


def _string_max_length(field: fields.Field) -> int | None:
    """The max of a _String's only Length(max=...) validator (None without one)."""
    max_length = None
    for validator in field.validators:
        if not (
            type(field) is _String
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
    elif kind is _List and type(field.inner) is _String and not field.inner.allow_none:
        check = _fast_string_list(_string_max_length(field.inner))
    elif kind is _Dict and field.key_field is not None and field.value_field is not None:
        check = _fast_dict(_compile_field(field.key_field), _compile_field(field.value_field))
    elif kind is _Nested and not field.many and not field.schema.many:
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
    names = _field_names(schema)
    checks = {name: _compile_field(field) for name, field in names.items()}
    required = tuple(name for name, field in names.items() if field.required)
    json_extras = False
    for tag, hooks in schema._hooks.items():
        for attr_name, _, hook_kwargs in hooks:
            method = getattr(type(schema), attr_name)
            if tag == VALIDATES and method is _Record._type_matches:
                for field_name in hook_kwargs["field_names"]:
                    field = schema.fields[field_name]
                    if type(field) is not _String or field.validators:
                        raise TypeError(f"no fast check for {attr_name} on {field!r}")
                    checks[field.data_key or field_name] = _fast_equal_string(schema.TYPE)
            elif tag == VALIDATES_SCHEMA and method is _OpenObject._extras_are_json:
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


_FAST_CHECKS: dict[str, _Check] = {
    type_name: _compile_schema(schema) for type_name, schema in _SCHEMAS.items()
}


def _fast_valid(record: object) -> bool:
    """True only if marshmallow finds no errors (exact for builtin JSON types, see above)."""
    try:
        if type(record) is not dict:
            return False
        type_name = record.get("type")
        if type(type_name) is not str:
            return False
        check = _FAST_CHECKS.get(type_name)
        return check is not None and check(record)
    except Exception:
        # Only _json_problem can raise (on a hostile object in an open part); marshmallow's
        # path, which calls it too, then reports it with its own message.
        return False


_MISSING = object()


def _record_errors(record: object) -> dict:
    if not isinstance(record, dict):
        return {"_schema": ["Invalid input type."]}
    type_name = record.get("type", _MISSING)
    if type_name is _MISSING:
        return {"type": ["Missing data for required field."]}
    if type_name is None:
        return {"type": ["Field may not be null."]}
    if not isinstance(type_name, str):
        return {"type": ["Not a valid string."]}
    schema = _SCHEMAS.get(type_name)
    if schema is None:
        return {"type": [f"Must be one of: {', '.join(INTERACTION_TYPES)}."]}
    return schema.validate(record)


def _checked_errors(record: object) -> dict:
    """marshmallow's errors for one record, never raising."""
    try:
        return _record_errors(record)
    except Exception as exc:
        # A batch must keep going: an object that breaks validation itself (e.g. a dict
        # subclass whose methods raise) is reported as invalid instead of propagating.
        return {"_schema": [f"Could not validate record: {type(exc).__name__}: {exc}"]}


def record_errors(record: object) -> dict:
    """Validate one interaction record and return marshmallow's error messages ({} if valid).

    Valid records are recognised by the compiled fast path; marshmallow only runs to word
    the errors of the others.
    """
    return {} if _fast_valid(record) else _checked_errors(record)


def batch_errors(records: list) -> dict[int, dict]:
    """Validate a list of records and return index -> errors for the invalid ones only."""
    errors: dict[int, dict] = {}
    for index, record in enumerate(records):
        if not _fast_valid(record):
            messages = _checked_errors(record)
            if messages:
                errors[index] = messages
    return errors


def is_valid(record: object) -> bool:
    """Return True if the record is a valid Miso interaction record."""
    return _fast_valid(record) or not _checked_errors(record)
