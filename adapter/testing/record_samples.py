"""Sample Miso interaction records, valid and not, as tables of pytest cases: every type at
its minimal and its fullest, each field's edge values, garbage that is not a record at all,
and values that Miso's JSON Schema accepts but JSON or the RFCs do not.

Each case is ``pytest.param(record, expected, id=...)``: ``expected`` is whether Miso's schema
(and ``adapter.records``) accept the record. Needs pytest (the ``test`` extra).
"""

from __future__ import annotations

import copy
import functools
import json
from decimal import Decimal
from importlib.resources import files
from typing import Any

import pytest


@functools.cache
def _load_schema() -> dict[str, Any]:
    # Loaded through the package so the test checks exactly the file that ships in the wheel.
    text = files("adapter").joinpath("data/miso-interactions.schema.json").read_text("utf-8")
    return json.loads(text)


def _type_defs() -> dict[str, dict[str, Any]]:
    """Map each interaction type to its $defs entry, in the schema's anyOf order."""
    schema = _load_schema()
    refs = schema["$defs"]["InteractionBulkIn"]["properties"]["data"]["items"]["anyOf"]
    defs = [schema["$defs"][ref["$ref"].rsplit("/", 1)[1]] for ref in refs]
    return {d["properties"]["type"]["enum"][0]: d for d in defs}


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


# --------------------------------------------------------------------------- garbage


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
