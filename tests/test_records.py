"""Prove that adapter.records (marshmallow) agrees with Miso's vendored JSON Schema.

Every table case is checked three ways: the expected flag in the table, jsonschema's verdict on
the bulk body ``{"data": [record]}`` and ``records.is_valid``.  The few places where the model is
deliberately stricter than jsonschema are pinned separately at the end.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from marshmallow import Schema

from adapter import records
from adapter.testing.record_samples import (
    _TYPES,
    CASES,
    GARBAGE,
    NAN,
    STRICTER_CASES,
    _deeply_nested,
    _full,
    _load_schema,
    _minimal,
    _self_referencing,
    _type_defs,
)

# --------------------------------------------------------------------------- fixtures / helpers


@functools.cache
def _load_validator() -> Draft202012Validator:
    return Draft202012Validator(_load_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


@pytest.fixture(scope="module")
def miso_schema() -> dict[str, Any]:
    return _load_schema()


@pytest.fixture(scope="module")
def miso_validator() -> Draft202012Validator:
    return _load_validator()


def _schema_valid(validator: Draft202012Validator, record: object) -> bool:
    return validator.is_valid({"data": [record]})


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
