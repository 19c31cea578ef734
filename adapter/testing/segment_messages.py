"""The messages of the Segment archive generator (``segment_archive``): three sources' visitors,
their calls and their clocks, drawn one by one from a seed, in the order Segment received them.
"""

from __future__ import annotations

import random
import string
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

SHOP = "https://shop.example.com"
_ALNUM = string.ascii_letters + string.digits
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

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
class Message:
    source: str
    data: bytes
    message_id: str
    tag: str | None
    late: bool


class Generator:
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

    def draw(self, received_ms: int) -> Message:
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
        return Message(platform, data, message["messageId"], tag, late)

    def _sign_in(self, visitor: _Visitor, received_ms: int, n: int) -> Message:
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
        return Message(visitor.platform, orjson.dumps(message), message["messageId"], None,
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
