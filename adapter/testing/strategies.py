"""Hypothesis strategies of hostile source input: any JSON, and Segment-shaped messages with
valid and hostile values at their leaves (for property tests and route fuzzing).

Needs hypothesis (the ``test`` extra).
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    # Values known to be hostile somewhere, drawn often enough to reach every field.
    st.sampled_from(
        [
            "",
            "0",
            "null",
            "203.0.113.9",
            "::1",
            "::ffff:10.0.0.7",
            "2024-05-01T10:00:00Z",
            "5",
            "/",
            "1e999",
            float("nan"),
            float("inf"),
            -float("inf"),
            2**64,
            10**30,
            True,
            0,
            -1,
            1.5,
            "00000000-0000-0000-0000-000000000000",
        ]
    ),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=25,
)
NAMES = st.sampled_from(
    [
        "Product Viewed",
        "Order Completed",
        "Products Searched",
        "Product Reviewed",
        "Video Content Completed",
        "Product List Filtered",
        "Mystery",
        "",
    ]
)
CALLS = st.sampled_from(["track", "page", "screen", "identify", "alias", "group", "delete", "x"])

NUMBERS = st.sampled_from(
    [
        5,
        "5",
        4.5,
        0,
        -1,
        "abc",
        float("nan"),
        float("inf"),
        -float("inf"),
        2**64,
        10**30,
        True,
        None,
        "",
        "1e999",
    ]
)
IDS = st.sampled_from(
    [
        "u1",
        "a-1",
        42,
        4.0,
        "",
        "  ",
        "null",
        "anonymous",
        "0",
        "-1",
        None,
        True,
        [],
        "00000000-0000-0000-0000-000000000000",
        "x" * 600,
        "y" * 1100,
    ]
)
IPS = st.sampled_from(
    ["203.0.113.9", "::1", "2001:db8::1", "::ffff:10.0.0.7", "256.1.1.1", "1.2.3", "", 17, None]
)
TIMES = st.sampled_from(
    [
        "2024-05-01T10:00:00Z",
        "2024-05-01T10:00:00.123456+05:30",
        "2024-05-01",
        "yesterday",
        1714557600,
        1714557600123,
        -5,
        float("nan"),
        "",
        None,
        "2024-02-30T00:00:00Z",
    ]
)
TEXTS = st.sampled_from(["shoes", "", "  ", "/", "/products/1", "https://x.io/?a=1", None, 5])


def field(pool: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the field's own pool of valid and hostile values, sometimes any JSON."""
    return st.one_of(pool, pool, pool, JSON)


PRODUCT = st.fixed_dictionaries(
    {}, optional={"product_id": field(IDS), "sku": field(IDS), "quantity": field(NUMBERS)}
)
PROPERTIES = st.fixed_dictionaries(
    {},
    optional={
        "product_id": field(IDS),
        "sku": field(IDS),
        "products": st.one_of(st.lists(PRODUCT, max_size=4), JSON),
        "quantity": field(NUMBERS),
        "query": field(TEXTS),
        "filters": JSON,
        "rating": field(NUMBERS),
        "revenue": field(NUMBERS),
        "total": field(NUMBERS),
        "position": field(NUMBERS),
        "total_length": field(NUMBERS),
        "asset_id": field(IDS),
        "category": field(TEXTS),
        "path": field(TEXTS),
        "url": field(TEXTS),
        "miso_id": st.sampled_from(["123e4567-e89b-12d3-a456-426614174000", "nope", 7]),
    },
)
CONTEXT = st.fixed_dictionaries(
    {},
    optional={
        "ip": field(IPS),
        "locale": field(TEXTS),
        "userAgent": field(TEXTS),
        "page": st.fixed_dictionaries(
            {}, optional={"url": field(TEXTS), "referrer": field(TEXTS), "path": field(TEXTS)}
        )
        | JSON,
        "campaign": st.dictionaries(st.sampled_from(["name", "source", "medium"]), JSON),
    },
)

# Messages shaped like Segment's (mostly the right skeleton, so the rules are reached) with
# hostile values at the leaves, and now and then hostile JSON in place of whole parts.
MESSAGES = st.fixed_dictionaries(
    {
        "type": field(CALLS),
        "event": field(NAMES),
        "properties": field(PROPERTIES),
        "context": field(CONTEXT),
    },
    optional={
        "userId": field(IDS),
        "anonymousId": field(IDS),
        "previousId": field(IDS),
        "timestamp": field(TIMES),
        "originalTimestamp": field(TIMES),
    },
)
