"""Benchmark: Segment messages translated end to end from a JSON Lines file.

    python bench/translate.py [--messages 200000] [--runs 5] [--file events.jsonl]

Generates a deterministic file of realistic Segment messages (unless --file is
given), then times, on the same file in the same process:

* floor: read each line, ``orjson.loads`` it, ``orjson.dumps`` it back — the least
  any translator must do;
* translate: read each line, parse, unwrap the envelope, translate with the shipped
  ``mappings/segment.yaml``, serialise every record — what ``miso-adapter translate``
  does, minus the terminal.

Prints messages/s for both (median of the runs) and the ratio of our time to the floor's.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapter.mapping import load_mapping  # noqa: E402
from adapter.sources import segment  # noqa: E402

_PRODUCT = {
    "product_id": "507f1f77",
    "sku": "G-32",
    "category": "Shoes",
    "name": "Trail Runner 2",
    "brand": "Acme",
    "variant": "blue",
    "price": 89.0,
    "quantity": 1,
    "url": "https://shop.example.com/products/507f1f77",
    "image_url": "https://cdn.example.com/507f1f77.jpg",
}
# Rough shape of a real e-commerce stream: mostly views and pages, some carts and orders,
# identity calls, and events the table does not map.
_MIX = [
    ("track", "Product Viewed", 30),
    ("page", None, 20),
    ("track", "Product List Viewed", 8),
    ("track", "Products Searched", 8),
    ("track", "Product Added", 8),
    ("track", "Order Completed", 4),
    ("track", "Product Clicked", 6),
    ("identify", None, 4),
    ("track", "Checkout Started", 6),
    ("track", "Video Content Completed", 2),
    ("track", "Product Reviewed", 2),
    ("track", "Promotion Viewed", 2),
]


def make_message(rng: random.Random, index: int) -> dict:
    """One realistic analytics.js message as Segment's webhook delivers it."""
    kind, event, _ = rng.choices(_MIX, weights=[w for *_, w in _MIX])[0]
    anon = f"{rng.getrandbits(128):032x}"
    day, hour, minute = 1 + index % 28, index % 24, index % 60
    second, milli = rng.randint(0, 59), rng.randint(0, 999)
    stamp = f"2024-05-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{milli:03d}Z"
    path = rng.choice(["/", "/products/507f1f77", "/c/shoes", "/about"])
    message: dict = {
        "type": kind,
        "messageId": f"ajs-next-{rng.getrandbits(64):016x}",
        "anonymousId": anon,
        "channel": "client",
        "timestamp": stamp,
        "originalTimestamp": stamp,
        "sentAt": stamp,
        "receivedAt": stamp,
        "integrations": {},
        "version": 2,
        "context": {
            "ip": f"203.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            "library": {"name": "analytics.js", "version": "next-1.64.0"},
            "locale": "en-US",
            "page": {
                "path": path,
                "referrer": "https://www.google.com/",
                "search": "",
                "title": "Acme Shop",
                "url": f"https://shop.example.com{path}",
            },
            "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) Chrome/124.0.0.0",
            "campaign": {"name": "spring_sale", "source": "google", "medium": "cpc"},
        },
    }
    if rng.random() < 0.3:
        message["userId"] = f"u_{rng.randint(1, 50_000)}"
    if kind == "track":
        message["event"] = event
        props = {**_PRODUCT, "product_id": f"p{rng.randint(1, 5000)}"}
        if event == "Order Completed":
            props = {"order_id": "A-1", "revenue": 178.0, "products": [props, dict(props)]}
        elif event == "Products Searched":
            props = {"query": "trail running shoes"}
        elif event == "Video Content Completed":
            props = {"asset_id": "vid-1", "position": 312, "total_length": 320}
        elif event == "Product Reviewed":
            props = {"product_id": "p1", "rating": "4"}
        message["properties"] = props
    elif kind == "page":
        message["properties"] = dict(message["context"]["page"])
    else:
        message["userId"] = f"u_{rng.randint(1, 50_000)}"
        message["traits"] = {"email": "jane@example.com"}
    return message


def write_file(path: Path, count: int) -> None:
    """Write ``count`` deterministic messages as JSON Lines."""
    rng = random.Random(20241126)
    with path.open("wb") as out:
        for index in range(count):
            out.write(orjson.dumps(make_message(rng, index), option=orjson.OPT_APPEND_NEWLINE))


def run_floor(path: Path) -> int:
    """Parse and re-serialise every line: the floor."""
    count = 0
    with path.open("rb") as stream:
        for line in stream:
            orjson.dumps(orjson.loads(line))
            count += 1
    return count


def run_translate(path: Path, translator) -> int:
    """Parse, unwrap, translate and serialise every line, as `miso-adapter translate` does."""
    count = 0
    dumps = orjson.dumps
    translate = translator.translate
    with path.open("rb") as stream:
        for line in stream:
            for _, message, _ in segment.iter_messages("", orjson.loads(line)):
                for record in translate(message).records:
                    dumps(record)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--file", type=Path, help="a Segment JSONL file (default: generated)")
    args = parser.parse_args()
    translator = load_mapping(ROOT / "mappings" / "segment.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file
        if path is None:
            path = Path(tmp) / "segment.jsonl"
            write_file(path, args.messages)
        size = path.stat().st_size
        floor_times, ours_times = [], []
        count = 0
        for _ in range(args.runs):
            # Interleave the two so drift in machine load hits both alike.
            start = time.perf_counter()
            count = run_floor(path)
            floor_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            run_translate(path, translator)
            ours_times.append(time.perf_counter() - start)
    floor, ours = statistics.median(floor_times), statistics.median(ours_times)
    print(f"file: {count:,} Segment messages, {size / 1e6:.1f} MB; median of {args.runs} runs")
    print(f"{'work':<34}{'messages/s':>14}{'seconds':>10}")
    print(f"{'floor: orjson parse + serialise':<34}{count / floor:>14,.0f}{floor:>10.3f}")
    print(f"{'translate (segment.yaml)':<34}{count / ours:>14,.0f}{ours:>10.3f}")
    print(f"ratio to floor: {ours / floor:.2f}x the floor's time")


if __name__ == "__main__":
    main()
