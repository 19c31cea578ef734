"""Benchmark: validating Miso interaction records, marshmallow path vs compiled fast path.

    python bench/validate.py [--records 100000] [--runs 3]

Builds a deterministic, realistic mix of valid records (product views with context, carts,
searches, home page views, custom events with custom_context) and prints the median µs/record of:

* floor: ``orjson.loads(orjson.dumps(record))``, the least any check of a record costs;
* marshmallow: the model alone (``records._checked_errors``), the cost the fast path avoids;
* fast: ``records.record_errors`` as the forwarder calls it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapter import records


def make_record(rng: random.Random, index: int) -> dict:
    """One valid record, shaped like what the shipped Segment table produces."""
    kind = rng.choices(
        ["product_detail_page_view", "home_page_view", "search", "add_to_cart", "custom"],
        weights=[35, 20, 15, 15, 15],
    )[0]
    path = rng.choice(["/", "/products/507f1f77", "/c/shoes", "/search"])
    record: dict = {
        "type": kind,
        "anonymous_id": f"{rng.getrandbits(128):032x}",
        "timestamp": f"2024-05-{1 + index % 31:02d}T{index % 24:02d}:{index % 60:02d}:"
        f"{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z",
        "context": {
            "truncated_ip": f"203.0.{rng.randint(0, 255)}.0",
            "locale": "en-US",
            "user_agent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) Chrome/124.0.0.0",
            "page": {
                "url": f"https://shop.example.com{path}",
                "referrer": "https://www.google.com/",
                "title": "Acme Shop",
            },
            "campaign": {"name": "spring_sale", "source": "google", "medium": "cpc"},
        },
    }
    if rng.random() < 0.3:
        record["user_id"] = f"u_{rng.randint(1, 50_000)}"
    if kind in ("product_detail_page_view", "add_to_cart"):
        record["product_ids"] = [f"p{rng.randint(1, 5000)}" for _ in range(rng.randint(1, 3))]
    if kind == "add_to_cart":
        record["quantities"] = [rng.randint(1, 3) for _ in record["product_ids"]]
    elif kind == "search":
        record["search"] = {"keywords": "trail running shoes", "filters": {"size": ["9", "10"]}}
    elif kind == "custom":
        record["custom_action_name"] = "newsletter_signup"
        record["context"]["custom_context"] = {
            "logged_in": True,
            "visits": rng.randint(1, 20),
            "plan": "pro",
            "tags": ["new", "mobile"],
            "experiments": [{"id": "exp-1", "variant": 2, "share": 0.5}],
        }
    return record


def time_per_record(check: Callable[[dict], object], batch: list[dict]) -> float:
    """Seconds for one pass of ``check`` over the batch, divided by its length."""
    start = time.perf_counter()
    for record in batch:
        check(record)
    return (time.perf_counter() - start) / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(20241127)
    batch = [make_record(rng, index) for index in range(args.records)]
    assert records.batch_errors(batch) == {}, "the benchmark mix must be valid"
    assert all(not records._checked_errors(record) for record in batch[:1000])
    paths: dict[str, Callable[[dict], object]] = {
        "floor: orjson dumps + loads": lambda record: orjson.loads(orjson.dumps(record)),
        "marshmallow (model only)": records._checked_errors,
        "fast (record_errors)": records.record_errors,
    }
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.runs):
        # Interleave the paths so drift in machine load hits all of them alike.
        for name, check in paths.items():
            times[name].append(time_per_record(check, batch))
    print(f"{args.records:,} valid records; median of {args.runs} runs")
    print(f"{'path':<30}{'µs/record':>10}{'records/s':>12}")
    for name, samples in times.items():
        seconds = statistics.median(samples)
        print(f"{name:<30}{seconds * 1e6:>10.2f}{1 / seconds:>12,.0f}")


if __name__ == "__main__":
    main()
