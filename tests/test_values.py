"""Value conversions: source values in, Miso field values (or missing) out."""

from __future__ import annotations

import math

import pytest

from adapter import values


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2012-12-02T00:30:08.276Z", "2012-12-02T00:30:08.276Z"),
        ("2012-12-02T00:30:08Z", "2012-12-02T00:30:08.000Z"),
        ("2012-12-02T00:30:08.276543Z", "2012-12-02T00:30:08.277Z"),
        ("2012-12-02T02:30:08.5+02:00", "2012-12-02T00:30:08.500Z"),
        ("2012-12-01T19:30:08-05:00", "2012-12-02T00:30:08.000Z"),
        ("2012-12-02T00:30:08", "2012-12-02T00:30:08.000Z"),  # no offset: UTC
        ("2012-12-02 00:30:08Z", "2012-12-02T00:30:08.000Z"),
        ("2012-12-02T23:59:59.9999Z", "2012-12-03T00:00:00.000Z"),
        (1354408208, "2012-12-02T00:30:08.000Z"),  # epoch seconds
        (1354408208.276, "2012-12-02T00:30:08.276Z"),
        (1354408208276, "2012-12-02T00:30:08.276Z"),  # epoch milliseconds
        ("1354408208", "2012-12-02T00:30:08.000Z"),
        ("yesterday", None),
        ("", None),
        (None, None),
        (True, None),
        (-5, None),
        (float("nan"), None),
        ("2024-02-30T00:00:00Z", None),
        ({"t": 1}, None),
    ],
)
def test_to_timestamp(raw, expected):
    """Timestamps become UTC with exactly three fractional digits, or missing."""
    assert values.to_timestamp(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("203.0.113.77", "203.0.113.0"),
        (" 10.1.2.3 ", "10.1.2.0"),
        ("::ffff:198.51.100.9", "198.51.100.0"),
        ("2001:db8::1", None),
        ("::1", None),
        ("256.1.1.1", None),
        ("1.2.3", None),
        ("1.2.3.4.5", None),
        (1234, None),
        (None, None),
    ],
)
def test_truncate_ipv4(raw, expected):
    """Only IPv4 is forwarded, always with the last octet zeroed."""
    assert values.truncate_ipv4(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("u1", "u1"),
        (" u1 ", "u1"),
        (42, "42"),
        (42.0, "42"),
        (4.5, "4.5"),
        ("NULL", None),
        ("Anonymous", None),
        ("00000000-0000-0000-0000-000000000000", None),
        (False, None),
        ([], None),
        ("x" * 1025, None),
    ],
)
def test_to_id(raw, expected):
    """Ids are strings; placeholders and oversize values are missing."""
    assert values.to_id(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (3, 3),
        (2.5, 2.5),
        ("7", 7.0),
        ("1e3", 1000.0),
        ("abc", None),
        (True, None),
        (float("inf"), None),
        ("nan", None),
        (None, None),
    ],
)
def test_to_number(raw, expected):
    """Numbers stay numbers, numeric text is parsed, the rest is missing."""
    assert values.to_number(raw) == expected


def test_to_number_keeps_records_serialisable():
    """Integers past 64 bits (which orjson cannot write) become floats, or missing."""
    assert values.to_number(10**30) == 1e30
    assert values.to_number(10**400) is None
    assert values.to_number(2**63) == 2**63


def test_to_number_never_returns_nan():
    """Non-finite numbers cannot be serialised as JSON, so they are missing."""
    for raw in (math.nan, -math.inf, "Infinity", "-inf"):
        assert values.to_number(raw) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            [
                {"type": "color", "value": "red"},
                {"type": "color", "value": "blue"},
                {"type": "size", "value": 9},
            ],
            {"color": ["red", "blue"], "size": ["9"]},
        ),
        ({"brand": "Acme", "tags": ["a", "b"]}, {"brand": ["Acme"], "tags": ["a", "b"]}),
        ([{"type": "", "value": "x"}, "junk", {"value": "y"}], None),
        ("color=red", None),
    ],
)
def test_to_filters(raw, expected):
    """Segment's [{type, value}] filters and plain objects become {field: [values]}."""
    assert values.to_filters(raw) == expected


def test_to_text_serialises_structured_queries():
    """An object query is sent as compact JSON text; a string as itself."""
    assert values.to_text({"q": "shoes", "size": 9}) == '{"q":"shoes","size":9}'
    assert values.to_text(" shoes ") == "shoes"
    assert values.to_text({}) is None
    assert values.to_text({"n": 2**70}) == '{"n":1180591620717411303424}'


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://shop.example.com/products/1?x=1#top", "/products/1"),
        ("https://shop.example.com", "/"),
        ("/cart?step=2", "/cart"),
        ("", None),
    ],
)
def test_to_url_path(raw, expected):
    """Page paths come from a path or a full URL, without query or fragment."""
    assert values.to_url_path(raw) == expected


def test_to_uuid():
    """miso_id must be a UUID; anything else is dropped rather than failing the batch."""
    good = "123e4567-e89b-12d3-a456-426614174000"
    assert values.to_uuid(good) == good
    assert values.to_uuid("123e4567e89b12d3a456426614174000") is None
    assert values.to_uuid(123) is None


def test_to_custom_value():
    """custom_context takes scalars and flat lists of strings or of numbers only."""
    assert values.to_custom_value(True) is True
    assert values.to_custom_value(["a", "b"]) == ["a", "b"]
    assert values.to_custom_value([1, 2.5]) == [1, 2.5]
    assert values.to_custom_value(["a", 1]) is None
    assert values.to_custom_value({"a": 1}) is None
