"""Prove that the compiled fast validator in adapter.records agrees exactly with marshmallow.

Hypothesis builds records of all 29 types from the model's public tables (FIELD_KINDS,
CONTEXT_FIELDS, MAX_LENGTHS...): valid ones, and valid ones given one or two defects of every
kind that matters (wrong types, booleans as numbers, NaN/Infinity, lengths around each maxLength,
odd timestamps, UUIDs and IPs, unknown fields, missing required ones, non-string keys,
custom_context shapes, bad extras in open objects...).  One defect at a time, so each check is
reached with everything else valid.  For every record the fast check says valid exactly when
marshmallow reports no errors, and the public functions return marshmallow's own errors.  The
tables of adapter/testing/record_samples.py are replayed too.
"""

from __future__ import annotations

import calendar
import enum
import functools
from collections import OrderedDict
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, fields, missing, post_load, validate

from adapter import record_check, record_fields, records
from adapter.testing import record_samples as table

NAN = float("nan")
INF = float("inf")
TYPES = records.INTERACTION_TYPES
# Required fields per type, as marshmallow reports them for a bare record.
REQUIRED = {t: {"type", *records._record_errors({"type": t})} for t in TYPES}
ALL_FIELDS = sorted(records.FIELD_KINDS)
# CONTEXT_FIELDS is flat ("page.url"); regroup it into the nested objects' declared keys.
CONTEXT_OBJECTS: dict[str, list[str]] = {}
for _dotted in records.CONTEXT_FIELDS:
    if "." in _dotted:
        _parent, _child = _dotted.split(".")
        CONTEXT_OBJECTS.setdefault(_parent, []).append(_child)
NESTED_REQUIRED = {"page": {"url"}}  # the only required key below the top level


def examples(count: int) -> settings:
    """Hypothesis settings for ``count`` examples (records are big: no deadline or size checks)."""
    return settings(
        max_examples=count,
        deadline=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )


def agree(record: object) -> dict:
    """Assert fast check and public functions match marshmallow; return marshmallow's errors."""
    expected = records._record_errors(record)
    assert records._fast_valid(record) is (expected == {}), expected
    assert records.record_errors(record) == expected
    assert records.is_valid(record) is (expected == {})
    return expected


# --------------------------------------------------------------------------- scalars

JUNK = st.sampled_from(
    [
        *(None, True, False, 0, 1, -1.5, NAN, INF, -INF, 10**400, "", "x", b"x", Decimal("1.5")),
        *((), ("a",), frozenset({"a"}), {}, {"a": 1}, [], [None], [1], ["a"], [[]], object()),
    ]
)
ODD_KEYS = st.sampled_from([1, 0, None, True, 1.5, (1, 2), b"k", frozenset()])
FINITE = st.floats(allow_nan=False, allow_infinity=False)
NUMBERS = st.one_of(
    st.integers(), FINITE, st.sampled_from([0, -0.0, 10**400, -(10**400), 1e308, 5e-324])
)
ODD_NUMBERS = [True, False, NAN, INF, -INF, "1", "1.5", Decimal("2"), None, [1], 10**400, -0.0]
BAD_NUMBERS = st.sampled_from(ODD_NUMBERS)
# One character of each UTF-8 width, so lengths count code points, not bytes.
WIDE = st.sampled_from(["a", "é", "€", "😀"])


def texts(limit: int | None) -> st.SearchStrategy[str]:
    """Valid strings: short ones, and ones of exactly limit-1 and limit characters."""
    lengths = [500, 3000] if limit is None else [limit - 1, limit]
    return st.text(max_size=12) | st.builds(str.__mul__, WIDE, st.sampled_from(lengths))


def bad_texts(limit: int | None) -> st.SearchStrategy[Any]:
    """Not a valid string: one character too long, or not a string at all."""
    if limit is None:
        return JUNK
    return st.builds(str.__mul__, WIDE, st.sampled_from([limit + 1, 2 * limit])) | JUNK


# --------------------------------------------------------------------------- formats


@st.composite
def timestamp_parts(draw: st.DrawFn) -> list[str]:
    """A valid RFC 3339 date-time as its parts, biased to month ends and leap years."""
    year = draw(st.integers(1, 9999) | st.sampled_from([1, 4, 100, 1900, 2000, 2023, 2024, 9999]))
    month = draw(st.integers(1, 12))
    last = calendar.monthrange(year, month)[1]
    day = draw(st.integers(1, last) | st.sampled_from([1, 28, last]))
    hour, minute, second = draw(
        st.tuples(st.integers(0, 23), st.integers(0, 59), st.integers(0, 59))
    )
    fraction = draw(st.sampled_from(["", ".0", ".5", ".123", ".123456789", "." + "9" * 40]))
    offset = draw(
        st.sampled_from(["Z", "z", "+00:00", "-00:00", "+23:59", "-05:30"])
        | st.builds(
            "{}{:02d}:{:02d}".format, st.sampled_from("+-"), st.integers(0, 23), st.integers(0, 59)
        )
    )
    return [
        *(f"{year:04d}", "-", f"{month:02d}", "-", f"{day:02d}", draw(st.sampled_from("Tt"))),
        *(f"{hour:02d}", ":", f"{minute:02d}", ":", f"{second:02d}", fraction, offset),
    ]


# Unicode digits that \d would match without re.ASCII.
FULLWIDTH_2024 = "\uff12\uff10\uff12\uff14"
ARABIC_01 = "\u0660\u0661"
# Index in timestamp_parts -> spellings that are wrong there (or wrong with some dates).
TIMESTAMP_DEFECTS = {
    0: ["0000", "02024", "24", "", FULLWIDTH_2024, "2O24"],
    1: ["/", "", "--"],
    2: ["00", "13", "1", "001", ARABIC_01],
    4: ["00", "29", "30", "31", "32", "99", "1"],
    5: [" ", "", "TT", "_"],
    6: ["24", "1", "99", "001"],
    8: ["60", "6"],
    10: ["60", "61", "6"],
    11: [".", ".x", ",5", ". 5"],
    12: ["", "+0200", "+02", "+24:00", "+02:60", "UTC", "Z\n", "ZZ", "-1:00"],
}
TIMESTAMPS = timestamp_parts().map("".join)
# (year, month, day) around the ends of months, in leap, common and century years: listed, since
# hypothesis rarely wanders onto one particular date by itself.
MONTH_ENDS = [
    *(("2023", "02", "29"), ("1900", "02", "29"), ("2100", "02", "29"), ("2024", "02", "29")),
    *(("2000", "02", "29"), ("2024", "02", "30"), ("2023", "02", "28"), ("2023", "04", "31")),
    *(("2023", "06", "30"), ("2023", "09", "31"), ("2023", "11", "31"), ("2023", "12", "31")),
    *(("2023", "01", "32"), ("2023", "01", "00"), ("0000", "01", "01"), ("0001", "01", "01")),
]


@st.composite
def bad_timestamps(draw: st.DrawFn) -> Any:
    """A valid date-time with one part misspelt, or surrounded by whitespace, or not a string."""
    parts = draw(timestamp_parts())
    how = draw(st.sampled_from(["part", "part", "part", "day", "day", "wrap", "junk"]))
    if how == "part":
        index = draw(st.sampled_from(sorted(TIMESTAMP_DEFECTS)))
        parts[index] = draw(st.sampled_from(TIMESTAMP_DEFECTS[index]))
    elif how == "day":
        parts[0], parts[2], parts[4] = draw(st.sampled_from(MONTH_ENDS))
    elif how == "wrap":
        before, after = draw(st.sampled_from([("", "\n"), ("", " "), (" ", ""), ("\n", "")]))
        return before + "".join(parts) + after
    else:
        return draw(JUNK | st.text(max_size=25))
    return "".join(parts)


UUIDS = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper())


@st.composite
def bad_uuids(draw: st.DrawFn) -> Any:
    """A UUID with one character swapped, added or removed, or another spelling of it."""
    text = draw(UUIDS)
    position = draw(st.integers(0, len(text) - 1))
    char = draw(st.sampled_from(["g", "G", "_", "-", "}", "{", "\u0663", "0", "A", "\n", " "]))
    return draw(
        st.sampled_from(
            [
                text[:position] + char + text[position + 1 :],
                text[:position] + char + text[position:],
                text[:position] + text[position + 1 :],
                text.replace("-", ""),
                "{" + text + "}",
                "urn:uuid:" + text,
                text + "\n",
            ]
        )
        | JUNK
    )


OCTETS = st.sampled_from(["0", "1", "9", "10", "99", "100", "199", "200", "249", "250", "255"])
ODD_OCTETS = [
    *("", "00", "01", "010", "256", "260", "300", "999", "1000", "0255", "+1", "-1", " 1"),
    *("1 ", "\u0663", "\u00b2", "0x1", "1e2", "a"),  # isdigit() but not ASCII, hex, exponent
]
BAD_OCTETS = st.sampled_from(ODD_OCTETS)
IPV4 = st.builds(".".join, st.lists(OCTETS | st.integers(0, 255).map(str), min_size=4, max_size=4))


@st.composite
def bad_ipv4(draw: st.DrawFn) -> Any:
    """A dotted quad with one bad octet, too few or many octets, a suffix, or not IPv4."""
    octets = draw(st.lists(OCTETS, min_size=4, max_size=4))
    how = draw(st.sampled_from(["octet", "octet", "count", "suffix", "other"]))
    if how == "octet":
        octets[draw(st.integers(0, 3))] = draw(BAD_OCTETS)
    elif how == "count":
        octets = draw(st.lists(OCTETS, min_size=0, max_size=6).filter(lambda o: len(o) != 4))
    elif how == "suffix":
        return ".".join(octets) + draw(st.sampled_from(["/24", "\n", " ", ".", "%1"]))
    else:
        return draw(st.sampled_from(["::1", "::ffff:1.2.3.4", "localhost", "1..2.3"]) | JUNK)
    return ".".join(octets)


# --------------------------------------------------------------------------- JSON, custom_context

JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), FINITE, st.text(max_size=6))
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
BAD_LEAVES = st.sampled_from([NAN, INF, -INF, Decimal("1"), (1,), {1}, b"x", object(), 1j])
# JSON-like values that may hide a value or a key JSON cannot represent.
NEAR_JSON = st.recursive(
    JSON_SCALARS | BAD_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4) | ODD_KEYS, inner, max_size=3)
    ),
    max_leaves=8,
)

CC_SCALARS = st.one_of(st.text(max_size=6), st.booleans(), st.integers(), FINITE)
CC_OBJECTS = st.dictionaries(st.text(max_size=4), CC_SCALARS, max_size=3)
CC_VALUES = st.one_of(
    CC_SCALARS,
    st.lists(st.text(max_size=4), max_size=3),
    st.lists(st.integers() | FINITE, max_size=3),
    st.lists(CC_OBJECTS, max_size=3),
)
BAD_CC_SCALARS = st.sampled_from([NAN, INF, -INF]) | st.sampled_from(
    [None, Decimal("1"), b"x", {1}]
)


@st.composite
def bad_cc_values(draw: st.DrawFn) -> Any:
    """A custom_context value with one defect: a bad scalar, or one odd item in an array."""
    how = draw(
        st.sampled_from(["scalar", "strings", "numbers", "objects", "object", "object", "other"])
    )
    if how == "scalar":
        return draw(BAD_CC_SCALARS)
    if how == "object":
        # An array of flat objects, one of which has a non-string key or a bad value.
        items = draw(st.lists(CC_OBJECTS, min_size=1, max_size=3))
        odd = items[draw(st.integers(0, len(items) - 1))]
        if draw(st.booleans()):
            odd[draw(ODD_KEYS)] = draw(CC_SCALARS)
        else:
            odd[draw(st.text(max_size=4))] = draw(BAD_CC_SCALARS | CC_VALUES)
        return items
    if how == "other":
        return draw(st.sampled_from([{}, {"a": 1}, [[1]], [[]], [None], (1,), ["a", 1], [1, "a"]]))
    # An array of one shape with a single item of another shape (or a bad one) put in.
    items = draw(
        {
            "strings": st.lists(st.text(max_size=4), max_size=3),
            "numbers": st.lists(st.integers() | FINITE, max_size=3),
            "objects": st.lists(CC_OBJECTS, max_size=3),
        }[how]
    )
    odd = draw(CC_SCALARS | BAD_CC_SCALARS | CC_OBJECTS | st.lists(st.integers(), max_size=1))
    items.insert(draw(st.integers(0, len(items))), odd)
    return items


@st.composite
def bad_custom_contexts(draw: st.DrawFn) -> Any:
    """A valid custom_context with one bad value or one non-string key, or not an object."""
    value = draw(st.dictionaries(st.text(max_size=6), CC_VALUES, max_size=3))
    how = draw(st.sampled_from(["value", "value", "value", "key", "junk"]))
    if how == "value":
        value[draw(st.text(max_size=6))] = draw(bad_cc_values())
    elif how == "key":
        value[draw(ODD_KEYS)] = draw(CC_VALUES)
    else:
        return draw(JUNK)
    return value


# --------------------------------------------------------------------------- objects and fields


def open_object(declared: dict[str, str], required: set[str]) -> st.SearchStrategy[dict]:
    """Valid open objects: declared keys (name -> kind) and JSON extras."""
    values = {name: field_values(kind, name) for name, kind in declared.items()}
    return st.builds(
        lambda fixed, extras: {**extras, **fixed},
        st.fixed_dictionaries(
            {k: v for k, v in values.items() if k in required},
            optional={k: v for k, v in values.items() if k not in required},
        ),
        st.dictionaries(st.text(max_size=6).filter(lambda k: k not in declared), JSON, max_size=2),
    )


def bad_open_objects(declared: dict[str, str], required: set[str]) -> st.SearchStrategy[Any]:
    """A valid open object with one defect: a bad declared value, a required key missing,
    an extra that is not JSON, a non-string key; or not an object at all."""

    valid = open_object(declared, required)

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        value = draw(valid)
        how = draw(st.sampled_from(["field", "field", "field", "drop", "extra", "key", "junk"]))
        if how == "field":
            name = draw(st.sampled_from(sorted(declared)))
            value[name] = draw(bad_values(declared[name], name))
        elif how == "drop" and required:
            del value[draw(st.sampled_from(sorted(required)))]
        elif how == "extra":
            value[draw(st.text(max_size=6).filter(lambda k: k not in declared))] = draw(NEAR_JSON)
        elif how == "key":
            value[draw(ODD_KEYS)] = draw(JSON)
        elif how == "junk":
            return draw(JUNK)
        return value

    return build()


def context_declared(prefix: str = "") -> dict[str, str]:
    """Declared keys of the context object at prefix, with their kinds (from CONTEXT_FIELDS)."""
    declared = {}
    for dotted, kind in records.CONTEXT_FIELDS.items():
        if dotted.startswith(prefix):
            head, _, rest = dotted[len(prefix) :].partition(".")
            declared[head] = f"object:{prefix}{head}." if rest else kind
    return declared


def field_kind(kind: str) -> tuple[dict[str, str], set[str]]:
    """Declared keys and required keys of an object kind."""
    if kind == "context":
        return context_declared(), set()
    if kind == "search":
        return {"keywords": "string", "filters": "filters"}, set()
    prefix = kind.removeprefix("object:")
    return context_declared(prefix), NESTED_REQUIRED.get(prefix.rstrip("."), set())


# Cached: building strategies, not drawing from them, would otherwise dominate the run time.
@functools.cache
def field_values(kind: str, name: str) -> st.SearchStrategy[Any]:
    """Valid values for a field of the given kind (FIELD_KINDS / CONTEXT_FIELDS vocabulary)."""
    limit = records.MAX_LENGTHS.get(name)
    if kind == "string":
        return texts(limit)
    if kind == "string_list":
        return st.lists(texts(limit), max_size=3)
    if kind == "number":
        return NUMBERS
    if kind == "number_list":
        return NUMBERS | st.lists(NUMBERS, max_size=3)
    if kind == "timestamp":
        return TIMESTAMPS
    if kind == "uuid":
        return UUIDS
    if kind == "ipv4":
        return IPV4
    if kind == "custom_context":
        return st.dictionaries(st.text(max_size=6), CC_VALUES, max_size=4)
    if kind == "filters":
        return st.dictionaries(
            st.text(max_size=4), st.lists(st.text(max_size=4), max_size=3), max_size=3
        )
    return open_object(*field_kind(kind))


@functools.cache
def bad_values(kind: str, name: str) -> st.SearchStrategy[Any]:
    """Values for a field of the given kind with one defect (some turn out valid anyway)."""
    limit = records.MAX_LENGTHS.get(name)
    valid = field_values(kind, name)
    if kind == "string":
        return bad_texts(limit)
    if kind in ("string_list", "number_list", "filters"):
        item = {
            "string_list": bad_texts(limit),
            "number_list": BAD_NUMBERS,
            "filters": st.lists(st.text(max_size=3) | JUNK, max_size=2) | JUNK,
        }[kind]
        return one_bad_item(valid, item) | JUNK | st.builds(tuple, st.lists(NUMBERS, max_size=2))
    if kind == "number":
        return BAD_NUMBERS | JUNK
    if kind == "timestamp":
        return bad_timestamps()
    if kind == "uuid":
        return bad_uuids()
    if kind == "ipv4":
        return bad_ipv4()
    if kind == "custom_context":
        return bad_custom_contexts()
    return bad_open_objects(*field_kind(kind))


@st.composite
def one_bad_item(draw: st.DrawFn, valid: st.SearchStrategy[Any], item: st.SearchStrategy) -> Any:
    """A valid list (or dict) with one item drawn from ``item`` put in."""
    value = draw(valid)
    if isinstance(value, list):
        value.insert(draw(st.integers(0, len(value))), draw(item))
    elif isinstance(value, dict):
        value[draw(st.text(max_size=4) | ODD_KEYS)] = draw(item)
    return value


# --------------------------------------------------------------------------- records


@functools.cache
def valid_records(type_name: str) -> st.SearchStrategy[dict[str, Any]]:
    """Valid records of type_name: its required fields and any of its optional ones."""
    values = {
        name: field_values(records.FIELD_KINDS[name], name)
        for name in sorted(records.ALLOWED_FIELDS[type_name] - {"type"})
    }
    return st.fixed_dictionaries(
        {"type": st.just(type_name)}
        | {name: value for name, value in values.items() if name in REQUIRED[type_name]},
        optional={name: value for name, value in values.items() if name not in REQUIRED[type_name]},
    )


@st.composite
def mutated_records(draw: st.DrawFn, type_name: str) -> object:
    """A valid record of type_name with one defect, sometimes two (which may cancel out)."""
    record = draw(valid_records(type_name))
    own = sorted(records.ALLOWED_FIELDS[type_name] - {"type"})
    for _ in range(draw(st.sampled_from([1, 1, 1, 2]))):
        how = draw(st.sampled_from(["own"] * 6 + ["foreign", "drop", "type", "unknown", "key"]))
        if how == "own" and own:
            name = draw(st.sampled_from(own))
            kind = records.FIELD_KINDS[name]
            record[name] = draw(bad_values(kind, name) | field_values(kind, name))
        elif how == "foreign":
            name = draw(st.sampled_from(ALL_FIELDS))
            record[name] = draw(field_values(records.FIELD_KINDS[name], name))
        elif how == "drop" and record:
            del record[draw(st.sampled_from(sorted(record, key=repr)))]
        elif how == "type":
            record["type"] = draw(
                st.sampled_from([*TYPES, "Search", "search ", "SEARCH", "purchase", ""]) | JUNK
            )
        elif how == "unknown":
            record[draw(st.sampled_from(["currency", "Type", "", "context.page"]))] = draw(JSON)
        elif how == "key":
            record[draw(ODD_KEYS)] = draw(JSON)
    return draw(st.sampled_from([record] * 6 + [[record], (record,), None]))


@pytest.mark.parametrize("type_name", TYPES)
@examples(25)
@given(data=st.data())
def test_valid_records_pass_both_paths(type_name: str, data: st.DataObject) -> None:
    """Generated valid records of every type are valid for marshmallow and the fast check."""
    assert agree(data.draw(valid_records(type_name))) == {}


@pytest.mark.parametrize("type_name", TYPES)
@examples(60)
@given(data=st.data())
def test_mutated_records_agree(type_name: str, data: st.DataObject) -> None:
    """For mutated records of every type, fast says valid exactly when marshmallow does."""
    errors = agree(data.draw(mutated_records(type_name)))
    event("invalid" if errors else "valid")  # see --hypothesis-show-statistics


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("timestamp", bad_timestamps()),
        ("miso_id", bad_uuids()),
        ("user_id", bad_texts(records.MAX_LENGTHS["user_id"])),
        ("duration", BAD_NUMBERS | NUMBERS),
        ("quantities", bad_values("number_list", "quantities")),
        ("context", bad_ipv4().map(lambda ip: {"truncated_ip": ip})),
        ("context", bad_custom_contexts().map(lambda cc: {"custom_context": cc})),
        ("context", bad_values("context", "context")),
        ("search", bad_values("search", "search")),
    ],
)
@examples(200)
@given(data=st.data())
def test_single_fields_agree(name: str, values: st.SearchStrategy, data: st.DataObject) -> None:
    """Each field kind with one defect, the rest of the record minimal, agrees on its own."""
    type_name = {"quantities": "checkout", "search": "search"}.get(name, "watch")
    agree({"type": type_name, name: data.draw(values)})


# --------------------------------------------------------------------------- fixed cases


def _edge_cases() -> list[Any]:
    """Every listed odd spelling, in an otherwise valid record: no luck needed to reach them."""
    base = "2024-05-17T13:45:12.345Z"
    parts = [
        base[:4],
        "-",
        base[5:7],
        "-",
        base[8:10],
        "T",
        "13",
        ":",
        "45",
        ":",
        "12",
        ".345",
        "Z",
    ]
    cases = []
    for index, spellings in TIMESTAMP_DEFECTS.items():
        for spelling in spellings:
            stamp = "".join([*parts[:index], spelling, *parts[index + 1 :]])
            cases.append(("timestamp", stamp))
    for year, month, day in MONTH_ENDS:
        cases.append(("timestamp", "".join([year, "-", month, "-", day, *parts[5:]])))
    for octet in ODD_OCTETS:
        cases += [("truncated_ip", f"{octet}.2.3.4"), ("truncated_ip", f"1.2.3.{octet}")]
    for number in ODD_NUMBERS:
        cases += [("duration", number), ("quantities", number), ("quantities", [1, number])]
        cases.append(("custom_context", {"k": number}))
        cases += [
            ("custom_context", {"k": [1.5, number]}),
            ("custom_context", {"k": [{"a": number}]}),
        ]
    for limit_name, limit in records.MAX_LENGTHS.items():
        for length in (limit - 1, limit, limit + 1):
            cases.append((limit_name, "é" * length))
    return [pytest.param(name, value, id=f"{name}-{value!r}"[:60]) for name, value in cases]


def _record_with(name: str, value: Any) -> dict[str, Any]:
    """The smallest record of a type that has field ``name`` (context fields under context)."""
    if name in ("truncated_ip", "custom_context"):
        return {"type": "click", "context": {name: value}}
    if name in ("product_ids", "product_group_ids"):
        value = [value]
    type_name = next(t for t in TYPES if name in records.ALLOWED_FIELDS[t] and t != "custom")
    return {"type": type_name, name: value}


@pytest.mark.parametrize(("name", "value"), _edge_cases())
def test_edge_values_agree(name: str, value: Any) -> None:
    """Listed edge values (dates, octets, numbers, lengths at each limit) agree both ways."""
    agree(_record_with(name, value))


TABLE = [
    *table.CASES,
    *table.STRICTER_CASES,
    *table.GARBAGE,
]


@pytest.mark.parametrize(("record", "expected"), TABLE)
def test_table_records_agree(record: object, expected: bool) -> None:
    """Every record of the sample tables (adapter/testing/record_samples.py) gets the same
    verdict from both paths."""
    reference = records._checked_errors(record)
    assert (reference == {}) is expected
    assert records._fast_valid(record) is expected
    assert records.record_errors(record) == reference
    assert records.is_valid(record) is expected


@pytest.mark.parametrize("build", [table._self_referencing, table._deeply_nested])
def test_pathological_nesting_agrees(build: Any) -> None:
    """Cyclic and very deep values in open context keys get marshmallow's verdict, fast."""
    record = build()
    assert records._fast_valid(record) is (records._checked_errors(record) == {})
    assert records.record_errors(record) == records._checked_errors(record)


class _Str(str):
    pass


class _Float(float):
    pass


class _List(list):
    pass


class _Dict(dict):
    pass


class _Level(enum.IntEnum):
    HIGH = 3


# Values marshmallow accepts although they are not exactly builtin types: the fast check does not
# claim them, and the public functions must still accept them through marshmallow.
EXOTIC_VALID = [
    pytest.param(OrderedDict(type="click"), id="ordered-dict-record"),
    pytest.param({"type": _Str("click")}, id="str-subclass-type"),
    pytest.param({"type": "click", "user_id": _Str("u1")}, id="str-subclass-value"),
    pytest.param({"type": "rate", "rating": _Level.HIGH}, id="int-enum-number"),
    pytest.param({"type": "checkout", "revenue": _Float(1.5)}, id="float-subclass"),
    pytest.param({"type": "click", "product_ids": _List(["a"])}, id="list-subclass"),
    pytest.param({"type": "click", "context": _Dict(locale="en")}, id="dict-subclass-context"),
    pytest.param({"type": "click", "user_id": missing}, id="marshmallow-missing-value"),
    pytest.param({"type": "click", "product_ids": [missing]}, id="marshmallow-missing-item"),
    pytest.param({"type": "click", "context": {_Str("x"): 1}}, id="str-subclass-extra-key"),
    pytest.param(
        {"type": "click", "context": {"custom_context": {"k": [_Str("a"), "b"]}}},
        id="str-subclass-custom-item",
    ),
]


@pytest.mark.parametrize("record", EXOTIC_VALID)
def test_exotic_valid_records_fall_back_to_marshmallow(record: object) -> None:
    """Subclasses and marshmallow's missing are left to marshmallow, which accepts them."""
    assert records._checked_errors(record) == {}
    assert not records._fast_valid(record)
    assert records.record_errors(record) == {}
    assert records.is_valid(record)
    assert records.batch_errors([record]) == {}


class _HostileClass:
    """An object whose __class__ raises: isinstance() on it raises too."""

    @property
    def __class__(self) -> type:  # type: ignore[override]
        raise RuntimeError("hostile")


def test_fast_check_never_raises() -> None:
    """A value that makes the shared JSON check raise is reported, not propagated."""
    record = {"type": "click", "context": {"extra": _HostileClass()}}
    assert records._fast_valid(record) is False
    assert records.record_errors(record) == records._checked_errors(record) != {}


def test_valid_records_never_reach_marshmallow(monkeypatch: pytest.MonkeyPatch) -> None:
    """record_errors, is_valid and batch_errors accept valid records without marshmallow."""
    full = [table._full(t) for t in TYPES] + [table._minimal(t) for t in TYPES]

    def refuse(*args: object, **kwargs: object) -> dict:
        raise AssertionError("marshmallow was asked about a valid record")

    monkeypatch.setattr(records, "_record_errors", refuse)
    monkeypatch.setattr(Schema, "validate", refuse)
    assert all(records.record_errors(record) == {} for record in full)
    assert all(records.is_valid(record) for record in full)
    assert records.batch_errors(full) == {}


def test_batch_errors_matches_marshmallow_per_record() -> None:
    """batch_errors reports marshmallow's errors at the index of each invalid record."""
    batch = [
        table._full("search"),
        {"type": "search", "product_ids": ["a"]},
        None,
        table._minimal("custom"),
    ]
    assert records.batch_errors(batch) == {
        1: records._record_errors(batch[1]),
        2: records._record_errors(None),
    }


class _PostLoad(Schema):
    name = fields.String()

    @post_load
    def _touch(self, data: dict, **kwargs: object) -> dict:
        return data


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(
            lambda: record_check._compile_field(fields.Integer()), id="unknown-field-class"
        ),
        pytest.param(
            lambda: record_check._compile_field(
                record_fields.String(validate=validate.Regexp("x"))
            ),
            id="unknown-validator",
        ),
        pytest.param(
            lambda: record_check._compile_field(record_fields.String(allow_none=True)),
            id="allow-none",
        ),
        pytest.param(lambda: record_check._compile_schema(_PostLoad()), id="unknown-hook"),
    ],
)
def test_compiler_refuses_what_it_does_not_know(build: Any) -> None:
    """A model feature the fast path cannot mirror fails compilation instead of drifting."""
    with pytest.raises(TypeError, match="no fast check"):
        build()
