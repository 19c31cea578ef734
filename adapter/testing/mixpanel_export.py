"""A deterministic, realistic Mixpanel raw export (JSON Lines), for tests and benchmarks.

    python -m adapter.testing.mixpanel_export OUT.jsonl [--lines 100000] [--seed N] [--gzip]
                                              [--tz America/Los_Angeles] [--start 2024-01-01]

What the file holds (row shapes as Mixpanel documents its raw export and mixpanel-js):

* mixpanel-js rows with the library's default properties (``$os``, ``$browser``,
  ``$current_url``, ``$screen_*``, ``mp_lib``, ``$lib_version``, ``$insert_id``, geo, the
  ``$mp_api_*`` / ``mp_processing_time_ms`` bookkeeping); anonymous rows keyed
  ``$device:<uuid>``; identified rows with ``$device_id`` + ``$user_id``;
* server-side ``/import`` rows (``$import``, numeric ``distinct_id`` now and then), some
  without ``$insert_id``;
* ``$identify``, ``$create_alias`` and ``$merge`` rows;
* ``$mp_web_page_view`` on ``/`` and on other paths, autocapture (``$mp_click``,
  ``$mp_page_leave``), an unmapped ``Signed Up``;
* product events of the default table (Product Viewed, Add To Cart, Remove From Cart,
  Purchase with ``products[]``, Search with ``query``, Add To Wishlist, Product Reviewed);
* hot-shard rows (``$hotshard_events`` with their originals, and a few without);
* exact duplicate lines (``dup_rate``), times unsorted over ``days`` days.

Every row that must become a Miso record carries a unique tag (``p-<n>`` product id,
``q-<n>`` search query, ``h-<n>`` in a home page view's ``gclid``); :func:`record_key`
reads it back from a Miso record, and :attr:`Export.expected` maps each tag to the record
type and the true UTC timestamp Miso must receive.

With ``tz`` set, ``time`` is the project's local wall-clock time written as epoch seconds
(a project created before 2023, DST-aware), while ``$mp_api_timestamp_ms`` and
``mp_processing_time_ms`` stay in true UTC, as in real exports; ``expected`` holds the
true UTC instants.

The same seed gives the same rows, byte for byte, whatever ``window`` keeps: two exports
of overlapping day windows share their common days exactly, like Mixpanel's date chunks.
"""

from __future__ import annotations

import argparse
import gzip as gzip_module
import random
import string
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import orjson

__all__ = ["Expected", "Export", "read_jsonl", "record_key", "write_export"]

SHOP = "https://shop.example.com"
_ALNUM = string.ascii_letters + string.digits

# (kind, weight): what a small e-commerce site's raw export is made of.
_MIX = [
    ("home", 10),
    ("page", 10),
    ("Product Viewed", 24),
    ("Add To Cart", 8),
    ("Remove From Cart", 2),
    ("Purchase", 4),
    ("Search", 8),
    ("Add To Wishlist", 2),
    ("Product Reviewed", 1),
    ("$mp_click", 8),
    ("$mp_page_leave", 3),
    ("Signed Up", 2),
    ("$identify", 2),
    ("$create_alias", 1),
    ("$merge", 0.5),
]
_KINDS = [k for k, _ in _MIX]
_WEIGHTS = [w for _, w in _MIX]
_TYPES = {
    "home": "home_page_view",
    "Product Viewed": "product_detail_page_view",
    "Add To Cart": "add_to_cart",
    "Remove From Cart": "remove_from_cart",
    "Purchase": "checkout",
    "Search": "search",
    "Add To Wishlist": "add_to_collection",
    "Product Reviewed": "rate",
}
_PATHS = ["/pricing", "/c/shoes", "/c/shoes/trail", "/about", "/blog/how-to-choose-shoes"]
_BROWSERS = [
    ("Chrome", 125, "Mac OS X"),
    ("Safari", 17.4, "iOS"),
    ("Firefox", 126, "Windows"),
    ("Chrome", 124, "Android"),
    ("Edge", 125, "Windows"),
]
_GEO = [
    ("Lyon", "Auvergne-Rhone-Alpes", "FR"),
    ("Seattle", "Washington", "US"),
    ("Austin", "Texas", "US"),
    ("Berlin", "Land Berlin", "DE"),
    ("Leeds", "England", "GB"),
]
_REFERRERS = [
    ("$direct", "$direct"),
    ("https://www.google.com/", "www.google.com"),
    ("https://www.facebook.com/", "www.facebook.com"),
]
_QUERIES = ["trail shoes", "rain jacket", "wool socks", "running", "tent 2 person"]


@dataclass(frozen=True)
class Expected:
    """What Miso must receive for one tagged event."""

    type: str
    timestamp: str  # true UTC, as the adapter sends it: YYYY-MM-DDTHH:MM:SS.mmmZ
    exported_time: int  # the `time` value in the file (local wall clock when tz is set)


@dataclass
class Export:
    """What :func:`write_export` wrote."""

    path: Path
    lines: int = 0  # lines in the file (duplicates and malformed lines included)
    events: int = 0  # distinct rows
    duplicates: int = 0  # exact duplicate lines
    malformed: int = 0
    expected: dict[str, Expected] = field(default_factory=dict)  # tag -> record


def record_key(record: dict) -> str:
    """The tag of the event a Miso record came from (``p-<n>``, ``q-<n>`` or ``h-<n>``)."""
    if record.get("product_ids"):
        return record["product_ids"][0]
    if record.get("type") == "search":
        return record["search"]["keywords"].rsplit(" ", 1)[-1]
    url = record["context"]["page"]["url"]
    return parse_qs(urlsplit(url).query)["gclid"][0]


def read_jsonl(path: str | Path) -> list[dict]:
    """Every JSON line of a file (a --dry-run --output file)."""
    with open(path, "rb") as stream:
        return [orjson.loads(line) for line in stream if line.strip()]


def _token(rng: random.Random, length: int) -> str:
    return "".join(rng.choices(_ALNUM, k=length))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _stamp(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class _Generator:
    """Draws rows one by one; every draw depends on the seed and the row number only."""

    def __init__(self, seed: int, start: date, days: int, tz: str | None, time_in_ms: bool):
        self.rng = random.Random(seed)
        self.start = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp())
        self.span = days * 86400
        self.zone = ZoneInfo(tz) if tz else None
        self.time_in_ms = time_in_ms
        self.serial = 0
        # Visitors: a device each; a third of them sign in as a user.
        self.visitors: list[tuple[str, str | None]] = []

    def visitor(self) -> tuple[str, str | None]:
        rng = self.rng
        if len(self.visitors) < 50 or rng.random() < 0.05:
            user = f"u_{rng.randint(1, 999_999)}" if rng.random() < 0.35 else None
            self.visitors.append((_uuid(rng), user))
        return self.visitors[rng.randrange(len(self.visitors))]

    def local(self, utc: int) -> int:
        """The exported `time`: UTC, or the project's wall clock written as epoch seconds."""
        if self.zone is None:
            return utc
        offset = datetime.fromtimestamp(utc, self.zone).utcoffset()
        return utc + int(offset.total_seconds())

    def row(self) -> tuple[dict, str | None, Expected | None, int]:
        """(row, tag, expected record, exported time in seconds)."""
        rng = self.rng
        self.serial += 1
        n = self.serial
        kind = rng.choices(_KINDS, _WEIGHTS)[0]
        utc = self.start + rng.randrange(self.span)
        exported = self.local(utc)
        device, user = self.visitor()
        received_ms = utc * 1000 + rng.randint(50, 900)
        props: dict[str, Any] = {"time": exported * 1000 if self.time_in_ms else exported}

        server_side = kind in ("Purchase", "Add To Cart") and user and rng.random() < 0.25
        if server_side:
            # A backend /import: no browser properties, sometimes a numeric id, and
            # sometimes no $insert_id (dedup then falls back to the content).
            distinct: Any = int(user[2:]) if rng.random() < 0.3 else user
            props["distinct_id"] = distinct
            if rng.random() < 0.6:
                props["$insert_id"] = _uuid(rng)
            props.update({"$import": True, "$mp_api_endpoint": "api.mixpanel.com"})
        else:
            identified = user is not None and rng.random() < 0.7
            props["distinct_id"] = user if identified else f"$device:{device}"
            props["$device_id"] = device
            if identified:
                props["$user_id"] = user
            if rng.random() < 0.97:
                props["$insert_id"] = _token(rng, 16 + rng.randrange(21))
            browser, version, os_name = _BROWSERS[rng.randrange(len(_BROWSERS))]
            referrer, domain = _REFERRERS[rng.randrange(len(_REFERRERS))]
            props.update({
                "$os": os_name, "$browser": browser, "$browser_version": version,
                "$current_url": f"{SHOP}/", "$initial_referrer": referrer,
                "$initial_referring_domain": domain, "$screen_height": 900,
                "$screen_width": 1440, "$lib_version": "2.60.0", "mp_lib": "web",
                "mp_sent_by_lib_version": "2.60.0", "$mp_api_endpoint": "api-js.mixpanel.com",
            })  # fmt: skip
            if referrer != "$direct":
                props.update({"$referrer": referrer, "$referring_domain": domain})
        city, region, country = _GEO[rng.randrange(len(_GEO))]
        props.update({
            "$mp_api_timestamp_ms": received_ms, "mp_processing_time_ms": received_ms + 170,
            "$city": city, "$region": region, "mp_country_code": country,
        })  # fmt: skip

        tag: str | None = None
        event = kind
        if kind == "home" or kind == "page":
            event = "$mp_web_page_view"
            if kind == "home":
                tag = f"h-{n}"
                path, search = "/", f"?utm_source=google&utm_medium=cpc&gclid={tag}"
                props.update({"utm_source": "google", "utm_medium": "cpc", "gclid": tag})
            else:
                path, search = _PATHS[rng.randrange(len(_PATHS))], ""
            props.update({
                "$current_url": f"{SHOP}{path}{search}", "current_page_title": "Acme Outdoor",
                "current_domain": "shop.example.com", "current_url_path": path,
                "current_url_protocol": "https:", "current_url_search": search,
            })  # fmt: skip
        elif kind in ("Product Viewed", "Add To Cart", "Remove From Cart", "Add To Wishlist",
                      "Product Reviewed"):  # fmt: skip
            tag = f"p-{n}"
            if "$current_url" in props:
                props["$current_url"] = f"{SHOP}/products/{tag}"
            props.update({"product_id": tag, "name": "Trail Runner 2", "price": 89.0,
                          "category": "Shoes"})  # fmt: skip
            if kind == "Add To Cart":
                props["quantity"] = rng.randint(1, 3)
            if kind == "Product Reviewed":
                props["rating"] = str(rng.randint(1, 5))
        elif kind == "Purchase":
            tag = f"p-{n}"
            products = [{"product_id": tag, "quantity": rng.randint(1, 2), "price": 89.0}]
            products += [{"product_id": f"{tag}.{k}", "price": 12.5} for k in (2, 3)][
                : rng.randrange(3)
            ]
            props.update({"order_id": f"A-{n}", "revenue": 89.0 + 12.5 * (len(products) - 1),
                          "currency": "USD", "products": products})  # fmt: skip
            if "$current_url" in props:
                props["$current_url"] = f"{SHOP}/checkout/done"
        elif kind == "Search":
            tag = f"q-{n}"
            props["query"] = f"{_QUERIES[rng.randrange(len(_QUERIES))]} {tag}"
            props["$current_url"] = f"{SHOP}/search"
        elif kind == "$mp_click":
            props.update({"$mp_autocapture": True, "$el_tag_name": "button",
                          "$el_text": "Add to cart", "$event_type": "click"})  # fmt: skip
        elif kind == "$mp_page_leave":
            props.update({"$mp_autocapture": True, "$viewed_percent": rng.randint(5, 100)})
        elif kind == "Signed Up":
            props["plan"] = "free"
        else:
            new_user = user or f"u_{rng.randint(1, 999_999)}"
            props = {k: v for k, v in props.items() if k not in ("$user_id", "$device_id")}
            if kind == "$identify":
                props.update({"distinct_id": new_user, "$anon_distinct_id": f"$device:{device}",
                              "$identified_id": new_user, "$anon_id": device})  # fmt: skip
            elif kind == "$create_alias":
                props.update({"distinct_id": f"$device:{device}", "alias": new_user})
            else:
                props.update({"distinct_id": new_user, "$distinct_ids": [new_user, device]})

        if tag is not None and kind == "Product Viewed" and rng.random() < 0.02:
            # Hot shard: Mixpanel renamed the event and blanked distinct_id.
            props["mp_original_event_name"] = event
            props["mp_original_distinct_id"] = props["distinct_id"]
            props["distinct_id"] = ""
            event = "$hotshard_events"
        elif kind in ("page", "$mp_click", "Signed Up") and rng.random() < 0.02:
            props.update({"distinct_id": "", "mp_original_distinct_id": props["distinct_id"]})
            event = "$hotshard_events"  # no original event name: skipped

        expected = Expected(_TYPES[kind], _stamp(utc), exported) if tag else None
        return {"event": event, "properties": props}, tag, expected, exported


def write_export(
    path: str | Path,
    lines: int,
    *,
    seed: int = 20240301,
    gzip: bool = False,
    tz: str | None = None,
    start: str | date = "2024-01-01",
    days: int = 90,
    dup_rate: float = 0.02,
    window: tuple[int, int] | None = None,
    malformed_at: tuple[int, ...] = (),
    time_in_ms: bool = False,
    collect: bool = True,
) -> Export:
    """Write a Mixpanel raw export of ``lines`` lines; return what it holds.

    ``window=(first, last)`` keeps only the rows whose exported day (days since ``start``,
    in the project's timezone when ``tz`` is set) is within ``first..last``, both included,
    as Mixpanel's ``from_date``/``to_date``; ``lines`` then counts the rows drawn before
    the window. ``malformed_at`` are line numbers (1-based, in the written file) at which a
    truncated JSON line is written. ``collect=False`` skips :attr:`Export.expected` (memory).
    """
    path = Path(path)
    first_day = date.fromisoformat(start) if isinstance(start, str) else start
    gen = _Generator(seed, first_day, days, tz, time_in_ms)
    dup_rng = random.Random(seed ^ 0x5EED)
    local_start = gen.start
    export = Export(path)
    recent: list[tuple[bytes, int]] = []
    bad = set(malformed_at)
    opener = gzip_module.open if gzip else open
    with opener(path, "wb") as out:

        def emit(data: bytes) -> None:
            while export.lines + 1 in bad:  # a line cut short, as by a broken download
                export.lines += 1
                export.malformed += 1
                out.write(b'{"event":"Product Viewed","properties":{"time":17\n')
            export.lines += 1
            out.write(data)

        for _ in range(lines):
            if recent and dup_rng.random() < dup_rate:
                data, day = recent[dup_rng.randrange(len(recent))]
                if window is None or window[0] <= day <= window[1]:
                    export.duplicates += 1
                    emit(data)
                continue
            row, tag, expected, exported = gen.row()
            data = orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
            day = (exported - local_start) // 86400
            recent.append((data, day))
            if len(recent) > 500:
                recent.pop(0)
            if window is not None and not window[0] <= day <= window[1]:
                continue
            export.events += 1
            if collect and expected is not None:
                export.expected[tag] = expected
            emit(data)
        if any(number > export.lines for number in bad):
            raise ValueError(f"malformed_at past the end of the file ({export.lines} lines)")
    return export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=20240301)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--tz", help="write local wall-clock times of this timezone")
    parser.add_argument("--start", default="2024-01-01")
    parser.add_argument("--days", type=int, default=90)
    args = parser.parse_args()
    export = write_export(args.output, args.lines, seed=args.seed, gzip=args.gzip, tz=args.tz,
                          start=args.start, days=args.days, collect=False)  # fmt: skip
    print(f"{export.path}: {export.lines:,} lines, {export.events:,} events, "
          f"{export.duplicates:,} duplicate lines")  # fmt: skip


if __name__ == "__main__":
    main()
