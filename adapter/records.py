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


def record_errors(record: object) -> dict:
    """Validate one interaction record and return marshmallow's error messages ({} if valid)."""
    try:
        return _record_errors(record)
    except Exception as exc:
        # A batch must keep going: an object that breaks validation itself (e.g. a dict
        # subclass whose methods raise) is reported as invalid instead of propagating.
        return {"_schema": [f"Could not validate record: {type(exc).__name__}: {exc}"]}


def batch_errors(records: list) -> dict[int, dict]:
    """Validate a list of records and return index -> errors for the invalid ones only."""
    errors: dict[int, dict] = {}
    for index, record in enumerate(records):
        messages = record_errors(record)
        if messages:
            errors[index] = messages
    return errors


def is_valid(record: object) -> bool:
    """Return True if the record is a valid Miso interaction record."""
    return not record_errors(record)
