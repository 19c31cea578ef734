"""The shipped Segment table, row by row and alias by alias.

Every case feeds a message shaped like what Segment really delivers to a webhook
(analytics.js in a browser, or a server library) and compares the WHOLE Miso record.
Every expected value is worked out by hand from the documented rules — ``mappings/README.md``
(conversions, item lists, the default Segment table), README.md § Identity, and the rules and
comments of ``mappings/segment.yaml`` — never copied from the code's output.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from adapter.identity import Link

# --------------------------------------------------------------------------- messages

DROP = object()  # an override value meaning "remove this key"

ANON = "9b2f6c1e-4d7a-4f3b-8e2d-5a1c0b9e7f63"  # analytics.js anonymousId (UUID v4)
USER = "usr_81f3k2p9"
MISO_ID = "3f2b1c6e-8d4a-4e5b-9a7c-1d2e3f4a5b6c"

UA = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/122.0.0.0 Safari/537.36"
)
PAGE_URL = (
    "https://shop.example.com/products/cozy-wool-sweater"
    "?utm_source=google&utm_medium=cpc&utm_campaign=spring_knitwear"
)
PAGE_TITLE = "Cozy Wool Sweater | Example Shop"
REFERRER = "https://www.google.com/"

# Segment's timestamp = receivedAt - (sentAt - originalTimestamp): 09.144 - 0.021 = 09.123
TIMESTAMP = "2024-03-05T14:07:09.123Z"


def browser_context(**changes: Any) -> dict:
    """The ``context`` analytics.js sends from a product page (``DROP`` removes a key)."""
    context = {
        "library": {"name": "analytics.js", "version": "npm:next-1.64.0"},
        "ip": "203.0.113.57",
        "locale": "en-US",
        "userAgent": UA,
        "userAgentData": {
            "brands": [{"brand": "Chromium", "version": "122"}],
            "mobile": False,
            "platform": "macOS",
        },
        "page": {
            "path": "/products/cozy-wool-sweater",
            "referrer": REFERRER,
            "search": "?utm_source=google&utm_medium=cpc&utm_campaign=spring_knitwear",
            "title": PAGE_TITLE,
            "url": PAGE_URL,
        },
        "campaign": {
            "name": "spring_knitwear",
            "source": "google",
            "medium": "cpc",
            "term": "wool sweater",
            "content": "carousel_b",
        },
        "timezone": "Europe/Paris",
    }
    return _apply(context, changes)


def server_context(library: str = "analytics-node", version: str = "2.1.0") -> dict:
    """The ``context`` a server library sends: the library and nothing else (no ip)."""
    return {"library": {"name": library, "version": version}}


def message(**overrides: Any) -> dict:
    """A track call as the Webhooks destination delivers it; overrides replace top-level keys."""
    base = {
        "type": "track",
        "event": "Product Viewed",
        "messageId": "ajs-next-1709647629123-0d6f1b3c-2a5e-4f7d-9c8b-6e4a3f2d1c0b",
        "anonymousId": ANON,
        "userId": USER,
        "channel": "client",
        "context": browser_context(),
        "integrations": {"All": True, "Salesforce": False},
        "properties": {},
        "originalTimestamp": "2024-03-05T14:07:08.981Z",
        "sentAt": "2024-03-05T14:07:09.002Z",
        "receivedAt": "2024-03-05T14:07:09.144Z",
        "timestamp": TIMESTAMP,
        "_metadata": {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []},
        "projectId": "Zt4Kq8uRwXn3bD7e",
        "version": 2,
    }
    return _apply(base, overrides)


def server_message(**overrides: Any) -> dict:
    """A track call from analytics-node on a shop's backend: userId only, no browser context."""
    base = message(
        messageId="node-next-1709647629123-5e0c9d8a-7b6f-4a3e-8d2c-1b0a9f8e7d6c",
        anonymousId=DROP,
        channel="server",
        context=server_context(),
        integrations={},
        _metadata={"nodeVersion": "20.11.1", "jsRuntime": "node"},
    )
    return _apply(base, overrides)


def _apply(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- expected records

# The table's common fields: context.page ← context.page.{url,referrer,title}; campaign ←
# context.campaign.*; locale; user_agent ← userAgent; truncated_ip = IPv4, last octet zeroed.
EXPECTED_CONTEXT = {
    "page": {"url": PAGE_URL, "referrer": REFERRER, "title": PAGE_TITLE},
    "campaign": {
        "name": "spring_knitwear",
        "source": "google",
        "medium": "cpc",
        "term": "wool sweater",
        "content": "carousel_b",
    },
    "locale": "en-US",
    "user_agent": UA,
    "truncated_ip": "203.0.113.0",
}


def expected(miso_type: str, **fields: Any) -> dict:
    """The Miso record for a ``message()``-based input (``DROP`` removes a field)."""
    base = {
        "type": miso_type,
        "user_id": USER,
        "anonymous_id": ANON,
        "timestamp": TIMESTAMP,
        "context": copy.deepcopy(EXPECTED_CONTEXT),
    }
    return _apply(base, fields)


def expected_context(**changes: Any) -> dict:
    """``EXPECTED_CONTEXT`` with some sub-objects changed or dropped."""
    return _apply(EXPECTED_CONTEXT, changes)


def translate_one(translator, msg: dict) -> dict:
    """Translate a message that must give exactly one record, and return it."""
    result = translator.translate(msg)
    assert result.skipped is None, result.skipped
    assert len(result.records) == 1, result
    return result.records[0]


BOTH_IDS_LINK = {Link(anonymous_id=ANON, user_id=USER)}

# --------------------------------------------------------------------------- E-commerce v2 data

PID = "507f1f77bcf86cd799439011"
PID2 = "505bd76785ebb509fc183733"


def product(**changes: Any) -> dict:
    """A Segment E-commerce v2 product object (the example product of Segment's spec)."""
    item = {
        "product_id": PID,
        "sku": "G-32",
        "category": "Games",
        "name": "Monopoly: 3rd Edition",
        "brand": "Hasbro",
        "variant": "200 pieces",
        "price": 18.99,
        "quantity": 1,
        "coupon": "MAYDEALS",
        "position": 3,
        "url": "https://www.example.com/product/path",
        "image_url": "https://www.example.com/product/path.jpg",
    }
    return _apply(item, changes)


def order_products() -> list[dict]:
    """``products[]`` of an order: two lines, quantities 1 and 2."""
    return [
        {
            "product_id": PID,
            "sku": "45790-32",
            "name": "Monopoly: 3rd Edition",
            "price": 19,
            "quantity": 1,
            "category": "Games",
            "url": "https://www.example.com/product/path",
            "image_url": "https://www.example.com/product/path.jpg",
        },
        {
            "product_id": PID2,
            "sku": "46493-32",
            "name": "Uno Card Game",
            "price": 3,
            "quantity": 2,
            "category": "Games",
        },
    ]


def list_products() -> list[dict]:
    """``products[]`` of a product list (ranked, no quantities)."""
    return [
        {
            "product_id": PID,
            "sku": "45790-32",
            "name": "Monopoly: 3rd Edition",
            "price": 19,
            "position": 1,
            "category": "Games",
            "url": "https://www.example.com/product/path",
            "image_url": "https://www.example.com/product/path.jpg",
        },
        {
            "product_id": PID2,
            "sku": "46493-32",
            "name": "Uno Card Game",
            "price": 3,
            "position": 2,
            "category": "Games",
        },
    ]


def order_properties(**changes: Any) -> dict:
    """Order Completed properties from the E-commerce v2 spec."""
    props = {
        "checkout_id": "fksdjfsdjfisjf9sdfjsd9f",
        "order_id": "50314b8e9bcf000000000000",
        "affiliation": "Google Store",
        "total": 27.50,
        "subtotal": 22.50,
        "revenue": 25.00,
        "shipping": 3,
        "tax": 2,
        "discount": 2.5,
        "coupon": "hasbros",
        "currency": "USD",
        "products": order_products(),
    }
    return _apply(props, changes)


def video_properties(**changes: Any) -> dict:
    """Video Content Completed properties from the Video spec."""
    props = {
        "session_id": "12345",
        "asset_id": "0129370",
        "pod_id": "segA",
        "title": "Interview with Tony Robbins",
        "description": "short description",
        "keywords": ["entrepreneurship", "motivation"],
        "season": "2",
        "episode": "177",
        "genre": "entrepreneurship",
        "program": "Tech Hour",
        "publisher": "Tech Crunch",
        "position": 1431,
        "total_length": 1440,
        "channel": "espn",
        "full_episode": True,
        "livestream": False,
        "airdate": "1991-08-13",
        "bitrate": 100,
        "framerate": 29.0,
    }
    return _apply(props, changes)


WISHLIST = {"wishlist_id": "skdjsidjsdkdj29j", "wishlist_name": "Loved Games"}
SHARE = {
    "share_via": "email",
    "share_message": "Hey, check out this item",
    "recipient": "friend@example.com",
}
OBJECT_QUERY = {"term": "sweater", "category": "knitwear", "sort": "price_asc"}


def row(event: str, properties: dict, miso_type: str, fields: dict, case_id: str):
    return pytest.param(event, properties, miso_type, fields, id=case_id)


# One case per (rule of segment.yaml, event-name alias), plus the field variants it reads.
TABLE = [
    # --- search: keywords ← query (string; object serialised); filters ← filters[] {type, value}
    row(
        "Products Searched",
        {"query": "blue hotpants"},
        "search",
        {"search": {"keywords": "blue hotpants"}},
        "products-searched",
    ),
    row(
        "Products Searched",
        {
            "query": "sweater",
            "filters": [
                {"type": "size", "value": "M"},
                {"type": "color", "value": "blue"},
                {"type": "color", "value": "navy"},
            ],
        },
        "search",
        {
            "search": {
                "keywords": "sweater",
                "filters": {"size": ["M"], "color": ["blue", "navy"]},
            }
        },
        "products-searched-with-filters",
    ),
    row(
        "Products Searched",
        {"query": OBJECT_QUERY},
        "search",
        # An object query is serialised as JSON text (segment.yaml); compact, like
        # JSON.stringify, the way Segment's own ecosystem writes JSON.
        {"search": {"keywords": json.dumps(OBJECT_QUERY, separators=(",", ":"))}},
        "products-searched-object-query",
    ),
    row(
        "Hit Search",
        {"query": "wool sweater"},
        "search",
        {"search": {"keywords": "wool sweater"}},
        "hit-search",
    ),
    row(
        "Site Searched",
        {"query": "pull en laine écrue"},
        "search",
        {"search": {"keywords": "pull en laine écrue"}},
        "site-searched",
    ),
    # --- category_page_view: category ← [category]
    row(
        "Product List Viewed",
        {"list_id": "hot_deals_1", "category": "Deals", "products": list_products()},
        "category_page_view",
        {"category": ["Deals"]},
        "product-list-viewed",
    ),
    row(
        "Viewed Product Category",
        {"category": "Games"},
        "category_page_view",
        {"category": ["Games"]},
        "viewed-product-category",
    ),
    row(
        "Product List Filtered",
        {
            "list_id": "todays_deals_may_11_2016",
            "category": "Deals",
            "filters": [
                {"type": "department", "value": "beauty"},
                {"type": "price", "value": "under-$25"},
            ],
            "sorts": [{"type": "price", "value": "desc"}],
            "products": list_products(),
        },
        "category_page_view",
        {"category": ["Deals"]},
        "product-list-filtered",
    ),
    # --- product_detail_page_view: product_ids
    row(
        "Product Viewed",
        product(currency="USD", value=18.99),
        "product_detail_page_view",
        {"product_ids": [PID]},
        "product-viewed",
    ),
    row(
        "Viewed Product",
        product(currency="USD", value=18.99),
        "product_detail_page_view",
        {"product_ids": [PID]},
        "viewed-product",
    ),
    # --- add_to_cart: product_ids, quantities (default 1)
    row(
        "Product Added",
        {"cart_id": "skdjsidjsdkdj29j", **product(quantity=2)},
        "add_to_cart",
        {"product_ids": [PID], "quantities": [2]},
        "product-added",
    ),
    row(
        "Added Product",
        {"cart_id": "skdjsidjsdkdj29j", **product()},
        "add_to_cart",
        {"product_ids": [PID], "quantities": [1]},
        "added-product",
    ),
    row(
        "Wishlist Product Added to Cart",
        {**WISHLIST, "cart_id": "99j2d92j9dj29dj29d2d", **product(quantity=DROP)},
        "add_to_cart",
        {"product_ids": [PID], "quantities": [1]},
        "wishlist-product-added-to-cart-default-quantity",
    ),
    # --- remove_from_cart: product_ids
    row(
        "Product Removed",
        {"cart_id": "ksjdj92dj29dj92d2j", **product()},
        "remove_from_cart",
        {"product_ids": [PID]},
        "product-removed",
    ),
    row(
        "Removed Product",
        {"cart_id": "ksjdj92dj29dj92d2j", **product()},
        "remove_from_cart",
        {"product_ids": [PID]},
        "removed-product",
    ),
    # --- checkout: product_ids, quantities, revenue ← revenue
    row(
        "Order Completed",
        order_properties(),
        "checkout",
        {"product_ids": [PID, PID2], "quantities": [1, 2], "revenue": 25.0},
        "order-completed",
    ),
    row(
        "Completed Order",
        order_properties(),
        "checkout",
        {"product_ids": [PID, PID2], "quantities": [1, 2], "revenue": 25.0},
        "completed-order",
    ),
    row(
        "Checkout Completed",
        order_properties(),
        "checkout",
        {"product_ids": [PID, PID2], "quantities": [1, 2], "revenue": 25.0},
        "checkout-completed",
    ),
    # --- refund: product_ids
    row(
        "Order Refunded",
        {
            "order_id": "50314b8e9bcf000000000000",
            "total": 30,
            "currency": "USD",
            "products": order_products(),
        },
        "refund",
        {"product_ids": [PID, PID2]},
        "order-refunded",
    ),
    # --- wishlist
    row(
        "Product Added to Wishlist",
        {**WISHLIST, **product()},
        "add_to_collection",
        {"product_ids": [PID]},
        "product-added-to-wishlist",
    ),
    row(
        "Product Removed from Wishlist",
        {**WISHLIST, **product()},
        "remove_from_collection",
        {"product_ids": [PID]},
        "product-removed-from-wishlist",
    ),
    # --- share: product_ids
    row(
        "Product Shared",
        {**SHARE, **product(quantity=DROP, coupon=DROP, position=DROP)},
        "share",
        {"product_ids": [PID]},
        "product-shared",
    ),
    row(
        "Cart Shared",
        {
            **SHARE,
            "cart_id": "d92jd29jd92jd29j92d92jd",
            "products": [{"product_id": PID}, {"product_id": PID2}],
        },
        "share",
        {"product_ids": [PID, PID2]},
        "cart-shared",
    ),
    # --- rate: product_ids, rating ← number(rating); Segment's spec sends rating as a string
    row(
        "Product Reviewed",
        {
            "product_id": PID,
            "review_id": "kdfjrj39fj39jf3",
            "review_body": "I love this product",
            "rating": "5",
        },
        "rate",
        {"product_ids": [PID], "rating": 5.0},
        "product-reviewed",
    ),
    # --- click: product_ids
    row(
        "Product Clicked",
        product(),
        "click",
        {"product_ids": [PID]},
        "product-clicked",
    ),
    row(
        "Clicked Product",
        product(),
        "click",
        {"product_ids": [PID]},
        "clicked-product",
    ),
    # --- promo_page_view: no fields of its own
    row(
        "Promotion Viewed",
        {
            "promotion_id": "promo_1",
            "creative": "top_banner_2",
            "name": "75% store-wide shoe sale",
            "position": "home_banner_top",
        },
        "promo_page_view",
        {},
        "promotion-viewed",
    ),
    row(
        "Viewed Promotion",
        {
            "promotion_id": "promo_1",
            "creative": "top_banner_2",
            "name": "75% store-wide shoe sale",
            "position": "home_banner_top",
        },
        "promo_page_view",
        {},
        "viewed-promotion",
    ),
    # --- watch: product_ids ← [asset_id], duration ← position
    row(
        "Video Content Completed",
        video_properties(),
        "watch",
        {"product_ids": ["0129370"], "duration": 1431},
        "video-content-completed",
    ),
]


@pytest.mark.parametrize(("event", "properties", "miso_type", "fields"), TABLE)
def test_table_row(segment_translator, event, properties, miso_type, fields):
    """Each event alias of the table, from analytics.js, becomes the whole expected Miso record."""
    result = segment_translator.translate(message(event=event, properties=properties))
    assert result.records == [expected(miso_type, **fields)]
    assert set(result.links) == BOTH_IDS_LINK
    assert result.deletions == []
    assert result.skipped is None


# --------------------------------------------------------------------------- field rules


def test_revenue_falls_back_to_total(segment_translator):
    """Order Completed without revenue sends total as the checkout revenue."""
    msg = message(event="Order Completed", properties=order_properties(revenue=DROP))
    assert translate_one(segment_translator, msg) == expected(
        "checkout", product_ids=[PID, PID2], quantities=[1, 2], revenue=27.5
    )


def test_order_products_without_product_id_use_sku(segment_translator):
    """Order Completed products lacking product_id are identified by their sku."""
    products = [{k: v for k, v in p.items() if k != "product_id"} for p in order_products()]
    msg = server_message(event="Order Completed", properties=order_properties(products=products))
    assert translate_one(segment_translator, msg) == {
        "type": "checkout",
        "user_id": USER,
        "timestamp": TIMESTAMP,
        "product_ids": ["45790-32", "46493-32"],
        "quantities": [1, 2],
        "revenue": 25.0,
    }


def test_revenue_sent_as_string_is_a_number(segment_translator):
    """An Order Completed revenue sent as the string "25.00" is sent as the number 25."""
    msg = message(event="Order Completed", properties=order_properties(revenue="25.00"))
    assert translate_one(segment_translator, msg) == expected(
        "checkout", product_ids=[PID, PID2], quantities=[1, 2], revenue=25.0
    )


def test_order_with_empty_products_has_no_product_fields(segment_translator):
    """Order Completed with products [] sends revenue but neither product_ids nor quantities."""
    msg = message(event="Order Completed", properties=order_properties(products=[]))
    assert translate_one(segment_translator, msg) == expected("checkout", revenue=25.0)


def test_order_refunded_with_only_order_id(segment_translator):
    """Order Refunded with only order_id (no products named) is a refund without ids."""
    msg = message(event="Order Refunded", properties={"order_id": "50314b8e9bcf000000000000"})
    assert translate_one(segment_translator, msg) == expected("refund")


def test_search_filter_values_are_strings(segment_translator):
    """Products Searched filter values that are numbers are sent as strings."""
    properties = {
        "query": "sweater",
        "filters": [{"type": "rating", "value": 4}, {"type": "in_stock", "value": "true"}],
    }
    msg = message(event="Products Searched", properties=properties)
    assert translate_one(segment_translator, msg) == expected(
        "search",
        search={"keywords": "sweater", "filters": {"rating": ["4"], "in_stock": ["true"]}},
    )


def test_order_products_mix_product_id_and_sku(segment_translator):
    """Each order line uses its own product_id, else its own sku, keeping quantities parallel."""
    products = order_products()
    del products[1]["product_id"]
    msg = message(event="Order Completed", properties=order_properties(products=products))
    assert translate_one(segment_translator, msg) == expected(
        "checkout", product_ids=[PID, "46493-32"], quantities=[1, 2], revenue=25.0
    )


def test_order_quantities_default_to_one_each(segment_translator):
    """Order lines without a quantity count as 1 each, and quantities are always sent."""
    products = [{k: v for k, v in p.items() if k != "quantity"} for p in order_products()]
    msg = message(event="Order Completed", properties=order_properties(products=products))
    assert translate_one(segment_translator, msg) == expected(
        "checkout", product_ids=[PID, PID2], quantities=[1, 1], revenue=25.0
    )


def test_quantity_sent_as_string_is_a_number(segment_translator):
    """A Product Added quantity sent as the string "3" becomes the number 3."""
    msg = message(event="Product Added", properties={"cart_id": "c1", **product(quantity="3")})
    assert translate_one(segment_translator, msg) == expected(
        "add_to_cart", product_ids=[PID], quantities=[3]
    )


def test_numeric_product_id_is_sent_as_string(segment_translator):
    """A product_id that arrives as a number is sent as a string."""
    msg = message(event="Product Viewed", properties=product(product_id=1234, sku=DROP))
    assert translate_one(segment_translator, msg) == expected(
        "product_detail_page_view", product_ids=["1234"]
    )


def test_v1_product_shape_uses_sku(segment_translator):
    """A v1 Added Product (id, sku; no product_id) is identified by its sku."""
    properties = {
        "id": PID,
        "sku": "G-32",
        "name": "Monopoly: 3rd Edition",
        "price": 18.99,
        "quantity": 1,
        "category": "Games",
    }
    msg = message(event="Added Product", properties=properties)
    assert translate_one(segment_translator, msg) == expected(
        "add_to_cart", product_ids=["G-32"], quantities=[1]
    )


def test_video_duration_falls_back_to_total_length(segment_translator):
    """Video Content Completed without position takes duration from total_length."""
    msg = message(event="Video Content Completed", properties=video_properties(position=DROP))
    assert translate_one(segment_translator, msg) == expected(
        "watch", product_ids=["0129370"], duration=1440
    )


def test_video_numeric_asset_id_is_sent_as_string(segment_translator):
    """A Video Content Completed asset_id sent as a number becomes a string product id."""
    msg = message(event="Video Content Completed", properties=video_properties(asset_id=129370))
    assert translate_one(segment_translator, msg) == expected(
        "watch", product_ids=["129370"], duration=1431
    )


def test_miso_id_is_carried_through(segment_translator):
    """properties.miso_id (a UUID) is sent as the record's miso_id."""
    msg = message(event="Product Clicked", properties=product(miso_id=MISO_ID))
    assert translate_one(segment_translator, msg) == expected(
        "click", product_ids=[PID], miso_id=MISO_ID
    )


# --------------------------------------------------------------------------- event names


@pytest.mark.parametrize(
    "event",
    ["product viewed", "PRODUCT VIEWED", "Product viewed", "viewed product", "product_viewed"],
    ids=["lower", "upper", "sentence-case", "v1-lower", "snake-case"],
)
def test_event_names_match_case_insensitively(segment_translator, event):
    """Event names match the table whatever their letter case."""
    msg = message(event=event, properties=product())
    assert translate_one(segment_translator, msg) == expected(
        "product_detail_page_view", product_ids=[PID]
    )


@pytest.mark.parametrize(
    ("event", "properties"),
    [
        pytest.param(
            "Checkout Started",
            {"order_id": "50314b8e9bcf000000000000", "value": 30, "products": order_products()},
            id="checkout-started",
        ),
        pytest.param(
            "Coupon Applied",
            {"order_id": "50314b8e9bcf000000000000", "coupon_id": "may_deals_2016"},
            id="coupon-applied",
        ),
        pytest.param(
            "Promotion Clicked",
            {"promotion_id": "promo_1", "creative": "top_banner_2"},
            id="promotion-clicked",
        ),
        pytest.param(
            "Video Playback Started",
            {"session_id": "12345", "position": 0, "total_length": 1440},
            id="video-playback-started",
        ),
        pytest.param("Signed Up", {"plan": "premium"}, id="custom-event"),
    ],
)
def test_unknown_event_is_skipped(segment_translator, event, properties):
    """An event no rule covers gives no record and a skip reason; the link is still learned."""
    result = segment_translator.translate(message(event=event, properties=properties))
    assert result.records == []
    assert isinstance(result.skipped, str) and result.skipped
    assert set(result.links) == BOTH_IDS_LINK
    assert result.deletions == []


# --------------------------------------------------------------------------- ids


def test_only_user_id_from_a_server_library(segment_translator):
    """An analytics-node event with only userId gives a record with user_id and no context."""
    msg = server_message(event="Product Removed", properties={"cart_id": "c9", **product()})
    result = segment_translator.translate(msg)
    assert result.records == [
        {
            "type": "remove_from_cart",
            "user_id": USER,
            "timestamp": TIMESTAMP,
            "product_ids": [PID],
        }
    ]
    assert result.links == []


def test_only_anonymous_id_from_a_visitor(segment_translator):
    """A signed-out visitor's event carries anonymous_id only and teaches no link."""
    msg = message(event="Product Viewed", properties=product(), userId=None)
    result = segment_translator.translate(msg)
    assert result.records == [expected("product_detail_page_view", product_ids=[PID], user_id=DROP)]
    assert result.links == []


@pytest.mark.parametrize(
    ("user_id", "wanted"),
    [pytest.param("12345", "12345", id="string"), pytest.param(12345, "12345", id="number")],
)
def test_numeric_user_id_is_sent_as_string(segment_translator, user_id, wanted):
    """A numeric userId is sent as a string user_id."""
    msg = message(event="Product Viewed", properties=product(), userId=user_id)
    result = segment_translator.translate(msg)
    assert result.records == [
        expected("product_detail_page_view", product_ids=[PID], user_id=wanted)
    ]
    assert set(result.links) == {Link(anonymous_id=ANON, user_id=wanted)}


def test_placeholder_user_id_counts_as_missing(segment_translator):
    """userId "null" is a placeholder: the record keeps only anonymous_id and no link is made."""
    msg = message(event="Product Viewed", properties=product(), userId="null")
    result = segment_translator.translate(msg)
    assert result.records == [expected("product_detail_page_view", product_ids=[PID], user_id=DROP)]
    assert result.links == []


@pytest.mark.parametrize(
    "ids",
    [
        pytest.param({"userId": DROP, "anonymousId": DROP}, id="keys-absent"),
        pytest.param({"userId": None, "anonymousId": None}, id="nulls"),
        pytest.param({"userId": "", "anonymousId": ""}, id="empty-strings"),
        pytest.param({"userId": "undefined", "anonymousId": "anonymous"}, id="placeholders"),
    ],
)
def test_message_without_any_id_is_skipped(segment_translator, ids):
    """A message with neither userId nor anonymousId gives no record and says why."""
    result = segment_translator.translate(message(event="Product Viewed", **ids))
    assert result.records == []
    assert result.skipped is not None
    assert re.search(r"user.?id", result.skipped, re.IGNORECASE), result.skipped
    assert re.search(r"anonymous.?id", result.skipped, re.IGNORECASE), result.skipped
    assert result.links == []


# --------------------------------------------------------------------------- timestamps


@pytest.mark.parametrize(
    ("overrides", "wanted"),
    [
        pytest.param({}, TIMESTAMP, id="timestamp-utc"),
        pytest.param(
            {"timestamp": "2024-03-05T19:37:09.123+05:30"},
            "2024-03-05T14:07:09.123Z",
            id="offset-plus-0530",
        ),
        pytest.param(
            {"timestamp": "2024-03-05T06:07:09.5-08:00"},
            "2024-03-05T14:07:09.500Z",
            id="offset-minus-0800-one-digit-fraction",
        ),
        pytest.param(
            {"timestamp": "2024-12-31T20:15:00.250-05:00"},
            "2025-01-01T01:15:00.250Z",
            id="offset-crosses-new-year",
        ),
        pytest.param(
            {"timestamp": "2024-03-05T14:07:09Z"},
            "2024-03-05T14:07:09.000Z",
            id="no-fraction",
        ),
        pytest.param(
            {"timestamp": "2024-03-05T14:07:09.123456+00:00"},
            "2024-03-05T14:07:09.123Z",
            id="analytics-python-microseconds",
        ),
        pytest.param(
            {"timestamp": "2024-03-05T14:07:09.123456789Z"},
            "2024-03-05T14:07:09.123Z",
            id="analytics-go-nanoseconds",
        ),
        pytest.param(
            {"timestamp": DROP, "originalTimestamp": "2024-03-05T15:07:08.981+01:00"},
            "2024-03-05T14:07:08.981Z",
            id="falls-back-to-originalTimestamp",
        ),
        pytest.param(
            {"timestamp": DROP, "originalTimestamp": DROP},
            "2024-03-05T14:07:09.144Z",
            id="falls-back-to-receivedAt",
        ),
    ],
)
def test_timestamp_is_utc_with_milliseconds(segment_translator, overrides, wanted):
    """timestamp, else originalTimestamp, else receivedAt, is sent as UTC ...HH:MM:SS.mmmZ."""
    msg = message(event="Product Viewed", properties=product(), **overrides)
    assert translate_one(segment_translator, msg) == expected(
        "product_detail_page_view", product_ids=[PID], timestamp=wanted
    )


# --------------------------------------------------------------------------- context


@pytest.mark.parametrize(
    ("context_changes", "wanted_context"),
    [
        pytest.param(
            {"ip": "2001:db8:85a3::8a2e:370:7334"},
            expected_context(truncated_ip=DROP),
            id="ipv6-dropped",
        ),
        pytest.param({"ip": "::1"}, expected_context(truncated_ip=DROP), id="ipv6-loopback"),
        pytest.param(
            {"ip": "198.51.100.0"}, expected_context(truncated_ip="198.51.100.0"), id="ipv4-x.0"
        ),
        pytest.param(
            {"ip": "192.0.2.255"}, expected_context(truncated_ip="192.0.2.0"), id="ipv4-x.255"
        ),
        pytest.param({"ip": DROP}, expected_context(truncated_ip=DROP), id="no-ip"),
        pytest.param(
            {
                "page": {
                    "path": "/products/cozy-wool-sweater",
                    "referrer": "",
                    "search": "",
                    "title": PAGE_TITLE,
                    "url": "https://shop.example.com/products/cozy-wool-sweater",
                }
            },
            expected_context(
                page={
                    "url": "https://shop.example.com/products/cozy-wool-sweater",
                    "title": PAGE_TITLE,
                }
            ),
            id="direct-visit-empty-referrer",
        ),
        pytest.param(
            {"page": {"referrer": REFERRER, "title": PAGE_TITLE}},
            expected_context(page=DROP),
            id="page-without-url-dropped",
        ),
        pytest.param(
            {"campaign": {"name": "newsletter_0324", "source": "newsletter", "medium": "email"}},
            expected_context(
                campaign={"name": "newsletter_0324", "source": "newsletter", "medium": "email"}
            ),
            id="partial-campaign",
        ),
        pytest.param(
            {"campaign": DROP, "locale": DROP, "userAgent": DROP, "userAgentData": DROP},
            expected_context(campaign=DROP, locale=DROP, user_agent=DROP),
            id="only-page-and-ip",
        ),
    ],
)
def test_context_fields(segment_translator, context_changes, wanted_context):
    """context.page/campaign/locale/user_agent/truncated_ip follow the common fields' rules."""
    msg = message(
        event="Product Viewed", properties=product(), context=browser_context(**context_changes)
    )
    assert translate_one(segment_translator, msg) == expected(
        "product_detail_page_view", product_ids=[PID], context=wanted_context
    )


def test_product_url_is_not_the_page_url(segment_translator):
    """On a track call, context.page comes from context.page, not from the product's url."""
    msg = message(event="Product Added to Wishlist", properties={**WISHLIST, **product()})
    record = translate_one(segment_translator, msg)
    assert record == expected("add_to_collection", product_ids=[PID])


# --------------------------------------------------------------------------- page calls

HOME_URL = "https://shop.example.com/"
HOME_TITLE = "Example Shop | Cozy knitwear for every season"


def home_page_message(**overrides: Any) -> dict:
    """analytics.page() on the home page: properties and context.page describe the page."""
    page = {"path": "/", "referrer": REFERRER, "search": "", "title": HOME_TITLE, "url": HOME_URL}
    base = message(
        type="page",
        event=DROP,
        name="Home",
        properties={"name": "Home", **page},
        context=browser_context(page=dict(page)),
    )
    return _apply(base, overrides)


def test_home_page_view(segment_translator):
    """An analytics.js page call on path / becomes a home_page_view."""
    result = segment_translator.translate(home_page_message())
    assert result.records == [
        expected(
            "home_page_view",
            context=expected_context(
                page={"url": HOME_URL, "referrer": REFERRER, "title": HOME_TITLE}
            ),
        )
    ]
    assert set(result.links) == BOTH_IDS_LINK
    assert result.skipped is None


def test_home_page_view_with_query_string(segment_translator):
    """A page call on / with a query string is still the home page; page.url keeps the query."""
    url = "https://shop.example.com/?utm_source=newsletter&utm_medium=email"
    page = {
        "path": "/",
        "referrer": "",
        "search": "?utm_source=newsletter&utm_medium=email",
        "title": HOME_TITLE,
        "url": url,
    }
    msg = home_page_message(
        properties=dict(page),
        context=browser_context(
            page=dict(page), campaign={"source": "newsletter", "medium": "email"}
        ),
    )
    assert translate_one(segment_translator, msg) == expected(
        "home_page_view",
        context=expected_context(
            page={"url": url, "title": HOME_TITLE},
            campaign={"source": "newsletter", "medium": "email"},
        ),
    )


def test_home_page_view_takes_page_from_properties(segment_translator):
    """A page call describes its page in properties, which win over context.page."""
    msg = home_page_message(
        properties={
            "path": "/",
            "referrer": "https://news.example.org/best-sweaters",
            "title": "Home",
            "url": "https://shop.example.com/",
        },
        context=browser_context(),  # context.page still describes the previous page
    )
    assert translate_one(segment_translator, msg) == expected(
        "home_page_view",
        context=expected_context(
            page={
                "url": "https://shop.example.com/",
                "referrer": "https://news.example.org/best-sweaters",
                "title": "Home",
            }
        ),
    )


def test_home_page_view_from_a_server_library(segment_translator):
    """An analytics-python page call (no context.page, no ip) takes its page from properties."""
    msg = home_page_message(
        messageId="api-2f9c3b1d7e6a4c58a0b1c2d3e4f5a6b7",
        userId=DROP,
        channel="server",
        context=server_context("analytics-python", "2.3.2"),
        properties={"path": "/", "url": HOME_URL, "title": "Home"},
        timestamp="2024-03-05T14:07:09.123456+00:00",
        integrations={},
        _metadata=DROP,
    )
    assert translate_one(segment_translator, msg) == {
        "type": "home_page_view",
        "anonymous_id": ANON,
        "timestamp": TIMESTAMP,
        "context": {"page": {"url": HOME_URL, "title": "Home"}},
    }


def test_home_page_view_from_url_without_path(segment_translator):
    """A page call whose properties give only a url on / is a home_page_view."""
    msg = home_page_message(
        properties={"url": HOME_URL, "title": "Home"},
        context=browser_context(page=DROP),
    )
    assert translate_one(segment_translator, msg) == expected(
        "home_page_view", context=expected_context(page={"url": HOME_URL, "title": "Home"})
    )


@pytest.mark.parametrize(
    "path",
    ["/about", "/products/cozy-wool-sweater", "/collections/knitwear"],
    ids=["about", "product-page", "collection-page"],
)
def test_page_call_on_other_path_is_skipped(segment_translator, path):
    """A page call on a path other than / gives no record and a skip reason."""
    url = f"https://shop.example.com{path}"
    page = {"path": path, "referrer": REFERRER, "search": "", "title": "Example Shop", "url": url}
    msg = home_page_message(properties=dict(page), context=browser_context(page=dict(page)))
    result = segment_translator.translate(msg)
    assert result.records == []
    assert isinstance(result.skipped, str) and result.skipped
    assert set(result.links) == BOTH_IDS_LINK


# --------------------------------------------------------------------------- identity calls


def identify_message(**overrides: Any) -> dict:
    """analytics.identify() after sign-in: both ids and traits."""
    base = message(
        type="identify",
        event=DROP,
        properties=DROP,
        traits={
            "email": "peter@example.com",
            "firstName": "Peter",
            "lastName": "Gibbons",
            "plan": "premium",
            "logins": 5,
        },
    )
    return _apply(base, overrides)


def test_identify_links_anonymous_to_user(segment_translator):
    """identify with both ids gives no record and links anonymousId to userId."""
    result = segment_translator.translate(identify_message())
    assert result.records == []
    assert set(result.links) == BOTH_IDS_LINK
    assert result.deletions == []


def test_identify_with_user_id_only_links_nothing(segment_translator):
    """A server-side identify with userId only gives no record and no link."""
    msg = identify_message(anonymousId=DROP, channel="server", context=server_context())
    result = segment_translator.translate(msg)
    assert result.records == []
    assert result.links == []
    assert result.deletions == []


def test_alias_links_previous_id_to_user_id(segment_translator):
    """A server-side alias gives no record and links previousId (anonymous) to userId."""
    msg = message(
        type="alias",
        event=DROP,
        properties=DROP,
        anonymousId=DROP,
        previousId="jen@email.com",
        userId="507f191e81",
        channel="server",
        context=server_context(),
    )
    result = segment_translator.translate(msg)
    assert result.records == []
    assert set(result.links) == {Link(anonymous_id="jen@email.com", user_id="507f191e81")}
    assert result.deletions == []


def test_alias_from_browser_links_previous_id(segment_translator):
    """An analytics.js alias (previousId = anonymousId) gives no record, one distinct link."""
    msg = message(type="alias", event=DROP, properties=DROP, previousId=ANON)
    result = segment_translator.translate(msg)
    assert result.records == []
    assert set(result.links) == BOTH_IDS_LINK
    assert result.deletions == []


def test_group_gives_no_record(segment_translator):
    """group gives no record; carrying both ids it still links them."""
    msg = message(
        type="group",
        event=DROP,
        properties=DROP,
        groupId="0e8c78ea9d97a7b8185e8632",
        traits={
            "name": "Initech",
            "industry": "Technology",
            "employees": 329,
            "plan": "enterprise",
        },
    )
    result = segment_translator.translate(msg)
    assert result.records == []
    assert set(result.links) == BOTH_IDS_LINK
    assert result.deletions == []


def test_delete_forwards_a_deletion(segment_translator):
    """A Segment delete notice gives no record and a Miso deletion for that userId."""
    msg = {
        "type": "delete",
        "userId": USER,
        "messageId": "delete-7c1e2f9a-5b3d-4e8f-a6c0-9d2b1e4f3a5c",
        "channel": "server",
        "context": {"library": {"name": "unknown", "version": "unknown"}},
        "integrations": {},
        "timestamp": "2024-03-06T08:00:00.000Z",
        "receivedAt": "2024-03-06T08:00:00.412Z",
        "projectId": "Zt4Kq8uRwXn3bD7e",
        "version": 2,
    }
    result = segment_translator.translate(msg)
    assert result.records == []
    assert result.deletions == [USER]
    assert result.links == []
