"""A deterministic, realistic Segment archive (the S3 / GCS destinations' layout), for tests
and benchmarks.

    python bench/segment_archive.py OUT [--messages 10000] [--days 3] [--seed N]
                                        [--start 2024-05-01] [--jsonl]

Writes what Segment's Amazon S3 (or Google Cloud Storage) destination leaves in a bucket:
``OUT/segment-logs/<source-id>/<received-day-epoch-ms>/<hour-epoch-ms>.<hex>.gz``, one
gzip JSON Lines file per source and hour, one full message a line, as received. With
``--jsonl``, ``OUT`` is instead one plain JSON Lines file holding the same lines, hour
after hour (the benchmark's input).

What it holds, over ``days`` days from ``start`` (about ``messages`` lines, more by day
than by night):

* three sources: a web shop (analytics.js: ``ajs-next-`` message ids, ``context.page``,
  ``userAgent``, ``ip``, ``locale``, ``campaign`` for ad visitors, ``_metadata``), an iOS
  app (analytics-ios: ``context.app``/``device``/``os``/``network``/``screen``, upper-case
  UUID message ids, screen calls, app lifecycle events, and ~4% of messages sent hours
  late by a phone that was offline, so an event's own day can differ from its file's)
  and a backend (analytics-node: ``userId`` only, orders and refunds);
* track calls of Segment's E-commerce v2 spec that ``mappings/segment.yaml`` maps
  (Product Viewed, Product List Viewed, Products Searched, Product Clicked, Product
  Added, Product Removed, Product Added to Wishlist, Product Shared, Product Reviewed,
  Promotion Viewed, Order Completed with ``products[]``, Order Refunded), and events no
  rule maps (Cart Viewed, Checkout Started, Coupon Applied, Newsletter Subscribed,
  Application Opened, Application Backgrounded); page calls on ``/`` (a home page view)
  and on other paths (no rule), screen calls, identify, alias and group calls;
* anonymous visitors and signed-in ones: a visitor with an account signs in at some
  point (an ``identify`` with both ids or, at sign-up, an ``alias`` from the anonymous
  id), after which its messages carry ``userId`` beside ``anonymousId``; some were
  signed in before the archive starts, some users have a second device, and the
  backend's messages name the user only. So the records of an anonymous visit that
  ends in a sign-in reach Miso with both ids only if the identity links are applied;
* every field an archived message has: ``messageId``, ``type``, ids, ``timestamp``
  (Segment's corrected time), ``originalTimestamp`` (the device's clock, sometimes
  skewed), ``sentAt``, ``receivedAt``, ``context``, ``properties``/``traits``,
  ``integrations``, ``writeKey``, ``version``, ``channel``, ``projectId``;
* about ``redeliver_rate`` (2%) of lines are Segment redelivering a message: the very
  same line (same ``messageId``) again, in a later file of the same source.

Every message that must become a Miso record carries a unique tag ``s-<n>``: the id of
its (first) product, the last word of its search query, or the ``gclid`` of its page URL
(home page views, product lists, promotions). :func:`record_key` reads it back from a
Miso record, and :attr:`Archive.expected` maps each tag to the record type, timestamp
and ids Miso must receive. :attr:`Archive.entries` says which line is which, so a test
can deliver some of them through the webhook first.
"""

from __future__ import annotations

import argparse
import gzip
import random
import string
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

__all__ = [
    "Archive",
    "Entry",
    "Expected",
    "read_jsonl",
    "record_key",
    "write_archive",
    "write_jsonl",
]

SHOP = "https://shop.example.com"
_ALNUM = string.ascii_letters + string.digits
_HEX = "0123456789abcdef"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

# Share of each hour's traffic (UTC), a European shop: quiet at night, busy evenings.
_DIURNAL = [2, 1, 1, 1, 1, 2, 3, 5, 6, 7, 7, 8, 8, 8, 8, 8, 9, 10, 11, 12, 11, 9, 6, 4]

# (kind, weight) for each source; a kind is an event name, or page:/... for pages.
_WEB = [
    ("page:/", 8), ("page:other", 12), ("Product Viewed", 20), ("Product List Viewed", 5),
    ("Products Searched", 6), ("Product Clicked", 5), ("Product Added", 7),
    ("Product Removed", 2), ("Product Added to Wishlist", 1.5), ("Product Shared", 0.5),
    ("Product Reviewed", 0.7), ("Promotion Viewed", 2), ("Order Completed", 3),
    ("Cart Viewed", 3), ("Checkout Started", 2), ("Coupon Applied", 0.5),
    ("Newsletter Subscribed", 0.5), ("group", 0.5),
]  # fmt: skip
_IOS = [
    ("screen", 18), ("Application Opened", 4), ("Application Backgrounded", 3),
    ("Product Viewed", 15), ("Products Searched", 4), ("Product Added", 5),
    ("Product Added to Wishlist", 1), ("Order Completed", 2), ("Cart Viewed", 2),
]  # fmt: skip
_SERVER = [("Order Completed", 5), ("Order Refunded", 1), ("Checkout Started", 1)]
_PLATFORMS = [("web", 74), ("ios", 21), ("server", 5)]

TYPES = {
    "page:/": "home_page_view",
    "Product Viewed": "product_detail_page_view",
    "Product List Viewed": "category_page_view",
    "Products Searched": "search",
    "Product Clicked": "click",
    "Product Added": "add_to_cart",
    "Product Removed": "remove_from_cart",
    "Product Added to Wishlist": "add_to_collection",
    "Product Shared": "share",
    "Product Reviewed": "rate",
    "Promotion Viewed": "promo_page_view",
    "Order Completed": "checkout",
    "Order Refunded": "refund",
}
_PAGE_TAGGED = {"page:/", "Product List Viewed", "Promotion Viewed"}  # tag in the URL

_PATHS = [
    ("/c/shoes", "Shoes | Acme Outdoor"), ("/c/jackets", "Jackets | Acme Outdoor"),
    ("/products/trail-runner-2", "Trail Runner 2 | Acme Outdoor"),
    ("/cart", "Your cart"), ("/about", "About us"), ("/blog/how-to-choose-shoes", "Blog"),
]  # fmt: skip
_CATEGORIES = [("shoes", "Shoes"), ("jackets", "Jackets"), ("tents", "Tents")]
_PRODUCTS = [
    ("Trail Runner 2", "Shoes", 89.0), ("Rain Shell", "Jackets", 149.0),
    ("Wool Socks", "Socks", 12.5), ("Dome Tent 2P", "Tents", 229.0),
]  # fmt: skip
_QUERIES = ["trail shoes", "rain jacket", "wool socks", "tent 2 person", "running"]
_AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
    "like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:126.0) Gecko/20100101 Firefox/126.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.113 Mobile Safari/537.36",
]
_LOCALES = [("en-US", "America/New_York"), ("fr-FR", "Europe/Paris"), ("de-DE", "Europe/Berlin"),
            ("en-GB", "Europe/London")]  # fmt: skip
_REFERRERS = ["", "https://www.google.com/", "https://www.facebook.com/", "https://duckduckgo.com/"]
_CAMPAIGNS = [
    {"name": "spring_sale", "source": "google", "medium": "cpc", "term": "trail shoes",
     "content": "textlink"},
    {"name": "newsletter_may", "source": "newsletter", "medium": "email"},
]  # fmt: skip
_IPHONES = [("iPhone15,2", "17.4.1", 390, 844), ("iPhone14,5", "17.3", 390, 844),
            ("iPhone16,1", "17.5", 393, 852)]  # fmt: skip
_AJS = {"name": "analytics.js", "version": "next-1.70.0"}
_IOS_LIB = {"name": "analytics-ios", "version": "4.1.8"}
_NODE = {"name": "analytics-node-next", "version": "1.3.0"}
_METADATA = {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []}


@dataclass(frozen=True)
class Expected:
    """What Miso must receive for one tagged message."""

    type: str
    timestamp: str  # the message's `timestamp`, as the adapter sends it
    user_id: str | None  # once every identity link the archive reveals is applied
    anonymous_ids: frozenset[str]  # the record's anonymous_id is one of these (none: empty)


@dataclass(frozen=True)
class Entry:
    """One line of the archive."""

    file: Path
    line: int  # 1-based, in its file
    message_id: str
    tag: str | None  # s-<n> when it must become a Miso record
    copy: bool  # Segment redelivering an earlier line, byte for byte
    data: bytes  # the JSON text, without the newline

    def message(self) -> dict:
        return orjson.loads(self.data)


@dataclass
class Archive:
    """What :func:`write_archive` (or :func:`write_jsonl`) wrote."""

    root: Path  # the folder holding segment-logs/, or the JSON Lines file
    sources: dict[str, str] = field(default_factory=dict)  # web/ios/server -> source id
    files: list[Path] = field(default_factory=list)  # in name order
    lines: int = 0  # lines written, redelivered copies included
    messages: int = 0  # distinct messages
    redelivered: int = 0  # copies of earlier lines
    late: int = 0  # messages received on a later day than their own timestamp's
    expected: dict[str, Expected] = field(default_factory=dict)  # tag -> record
    entries: list[Entry] = field(default_factory=list)  # every line, files in name order
    links: dict[str, str] = field(default_factory=dict)  # anonymous id -> user id


def record_key(record: dict) -> str:
    """The tag of the message a Miso record came from (``s-<n>``)."""
    if record.get("product_ids"):
        return record["product_ids"][0]
    if record.get("type") == "search":
        return record["search"]["keywords"].rsplit(" ", 1)[-1]
    url = record.get("context", {}).get("page", {}).get("url", "")
    tags = parse_qs(urlsplit(url).query).get("gclid")
    return tags[0] if tags else f"untagged {record.get('type')} record"


def read_jsonl(path: str | Path) -> list[dict]:
    """Every JSON line of a file (a --dry-run --output file)."""
    with open(path, "rb") as stream:
        return [orjson.loads(line) for line in stream if line.strip()]


def _stamp(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


@dataclass
class _Visitor:
    platform: str  # web or ios
    device: str  # anonymousId
    user: str | None  # the account, if any
    signed_in: bool
    context: dict[str, Any]  # the parts of `context` that stay the same
    skew_ms: int  # the device clock's error
    campaign: dict | None = None


@dataclass
class _Message:
    source: str
    data: bytes
    message_id: str
    tag: str | None
    late: bool


class _Generator:
    """Draws messages one by one, in the order Segment received them."""

    def __init__(self, seed: int, start_ms: int) -> None:
        self.rng = random.Random(seed)
        self.start_ms = start_ms
        self.serial = 0
        self.pools: dict[str, list[_Visitor]] = {"web": [], "ios": []}
        self.users = 0
        self.signed: deque[str] = deque(maxlen=500)  # users signed in on some device
        self.with_account: list[str] = []  # users a second device may belong to
        rng = self.rng
        self.sources = {p: "".join(rng.choices(_ALNUM, k=10)) for p in ("web", "ios", "server")}
        self.write_keys = {p: "".join(rng.choices(_ALNUM, k=32)) for p in self.sources}
        # Collected as messages are drawn: every link, every tagged message's ids.
        self.links: dict[str, str] = {}
        self.tagged: dict[str, tuple[str, str, str | None, str | None]] = {}
        self.collect = True

    # ------------------------------------------------------------------ visitors

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _ip(self) -> str:
        rng = self.rng
        if rng.random() < 0.05:
            return f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(65536):x}"
        prefix = rng.choice(["203.0.113", "198.51.100", "192.0.2"])
        return f"{prefix}.{rng.randrange(1, 255)}"

    def visitor(self, platform: str) -> _Visitor:
        rng = self.rng
        pool = self.pools[platform]
        if len(pool) < 40 or rng.random() < 0.06:
            user: str | None = None
            draw = rng.random()
            if draw < 0.05 and self.with_account:  # a second device of a known user
                user = self.with_account[rng.randrange(len(self.with_account))]
            elif draw < 0.45:
                self.users += 1
                user = f"u_{self.users}"
                self.with_account.append(user)
                if len(self.with_account) > 2000:
                    self.with_account.pop(0)
            signed_in = user is not None and rng.random() < 0.3  # from before the archive
            locale, zone = rng.choice(_LOCALES)
            device = self._uuid()
            if platform == "web":
                context = {"ip": self._ip(), "library": _AJS, "locale": locale,
                           "userAgent": rng.choice(_AGENTS), "timezone": zone}  # fmt: skip
                device_id = device
            else:
                model, os_version, width, height = rng.choice(_IPHONES)
                device_id = self._uuid().upper()  # identifierForVendor
                context = {
                    "app": {"build": "412", "name": "Acme Outdoor", "namespace":
                            "com.acme.outdoor", "version": "5.2.0"},
                    "device": {"id": device_id, "manufacturer": "Apple", "model": model,
                               "name": "iPhone", "type": "ios"},
                    "ip": self._ip(), "library": _IOS_LIB, "locale": locale,
                    "network": {"carrier": rng.choice(["T-Mobile", "Orange", "Vodafone"]),
                                "cellular": rng.random() < 0.4, "wifi": rng.random() < 0.6},
                    "os": {"name": "iOS", "version": os_version},
                    "screen": {"height": height, "width": width}, "timezone": zone,
                }  # fmt: skip
            skew = rng.randint(-90_000, 90_000) if rng.random() < 0.1 else 0
            campaign = rng.choice(_CAMPAIGNS) if platform == "web" and rng.random() < 0.3 else None
            new = _Visitor(platform, device, user, signed_in, context, skew, campaign)
            if len(pool) < 200:
                pool.append(new)
            else:
                pool[rng.randrange(len(pool))] = new
            return new
        return pool[rng.randrange(len(pool))]

    # ------------------------------------------------------------------ messages

    def draw(self, received_ms: int) -> _Message:
        rng = self.rng
        self.serial += 1
        n = self.serial
        platform = rng.choices(["web", "ios", "server"], [w for _, w in _PLATFORMS])[0]
        if platform == "server" and not self.signed:
            platform = "web"
        visitor: _Visitor | None = None
        user: str | None
        anonymous: str | None
        if platform == "server":
            user, anonymous = self.signed[rng.randrange(len(self.signed))], None
            kinds = _SERVER
        else:
            visitor = self.visitor(platform)
            if visitor.user and not visitor.signed_in and rng.random() < 0.15:
                return self._sign_in(visitor, received_ms, n)
            user = visitor.user if visitor.signed_in else None
            anonymous = visitor.device
            kinds = _WEB if platform == "web" else _IOS
        kind = rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]
        tag = f"s-{n}" if kind in TYPES else None

        # Times: Segment's `timestamp` corrects the device clock with sentAt/receivedAt.
        if platform == "ios" and rng.random() < 0.04:
            delay = rng.randint(HOUR_MS, 30 * HOUR_MS)  # the phone was offline
        elif platform == "ios":
            delay = rng.randint(200, 30_000)  # the app's flush interval
        elif platform == "server":
            delay = rng.randint(5, 10_000)
        else:
            delay = rng.randint(5, 800)
        latency = rng.randint(20, 300)
        timestamp = received_ms - delay
        happened = timestamp - latency
        skew = visitor.skew_ms if visitor else 0
        message: dict[str, Any] = {
            "anonymousId": anonymous,
            "channel": {"web": "client", "ios": "mobile", "server": "server"}[platform],
            "context": {},
            "integrations": {},
            "messageId": "",
            "originalTimestamp": _stamp(happened + skew),
            "projectId": self.sources[platform],
            "receivedAt": _stamp(received_ms),
            "sentAt": _stamp(happened + delay + skew),
            "timestamp": _stamp(timestamp),
            "type": "track",
            "userId": user,
            "version": 2,
            "writeKey": self.write_keys[platform],
        }
        if anonymous is None:
            del message["anonymousId"]
        if user is None:
            del message["userId"]
        props, page = self._event(kind, tag, platform, visitor)
        if kind == "page:/" or kind == "page:other":
            message["type"] = "page"
            message["name"] = "Home" if kind == "page:/" else page["title"].split(" |")[0]
        elif kind == "screen":
            message["type"] = "screen"
            message["name"] = props["name"]
        elif kind == "group":
            message["type"] = "group"
            message["groupId"] = f"acct_{rng.randrange(1, 400)}"
            message["traits"] = {"name": "Acme Customers Club", "plan": "business"}
        else:
            message["event"] = kind
        if kind != "group":
            message["properties"] = props
        message["context"] = self._context(platform, visitor, page)
        message["messageId"] = self._message_id(platform, received_ms)
        if platform != "server":
            message["_metadata"] = _METADATA
        if user and anonymous:
            self.links[anonymous] = user
            self.signed.append(user)
        if tag is not None and self.collect:
            self.tagged[tag] = (TYPES[kind], message["timestamp"], user, anonymous)
        late = (timestamp // DAY_MS) != (received_ms // DAY_MS)
        data = orjson.dumps(message)
        return _Message(platform, data, message["messageId"], tag, late)

    def _sign_in(self, visitor: _Visitor, received_ms: int, n: int) -> _Message:
        """A sign-in: identify with both ids (or a browser alias) — no record, a link."""
        rng = self.rng
        assert visitor.user is not None
        visitor.signed_in = True
        self.links[visitor.device] = visitor.user
        self.signed.append(visitor.user)
        delay, latency = rng.randint(5, 800), rng.randint(20, 300)
        happened = received_ms - delay - latency
        message: dict[str, Any] = {
            "anonymousId": visitor.device,
            "channel": "client" if visitor.platform == "web" else "mobile",
            "context": self._context(visitor.platform, visitor, ("/account", "Sign in")),
            "integrations": {},
            "messageId": self._message_id(visitor.platform, received_ms),
            "originalTimestamp": _stamp(happened + visitor.skew_ms),
            "projectId": self.sources[visitor.platform],
            "receivedAt": _stamp(received_ms),
            "sentAt": _stamp(happened + delay + visitor.skew_ms),
            "timestamp": _stamp(received_ms - delay),
            "type": "identify",
            "userId": visitor.user,
            "version": 2,
            "writeKey": self.write_keys[visitor.platform],
            "_metadata": _METADATA,
        }
        if visitor.platform == "web" and rng.random() < 0.25:
            message["type"] = "alias"  # analytics.alias(userId) at sign-up
            message["previousId"] = visitor.device
        else:
            message["traits"] = {"email": f"{visitor.user}@example.com",
                                 "firstName": "Sam", "plan": rng.choice(["free", "plus"]),
                                 "createdAt": "2023-11-02T08:15:00.000Z"}  # fmt: skip
        return _Message(visitor.platform, orjson.dumps(message), message["messageId"], None,
                        False)  # fmt: skip

    def _message_id(self, platform: str, received_ms: int) -> str:
        bits = self.rng.getrandbits(128)
        if platform == "web":
            return f"ajs-next-{bits:032x}"
        if platform == "ios":
            return str(uuid.UUID(int=bits, version=4)).upper()
        return f"node-next-{received_ms - 40}-{uuid.UUID(int=bits, version=4)}"

    def _context(
        self, platform: str, visitor: _Visitor | None, page: tuple[str, str] | dict | None
    ) -> dict[str, Any]:
        if visitor is None:
            return {"library": _NODE}
        context = dict(visitor.context)
        if platform == "ios":
            context["traits"] = {"anonymousId": visitor.device}
            if visitor.signed_in:
                context["traits"]["userId"] = visitor.user
            return context
        if isinstance(page, tuple):
            path, title = page
            page = {"path": path, "referrer": "", "search": "", "title": title,
                    "url": f"{SHOP}{path}"}  # fmt: skip
        if page is not None:
            context["page"] = page
        if visitor.campaign is not None:
            context["campaign"] = visitor.campaign
        return context

    def _product(self, tag: str | None) -> dict[str, Any]:
        rng = self.rng
        name, category, price = _PRODUCTS[rng.randrange(len(_PRODUCTS))]
        pid = tag or f"cat-{rng.randrange(1, 5000)}"
        return {"product_id": pid, "sku": f"SKU-{rng.randrange(10000, 99999)}",
                "category": category, "name": name, "brand": "Acme", "variant": "Blue",
                "price": price, "quantity": 1, "currency": "USD",
                "url": f"{SHOP}/products/{pid}",
                "image_url": f"{SHOP}/img/{pid}.jpg"}  # fmt: skip

    def _event(
        self, kind: str, tag: str | None, platform: str, visitor: _Visitor | None
    ) -> tuple[dict[str, Any], dict | tuple[str, str] | None]:
        """(properties, the page the browser is on) of one message."""
        rng = self.rng
        page: dict | tuple[str, str] | None = None
        if kind in ("page:/", "page:other"):
            referrer = rng.choice(_REFERRERS)
            if kind == "page:/":
                path, title = "/", "Acme Outdoor"
                search = f"?utm_source=google&utm_medium=cpc&gclid={tag}"
            else:
                path, title = _PATHS[rng.randrange(len(_PATHS))]
                search = ""
            props = {"path": path, "referrer": referrer, "search": search, "title": title,
                     "url": f"{SHOP}{path}{search}"}  # fmt: skip
            return props, dict(props)
        if kind == "screen":
            name = rng.choice(["Home", "Product Detail", "Search", "Cart", "Account"])
            return {"name": name}, None
        if kind == "Product List Viewed":
            key, category = rng.choice(_CATEGORIES)
            page = {"path": f"/c/{key}", "referrer": "https://www.google.com/",
                    "search": f"?gclid={tag}", "title": f"{category} | Acme Outdoor",
                    "url": f"{SHOP}/c/{key}?gclid={tag}"}  # fmt: skip
            products = [dict(self._product(None), position=i) for i in range(1, 4)]
            return {"list_id": key, "category": category, "products": products}, page
        if kind == "Promotion Viewed":
            page = {"path": "/", "referrer": "", "search": f"?gclid={tag}",
                    "title": "Acme Outdoor", "url": f"{SHOP}/?gclid={tag}"}  # fmt: skip
            return {
                "promotion_id": "promo_spring",
                "creative": "top_banner_2",
                "name": "Spring sale: 30% off shoes",
                "position": "home_banner_top",
            }, page
        if kind == "Products Searched":
            return {"query": f"{rng.choice(_QUERIES)} {tag}"}, ("/search", "Search")
        if kind in ("Order Completed", "Order Refunded", "Cart Viewed", "Checkout Started"):
            products = [self._product(tag if kind in TYPES else None)]
            for extra in range(2, 2 + rng.randrange(3)):
                products.append(self._product(f"{tag}.{extra}" if tag else None))
            for product in products:
                product["quantity"] = rng.randint(1, 3)
            total = round(sum(p["price"] * p["quantity"] for p in products), 2)
            props: dict[str, Any] = {"order_id": f"A-{self.serial}", "currency": "USD",
                                     "products": products}  # fmt: skip
            if kind == "Order Completed":
                props.update({"checkout_id": f"co-{self.serial}", "affiliation": "Acme Web",
                              "total": total, "subtotal": total, "revenue": round(total / 1.2, 2),
                              "shipping": 0, "tax": round(total - total / 1.2, 2),
                              "discount": 0, "coupon": ""})  # fmt: skip
                page = ("/checkout/done", "Thank you")
            elif kind == "Order Refunded":
                props["total"] = total
            elif kind == "Cart Viewed":
                props = {"cart_id": f"cart-{self.serial}", "products": products}
                page = ("/cart", "Your cart")
            else:
                props.update({"value": total, "revenue": total})
                page = ("/checkout", "Checkout")
            return props, page
        if kind.startswith("Product"):
            props = self._product(tag)
            page = (f"/products/{tag}", f"{props['name']} | Acme Outdoor")
            if kind in ("Product Added", "Product Removed"):
                props["cart_id"] = f"cart-{rng.randrange(1, 10**6)}"
                props["quantity"] = rng.randint(1, 3)
            elif kind == "Product Added to Wishlist":
                props.update({"wishlist_id": "wl-1", "wishlist_name": "Summer trip"})
            elif kind == "Product Shared":
                props.update({"share_via": "email", "share_message": "Look at this!",
                              "recipient": "friend@example.com"})  # fmt: skip
            elif kind == "Product Reviewed":
                props.update({"review_id": f"r-{self.serial}", "review_body": "Great fit",
                              "rating": str(rng.randint(1, 5))})  # fmt: skip
            elif kind == "Product Clicked":
                props["position"] = rng.randint(1, 24)
            return props, page
        if kind == "Coupon Applied":
            props = {"order_id": f"A-{self.serial}", "coupon_id": "SPRING30",
                     "coupon_name": "Spring sale", "discount": 26.7}  # fmt: skip
            return props, ("/cart", "Your cart")
        if kind == "Newsletter Subscribed":
            return {"list": "weekly"}, ("/", "Acme Outdoor")
        if kind == "Application Opened":
            return {"build": "412", "from_background": rng.random() < 0.5,
                    "version": "5.2.0"}, None  # fmt: skip
        if kind == "Application Backgrounded":
            return {}, None
        return {}, ("/", "Acme Outdoor")  # group: the page it happened on


def _hour_counts(lines: int, hours: int, rng: random.Random) -> list[int]:
    """How many lines each hour receives: the diurnal shape, a little noise, summing to lines."""
    weights = [_DIURNAL[h % 24] * rng.uniform(0.85, 1.15) for h in range(hours)]
    total = sum(weights)
    counts = [int(lines * w / total) for w in weights]
    for h in sorted(range(hours), key=lambda h: -weights[h])[: lines - sum(counts)]:
        counts[h] += 1
    return counts


def _generate(
    lines: int,
    *,
    seed: int,
    start: str | date,
    days: int,
    redeliver_rate: float,
    collect: bool,
    emit: Callable[[int, str, list[_Message], random.Random], None],
) -> Archive:
    """Draw the archive hour by hour; ``emit(hour_ms, source_id, messages, side)`` writes
    each file (``side``: the random draws of file names, apart from the messages').

    Returns the Archive (without files and entries: the writers fill them in).
    """
    first = date.fromisoformat(start) if isinstance(start, str) else start
    start_ms = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()) * 1000
    gen = _Generator(seed, start_ms)
    gen.collect = collect
    side = random.Random(seed ^ 0x5E6)  # redeliveries and file names: apart from messages
    archive = Archive(Path())
    archive.sources = dict(gen.sources)
    recent: deque[_Message] = deque(maxlen=2000)  # messages of earlier files
    for hour, count in enumerate(_hour_counts(lines, days * 24, side)):
        hour_ms = start_ms + hour * HOUR_MS
        offsets = sorted(side.randrange(HOUR_MS) for _ in range(count))
        files: dict[str, list[_Message]] = {}
        fresh: list[_Message] = []
        for offset in offsets:
            if recent and side.random() < redeliver_rate:
                message = recent[side.randrange(len(recent))]
                archive.redelivered += 1
                files.setdefault(message.source, []).append(message)
                continue
            message = gen.draw(hour_ms + offset)
            archive.messages += 1
            archive.late += message.late
            files.setdefault(message.source, []).append(message)
            fresh.append(message)
        for source in ("web", "ios", "server"):
            if files.get(source):
                emit(hour_ms, gen.sources[source], files[source], side)
        recent.extend(fresh)
        archive.lines += count
    archive.links = gen.links
    if collect:
        devices: dict[str, set[str]] = {}
        for anonymous, user in gen.links.items():
            devices.setdefault(user, set()).add(anonymous)
        for tag, (kind, timestamp, user, anonymous) in gen.tagged.items():
            if anonymous is not None:
                user = user or gen.links.get(anonymous)
                ids = frozenset([anonymous])
            else:
                ids = frozenset(devices.get(user or "", ()))
            archive.expected[tag] = Expected(kind, timestamp, user, ids)
    return archive


def write_archive(
    out_dir: str | Path,
    messages: int = 10_000,
    *,
    seed: int = 20240501,
    start: str | date = "2024-05-01",
    days: int = 3,
    redeliver_rate: float = 0.02,
    collect: bool = True,
) -> Archive:
    """Write the S3 layout under ``out_dir``: ``segment-logs/<source>/<day>/<hour>.<hex>.gz``.

    ``messages`` counts lines, redelivered copies included. ``collect=False`` skips
    :attr:`Archive.expected` and :attr:`Archive.entries` (memory). Files are gzip with a
    zero mtime: the same seed gives the same bytes.
    """
    root = Path(out_dir)
    written: list[tuple[Path, list[_Message]]] = []

    def emit(hour_ms: int, source_id: str, batch: list[_Message], side: random.Random) -> None:
        day_ms = hour_ms - hour_ms % DAY_MS
        name = f"{hour_ms}.{''.join(side.choices(_HEX, k=12))}.gz"
        path = root / "segment-logs" / source_id / str(day_ms) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with (
            open(path, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out,
        ):
            out.write(b"".join(m.data + b"\n" for m in batch))
        written.append((path, batch if collect else []))

    archive = _generate(messages, seed=seed, start=start, days=days,
                        redeliver_rate=redeliver_rate, collect=collect, emit=emit)  # fmt: skip
    archive.root = root
    written.sort(key=lambda item: item[0])
    archive.files = [path for path, _ in written]
    if collect:
        archive.entries = _entries(written)
    return archive


def write_jsonl(
    path: str | Path,
    messages: int = 10_000,
    *,
    seed: int = 20240501,
    start: str | date = "2024-05-01",
    days: int = 3,
    redeliver_rate: float = 0.02,
    collect: bool = True,
) -> Archive:
    """The same lines as :func:`write_archive` with the same arguments, in one plain JSON
    Lines file, hour after hour (within an hour: web, iOS, then server)."""
    path = Path(path)
    written: list[tuple[Path, list[_Message]]] = []
    with path.open("wb") as out:

        def emit(hour_ms: int, source_id: str, batch: list[_Message], side: random.Random) -> None:
            side.choices(_HEX, k=12)  # the archive's file name: the same draws, the same lines
            out.write(b"".join(m.data + b"\n" for m in batch))
            if collect:
                written.append((path, batch))

        archive = _generate(messages, seed=seed, start=start, days=days,
                            redeliver_rate=redeliver_rate, collect=collect, emit=emit)  # fmt: skip
    archive.root = path
    archive.files = [path]
    if collect:
        merged = [m for _, batch in written for m in batch]
        archive.entries = _entries([(path, merged)])
    return archive


def _entries(written: list[tuple[Path, list[_Message]]]) -> list[Entry]:
    entries: list[Entry] = []
    seen: set[str] = set()
    for path, batch in written:
        for number, m in enumerate(batch, start=1):
            entries.append(Entry(path, number, m.message_id, m.tag, m.message_id in seen,
                                 m.data))  # fmt: skip
            seen.add(m.message_id)
    return entries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "output", type=Path, metavar="OUT", help="a folder (or, with --jsonl, a file)"
    )
    parser.add_argument("--messages", type=int, default=10_000, help="lines in all")
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20240501)
    parser.add_argument("--start", default="2024-05-01", help="the first day (UTC)")
    parser.add_argument("--jsonl", action="store_true", help="one plain JSON Lines file")
    args = parser.parse_args()
    options = {"seed": args.seed, "start": args.start, "days": args.days, "collect": False}
    if args.jsonl:
        archive = write_jsonl(args.output, args.messages, **options)
        where = str(archive.root)
    else:
        archive = write_archive(args.output, args.messages, **options)
        where = f"{len(archive.files)} files under {archive.root / 'segment-logs'}"
    print(f"{where}: {archive.lines:,} lines, {archive.messages:,} messages, "
          f"{archive.redelivered:,} redelivered, {archive.late:,} received a day late")  # fmt: skip


if __name__ == "__main__":
    main()
