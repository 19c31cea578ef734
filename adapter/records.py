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
the same Schema instances (``adapter.record_check``), accepts them in a few microseconds, and
marshmallow only runs to word the errors of records it does not accept.  The JSON-strict fields
the model is declared with are in ``adapter.record_fields``.
"""

from __future__ import annotations

from marshmallow import Schema, fields

from adapter.record_check import compile_validator
from adapter.record_fields import (
    CustomContext,
    Dict,
    Ipv4,
    List,
    Nested,
    OpenObject,
    Quantities,
    String,
    Timestamp,
    TypedRecord,
    Uuid,
    field_names,
    number,
    string,
    string_list,
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


class _Campaign(OpenObject):
    name = string()
    source = string()
    medium = string()
    term = string()
    content = string()


class _Page(OpenObject):
    url = string(required=True)
    referrer = string()
    title = string()


class _WebBasedContext(OpenObject):
    campaign = Nested(_Campaign)
    truncated_ip = Ipv4(metadata={"kind": "ipv4"})
    locale = string()
    region = string()
    page = Nested(_Page)
    user_agent = string()
    custom_context = CustomContext(metadata={"kind": "custom_context"})


class _SearchInformation(OpenObject):
    keywords = string()
    filters = Dict(keys=String(), values=List(String()))


class _Record(TypedRecord):
    """Fields every interaction type accepts; subclasses set TYPE and add their own fields."""

    user_id = string(max_length=MAX_LENGTHS["user_id"])
    anonymous_id = string(max_length=MAX_LENGTHS["anonymous_id"])
    timestamp = Timestamp(metadata={"kind": "timestamp"})
    miso_id = Uuid(metadata={"kind": "uuid"})
    context = Nested(_WebBasedContext, metadata={"kind": "context"})


class _ProductRecord(_Record):
    product_ids = string_list(MAX_LENGTHS["product_ids"])
    product_group_ids = string_list(MAX_LENGTHS["product_group_ids"])


class _ProductDetailPageView(_ProductRecord):
    TYPE = "product_detail_page_view"
    duration = number()


class _Search(_Record):
    TYPE = "search"
    search = Nested(_SearchInformation, metadata={"kind": "search"})


class _AddToCart(_ProductRecord):
    TYPE = "add_to_cart"
    quantities = Quantities(metadata={"kind": "number_list"})


class _RemoveFromCart(_ProductRecord):
    TYPE = "remove_from_cart"


class _Checkout(_ProductRecord):
    TYPE = "checkout"
    quantities = Quantities(metadata={"kind": "number_list"})
    revenue = number()


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
    duration = number()


class _Watch(_ProductRecord):
    TYPE = "watch"
    duration = number()


class _Listen(_ProductRecord):
    TYPE = "listen"
    duration = number()


class _Like(_ProductRecord):
    TYPE = "like"


class _Dislike(_ProductRecord):
    TYPE = "dislike"


class _Share(_ProductRecord):
    TYPE = "share"


class _Rate(_ProductRecord):
    TYPE = "rate"
    rating = number()


class _Bookmark(_ProductRecord):
    TYPE = "bookmark"


class _Complete(_ProductRecord):
    TYPE = "complete"


class _Feedback(_Record):
    TYPE = "feedback"
    question_id = string(max_length=MAX_LENGTHS["question_id"])
    result_type = string()
    value = string()


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
    duration = number()


class _CategoryPageView(_Record):
    TYPE = "category_page_view"
    category = string_list()
    duration = number()


class _PromoPageView(_ProductRecord):
    TYPE = "promo_page_view"
    duration = number()


class _ProductImageView(_ProductRecord):
    TYPE = "product_image_view"


class _Custom(_ProductRecord):
    TYPE = "custom"
    custom_action_name = string(required=True)


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


ALLOWED_FIELDS: dict[str, frozenset[str]] = {
    type_name: frozenset(field_names(schema)) for type_name, schema in _SCHEMAS.items()
}

FIELD_KINDS: dict[str, str] = {
    name: field.metadata["kind"]
    for schema in _SCHEMAS.values()
    for name, field in field_names(schema).items()
}


def _context_kinds(schema: Schema, prefix: str = "") -> dict[str, str]:
    kinds: dict[str, str] = {}
    for name, field in field_names(schema).items():
        if isinstance(field, fields.Nested):
            kinds.update(_context_kinds(field.schema, f"{prefix}{name}."))
        else:
            kinds[f"{prefix}{name}"] = field.metadata["kind"]
    return kinds


CONTEXT_FIELDS: dict[str, str] = _context_kinds(_WebBasedContext())


# The fast path: True only when marshmallow would find no errors (see adapter.record_check).
_fast_valid = compile_validator(_SCHEMAS)

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
