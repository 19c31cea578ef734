"""Prove that adapter.records (marshmallow) agrees with Miso's vendored JSON Schema.

Every table case is checked three ways: the expected flag in the table, jsonschema's verdict on
the bulk body ``{"data": [record]}`` and ``records.is_valid``.  The few places where the model is
deliberately stricter than jsonschema are pinned separately at the end.
"""

from __future__ import annotations

import copy
import functools
import json
from decimal import Decimal
from importlib.resources import files
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from marshmallow import Schema

from adapter import records

# --------------------------------------------------------------------------- fixtures / helpers


@functools.cache
def _load_schema() -> dict[str, Any]:
    # Loaded through the package so the test checks exactly the file that ships in the wheel.
    text = files("adapter").joinpath("data/miso-interactions.schema.json").read_text("utf-8")
    return json.loads(text)


@functools.cache
def _load_validator() -> Draft202012Validator:
    return Draft202012Validator(_load_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def _type_defs() -> dict[str, dict[str, Any]]:
    """Map each interaction type to its $defs entry, in the schema's anyOf order."""
    schema = _load_schema()
    refs = schema["$defs"]["InteractionBulkIn"]["properties"]["data"]["items"]["anyOf"]
    defs = [schema["$defs"][ref["$ref"].rsplit("/", 1)[1]] for ref in refs]
    return {d["properties"]["type"]["enum"][0]: d for d in defs}


@pytest.fixture(scope="module")
def miso_schema() -> dict[str, Any]:
    return _load_schema()


@pytest.fixture(scope="module")
def miso_validator() -> Draft202012Validator:
    return _load_validator()


def _schema_valid(validator: Draft202012Validator, record: object) -> bool:
    return validator.is_valid({"data": [record]})


# --------------------------------------------------------------------------- realistic values

UUID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"

FULL_CONTEXT: dict[str, Any] = {
    "campaign": {
        "name": "spring_sale",
        "source": "google",
        "medium": "cpc",
        "term": "trail running shoes",
        "content": "banner_a",
    },
    "truncated_ip": "203.0.113.0",
    "locale": "en-US",
    "region": "US-CA",
    "page": {
        "url": "https://shop.example.com/p/trail-runner-2",
        "referrer": "https://www.google.com/",
        "title": "Trail Runner 2 | Example Shop",
    },
    "user_agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
    "custom_context": {
        "logged_in": True,
        "visits": 3,
        "score": 0.75,
        "plan": "pro",
        "weights": [0.5, 1, 2.25],
        "tags": ["new", "mobile"],
        "experiments": [{"id": "exp-1", "variant": 2, "share": 0.5, "active": True}],
    },
}

FULL_VALUES: dict[str, Any] = {
    "user_id": "user-42",
    "anonymous_id": "anon-7f3c9b",
    "timestamp": "2024-05-17T13:45:12.345Z",
    "miso_id": UUID,
    "context": FULL_CONTEXT,
    "product_ids": ["sku-123", "sku-456"],
    "product_group_ids": ["grp-trail-runner"],
    "duration": 12.5,
    "quantities": [1, 2],
    "revenue": 59.98,
    "rating": 4.5,
    "search": {
        "keywords": "trail running shoes",
        "filters": {"brand": ["Acme"], "size": ["9", "10"]},
    },
    "question_id": "q-satisfaction",
    "result_type": "answer",
    "value": "Yes",
    "category": ["Shoes", "Running"],
    "custom_action_name": "newsletter_signup",
}


def _minimal(type_name: str) -> dict[str, Any]:
    record: dict[str, Any] = {"type": type_name}
    for field in _type_defs()[type_name]["required"]:
        if field != "type":
            record[field] = FULL_VALUES[field]
    return record


def _full(type_name: str) -> dict[str, Any]:
    fields = _type_defs()[type_name]["properties"]
    return {"type": type_name, **{f: copy.deepcopy(FULL_VALUES[f]) for f in fields if f != "type"}}


def _with_context(**context: Any) -> dict[str, Any]:
    return {"type": "product_detail_page_view", "context": context}


def _with_custom_context(value: Any) -> dict[str, Any]:
    return _with_context(custom_context={"key": value})


def _case(case_id: str, record: object, expected: bool) -> Any:
    return pytest.param(record, expected, id=case_id)


# --------------------------------------------------------------------------- the table

_TYPES = list(_type_defs())

CASES = [
    *(_case(f"minimal-{t}", _minimal(t), True) for t in _TYPES),
    *(_case(f"full-{t}", _full(t), True) for t in _TYPES),
    # ---- fields a type does not allow
    _case("extra-product_ids-on-search", {"type": "search", "product_ids": ["a"]}, False),
    _case("extra-product_ids-on-home", {"type": "home_page_view", "product_ids": ["a"]}, False),
    _case(
        "extra-product_ids-on-category",
        {"type": "category_page_view", "product_ids": ["a"]},
        False,
    ),
    _case("extra-product_ids-on-feedback", {"type": "feedback", "product_ids": ["a"]}, False),
    _case("extra-revenue-on-add_to_cart", {"type": "add_to_cart", "revenue": 10}, False),
    _case("extra-rating-on-like", {"type": "like", "rating": 5}, False),
    _case("extra-duration-on-add_to_cart", {"type": "add_to_cart", "duration": 3}, False),
    _case("extra-duration-on-custom", {**_minimal("custom"), "duration": 3}, False),
    _case("extra-quantities-on-rate", {"type": "rate", "quantities": [1]}, False),
    _case("extra-category-on-search", {"type": "search", "category": ["Shoes"]}, False),
    _case("extra-category-on-home", {"type": "home_page_view", "category": ["Shoes"]}, False),
    _case("extra-search-on-pdp", {"type": "product_detail_page_view", "search": {}}, False),
    _case("extra-custom_action_name-on-click", {"type": "click", "custom_action_name": "x"}, False),
    _case("extra-currency", {"type": "checkout", "revenue": 10, "currency": "USD"}, False),
    _case("extra-currency-pdp", {"type": "product_detail_page_view", "currency": "USD"}, False),
    # ---- the type field
    _case("custom-without-custom_action_name", {"type": "custom"}, False),
    _case("custom_action_name-number", {"type": "custom", "custom_action_name": 5}, False),
    _case("custom_action_name-null", {"type": "custom", "custom_action_name": None}, False),
    _case("unknown-type-purchase", {"type": "purchase"}, False),
    _case("type-wrong-case", {"type": "Search"}, False),
    _case("type-number", {"type": 5}, False),
    _case("type-null", {"type": None}, False),
    _case("missing-type", {"user_id": "user-42", "product_ids": ["a"]}, False),
    _case("record-not-object-null", None, False),
    _case("record-not-object-list", [{"type": "search"}], False),
    _case("record-not-object-string", "search", False),
    # ---- strings and lengths
    _case("user_id-number", {"type": "click", "user_id": 42}, False),
    _case("user_id-null", {"type": "click", "user_id": None}, False),
    _case("user_id-bool", {"type": "click", "user_id": True}, False),
    _case("user_id-bytes", {"type": "click", "user_id": b"user-42"}, False),
    _case("user_id-empty", {"type": "click", "user_id": ""}, True),
    _case("user_id-512", {"type": "click", "user_id": "u" * 512}, True),
    _case("user_id-513", {"type": "click", "user_id": "u" * 513}, False),
    _case("user_id-512-non-ascii", {"type": "click", "user_id": "é" * 512}, True),
    _case("anonymous_id-1024", {"type": "click", "anonymous_id": "a" * 1024}, True),
    _case("anonymous_id-1025", {"type": "click", "anonymous_id": "a" * 1025}, False),
    _case("anonymous_id-null", {"type": "click", "anonymous_id": None}, False),
    _case("question_id-512", {"type": "feedback", "question_id": "q" * 512}, True),
    _case("question_id-513", {"type": "feedback", "question_id": "q" * 513}, False),
    _case("result_type-number", {"type": "feedback", "result_type": 1}, False),
    _case("value-null", {"type": "feedback", "value": None}, False),
    _case("value-number", {"type": "feedback", "value": 5}, False),
    # ---- string lists
    _case("product_ids-string", {"type": "click", "product_ids": "sku-123"}, False),
    _case("product_ids-int-item", {"type": "click", "product_ids": [123]}, False),
    _case("product_ids-null-item", {"type": "click", "product_ids": [None]}, False),
    _case("product_ids-null", {"type": "click", "product_ids": None}, False),
    _case("product_ids-tuple", {"type": "click", "product_ids": ("sku-123",)}, False),
    _case("product_ids-empty", {"type": "click", "product_ids": []}, True),
    _case("product_ids-item-512", {"type": "click", "product_ids": ["p" * 512]}, True),
    _case("product_ids-item-513", {"type": "click", "product_ids": ["ok", "p" * 513]}, False),
    _case("product_group_ids-item-513", {"type": "click", "product_group_ids": ["g" * 513]}, False),
    _case("product_group_ids-string", {"type": "click", "product_group_ids": "grp"}, False),
    _case("category-string", {"type": "category_page_view", "category": "Shoes"}, False),
    _case("category-number-item", {"type": "category_page_view", "category": [1]}, False),
    _case("category-long-item", {"type": "category_page_view", "category": ["c" * 2000]}, True),
    # ---- numbers
    _case("revenue-numeric-string", {"type": "checkout", "revenue": "12.5"}, False),
    _case("revenue-bool", {"type": "checkout", "revenue": True}, False),
    _case("revenue-null", {"type": "checkout", "revenue": None}, False),
    _case("revenue-zero", {"type": "checkout", "revenue": 0}, True),
    _case("revenue-negative-float", {"type": "checkout", "revenue": -5.25}, True),
    _case("rating-numeric-string", {"type": "rate", "rating": "5"}, False),
    _case("rating-int", {"type": "rate", "rating": 5}, True),
    _case("duration-string", {"type": "watch", "duration": "10"}, False),
    _case("duration-bool", {"type": "watch", "duration": False}, False),
    _case("duration-huge-int", {"type": "watch", "duration": 10**400}, True),
    _case("quantities-single-int", {"type": "add_to_cart", "quantities": 2}, True),
    _case("quantities-single-float", {"type": "checkout", "quantities": 1.5}, True),
    _case("quantities-empty-list", {"type": "add_to_cart", "quantities": []}, True),
    _case("quantities-mixed-numbers", {"type": "checkout", "quantities": [1, 2.5]}, True),
    _case("quantities-string", {"type": "add_to_cart", "quantities": "2"}, False),
    _case("quantities-string-items", {"type": "add_to_cart", "quantities": ["1"]}, False),
    _case("quantities-bool", {"type": "add_to_cart", "quantities": True}, False),
    _case("quantities-bool-item", {"type": "add_to_cart", "quantities": [1, True]}, False),
    _case("quantities-null", {"type": "add_to_cart", "quantities": None}, False),
    _case("quantities-nested-list", {"type": "add_to_cart", "quantities": [[1]]}, False),
    # ---- timestamp (RFC 3339 date-time)
    _case("timestamp-date-only", {"type": "click", "timestamp": "2024-01-01"}, False),
    _case("timestamp-no-offset", {"type": "click", "timestamp": "2024-01-01T00:00:00"}, False),
    _case("timestamp-word", {"type": "click", "timestamp": "yesterday"}, False),
    _case("timestamp-epoch-number", {"type": "click", "timestamp": 1700000000}, False),
    _case("timestamp-feb-30", {"type": "click", "timestamp": "2024-02-30T00:00:00Z"}, False),
    _case("timestamp-month-13", {"type": "click", "timestamp": "2024-13-01T00:00:00Z"}, False),
    _case("timestamp-2023-feb-29", {"type": "click", "timestamp": "2023-02-29T00:00:00Z"}, False),
    _case("timestamp-2024-feb-29", {"type": "click", "timestamp": "2024-02-29T00:00:00Z"}, True),
    _case("timestamp-year-0", {"type": "click", "timestamp": "0000-01-01T00:00:00Z"}, False),
    _case("timestamp-hour-24", {"type": "click", "timestamp": "2024-01-01T24:00:00Z"}, False),
    _case("timestamp-leap-second", {"type": "click", "timestamp": "2016-12-31T23:59:60Z"}, False),
    _case("timestamp-space", {"type": "click", "timestamp": "2024-01-01 00:00:00Z"}, False),
    _case(
        "timestamp-compact-offset",
        {"type": "click", "timestamp": "2024-01-01T00:00:00+0200"},
        False,
    ),
    _case(
        "timestamp-empty-fraction", {"type": "click", "timestamp": "2024-01-01T00:00:00.Z"}, False
    ),
    _case("timestamp-null", {"type": "click", "timestamp": None}, False),
    _case("timestamp-z", {"type": "click", "timestamp": "2024-01-01T00:00:00Z"}, True),
    _case("timestamp-offset", {"type": "click", "timestamp": "2024-01-01T00:00:00+02:00"}, True),
    _case(
        "timestamp-offset-fraction",
        {"type": "click", "timestamp": "2024-01-01T00:00:00.123456-05:30"},
        True,
    ),
    _case("timestamp-lowercase-t-z", {"type": "click", "timestamp": "2024-01-01t00:00:00z"}, True),
    # ---- miso_id (uuid)
    _case("miso_id-garbage", {"type": "click", "miso_id": "not-a-uuid"}, False),
    _case("miso_id-no-hyphens", {"type": "click", "miso_id": UUID.replace("-", "")}, False),
    _case("miso_id-braces", {"type": "click", "miso_id": "{" + UUID + "}"}, False),
    _case("miso_id-urn", {"type": "click", "miso_id": "urn:uuid:" + UUID}, False),
    _case("miso_id-number", {"type": "click", "miso_id": 123}, False),
    _case("miso_id-uppercase", {"type": "click", "miso_id": UUID.upper()}, True),
    _case(
        "miso_id-nil", {"type": "click", "miso_id": "00000000-0000-0000-0000-000000000000"}, True
    ),
    # ---- context
    _case("context-null", {"type": "click", "context": None}, False),
    _case("context-string", {"type": "click", "context": "web"}, False),
    _case("context-empty", {"type": "click", "context": {}}, True),
    _case("context-unknown-key", _with_context(app={"version": "1.2.3", "build": 7}), True),
    _case("context-locale-number", _with_context(locale=5), False),
    _case("context-user_agent-null", _with_context(user_agent=None), False),
    _case("truncated_ip-v4", _with_context(truncated_ip="0.0.0.0"), True),
    _case("truncated_ip-3-octets", _with_context(truncated_ip="1.2.3"), False),
    _case("truncated_ip-octet-256", _with_context(truncated_ip="256.1.1.1"), False),
    _case("truncated_ip-leading-zero", _with_context(truncated_ip="01.2.3.4"), False),
    _case("truncated_ip-trailing-space", _with_context(truncated_ip="1.2.3.4 "), False),
    _case("truncated_ip-v6-loopback", _with_context(truncated_ip="::1"), False),
    _case("truncated_ip-v6", _with_context(truncated_ip="2001:db8::1"), False),
    _case("truncated_ip-number", _with_context(truncated_ip=16909060), False),
    _case("page-without-url", _with_context(page={"title": "Home"}), False),
    _case("page-url-number", _with_context(page={"url": 5}), False),
    _case("page-title-number", _with_context(page={"url": "https://x.example", "title": 5}), False),
    _case("page-unknown-key", _with_context(page={"url": "https://x.example", "path": "/"}), True),
    _case("page-null", _with_context(page=None), False),
    _case("page-string", _with_context(page="https://x.example"), False),
    _case("campaign-name-number", _with_context(campaign={"name": 1}), False),
    _case("campaign-unknown-key", _with_context(campaign={"id": "cmp-9"}), True),
    _case("campaign-empty", _with_context(campaign={}), True),
    # ---- custom_context
    _case("custom_context-empty", _with_context(custom_context={}), True),
    _case("custom_context-list", _with_context(custom_context=[1]), False),
    _case("custom_context-null", _with_context(custom_context=None), False),
    _case("custom_context-bool", _with_custom_context(False), True),
    _case("custom_context-negative-int", _with_custom_context(-1), True),
    _case("custom_context-empty-array", _with_custom_context([]), True),
    _case("custom_context-null-value", _with_custom_context(None), False),
    _case("custom_context-object-value", _with_custom_context({"a": 1}), False),
    _case("custom_context-mixed-array", _with_custom_context([1, "a"]), False),
    _case("custom_context-bool-array", _with_custom_context([True, False]), False),
    _case("custom_context-nested-array", _with_custom_context([[1]]), False),
    _case(
        "custom_context-flat-objects",
        _with_custom_context([{"s": "x", "i": 1, "f": 1.5, "b": False}, {}]),
        True,
    ),
    _case("custom_context-object-nested", _with_custom_context([{"a": {"b": 1}}]), False),
    _case("custom_context-object-array", _with_custom_context([{"a": [1]}]), False),
    _case("custom_context-object-null", _with_custom_context([{"a": None}]), False),
    _case("custom_context-object-and-string", _with_custom_context([{"a": 1}, "b"]), False),
    # ---- search
    _case("search-empty", {"type": "search", "search": {}}, True),
    _case("search-keywords-empty", {"type": "search", "search": {"keywords": ""}}, True),
    _case("search-keywords-number", {"type": "search", "search": {"keywords": 5}}, False),
    _case("search-null", {"type": "search", "search": None}, False),
    _case("search-string", {"type": "search", "search": "shoes"}, False),
    _case("search-unknown-key", {"type": "search", "search": {"page": 2}}, True),
    _case("search-filters-null", {"type": "search", "search": {"filters": None}}, False),
    _case("search-filters-list", {"type": "search", "search": {"filters": ["Acme"]}}, False),
    _case(
        "search-filter-string",
        {"type": "search", "search": {"filters": {"brand": "Acme"}}},
        False,
    ),
    _case(
        "search-filter-number-item",
        {"type": "search", "search": {"filters": {"size": [9]}}},
        False,
    ),
    _case("search-filter-empty", {"type": "search", "search": {"filters": {"brand": []}}}, True),
]


# --------------------------------------------------------------------------- agreement


def test_table_ids_are_unique() -> None:
    """Every table case has a distinct id so failures point at one case."""
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 80


@pytest.mark.parametrize(("record", "expected"), CASES)
def test_marshmallow_agrees_with_json_schema(
    record: object, expected: bool, miso_validator: Draft202012Validator
) -> None:
    """The table, Miso's JSON Schema and records.is_valid give the same verdict."""
    assert _schema_valid(miso_validator, record) is expected, "table disagrees with JSON Schema"
    assert records.is_valid(record) is expected, records.record_errors(record)
    assert (records.record_errors(record) == {}) is expected


def test_full_records_use_every_allowed_field() -> None:
    """Each full table record sets every field its type's schema declares."""
    for type_name, definition in _type_defs().items():
        assert set(_full(type_name)) == set(definition["properties"])


def test_validation_leaves_record_untouched() -> None:
    """Validating does not mutate or convert the record (timestamps stay strings)."""
    record = _full("checkout")
    before = copy.deepcopy(record)
    assert records.is_valid(record)
    assert record == before
    assert isinstance(record["timestamp"], str)


# --------------------------------------------------------------------------- public tables


def test_format_checker_covers_used_formats() -> None:
    """jsonschema really checks date-time, uuid and ipv4, so agreement on them means something."""
    checkers = Draft202012Validator.FORMAT_CHECKER.checkers
    assert {"date-time", "uuid", "ipv4"} <= set(checkers)


def test_vendored_schema_is_valid_draft_2020_12(miso_schema: dict[str, Any]) -> None:
    """The vendored contract is itself a valid draft 2020-12 schema."""
    Draft202012Validator.check_schema(miso_schema)


def test_interaction_types_match_schema_any_of_order() -> None:
    """INTERACTION_TYPES lists the 29 type enums in the schema's anyOf order."""
    assert tuple(_type_defs()) == records.INTERACTION_TYPES
    assert len(records.INTERACTION_TYPES) == 29


@pytest.mark.parametrize("type_name", _TYPES)
def test_allowed_fields_match_schema_properties(type_name: str) -> None:
    """ALLOWED_FIELDS[t] is exactly the property set of t's schema."""
    assert records.ALLOWED_FIELDS[type_name] == frozenset(_type_defs()[type_name]["properties"])


@pytest.mark.parametrize("type_name", _TYPES)
def test_required_fields_match_schema(type_name: str) -> None:
    """An empty record of type t is missing exactly the fields t's schema requires."""
    required = set(_type_defs()[type_name]["required"]) - {"type"}
    assert set(records.record_errors({"type": type_name})) == required


def _kind_of(prop: dict[str, Any]) -> str:
    """Classify a top-level property schema the way FIELD_KINDS does."""
    if "allOf" in prop:
        return {"WebBasedContext": "context", "SearchInformation": "search"}[
            prop["allOf"][0]["$ref"].rsplit("/", 1)[1]
        ]
    if "anyOf" in prop:
        assert prop["anyOf"] == [
            {"type": "array", "items": {"type": "number"}},
            {"type": "number"},
        ]
        return "number_list"
    if prop.get("type") == "array":
        assert prop["items"]["type"] == "string"
        return "string_list"
    if prop.get("type") == "number":
        return "number"
    assert prop["type"] == "string"
    return {"date-time": "timestamp", "uuid": "uuid", None: "string"}[prop.get("format")]


def test_field_kinds_match_schema() -> None:
    """FIELD_KINDS covers every top-level field and classifies it as the schema types it."""
    expected: dict[str, str] = {}
    for definition in _type_defs().values():
        for name, prop in definition["properties"].items():
            kind = "type" if name == "type" else _kind_of(prop)
            assert expected.setdefault(name, kind) == kind, f"{name} differs between types"
    assert expected == records.FIELD_KINDS


def test_context_fields_match_schema(miso_schema: dict[str, Any]) -> None:
    """CONTEXT_FIELDS lists WebBasedContext's leaf fields (dotted) with their kinds."""
    defs = miso_schema["$defs"]
    expected: dict[str, str] = {}
    for name, prop in defs["WebBasedContext"]["properties"].items():
        if "allOf" in prop:
            nested = defs[prop["allOf"][0]["$ref"].rsplit("/", 1)[1]]["properties"]
            for sub, sub_prop in nested.items():
                assert sub_prop["type"] == "string"
                assert "format" not in sub_prop
                expected[f"{name}.{sub}"] = "string"
        elif name == "custom_context":
            expected[name] = "custom_context"
        else:
            expected[name] = {"ipv4": "ipv4", None: "string"}[prop.get("format")]
    assert expected == records.CONTEXT_FIELDS
    assert records.CONTEXT_FIELDS["truncated_ip"] == "ipv4"
    assert records.CONTEXT_FIELDS["page.title"] == "string"


def test_max_lengths_match_schema() -> None:
    """MAX_LENGTHS holds every maxLength in the type schemas (per item for the id lists)."""
    found: dict[str, set[int]] = {}
    for definition in _type_defs().values():
        for name, prop in definition["properties"].items():
            limit = prop.get("maxLength", prop.get("items", {}).get("maxLength"))
            if limit is not None:
                found.setdefault(name, set()).add(limit)
    assert all(len(limits) == 1 for limits in found.values())
    assert {name: next(iter(limits)) for name, limits in found.items()} == records.MAX_LENGTHS


# --------------------------------------------------------------------------- error reporting


class _ExplodingDict(dict):
    """A dict whose lookups fail, standing in for any object that breaks validation."""

    def get(self, *args: object) -> object:
        raise RuntimeError("boom")


def _self_referencing() -> dict[str, Any]:
    loop: list[Any] = []
    loop.append(loop)
    return _with_context(loop=loop)


def _deeply_nested() -> dict[str, Any]:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    return _with_context(deep=deep)


GARBAGE = [
    _case("none", None, False),
    _case("empty-list", [], False),
    _case("list-of-record", [{"type": "search"}], False),
    _case("string", "search", False),
    _case("bytes", b"search", False),
    _case("int", 5, False),
    _case("object", object(), False),
    _case("empty-dict", {}, False),
    _case("type-int", {"type": 5}, False),
    _case("type-none", {"type": None}, False),
    _case("type-unhashable-list", {"type": []}, False),
    _case("type-dict", {"type": {"nested": True}}, False),
    _case("search-list", {"type": "search", "search": []}, False),
    _case("context-list", {"type": "click", "context": [], "product_ids": {"a": 1}}, False),
    _case("non-string-keys", {1: 2, (3, 4): 5}, False),
    _case("exploding-dict", _ExplodingDict(type="click"), False),
]


@pytest.mark.parametrize(("garbage", "expected"), GARBAGE)
def test_record_errors_never_raises_on_garbage(garbage: object, expected: bool) -> None:
    """record_errors returns a non-empty errors dict for garbage instead of raising."""
    errors = records.record_errors(garbage)
    assert isinstance(errors, dict)
    assert errors
    assert records.is_valid(garbage) is expected


@pytest.mark.parametrize("build", [_self_referencing, _deeply_nested])
def test_record_errors_survives_pathological_nesting(build: Any) -> None:
    """Cyclic or very deep values in open context keys do not blow the stack."""
    assert isinstance(records.record_errors(build()), dict)


@pytest.mark.parametrize(
    ("record", "key"),
    [
        (None, "_schema"),
        ("click", "_schema"),
        ({}, "type"),
        ({"type": "purchase"}, "type"),
        ({"type": 5}, "type"),
        ({"type": "custom"}, "custom_action_name"),
        ({"type": "search", "currency": "USD"}, "currency"),
    ],
)
def test_record_errors_names_the_offending_key(record: object, key: str) -> None:
    """Errors are keyed by the offending field, or _schema when the record is not an object."""
    assert key in records.record_errors(record)


def test_batch_errors_reports_only_invalid_indexes() -> None:
    """batch_errors maps the index of each invalid record to its errors and skips valid ones."""
    batch = [
        _minimal("search"),
        {"type": "search", "product_ids": ["a"]},
        _full("checkout"),
        None,
        {"type": "rate", "rating": "5"},
    ]
    errors = records.batch_errors(batch)
    assert sorted(errors) == [1, 3, 4]
    assert errors[1] == records.record_errors(batch[1])
    assert "rating" in errors[4]
    assert records.batch_errors([]) == {}
    assert records.batch_errors([_minimal(t) for t in _TYPES]) == {}


def test_schema_instances_are_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation reuses the cached per-type Schema instances instead of building new ones."""
    full_batch = [_full(t) for t in _TYPES]
    assert records.batch_errors(full_batch) == {}  # warm-up: nested schemas bind lazily once
    built: list[type] = []
    original_init = Schema.__init__

    def counting_init(self: Schema, *args: Any, **kwargs: Any) -> None:
        built.append(type(self))
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(Schema, "__init__", counting_init)
    assert records.batch_errors(full_batch) == {}
    assert records.batch_errors([{"type": t, "bogus": 1} for t in _TYPES]).keys() == set(
        range(len(_TYPES))
    )
    assert built == []


# --------------------------------------------------------------------------- deliberately stricter

NAN = float("nan")
INF = float("inf")

STRICTER_CASES = [
    _case("revenue-nan", {"type": "checkout", "revenue": NAN}, False),
    _case("revenue-inf", {"type": "checkout", "revenue": INF}, False),
    _case("rating-minus-inf", {"type": "rate", "rating": -INF}, False),
    _case("duration-nan", {"type": "watch", "duration": NAN}, False),
    _case("quantities-single-inf", {"type": "add_to_cart", "quantities": INF}, False),
    _case("quantities-nan-item", {"type": "add_to_cart", "quantities": [1, NAN]}, False),
    _case("custom_context-nan", _with_custom_context(NAN), False),
    _case("custom_context-inf-array", _with_custom_context([1.0, INF]), False),
    _case("custom_context-object-nan", _with_custom_context([{"a": NAN}]), False),
    _case("context-unknown-key-nan", _with_context(extra={"score": NAN}), False),
    _case(
        "page-unknown-key-inf", _with_context(page={"url": "https://x.example", "z": INF}), False
    ),
    _case("search-unknown-key-nan", {"type": "search", "search": {"boost": NAN}}, False),
    _case("revenue-decimal", {"type": "checkout", "revenue": Decimal("12.50")}, False),
    _case("context-int-key", {"type": "click", "context": {1: "x"}}, False),
    _case("custom_context-int-key", _with_context(custom_context={1: "x"}), False),
    _case("custom_context-object-int-key", _with_custom_context([{1: "x"}]), False),
    _case(
        "filters-int-key",
        {"type": "search", "search": {"filters": {1: ["x"]}}},
        False,
    ),
    _case("context-unknown-key-set", _with_context(extra={1, 2}), False),
    _case("miso_id-underscore", {"type": "click", "miso_id": UUID[:-4] + "_301"}, False),
    _case("miso_id-stray-brace", {"type": "click", "miso_id": UUID + "}"}, False),
    _case(
        "timestamp-trailing-newline",
        {"type": "click", "timestamp": "2024-01-01T00:00:00Z\n"},
        False,
    ),
]


@pytest.mark.parametrize(("record", "expected"), STRICTER_CASES)
def test_stricter_than_json_schema(
    record: object, expected: bool, miso_validator: Draft202012Validator
) -> None:
    """Values jsonschema accepts but JSON or RFCs do not (NaN, Decimal, ...) are rejected."""
    assert _schema_valid(miso_validator, record), "jsonschema now rejects this: move to CASES"
    assert records.is_valid(record) is expected


def test_non_finite_error_message_explains_json() -> None:
    """NaN/Infinity errors say why they are refused."""
    errors = records.record_errors({"type": "checkout", "revenue": NAN})
    assert list(errors) == ["revenue"]
    assert "JSON" in errors["revenue"][0]
