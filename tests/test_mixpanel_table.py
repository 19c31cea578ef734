"""The shipped Mixpanel table, Mixpanel ids and links, and export rows.

Every case feeds a row shaped like what Mixpanel's raw export really returns (mixpanel-js
default properties, server-side ``/import`` rows, Original-merge identity events, hot-shard
rows, Data Pipelines rows) through the Normalizer and the shipped ``mixpanel.yaml``, and
compares the WHOLE Miso record. Every expected value is worked out by hand from the documented
rules — ``mappings/README.md`` (conversions, the default Mixpanel table and what the
normaliser does), the comments of ``mappings/mixpanel.yaml``, and README.md (Identity; Replay
a Mixpanel export) — and from Mixpanel's documentation for the shape of the input, never
copied from the code's output.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapter.identity import Link
from adapter.mapping import Translation, Translator, load_mapping
from adapter.sources.mixpanel import Normalizer, identity_rows

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- rows

DROP = object()  # an override value meaning "remove this key"

DEVICE = "7c1e2a9b-4f3d-4e8a-9b61-2d5f0c8e1a44"  # mixpanel-js $device_id (UUID v4)
USER = "u_48213"
INSERT_ID = "k3v9q2m8x1z7w4p6"
MISO_ID = "3f2b1c6e-8d4a-4e5b-9a7c-1d2e3f4a5b6c"

# 2024-06-10T00:00:00Z = 1704067200 (2024-01-01) + (31 + 29 + 31 + 30 + 31 + 9) days * 86400
#                      = 1704067200 + 161 * 86400 = 1717977600.
JUNE_10 = 1_717_977_600
# time = 14:58:32 on that day: 14 * 3600 + 58 * 60 + 32 = 53912 s.
TIME = JUNE_10 + 53_912  # 1718031512, as in test_sample_page_view_is_skipped
TIMESTAMP = "2024-06-10T14:58:32.000Z"

PAGE_URL = (
    "https://shop.example.com/products/merino-wool-socks"
    "?utm_source=newsletter&utm_medium=email&utm_campaign=june_knitwear"
    "&utm_term=wool+socks&utm_content=hero_banner"
)
REFERRER = "https://mail.google.com/"

# Mixpanel's own bookkeeping, which must never reach Miso.
SYSTEM_PROPERTIES = {
    "mp_lib": "web",
    "$lib_version": "2.60.0",
    "mp_sent_by_lib_version": "2.60.0",
    "$mp_api_endpoint": "api-js.mixpanel.com",
    "$mp_api_timestamp_ms": TIME * 1000 + 840,
    "mp_processing_time_ms": TIME * 1000 + 1012,
}


def browser_properties() -> dict:
    """What mixpanel-js adds to a track() call of a signed-in visitor (its default properties)."""
    return {
        "time": TIME,
        "distinct_id": USER,
        "$device_id": DEVICE,
        "$user_id": USER,
        "$insert_id": INSERT_ID,
        "token": "e3bc4100330c35722740fb8c6f5abddc",
        "$browser": "Chrome",
        "$browser_version": 125,
        "$os": "Mac OS X",
        "$current_url": PAGE_URL,
        "$referrer": REFERRER,
        "$referring_domain": "mail.google.com",
        "$initial_referrer": "$direct",
        "$initial_referring_domain": "$direct",
        "$screen_height": 900,
        "$screen_width": 1440,
        **SYSTEM_PROPERTIES,
        "$city": "Lyon",
        "$region": "Auvergne-Rhone-Alpes",
        "mp_country_code": "FR",
        "utm_source": "newsletter",
        "utm_medium": "email",
        "utm_campaign": "june_knitwear",
        "utm_term": "wool socks",
        "utm_content": "hero_banner",
    }


def export_row(event: str, properties: dict | None = None) -> dict:
    """A raw-export line from mixpanel-js; ``properties`` add or replace (``DROP`` removes)."""
    return {"event": event, "properties": _apply(browser_properties(), properties or {})}


def server_row(event: str, properties: dict) -> dict:
    """A server-side ``/import``-ed line: ids, geo, no browser context."""
    base = {
        "time": TIME,
        "distinct_id": USER,
        "$user_id": USER,
        "$device_id": DEVICE,
        "$insert_id": "0f9b6c2e-81d4-4a7e-b3c5-6e2d9f1a7b30",
        "$import": True,
        "$mp_api_endpoint": "api.mixpanel.com",
        "$mp_api_timestamp_ms": TIME * 1000 + 115,
        "mp_processing_time_ms": TIME * 1000 + 260,
        "$city": "Lyon",
        "$region": "Auvergne-Rhone-Alpes",
        "mp_country_code": "FR",
    }
    return {"event": event, "properties": _apply(base, properties)}


def _apply(base: dict, changes: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- translating


@functools.cache
def _translator() -> Translator:
    return load_mapping(ROOT / "mappings" / "mixpanel.yaml")


def normalize(row: Any, **normalizer_options: Any) -> tuple[str | None, Any]:
    """``(dedup key, event)`` from a fresh Normalizer."""
    return Normalizer(**normalizer_options)(row)


def translate(row: Any, **normalizer_options: Any) -> Translation:
    """Normalizer(**options), then the shipped mixpanel.yaml; a refused row is a skip."""
    key, event = normalize(row, **normalizer_options)
    if key is None:
        assert isinstance(event, str) and event, "a refused row must say why"
        return Translation([], [], [], event)
    return _translator().translate(event)


def translate_one(row: Any, **normalizer_options: Any) -> dict:
    """Translate a row that must give exactly one record, and return it."""
    result = translate(row, **normalizer_options)
    assert result.skipped is None, result.skipped
    assert len(result.records) == 1, result
    return result.records[0]


# --------------------------------------------------------------------------- expected records

# The table's common fields: context.page ← $current_url, $referrer (not "$direct"),
# current_page_title; context.campaign ← utm_campaign/source/medium/term/content.
EXPECTED_CONTEXT = {
    "page": {"url": PAGE_URL, "referrer": REFERRER},
    "campaign": {
        "name": "june_knitwear",
        "source": "newsletter",
        "medium": "email",
        "term": "wool socks",
        "content": "hero_banner",
    },
}


def expected(miso_type: str, **fields: Any) -> dict:
    """The Miso record for an ``export_row()`` input (``DROP`` removes a field)."""
    base = {
        "type": miso_type,
        "user_id": USER,
        "anonymous_id": DEVICE,
        "timestamp": TIMESTAMP,
        "context": copy.deepcopy(EXPECTED_CONTEXT),
    }
    return _apply(base, fields)


def expected_context(**changes: Any) -> dict:
    """``EXPECTED_CONTEXT`` with some sub-objects changed or dropped."""
    return _apply(EXPECTED_CONTEXT, changes)


BOTH_IDS_LINK = {Link(anonymous_id=DEVICE, user_id=USER)}

# --------------------------------------------------------------------------- product data

PID = "sku-1042"
PID2 = "sku-2210"


def cart_items() -> list[dict]:
    """``products[]`` of a cart: two lines, quantities 2 and (unset, so) 1."""
    return [
        {"product_id": PID, "name": "Merino Wool Socks", "price": 14.5, "quantity": 2},
        {"product_id": PID2, "name": "Alpaca Beanie", "price": 29.0},
    ]


def ga4_items() -> list[dict]:
    """GA4-style ``items[]`` (item_id, item_name, quantity), as many sites forward them."""
    return [
        {"item_id": PID, "item_name": "Merino Wool Socks", "price": 14.5, "quantity": 3},
        {"item_id": PID2, "item_name": "Alpaca Beanie", "price": 29.0, "quantity": 1},
    ]


def case(event: str, properties: dict, miso_type: str, fields: dict, case_id: str):
    return pytest.param(event, properties, miso_type, fields, id=case_id)


# One case per (rule of mixpanel.yaml, event-name alias), plus the field variants it reads.
TABLE = [
    # --- product_detail_page_view; ids from product_id, sku, item_id, product, items[]
    case(
        "Product Viewed",
        {"product_id": PID, "name": "Merino Wool Socks", "price": 14.5},
        "product_detail_page_view",
        {"product_ids": [PID]},
        "product-viewed",
    ),
    case(
        "Viewed Product",
        {"sku": "MWS-42-GRY", "name": "Merino Wool Socks"},
        "product_detail_page_view",
        {"product_ids": ["MWS-42-GRY"]},
        "viewed-product-sku",
    ),
    case(
        "View Item",
        {"item_id": PID, "item_name": "Merino Wool Socks"},
        "product_detail_page_view",
        {"product_ids": [PID]},
        "view-item-item-id",
    ),
    case(
        "View Item",
        {"currency": "EUR", "value": 14.5, "items": ga4_items()[:1]},
        "product_detail_page_view",
        {"product_ids": [PID]},
        "view-item-ga4-items",
    ),
    case(
        "Product View",
        {"product": PID, "category": "Socks"},
        "product_detail_page_view",
        {"product_ids": [PID]},
        "product-view-product",
    ),
    case(
        "Product Viewed",
        {"product_id": PID, "sku": "MWS-42-GRY"},
        "product_detail_page_view",
        {"product_ids": [PID]},
        "product-id-before-sku",
    ),
    case(
        "Product Viewed",
        {"product_id": 1042, "name": "Merino Wool Socks"},
        "product_detail_page_view",
        {"product_ids": ["1042"]},  # numeric ids are sent as strings
        "numeric-product-id",
    ),
    case(
        "product viewed",
        {"product_id": PID},
        "product_detail_page_view",
        {"product_ids": [PID]},
        "product-viewed-lower-case",
    ),
    case(
        "view_item",
        {"item_id": PID},
        "product_detail_page_view",
        {"product_ids": [PID]},
        "view-item-snake-case",
    ),
    # --- search; keywords from query, search_term, keywords
    case(
        "Search",
        {"query": "merino socks"},
        "search",
        {"search": {"keywords": "merino socks"}},
        "search-query",
    ),
    case(
        "Searched",
        {"search_term": "alpaca beanie", "results": 12},
        "search",
        {"search": {"keywords": "alpaca beanie"}},
        "searched-search-term",
    ),
    case(
        "Products Searched",
        {"keywords": "wool scarf"},
        "search",
        {"search": {"keywords": "wool scarf"}},
        "products-searched-keywords",
    ),
    case(
        "Search Performed",
        {"query": "gants en laine", "results_count": 7},
        "search",
        {"search": {"keywords": "gants en laine"}},
        "search-performed",
    ),
    case(
        "search_performed",
        {"search_term": "cashmere"},
        "search",
        {"search": {"keywords": "cashmere"}},
        "search-performed-snake-case",
    ),
    case(
        "SEARCH",
        {"query": "socks"},
        "search",
        {"search": {"keywords": "socks"}},
        "search-upper-case",
    ),
    # --- add_to_cart; quantities default to 1 each
    case(
        "Add To Cart",
        {"product_id": PID, "quantity": 2, "price": 14.5},
        "add_to_cart",
        {"product_ids": [PID], "quantities": [2]},
        "add-to-cart",
    ),
    case(
        "Added To Cart",
        {"sku": "MWS-42-GRY", "price": 14.5},
        "add_to_cart",
        {"product_ids": ["MWS-42-GRY"], "quantities": [1]},
        "added-to-cart-default-quantity",
    ),
    case(
        "Product Added",
        {"cart_id": "c_5521", "products": cart_items()},
        "add_to_cart",
        {"product_ids": [PID, PID2], "quantities": [2, 1]},
        "product-added-products",
    ),
    case(
        "add_to_cart",
        {"currency": "EUR", "value": 72.5, "items": ga4_items()},
        "add_to_cart",
        {"product_ids": [PID, PID2], "quantities": [3, 1]},
        "add-to-cart-snake-case-ga4-items",
    ),
    case(
        "added to cart",
        {"product": PID},
        "add_to_cart",
        {"product_ids": [PID], "quantities": [1]},
        "added-to-cart-lower-case",
    ),
    # --- remove_from_cart
    case(
        "Remove From Cart",
        {"product_id": PID, "quantity": 1},
        "remove_from_cart",
        {"product_ids": [PID]},
        "remove-from-cart",
    ),
    case(
        "Removed From Cart",
        {"item_id": PID2},
        "remove_from_cart",
        {"product_ids": [PID2]},
        "removed-from-cart",
    ),
    case(
        "Product Removed",
        {"cart_id": "c_5521", "products": cart_items()},
        "remove_from_cart",
        {"product_ids": [PID, PID2]},
        "product-removed",
    ),
    # --- checkout; revenue from revenue, else amount, else total
    case(
        "Purchase",
        {"order_id": "A-1009", "revenue": 58.0, "currency": "EUR", "products": cart_items()},
        "checkout",
        {"product_ids": [PID, PID2], "quantities": [2, 1], "revenue": 58.0},
        "purchase",
    ),
    case(
        "Order Completed",
        {"order_id": "A-1009", "amount": 72.5, "currency": "EUR", "items": ga4_items()},
        "checkout",
        {"product_ids": [PID, PID2], "quantities": [3, 1], "revenue": 72.5},
        "order-completed-amount",
    ),
    case(
        "Checkout Completed",
        {"order_id": "A-1010", "total": 14.5, "product_id": PID},
        "checkout",
        {"product_ids": [PID], "quantities": [1], "revenue": 14.5},
        "checkout-completed-total",
    ),
    case(
        "Purchase Completed",
        {"order_id": "A-1011", "revenue": "59.90", "sku": "MWS-42-GRY", "quantity": "2"},
        "checkout",
        # type coercion: a numeric string is a number
        {"product_ids": ["MWS-42-GRY"], "quantities": [2], "revenue": 59.9},
        "purchase-completed-string-numbers",
    ),
    case(
        "Order Completed",
        {"order_id": "A-1012", "revenue": 58.0, "amount": 61.0, "total": 64.5, "product": PID},
        "checkout",
        {"product_ids": [PID], "quantities": [1], "revenue": 58.0},
        "revenue-before-amount-and-total",
    ),
    case(
        "Purchase",
        {"order_id": "A-1013", "amount": 61.0, "total": 64.5, "product_id": PID},
        "checkout",
        {"product_ids": [PID], "quantities": [1], "revenue": 61.0},
        "amount-before-total",
    ),
    case(
        "order_completed",
        {"order_id": "A-1014", "total": 29, "products": [{"sku": PID2}]},
        "checkout",
        {"product_ids": [PID2], "quantities": [1], "revenue": 29},
        "order-completed-snake-case",
    ),
    # --- refund
    case(
        "Refund",
        {"order_id": "A-1009", "product_id": PID},
        "refund",
        {"product_ids": [PID]},
        "refund",
    ),
    case(
        "Order Refunded",
        {"order_id": "A-1009", "products": cart_items()},
        "refund",
        {"product_ids": [PID, PID2]},
        "order-refunded",
    ),
    # --- subscribe / unsubscribe
    case(
        "Subscribe",
        {"plan": "Knit Club monthly", "product_id": "plan_knit_monthly"},
        "subscribe",
        {"product_ids": ["plan_knit_monthly"]},
        "subscribe",
    ),
    case(
        "Subscription Started",
        {"plan": "Knit Club yearly", "sku": "plan_knit_yearly", "price": 99},
        "subscribe",
        {"product_ids": ["plan_knit_yearly"]},
        "subscription-started",
    ),
    case(
        "Unsubscribe",
        {"product_id": "plan_knit_monthly", "reason": "too expensive"},
        "unsubscribe",
        {"product_ids": ["plan_knit_monthly"]},
        "unsubscribe",
    ),
    case(
        "Subscription Cancelled",
        {"plan": "Knit Club yearly"},
        "unsubscribe",
        {},
        "subscription-cancelled-without-product",
    ),
    # --- add_to_collection / remove_from_collection
    case(
        "Add To Wishlist",
        {"product_id": PID, "wishlist": "Winter"},
        "add_to_collection",
        {"product_ids": [PID]},
        "add-to-wishlist",
    ),
    case(
        "Product Added to Wishlist",
        {"sku": "MWS-42-GRY", "wishlist_name": "Gifts"},
        "add_to_collection",
        {"product_ids": ["MWS-42-GRY"]},
        "product-added-to-wishlist",
    ),
    case(
        "Remove From Wishlist",
        {"product_id": PID},
        "remove_from_collection",
        {"product_ids": [PID]},
        "remove-from-wishlist",
    ),
    # --- like / dislike / share / bookmark
    case("Like", {"product_id": PID}, "like", {"product_ids": [PID]}, "like"),
    case("Dislike", {"item_id": PID2}, "dislike", {"product_ids": [PID2]}, "dislike"),
    case(
        "Share",
        {"product_id": PID, "channel": "whatsapp"},
        "share",
        {"product_ids": [PID]},
        "share",
    ),
    case(
        "Shared",
        {"product": PID2, "channel": "email"},
        "share",
        {"product_ids": [PID2]},
        "shared",
    ),
    case("Bookmark", {"product_id": PID}, "bookmark", {"product_ids": [PID]}, "bookmark"),
    case("Bookmarked", {"sku": PID2}, "bookmark", {"product_ids": [PID2]}, "bookmarked"),
    # --- rate; rating is a number
    case(
        "Rate",
        {"product_id": PID, "rating": 4},
        "rate",
        {"product_ids": [PID], "rating": 4},
        "rate",
    ),
    case(
        "Rated",
        {"item_id": PID, "rating": 3.5},
        "rate",
        {"product_ids": [PID], "rating": 3.5},
        "rated",
    ),
    case(
        "Product Reviewed",
        {"product_id": PID, "rating": "5", "review_body": "Warm and soft"},
        "rate",
        {"product_ids": [PID], "rating": 5.0},
        "product-reviewed-string-rating",
    ),
    # --- watch / read / listen; duration in seconds
    case(
        "Video Watched",
        {"product_id": "vid_8812", "title": "How to darn a sock", "duration": 312.5},
        "watch",
        {"product_ids": ["vid_8812"], "duration": 312.5},
        "video-watched",
    ),
    case(
        "Video Completed",
        {"product_id": "vid_8812", "duration": 640},
        "watch",
        {"product_ids": ["vid_8812"], "duration": 640},
        "video-completed",
    ),
    case(
        "Article Read",
        {"product_id": "blog_wool_care", "duration": 184},
        "read",
        {"product_ids": ["blog_wool_care"], "duration": 184},
        "article-read",
    ),
    case(
        "Song Played",
        {"product_id": "trk_77120", "artist": "Nils Frahm", "duration": 215},
        "listen",
        {"product_ids": ["trk_77120"], "duration": 215},
        "song-played",
    ),
    case(
        "Track Played",
        {"sku": "trk_77121", "duration": "198"},
        "listen",
        {"product_ids": ["trk_77121"], "duration": 198.0},
        "track-played",
    ),
    case(
        "song_played",
        {"product_id": "trk_77120", "duration": 215},
        "listen",
        {"product_ids": ["trk_77120"], "duration": 215},
        "song-played-snake-case",
    ),
]


@pytest.mark.parametrize(("event", "properties", "miso_type", "fields"), TABLE)
def test_table_row(event, properties, miso_type, fields):
    """Each event name of the table, from mixpanel-js, becomes the whole expected Miso record."""
    result = translate(export_row(event, properties))
    assert result.records == [expected(miso_type, **fields)]
    assert set(result.links) == BOTH_IDS_LINK
    assert result.deletions == []
    assert result.skipped is None


def test_server_side_order_without_products():
    """A server-side /import-ed Order Completed line is a checkout with revenue only."""
    row = {
        "event": "Order Completed",
        "properties": {
            "time": 1718035220,
            "distinct_id": "u_48213",
            "$user_id": "u_48213",
            "$device_id": DEVICE,
            "$insert_id": "0f9b6c2e-81d4-4a7e-b3c5-6e2d9f1a7b30",
            "$import": True,
            "$mp_api_endpoint": "api.mixpanel.com",
            "$mp_api_timestamp_ms": 1718467301115,
            "mp_processing_time_ms": 1718467301260,
            "$city": "Lyon",
            "$region": "Auvergne-Rhone-Alpes",
            "mp_country_code": "FR",
            "order_id": "A-1009",
            "revenue": 59.9,
            "currency": "EUR",
        },
    }
    result = translate(row)
    # 1718035220 - JUNE_10 = 57620 s = 16 h 00 min 20 s.
    assert result.records == [
        {
            "type": "checkout",
            "user_id": USER,
            "anonymous_id": DEVICE,
            "timestamp": "2024-06-10T16:00:20.000Z",
            "revenue": 59.9,
        }
    ]
    assert set(result.links) == BOTH_IDS_LINK


def test_miso_id_is_carried_through():
    """A miso_id property (a UUID) is sent as the record's miso_id."""
    row = export_row("Product Viewed", {"product_id": PID, "miso_id": MISO_ID})
    assert translate_one(row) == expected(
        "product_detail_page_view", product_ids=[PID], miso_id=MISO_ID
    )


# --------------------------------------------------------------------------- page views

HOME_URL = "https://shop.example.com/"
HOME_TITLE = "Example Shop | Cozy knitwear for every season"


def page_view_row(event: str, url: str, path: str | None, title: str | None, **more: Any) -> dict:
    """A page view as mixpanel-js ``track_pageview()`` sends it."""
    page = {"$current_url": url, "current_domain": "shop.example.com"}
    if path is not None:
        page |= {"current_url_path": path, "current_url_protocol": "https:"}
    if title is not None:
        page["current_page_title"] = title
    changes = {
        **{f"utm_{k}": DROP for k in ("source", "medium", "campaign", "term", "content")},
        **page,
        **more,
    }
    return export_row(event, changes)


@pytest.mark.parametrize(
    ("row", "wanted_page", "wanted_campaign"),
    [
        pytest.param(
            page_view_row("$mp_web_page_view", HOME_URL, "/", HOME_TITLE),
            {"url": HOME_URL, "referrer": REFERRER, "title": HOME_TITLE},
            None,
            id="mp-web-page-view",
        ),
        pytest.param(
            page_view_row(
                "$mp_web_page_view",
                "https://shop.example.com/?utm_source=google&utm_medium=cpc",
                "/",
                HOME_TITLE,
                current_url_search="?utm_source=google&utm_medium=cpc",
                utm_source="google",
                utm_medium="cpc",
                **{"$referrer": DROP, "$referring_domain": DROP},
            ),
            {
                "url": "https://shop.example.com/?utm_source=google&utm_medium=cpc",
                "title": HOME_TITLE,
            },
            {"source": "google", "medium": "cpc"},
            id="mp-web-page-view-with-utms",
        ),
        pytest.param(
            page_view_row("Page View", HOME_URL, None, None),
            {"url": HOME_URL, "referrer": REFERRER},
            None,
            id="page-view-url-only",
        ),
        pytest.param(
            page_view_row("Page Viewed", "https://shop.example.com/?ref=footer", "/", HOME_TITLE),
            {
                "url": "https://shop.example.com/?ref=footer",
                "referrer": REFERRER,
                "title": HOME_TITLE,
            },
            None,
            id="page-viewed",
        ),
        pytest.param(
            page_view_row("page viewed", HOME_URL, "/", None),
            {"url": HOME_URL, "referrer": REFERRER},
            None,
            id="page-viewed-lower-case",
        ),
        pytest.param(
            page_view_row("page_view", HOME_URL, None, HOME_TITLE),
            {"url": HOME_URL, "referrer": REFERRER, "title": HOME_TITLE},
            None,
            id="page-view-snake-case",
        ),
    ],
)
def test_home_page_view(row, wanted_page, wanted_campaign):
    """A Mixpanel page-view event on path / becomes a home_page_view with its page context."""
    context = {"page": wanted_page}
    if wanted_campaign is not None:
        context["campaign"] = wanted_campaign
    result = translate(row)
    assert result.records == [expected("home_page_view", context=context)]
    assert set(result.links) == BOTH_IDS_LINK
    assert result.skipped is None


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(
            page_view_row(
                "$mp_web_page_view", "https://shop.example.com/pricing", "/pricing", "Pricing"
            ),
            id="mp-web-page-view-pricing",
        ),
        pytest.param(
            page_view_row("Page View", PAGE_URL, None, "Merino Wool Socks"),
            id="page-view-product-page",
        ),
        pytest.param(
            page_view_row(
                "Page Viewed",
                "https://shop.example.com/collections/knitwear",
                "/collections/knitwear",
                "Knitwear",
            ),
            id="page-viewed-collection",
        ),
    ],
)
def test_page_view_on_other_path_is_skipped(row):
    """A page view on a path other than / gives no record and a skip reason."""
    result = translate(row)
    assert result.records == []
    assert isinstance(result.skipped, str) and result.skipped
    assert set(result.links) == BOTH_IDS_LINK


def test_sample_page_view_is_skipped():
    """An anonymous $mp_web_page_view on /pricing gives no record and no link."""
    row = {
        "event": "$mp_web_page_view",
        "properties": {
            "time": 1718031512,
            "distinct_id": "$device:7c1e2a9b-4f3d-4e8a-9b61-2d5f0c8e1a44",
            "$device_id": "7c1e2a9b-4f3d-4e8a-9b61-2d5f0c8e1a44",
            "$insert_id": "k3v9q2m8x1z7w4p6",
            "$browser": "Chrome",
            "$browser_version": 125,
            "$os": "Mac OS X",
            "$current_url": "https://shop.example.com/pricing?utm_source=google&utm_medium=cpc",
            "$initial_referrer": "$direct",
            "$initial_referring_domain": "$direct",
            "$screen_height": 900,
            "$screen_width": 1440,
            "$lib_version": "2.60.0",
            "mp_lib": "web",
            "mp_sent_by_lib_version": "2.60.0",
            "$mp_api_endpoint": "api-js.mixpanel.com",
            "$mp_api_timestamp_ms": 1718031512840,
            "mp_processing_time_ms": 1718031513012,
            "$city": "Lyon",
            "$region": "Auvergne-Rhone-Alpes",
            "mp_country_code": "FR",
            "current_page_title": "Pricing",
            "current_domain": "shop.example.com",
            "current_url_path": "/pricing",
            "current_url_protocol": "https:",
            "current_url_search": "?utm_source=google&utm_medium=cpc",
            "utm_source": "google",
            "utm_medium": "cpc",
            "$mp_autocapture": True,
        },
    }
    result = translate(row)
    assert result.records == []
    assert isinstance(result.skipped, str) and result.skipped
    assert result.links == []


# --------------------------------------------------------------------------- skipped events


def autocapture(event: str, **more: Any) -> dict:
    """An autocapture event (mixpanel-js ≥ 2.60.0)."""
    return export_row(
        event,
        {
            "$mp_autocapture": True,
            "$event_type": "click",
            "$el_tag_name": "button",
            "$el_text": "Add to bag",
            "$el_classes": ["btn", "btn-primary"],
            "$el_id": "add-to-bag",
            "product_id": PID,  # a data attribute captured with the element
            **more,
        },
    )


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(autocapture("$mp_click"), id="mp-click"),
        pytest.param(autocapture("$mp_dead_click"), id="mp-dead-click"),
        pytest.param(autocapture("$mp_rage_click"), id="mp-rage-click"),
        pytest.param(autocapture("$mp_submit", **{"$event_type": "submit"}), id="mp-submit"),
        pytest.param(autocapture("$mp_input_change", **{"$event_type": "change"}), id="mp-input"),
        pytest.param(autocapture("$mp_scroll", **{"$event_type": "scroll"}), id="mp-scroll"),
        pytest.param(autocapture("$mp_page_leave", **{"$event_type": "pagehide"}), id="mp-leave"),
        pytest.param(
            export_row(
                "$mp_session_record",
                {"$mp_replay_id": "19020c0d-3a8e-4b1c-9f7a-2e6d5c4b3a21"},
            ),
            id="mp-session-record",
        ),
        pytest.param(
            export_row("Signed Up", {"plan": "free", "signup_method": "google"}), id="custom"
        ),
        pytest.param(export_row("$ae_session", {"$ae_session_length": 42.1}), id="ae-session"),
    ],
)
def test_event_no_rule_covers_is_skipped(row):
    """Autocapture $mp_* events and unknown events give no record, a reason, and the link."""
    result = translate(row)
    assert result.records == []
    assert isinstance(result.skipped, str) and result.skipped
    assert set(result.links) == BOTH_IDS_LINK
    assert result.deletions == []


def hot_shard_row(properties: dict) -> dict:
    """A row Mixpanel renamed to $hotshard_events, distinct_id blanked (its hot-shard limits)."""
    base = {
        "time": TIME,
        "distinct_id": "",
        "$insert_id": INSERT_ID,
        "$current_url": PAGE_URL,
        "mp_lib": "web",
        "$lib_version": "2.60.0",
        "mp_processing_time_ms": TIME * 1000 + 1012,
        "product_id": PID,
    }
    return {"event": "$hotshard_events", "properties": _apply(base, properties)}


def test_hot_shard_row_is_restored():
    """A $hotshard_events row with its originals is translated as the original event."""
    row = hot_shard_row(
        {"mp_original_event_name": "Product Viewed", "mp_original_distinct_id": USER}
    )
    result = translate(row)
    assert result.records == [
        {
            "type": "product_detail_page_view",
            "user_id": USER,
            "timestamp": TIMESTAMP,
            "product_ids": [PID],
            "context": {"page": {"url": PAGE_URL}},
        }
    ]
    assert result.links == []


def test_hot_shard_row_with_device_id_links_it():
    """A restored hot-shard row whose original distinct_id is a user links its $device_id."""
    row = hot_shard_row(
        {
            "mp_original_event_name": "Add To Cart",
            "mp_original_distinct_id": USER,
            "$device_id": DEVICE,
        }
    )
    result = translate(row)
    assert result.records == [
        {
            "type": "add_to_cart",
            "user_id": USER,
            "anonymous_id": DEVICE,
            "timestamp": TIMESTAMP,
            "product_ids": [PID],
            "quantities": [1],
            "context": {"page": {"url": PAGE_URL}},
        }
    ]
    assert set(result.links) == BOTH_IDS_LINK


def test_hot_shard_row_with_anonymous_original():
    """A restored hot-shard row whose original distinct_id is $device:-prefixed is anonymous."""
    row = hot_shard_row(
        {
            "mp_original_event_name": "Product Viewed",
            "mp_original_distinct_id": f"$device:{DEVICE}",
        }
    )
    assert translate_one(row) == {
        "type": "product_detail_page_view",
        "anonymous_id": DEVICE,
        "timestamp": TIMESTAMP,
        "product_ids": [PID],
        "context": {"page": {"url": PAGE_URL}},
    }


@pytest.mark.parametrize(
    "properties",
    [
        pytest.param({"$device_id": DEVICE, "$user_id": USER}, id="no-originals"),
        pytest.param(
            {"$device_id": DEVICE, "mp_original_event_name": "", "mp_original_distinct_id": ""},
            id="empty-originals",
        ),
    ],
)
def test_hot_shard_row_without_original_is_skipped(properties):
    """A $hotshard_events row without its original event name gives no record and a reason."""
    result = translate(hot_shard_row(properties))
    assert result.records == []
    assert isinstance(result.skipped, str) and result.skipped


# --------------------------------------------------------------------------- identity events


@pytest.mark.parametrize(
    ("row", "link"),
    [
        pytest.param(
            # A pre-2023 project's Original ID Merge row, re-keyed to the anonymous canonical id.
            {
                "event": "$identify",
                "properties": {
                    "time": 1580913600,
                    "distinct_id": "0b6d1f4e-3a2c-4c8e-9d7a-5e1f2b3c4d5e",
                    "$distinct_id_before_identity": "u_48213",
                    "$identified_id": "u_48213",
                    "$anon_id": "0b6d1f4e-3a2c-4c8e-9d7a-5e1f2b3c4d5e",
                    "$insert_id": "9e2a4c6b8d0f1a3c",
                    "mp_lib": "web",
                    "$lib_version": "2.34.0",
                    "mp_processing_time_ms": 1580942401337,
                },
            },
            Link(anonymous_id="0b6d1f4e-3a2c-4c8e-9d7a-5e1f2b3c4d5e", user_id="u_48213"),
            id="identify-original-merge-sample",
        ),
        pytest.param(
            # mixpanel-js identify(): distinct_id = the new id, $anon_distinct_id = the old one.
            export_row(
                "$identify",
                {"$anon_distinct_id": f"$device:{DEVICE}", "$user_id": DROP, "$device_id": DROP},
            ),
            Link(anonymous_id=DEVICE, user_id=USER),
            id="identify-mixpanel-js",
        ),
        pytest.param(
            export_row(
                "$identify",
                {
                    "distinct_id": "0b6d1f4e-3a2c-4c8e-9d7a-5e1f2b3c4d5e",
                    "$anon_distinct_id": DEVICE,
                    "$identified_id": USER,
                    "$user_id": DROP,
                    "$device_id": DROP,
                },
            ),
            Link(anonymous_id=DEVICE, user_id=USER),
            id="identify-identified-id-before-distinct-id",
        ),
        pytest.param(
            # mixpanel-js alias(): distinct_id = the current (anonymous) id, alias = the user.
            export_row(
                "$create_alias",
                {
                    "distinct_id": f"$device:{DEVICE}",
                    "alias": USER,
                    "$user_id": DROP,
                    "$device_id": DROP,
                },
            ),
            Link(anonymous_id=DEVICE, user_id=USER),
            id="create-alias-mixpanel-js",
        ),
        pytest.param(
            export_row(
                "$create_alias",
                {"distinct_id": DEVICE, "alias": USER, "$user_id": DROP, "$device_id": DROP},
            ),
            Link(anonymous_id=DEVICE, user_id=USER),
            id="create-alias-unprefixed-device",
        ),
        pytest.param(
            server_row(
                "$merge",
                {
                    "$distinct_ids": [USER, DEVICE],
                    "distinct_id": USER,
                    "$user_id": DROP,
                    "$device_id": DROP,
                },
            ),
            Link(anonymous_id=DEVICE, user_id=USER),
            id="merge-user-then-anonymous",
        ),
        pytest.param(
            server_row(
                "$merge",
                {
                    "$distinct_ids": [f"$device:{DEVICE}", USER],
                    "distinct_id": USER,
                    "$user_id": DROP,
                    "$device_id": DROP,
                },
            ),
            Link(anonymous_id=DEVICE, user_id=USER),
            id="merge-device-first",
        ),
        pytest.param(
            server_row(
                "$merge",
                {
                    "$distinct_ids": [USER, f"$device:{DEVICE}"],
                    "distinct_id": USER,
                    "$user_id": DROP,
                    "$device_id": DROP,
                },
            ),
            Link(anonymous_id=DEVICE, user_id=USER),
            id="merge-device-second",
        ),
        pytest.param(
            server_row(
                "$merge",
                {"$distinct_ids": [48213, DEVICE], "distinct_id": 48213, "$user_id": DROP},
            ),
            Link(anonymous_id=DEVICE, user_id="48213"),
            id="merge-numeric-user",
        ),
    ],
)
def test_identity_event_gives_a_link_and_no_record(row, link):
    """$identify, $create_alias and $merge give no record and the anonymous → user link."""
    result = translate(row)
    assert result.records == []
    assert set(result.links) == {link}
    assert result.deletions == []


# --------------------------------------------------------------------------- ids


def ids_row(ids: dict) -> dict:
    """A Product Viewed row whose id properties are exactly ``ids``."""
    cleared = {"distinct_id": DROP, "$device_id": DROP, "$user_id": DROP}
    return export_row("Product Viewed", {**cleared, "product_id": PID, **ids})


@pytest.mark.parametrize(
    ("ids", "user_id", "anonymous_id"),
    [
        pytest.param(
            {"distinct_id": USER, "$user_id": USER, "$device_id": DEVICE},
            USER,
            DEVICE,
            id="simplified-signed-in",
        ),
        pytest.param(
            {"distinct_id": f"$device:{DEVICE}", "$device_id": DEVICE},
            None,
            DEVICE,
            id="simplified-anonymous",
        ),
        pytest.param(
            {"distinct_id": f"$device:{DEVICE}"},
            None,
            DEVICE,
            id="device-prefix-stripped-without-device-id",
        ),
        pytest.param(
            {"distinct_id": "legacy-42", "$user_id": USER, "$device_id": DEVICE},
            USER,
            DEVICE,
            id="user-id-property-wins-over-distinct-id",
        ),
        pytest.param(
            {"distinct_id": USER},
            USER,
            None,
            id="plain-distinct-id-is-a-user",
        ),
        pytest.param(
            {"distinct_id": DEVICE},
            DEVICE,  # unprefixed, no $device_id: a plain distinct_id, so a user id
            None,
            id="plain-uuid-distinct-id-is-a-user",
        ),
        pytest.param(
            {"distinct_id": USER, "$device_id": DEVICE},
            USER,
            DEVICE,
            id="distinct-id-differs-from-device-id",
        ),
        pytest.param(
            {"distinct_id": DEVICE, "$device_id": DEVICE},
            None,
            DEVICE,
            id="original-merge-distinct-id-equals-device-id",
        ),
        pytest.param(
            {"distinct_id": DEVICE, "$device_id": DEVICE, "$distinct_id_before_identity": USER},
            USER,
            DEVICE,
            id="before-identity-when-distinct-id-is-the-device",
        ),
        pytest.param(
            {"distinct_id": f"$device:{DEVICE}", "$distinct_id_before_identity": USER},
            USER,
            DEVICE,
            id="before-identity-when-distinct-id-is-prefixed",
        ),
        pytest.param(
            {"distinct_id": USER, "$distinct_id_before_identity": f"$device:{DEVICE}"},
            USER,
            None,
            id="prefixed-before-identity-is-never-a-user",
        ),
        pytest.param(
            {"distinct_id": 48213},
            "48213",
            None,
            id="numeric-distinct-id",
        ),
        pytest.param(
            {"distinct_id": 48213, "$user_id": 48213, "$device_id": DEVICE},
            "48213",
            DEVICE,
            id="numeric-user-id",
        ),
        pytest.param(
            {"distinct_id": f"$device:{DEVICE}", "$device_id": f"$device:{DEVICE}"},
            None,
            DEVICE,
            id="prefixed-device-id-never-double-prefixed",
        ),
        pytest.param(
            {"distinct_id": DEVICE, "$device_id": f"$device:{DEVICE}"},
            None,
            DEVICE,
            id="distinct-id-equals-prefixed-device-id",
        ),
        pytest.param(
            {"distinct_id": f"$device:{DEVICE}", "$device_id": DEVICE, "$user_id": "null"},
            None,
            DEVICE,
            id="placeholder-user-id",
        ),
        pytest.param(
            {"distinct_id": USER, "$device_id": "undefined"},
            USER,
            None,
            id="placeholder-device-id",
        ),
    ],
)
def test_ids(ids, user_id, anonymous_id):
    """user_id and anonymous_id follow the Mixpanel id rules; both together give a link."""
    result = translate(ids_row(ids))
    wanted = expected("product_detail_page_view", product_ids=[PID])
    wanted = _apply(
        wanted,
        {
            "user_id": DROP if user_id is None else user_id,
            "anonymous_id": DROP if anonymous_id is None else anonymous_id,
        },
    )
    assert result.records == [wanted]
    if user_id is not None and anonymous_id is not None:
        assert set(result.links) == {Link(anonymous_id=anonymous_id, user_id=user_id)}
    else:
        assert result.links == []


PLACEHOLDERS = [
    pytest.param("anon", id="anon"),
    pytest.param("anonymous", id="anonymous"),
    pytest.param("null", id="null"),
    pytest.param("none", id="none"),
    pytest.param("undefined", id="undefined"),
    pytest.param("unknown", id="unknown"),
    pytest.param("0", id="zero-text"),
    pytest.param(0, id="zero-number"),
    pytest.param("-1", id="minus-one-text"),
    pytest.param(-1, id="minus-one-number"),
    pytest.param("00000000-0000-0000-0000-000000000000", id="zero-uuid"),
    pytest.param("", id="empty"),
    pytest.param(None, id="json-null"),
]


@pytest.mark.parametrize("placeholder", PLACEHOLDERS)
def test_placeholder_distinct_id_is_not_a_user(placeholder):
    """A placeholder distinct_id is missing: the row keeps only its $device_id, no link."""
    result = translate(ids_row({"distinct_id": placeholder, "$device_id": DEVICE}))
    assert result.records == [expected("product_detail_page_view", product_ids=[PID], user_id=DROP)]
    assert result.links == []


@pytest.mark.parametrize("placeholder", PLACEHOLDERS)
def test_placeholder_ids_only_is_skipped(placeholder):
    """A row whose every id is a placeholder gives no record and says why."""
    row = ids_row(
        {
            "distinct_id": placeholder,
            "$device_id": placeholder,
            "$user_id": placeholder,
            "$distinct_id_before_identity": placeholder,
        }
    )
    result = translate(row)
    assert result.records == []
    assert result.links == []
    assert result.skipped is not None
    assert re.search(r"user.?id", result.skipped, re.IGNORECASE), result.skipped
    assert re.search(r"anonymous.?id", result.skipped, re.IGNORECASE), result.skipped


def test_row_without_any_id_is_skipped():
    """A row with no distinct_id, $device_id or $user_id gives no record and says why."""
    result = translate(ids_row({}))
    assert result.records == []
    assert result.links == []
    assert result.skipped is not None
    assert re.search(r"user.?id", result.skipped, re.IGNORECASE), result.skipped
    assert re.search(r"anonymous.?id", result.skipped, re.IGNORECASE), result.skipped


def test_known_anonymous_distinct_id_is_the_anonymous_side():
    """A distinct_id already seen as an anonymous id is the record's anonymous_id, not a user."""
    # Original ID Merge re-keys rows to a canonical id that may be the device's;
    # the as-ingested id stays in $distinct_id_before_identity.
    anon = "0b6d1f4e-3a2c-4c8e-9d7a-5e1f2b3c4d5e"
    normalizer = Normalizer()
    identify = {
        "event": "$identify",
        "properties": {
            "time": TIME,
            "distinct_id": anon,
            "$identified_id": USER,
            "$anon_id": anon,
            "$insert_id": "9e2a4c6b8d0f1a3c",
        },
    }
    assert normalizer(identify)[0] is not None
    rekeyed = server_row(
        "Purchase",
        {
            "distinct_id": anon,
            "$distinct_id_before_identity": USER,
            "$user_id": DROP,
            "$device_id": DROP,
            "revenue": 14.5,
            "product_id": PID,
        },
    )
    key, event = normalizer(rekeyed)
    assert key is not None
    result = _translator().translate(event)
    assert result.records == [
        {
            "type": "checkout",
            "user_id": USER,
            "anonymous_id": anon,
            "timestamp": TIMESTAMP,
            "product_ids": [PID],
            "quantities": [1],
            "revenue": 14.5,
        }
    ]


def _identify(anonymous: str, user: str) -> dict:
    """An Original ID Merge $identify row as mixpanel-js sends it (anonymous → user)."""
    props = {"distinct_id": user, "$anon_distinct_id": anonymous, "$user_id": DROP}
    return server_row("$identify", {**props, "$device_id": DROP})


def _ids_of(normalizer: Normalizer, row: dict) -> dict:
    return normalizer(row)[1]


def test_a_device_row_read_before_its_sign_in_is_anonymous_once_settled():
    """Original ID Merge: rows of an unprefixed device id read before its $identify are
    decided again by settle(): the device id is their anonymous_id, not a user."""
    normalizer = Normalizer()
    early = _ids_of(normalizer, ids_row({"distinct_id": "dev-1"}))
    assert (early["user_id"], early["anonymous_id"]) == ("dev-1", None)  # not known yet
    normalizer(_identify("dev-1", USER))
    late = _ids_of(normalizer, ids_row({"distinct_id": "dev-1"}))
    assert (late["user_id"], late["anonymous_id"]) == (None, "dev-1")
    normalizer.settle()
    assert (early["user_id"], early["anonymous_id"]) == (None, "dev-1")
    result = _translator().translate(early)
    assert [r.get("anonymous_id") for r in result.records] == ["dev-1"]


def test_ids_known_to_the_store_as_anonymous_are_anonymous():
    """known_anonymous (the store) says which ids are anonymous: one look-up per batch, of
    the ids this run does not know; what it names is remembered."""
    asked: list[list[str]] = []

    def store_knows(ids: list[str]) -> list[str]:
        asked.append(ids)
        return [i for i in ids if i.startswith("dev-")]

    normalizer = Normalizer(known_anonymous=store_knows)
    rows = [
        _ids_of(normalizer, ids_row({"distinct_id": "dev-7"})),
        _ids_of(normalizer, ids_row({"distinct_id": USER})),
        _ids_of(normalizer, ids_row({"distinct_id": "dev-7", "$device_id": DEVICE})),
        _ids_of(normalizer, ids_row({"distinct_id": USER, "$user_id": USER})),
    ]
    normalizer.settle()
    assert asked == [["dev-7", USER]]
    assert [(r["user_id"], r["anonymous_id"]) for r in rows] == [
        (None, "dev-7"),
        (USER, None),
        (None, DEVICE),  # a $device_id is the anonymous id; dev-7 is no user either
        (USER, None),
    ]
    again = _ids_of(normalizer, ids_row({"distinct_id": "dev-7"}))
    normalizer.settle()
    assert (again["anonymous_id"], asked[1:]) == ("dev-7", [])  # remembered, not asked again


def test_a_rekeyed_row_keeps_its_user_beside_the_known_device():
    """A row re-keyed to a known device id keeps the as-ingested user id from
    $distinct_id_before_identity: both ids."""
    normalizer = Normalizer(known_anonymous=lambda ids: [i for i in ids if i == "dev-2"])
    event = _ids_of(
        normalizer, ids_row({"distinct_id": "dev-2", "$distinct_id_before_identity": USER})
    )
    normalizer.settle()
    assert (event["user_id"], event["anonymous_id"]) == (USER, "dev-2")


@pytest.mark.parametrize(
    ("ids", "known", "link"),
    [
        pytest.param([USER, "dev-3"], [], Link("dev-3", USER), id="order-rule"),
        pytest.param(["dev-3", USER], ["dev-3"], Link("dev-3", USER), id="known-first"),
        pytest.param([USER, "dev-3"], ["dev-3"], Link("dev-3", USER), id="known-second"),
        pytest.param([f"$device:{DEVICE}", USER], [USER], Link(DEVICE, USER), id="prefix-wins"),
    ],
)
def test_merge_takes_a_known_anonymous_id_as_the_anonymous_side(ids, known, link):
    """$merge: a $device:-prefixed or known anonymous id is the anonymous side wherever it
    stands; otherwise the order is [user, anonymous]."""
    normalizer = Normalizer(known_anonymous=lambda asked: [i for i in asked if i in known])
    row = server_row("$merge", {"$distinct_ids": ids, "distinct_id": ids[0], "$user_id": DROP})
    _, event = normalizer(row)
    normalizer.settle()
    assert _translator().translate(event).links == [link]


def test_merge_learns_from_a_device_seen_earlier_in_the_run():
    """An id this run has seen as a $device_id is anonymous in a later $merge."""
    normalizer = Normalizer()
    normalizer(ids_row({"distinct_id": "dev-4", "$device_id": "dev-4"}))
    row = server_row("$merge", {"$distinct_ids": ["dev-4", USER], "distinct_id": USER})
    _, event = normalizer(row)
    normalizer.settle()
    assert _translator().translate(event).links == [Link("dev-4", USER)]


def test_identity_rows_finds_the_identity_rows_of_lines_and_arrays():
    """identity_rows() yields only $identify/$create_alias/$merge rows, from JSON Lines
    (garbage lines passed over) and from a JSON array; learn() gives each one's link."""

    rows = [ids_row({"distinct_id": "x"}), _identify("dev-5", USER), _identify("dev-6", "u2")]
    lines = b"".join(orjson.dumps(r) + b"\n" for r in rows) + b'{"event": "$merge", oops\n'
    array = orjson.dumps(rows)
    for body in (lines, array):
        normalizer = Normalizer()
        found = list(identity_rows(io.BufferedReader(io.BytesIO(body)), "export"))
        assert [normalizer.learn(r) for r in found] == [("dev-5", USER), ("dev-6", "u2")]
        event = _ids_of(normalizer, ids_row({"distinct_id": "dev-6"}))
        assert (event["user_id"], event["anonymous_id"]) == (None, "dev-6")


# --------------------------------------------------------------------------- time

# Wall-clock instants (a pre-2023 project's local time written as if it were UTC), by hand:
# 2024-03-10T00:00:00Z = 1704067200 + (31 + 29 + 9) * 86400 = 1704067200 + 69 * 86400 = 1710028800
# 2024-11-03T00:00:00Z = 1704067200 + (305 + 2) * 86400 = 1704067200 + 307 * 86400 = 1730592000
#   (305 = 31+29+31+30+31+30+31+31+30+31 days, January to October 2024)
MARCH_10 = 1_710_028_800
NOVEMBER_3 = 1_730_592_000
# America/Los_Angeles: on 2024-03-10 at 02:00 PST (-08:00) clocks jump to 03:00 PDT (-07:00);
# on 2024-11-03 at 02:00 PDT clocks fall back to 01:00 PST.  UTC = local wall clock - offset.


@pytest.mark.parametrize(
    ("time", "options", "wanted"),
    [
        pytest.param(TIME, {}, TIMESTAMP, id="seconds"),
        pytest.param(TIME * 1000 + 345, {}, "2024-06-10T14:58:32.345Z", id="milliseconds"),
        pytest.param(TIME + 0.25, {}, "2024-06-10T14:58:32.250Z", id="fractional-seconds"),
        # Fixed -8 h: 14:58:32 local + 8 h = 22:58:32 UTC.
        pytest.param(TIME, {"time_offset": -8}, "2024-06-10T22:58:32.000Z", id="offset-minus-8"),
        pytest.param(
            TIME * 1000 + 345,
            {"time_offset": -8},
            "2024-06-10T22:58:32.345Z",
            id="offset-minus-8-milliseconds",
        ),
        # Fixed +5.5 h (an IST project): 14:58:32 local - 5 h 30 = 09:28:32 UTC.
        pytest.param(TIME, {"time_offset": 5.5}, "2024-06-10T09:28:32.000Z", id="offset-plus-5.5"),
        # Fixed -8 h: 2024-06-10T20:00 local + 8 h = 2024-06-11T04:00 UTC.
        pytest.param(
            JUNE_10 + 20 * 3600,
            {"time_offset": -8},
            "2024-06-11T04:00:00.000Z",
            id="offset-crosses-midnight",
        ),
        # LA in June is PDT (-7): 14:58:32 local + 7 h = 21:58:32 UTC (fixed -8 would say 22:58).
        pytest.param(
            TIME,
            {"timezone": "America/Los_Angeles"},
            "2024-06-10T21:58:32.000Z",
            id="la-summer-pdt",
        ),
        # 2024-03-10 01:30 local (PST, -8): MARCH_10 + 5400 → 09:30 UTC.
        pytest.param(
            MARCH_10 + 5_400,
            {"timezone": "America/Los_Angeles"},
            "2024-03-10T09:30:00.000Z",
            id="la-before-spring-forward",
        ),
        # 2024-03-10 03:30 local (PDT, -7): MARCH_10 + 12600 → 10:30 UTC (one hour later
        # than 01:30 local, although the wall clock moved two).
        pytest.param(
            MARCH_10 + 12_600,
            {"timezone": "America/Los_Angeles"},
            "2024-03-10T10:30:00.000Z",
            id="la-after-spring-forward",
        ),
        pytest.param(
            (MARCH_10 + 12_600) * 1000 + 7,
            {"timezone": "America/Los_Angeles"},
            "2024-03-10T10:30:00.007Z",
            id="la-after-spring-forward-milliseconds",
        ),
        # The fixed offset ignores DST: 03:30 local + 8 h = 11:30 UTC.
        pytest.param(
            MARCH_10 + 12_600,
            {"time_offset": -8},
            "2024-03-10T11:30:00.000Z",
            id="offset-ignores-spring-forward",
        ),
        # 2024-11-03 00:30 local (PDT, -7): NOVEMBER_3 + 1800 → 07:30 UTC.
        pytest.param(
            NOVEMBER_3 + 1_800,
            {"timezone": "America/Los_Angeles"},
            "2024-11-03T07:30:00.000Z",
            id="la-before-fall-back",
        ),
        # 2024-11-03 02:30 local (PST, -8): NOVEMBER_3 + 9000 → 10:30 UTC.
        pytest.param(
            NOVEMBER_3 + 9_000,
            {"timezone": "America/Los_Angeles"},
            "2024-11-03T10:30:00.000Z",
            id="la-after-fall-back",
        ),
        # The Original-merge $identify row (identify-original-merge-sample): 1580913600 =
        # 2020-02-05T14:40:00 wall clock
        # (1580860800 = 2020-02-05T00:00Z: 18297 days * 86400; +52800 s = 14:40), PST → 22:40Z,
        # which matches its mp_processing_time_ms 1580942401337 (22:40:01.337Z).
        pytest.param(
            1_580_913_600,
            {"timezone": "America/Los_Angeles"},
            "2020-02-05T22:40:00.000Z",
            id="la-identify-sample",
        ),
    ],
)
def test_time(time, options, wanted):
    """time in s or ms becomes UTC with ms, undoing a pre-2023 project's offset or timezone."""
    row = export_row("Product Viewed", {"product_id": PID, "time": time})
    assert translate_one(row, **options) == expected(
        "product_detail_page_view", product_ids=[PID], timestamp=wanted
    )


# --------------------------------------------------------------------------- context


@pytest.mark.parametrize(
    ("changes", "wanted_context"),
    [
        pytest.param(
            {"ip": "203.0.113.57"},
            expected_context(truncated_ip="203.0.113.0"),
            id="ipv4-truncated",
        ),
        pytest.param({"ip": "2001:db8:85a3::8a2e:370:7334"}, expected_context(), id="ipv6-dropped"),
        pytest.param({"ip": 0}, expected_context(), id="ip-0-disables-geo"),
        pytest.param(
            {"$referrer": "$direct", "$referring_domain": "$direct"},
            expected_context(page={"url": PAGE_URL}),
            id="direct-referrer-not-sent",
        ),
        pytest.param(
            {"$referrer": DROP, "$referring_domain": DROP},
            expected_context(page={"url": PAGE_URL}),
            id="no-referrer",
        ),
        pytest.param(
            {"$current_url": DROP},
            expected_context(page=DROP),
            id="page-without-url-dropped",
        ),
        pytest.param(
            {"current_page_title": "Merino Wool Socks | Example Shop"},
            expected_context(
                page={
                    "url": PAGE_URL,
                    "referrer": REFERRER,
                    "title": "Merino Wool Socks | Example Shop",
                }
            ),
            id="page-title",
        ),
        pytest.param(
            {"utm_term": DROP, "utm_content": DROP},
            expected_context(
                campaign={"name": "june_knitwear", "source": "newsletter", "medium": "email"}
            ),
            id="partial-campaign",
        ),
        pytest.param(
            {f"utm_{k}": DROP for k in ("source", "medium", "campaign", "term", "content")},
            expected_context(campaign=DROP),
            id="no-campaign",
        ),
    ],
)
def test_context_fields(changes, wanted_context):
    """context.page, campaign and truncated_ip follow the table's common fields and conversions."""
    row = export_row("Product Viewed", {"product_id": PID, **changes})
    assert translate_one(row) == expected(
        "product_detail_page_view", product_ids=[PID], context=wanted_context
    )


def test_system_properties_never_reach_a_record():
    """No value of Mixpanel's system properties appears anywhere in the record."""
    system = {
        **SYSTEM_PROPERTIES,
        "$import": True,
        "$mp_event_size": 1873,
        "$mp_api_endpoint": "api-eu.mixpanel.com",
        "$mp_api_timestamp_ms": 1718031512999,
        "mp_processing_time_ms": 1718031513777,
        "$lib_version": "9.87.6",
        "mp_lib": "mp-lib-marker",
    }
    row = export_row("Purchase", {"product_id": PID, "revenue": 14.5, **system})
    record = translate_one(row)
    assert record == expected("checkout", product_ids=[PID], quantities=[1], revenue=14.5)
    wire = json.dumps(record)
    for value in ("api-eu.mixpanel.com", "1718031512999", "1718031513777", "9.87.6", "1873"):
        assert value not in wire
    assert "mp-lib-marker" not in wire


def test_normalized_event_has_no_system_properties():
    """The Normalizer strips Mixpanel's system properties before any mapping sees them."""
    row = export_row("Product Viewed", {"product_id": PID, "$import": True, "$mp_event_size": 1873})
    key, event = normalize(row)
    assert key is not None
    for name in (
        "mp_processing_time_ms",
        "$mp_api_endpoint",
        "$mp_api_timestamp_ms",
        "$import",
        "$mp_event_size",
        "$lib_version",
        "mp_lib",
    ):
        assert name not in event["properties"], name
    assert event["properties"]["product_id"] == PID
    assert event["properties"]["$current_url"] == PAGE_URL


# --------------------------------------------------------------------------- Data Pipelines

_TOP_LEVEL = {
    "time": "time",
    "distinct_id": "distinct_id",
    "$device_id": "device_id",
    "$user_id": "user_id",
    "$insert_id": "insert_id",
}


def pipeline_row(raw: dict, *, keep_in_properties: bool = False, as_text: bool = False) -> dict:
    """The Data Pipelines JSON form of a raw-export row."""
    props = dict(raw["properties"])
    out: dict[str, Any] = {"event_name": raw["event"]}
    for prop, column in _TOP_LEVEL.items():
        out[column] = props.get(prop)
        if not keep_in_properties:
            props.pop(prop, None)
    out["properties"] = json.dumps(props) if as_text else props
    return out


PIPELINE_ROWS = [
    pytest.param(export_row("Add To Cart", {"product_id": PID, "quantity": 2}), id="add-to-cart"),
    pytest.param(
        export_row(
            "Product Viewed",
            {"product_id": PID, "distinct_id": f"$device:{DEVICE}", "$user_id": DROP},
        ),
        id="anonymous",
    ),
    pytest.param(
        server_row("Order Completed", {"order_id": "A-1009", "revenue": 59.9}),
        id="server-order",
    ),
    pytest.param(
        page_view_row("$mp_web_page_view", HOME_URL, "/", HOME_TITLE), id="home-page-view"
    ),
]


@pytest.mark.parametrize("raw", PIPELINE_ROWS)
@pytest.mark.parametrize(
    "options",
    [
        pytest.param({}, id="properties-object"),
        pytest.param({"as_text": True}, id="properties-json-string"),
        pytest.param({"keep_in_properties": True}, id="ids-also-in-properties"),
    ],
)
def test_data_pipelines_row_translates_like_raw_export(raw, options):
    """A Data Pipelines row gives the same records, links and dedup key as its raw-export row."""
    from_raw = translate(raw)
    pipeline = pipeline_row(raw, **options)
    from_pipeline = translate(pipeline)
    assert len(from_raw.records) == 1
    assert from_pipeline.records == from_raw.records
    assert set(from_pipeline.links) == set(from_raw.links)
    assert normalize(pipeline)[0] == normalize(raw)[0]


def test_data_pipelines_row_with_null_user_id():
    """A pipeline row with user_id null (an anonymous visitor) is an anonymous record."""
    row = {
        "event_name": "Product Viewed",
        "distinct_id": f"$device:{DEVICE}",
        "device_id": DEVICE,
        "user_id": None,
        "insert_id": INSERT_ID,
        "time": TIME,
        "properties": {"$current_url": PAGE_URL, "product_id": PID, "mp_lib": "web"},
    }
    result = translate(row)
    assert result.records == [
        {
            "type": "product_detail_page_view",
            "anonymous_id": DEVICE,
            "timestamp": TIMESTAMP,
            "product_ids": [PID],
            "context": {"page": {"url": PAGE_URL}},
        }
    ]
    assert result.links == []


# --------------------------------------------------------------------------- dedup keys


def dedup_key(row: dict) -> str:
    key, event = normalize(row)
    assert isinstance(key, str) and key, event
    return key


def test_dedup_key_ignores_other_properties_when_insert_id_is_present():
    """Same event, distinct_id, time and $insert_id: one key, whatever the other properties."""
    first = export_row("Add To Cart", {"product_id": PID, "quantity": 1})
    second = export_row(
        "Add To Cart",
        {
            "product_id": PID2,
            "quantity": 4,
            "$city": "Paris",
            "$current_url": "https://shop.example.com/cart",
            "mp_processing_time_ms": TIME * 1000 + 99_999,
        },
    )
    assert dedup_key(first) == dedup_key(second)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"event": "Remove From Cart"}, id="event"),
        pytest.param({"distinct_id": "u_99999"}, id="distinct-id"),
        pytest.param({"time": TIME + 1}, id="time"),
        pytest.param({"$insert_id": "a8d2k1m9x0z7w4p6"}, id="insert-id"),
    ],
)
def test_dedup_key_changes_with_each_part_of_mixpanel_identity(change):
    """Changing event, distinct_id, time or $insert_id changes the dedup key."""
    base = export_row("Add To Cart", {"product_id": PID})
    other = copy.deepcopy(base)
    if "event" in change:
        other["event"] = change["event"]
    else:
        other["properties"].update(change)
    assert dedup_key(base) != dedup_key(other)


def test_dedup_key_without_insert_id_follows_content():
    """Without $insert_id the key is a content hash: content changes it, system props do not."""
    base = export_row("Add To Cart", {"product_id": PID, "quantity": 1, "$insert_id": DROP})
    same_again = copy.deepcopy(base)
    system_only = copy.deepcopy(base)
    system_only["properties"].update(
        {
            "mp_processing_time_ms": TIME * 1000 + 86_400_000,  # re-exported a day later
            "$mp_api_timestamp_ms": TIME * 1000 + 5,
            "$import": True,
            "$mp_event_size": 911,
        }
    )
    content = copy.deepcopy(base)
    content["properties"]["quantity"] = 3
    assert dedup_key(base) == dedup_key(same_again)
    assert dedup_key(base) == dedup_key(system_only)
    assert dedup_key(base) != dedup_key(content)


def test_duplicate_rows_of_overlapping_exports_share_a_key():
    """The same row exported twice (overlapping date chunks) gives the same dedup key."""
    row = export_row("Purchase", {"product_id": PID, "revenue": 14.5})
    again = json.loads(json.dumps(row))
    again["properties"]["mp_processing_time_ms"] = TIME * 1000 + 2_000
    assert dedup_key(row) == dedup_key(again)


def test_pipeline_rows_are_never_time_corrected():
    """Data Pipelines write UTC even for pre-2023 projects: no local-time correction."""
    row = {
        "event_name": "Product Viewed",
        "distinct_id": "u1",
        "insert_id": "p-1",
        "time": 1718035220,
        "properties": {"product_id": "P1"},
    }
    [record] = translate(row, timezone="America/Los_Angeles").records
    assert record["timestamp"] == "2024-06-10T16:00:20.000Z"


@pytest.mark.parametrize("time_value", [None, "", "soon", 0, -5])
def test_row_without_valid_time_is_skipped(time_value):
    """A row with no usable time is skipped, never sent to be stamped 'now' by Miso."""
    props = {"distinct_id": "u1", "product_id": "P1"}
    if time_value is not None:
        props["time"] = time_value
    result = translate({"event": "Product Viewed", "properties": props})
    assert result.records == [] and result.skipped == "no valid time"


def test_unmapped_page_path_names_the_path_not_autocapture():
    """A page view on a path no rule maps is skipped naming the path, not as autocapture."""
    row = {
        "event": "$mp_web_page_view",
        "properties": {"time": 1718035220, "distinct_id": "u1", "current_url_path": "/pricing"},
    }
    assert translate(row).skipped == "no rule for page path '/pricing'"


def test_an_event_level_id_is_not_a_product_id():
    """A Purchase's own `id` (an order id) never becomes a product id."""
    row = {
        "event": "Purchase",
        "properties": {"time": 1718035220, "distinct_id": "u1", "id": "order-7731", "amount": 12},
    }
    [record] = translate(row).records
    assert "product_ids" not in record and record["revenue"] == 12
