"""Benchmark: `miso-adapter forward --until-empty` draining a full spool, against a floor.

    python bench/drain.py [--records 1000000] [--runs 1] [--seed 20240501] [--store URL]

Fills a fresh SQLite store (``adapter.store.sqlite.SqliteStore.accept``, 10,000 records
a transaction) with ``--records`` realistic, valid Miso records of about 450 bytes: the
shape ``mappings/segment.yaml`` gives analytics.js events (context with page, campaign,
locale, user agent and truncated IP), a mix of types (product views, home and category
pages, carts, checkouts with revenue and quantities, searches, wishlists, ratings,
videos), a third of them with both ids, each with its own product id or keywords. Then,
for each run, on a fresh copy of that file, one after the other:

* floor: this script with ``--floor``: reads the same bodies out of SQLite in id order,
  1,000 rows a page (keyset pagination), and POSTs each page as ``{"data": [...]}`` to
  the same fake Miso with one ``requests`` keep-alive session: no leases, no
  validation, no acks: the least any forwarder must do;
* drain: ``miso-adapter forward --until-empty`` (``ADAPTER_STORE`` pointing at the copy,
  ``synchronous=FULL`` as in production): lease a batch, validate each record, send,
  delete what Miso took, until the spool is empty; exit 0 means it is.

Both are subprocesses timed from start to exit (interpreter start included) and send to
one ``FakeMiso(validate=False)`` in this process, which counts records and forgets them
(see ``common.CountingMiso``). Each run checks that the fake received exactly
``--records`` records from each. On a 2-core machine the fake (parsing every 1,000-record
POST) shares the CPU with the sender, for the floor and the drain alike.

With ``--store redis://host:6379/0`` the spool is that Redis (a key prefix of its own
per run, deleted afterwards) and there is no floor: each run fills it, then times ONE
``forward --until-empty``, fills it again and times TWO started at once (until both
exit), checking that the fake received every record exactly once (each record has its
own anonymous id) and that the spool is empty. That is ``python -m bench``'s
``drain-redis`` row, on the Redis in ``$BENCH_REDIS_URL``, else ``redis://127.0.0.1:6379/0``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

from common import (  # noqa: E402
    MISO_KEY,
    BenchError,
    CountingMiso,
    Run,
    check,
    clean_env,
    cli,
    median,
    run,
)

FILL_BATCH = 10_000
REDIS_URL = "redis://127.0.0.1:6379/0"  # the tests' Redis (adapter/testing/stores.py)
PAGE = 1_000  # the forwarder's batch size, and Miso's SDK's

# (type, weight): roughly what a shop's Segment stream becomes once translated.
_MIX = [
    ("product_detail_page_view", 34),
    ("home_page_view", 10),
    ("category_page_view", 10),
    ("add_to_cart", 10),
    ("remove_from_cart", 2),
    ("checkout", 5),
    ("search", 12),
    ("add_to_collection", 3),
    ("rate", 2),
    ("watch", 2),
]
_TYPES = [t for t, _ in _MIX]
_WEIGHTS = [w for _, w in _MIX]
_PATHS = {
    "home_page_view": "/",
    "category_page_view": "/c/shoes",
    "search": "/search",
    "checkout": "/checkout/done",
}
_AGENTS = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:126.0) Gecko/20100101 Firefox/126.0",
]
_REFERRERS = ["https://www.google.com/", "https://www.facebook.com/", None]
_QUERIES = ["trail shoes", "rain jacket", "wool socks", "running", "tent 2 person"]


def make_record(rng: random.Random, index: int) -> dict[str, Any]:
    """One valid Miso record, as the adapter translates an analytics.js event."""
    kind = rng.choices(_TYPES, _WEIGHTS)[0]
    product = f"p-{index}"
    path = _PATHS.get(kind, f"/products/{product}")
    stamp = (
        f"2024-05-{1 + index % 28:02d}T{index % 24:02d}:{index % 60:02d}:"
        f"{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z"
    )
    page: dict[str, Any] = {"url": f"https://shop.example.com{path}", "title": "Acme Shop"}
    referrer = _REFERRERS[rng.randrange(3)]
    if referrer:
        page["referrer"] = referrer
    record: dict[str, Any] = {"type": kind}
    if rng.random() < 0.35:
        record["user_id"] = f"u_{rng.randint(1, 50_000)}"
    record["anonymous_id"] = f"{rng.getrandbits(128):032x}"
    record["timestamp"] = stamp
    record["context"] = {
        "locale": "en-US",
        "user_agent": _AGENTS[rng.randrange(len(_AGENTS))],
        "truncated_ip": f"203.0.{rng.randrange(256)}.0",
        "page": page,
        "campaign": {"name": "spring_sale", "source": "google", "medium": "cpc"},
    }
    if kind == "category_page_view":
        record["category"] = ["Shoes", "Trail"]
    elif kind == "search":
        record["search"] = {"keywords": f"{_QUERIES[rng.randrange(5)]} q-{index}"}
    elif kind == "checkout":
        items = 1 + rng.randrange(3)
        record["product_ids"] = [f"{product}.{k}" for k in range(items)]
        record["quantities"] = [1 + rng.randrange(2) for _ in range(items)]
        record["revenue"] = round(89.0 * items, 2)
    elif kind != "home_page_view":
        record["product_ids"] = [product]
        if kind == "add_to_cart":
            record["quantities"] = [1 + rng.randrange(3)]
        elif kind == "rate":
            record["rating"] = 1 + rng.randrange(5)
        elif kind == "watch":
            record["duration"] = rng.randint(10, 600)
    return record


def fill_store(store, count: int, seed: int) -> float:
    """Accept ``count`` records into ``store``; returns average body bytes.

    Checks the first records against the Miso model first: an invalid one would be
    dead-lettered by the forwarder and the benchmark would measure the wrong thing.
    """
    from adapter.records import record_errors
    from adapter.store import Incoming

    rng = random.Random(seed)
    dumps = orjson.dumps
    total = 0
    for start in range(0, count, FILL_BATCH):
        records = [make_record(rng, i) for i in range(start, min(count, start + FILL_BATCH))]
        if start == 0:
            for record in records[:2000]:
                problems = record_errors(record)
                if problems:
                    raise BenchError(f"generated an invalid record {record}: {problems}")
        bodies = [dumps(record) for record in records]
        total += sum(map(len, bodies))
        store.accept([Incoming(dedup_key=None, records=bodies, source="bench")], 0)
    return total / max(count, 1)


def fill(path: Path, count: int, seed: int) -> float:
    """Write ``count`` records into a fresh SQLite store at ``path``; returns average bytes."""
    from adapter.store.sqlite import SqliteStore

    # synchronous=normal: the fill is set-up, not measured; the drain opens its own FULL.
    store = SqliteStore(path, synchronous="normal")
    try:
        average = fill_store(store, count, seed)
    finally:
        store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        kinds = dict(conn.execute("SELECT kind, COUNT(*) FROM spool GROUP BY kind").fetchall())
    if kinds != {"record": count}:
        raise BenchError(f"the filled spool holds {kinds}, not {count:,} records")
    return average


def copy_store(source: Path, target: Path) -> None:
    """A fresh copy of a closed store (with its WAL, if SQLite left one)."""
    for suffix in ("", "-wal"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", f"{target}{suffix}")


def floor(db: Path, url: str, key: str) -> int:
    """Read every spooled body in id order, 1,000 a page, and POST each page (via --floor)."""
    import requests

    conn = sqlite3.connect(db)
    session = requests.Session()
    headers = {"X-API-KEY": key, "Content-Type": "application/json"}
    target = f"{url}/v1/interactions"
    columns = {row[1] for row in conn.execute("PRAGMA table_info(spool)")}
    # The store keeps bodies in the spool row (schema 1) or in a `bodies` table keyed by
    # the spool id (schema 2): read them wherever this adapter version puts them.
    table = "spool" if "body" in columns else "bodies"
    # A range scan of the primary key. (With "kind = 'record'" added, SQLite picked the
    # spool_ready index and sorted every remaining row for each page: quadratic, 8k
    # records/s at 1M.) The filled spool holds records only: fill() checks it.
    query = f"SELECT id, body FROM {table} WHERE id > ? ORDER BY id LIMIT ?"
    last, sent = 0, 0
    while True:
        rows = conn.execute(query, (last, PAGE)).fetchall()
        if not rows:
            break
        payload = b'{"data":[' + b",".join(body for _, body in rows) + b"]}"
        response = session.post(target, data=payload, headers=headers, timeout=30)
        response.raise_for_status()
        last = rows[-1][0]
        sent += len(rows)
    conn.close()
    return sent


def has_until_empty() -> bool:
    """Does this adapter's ``forward`` take ``--until-empty``?"""
    result = run(cli("forward", "--help"), clean_env())
    return "--until-empty" in result.stdout


@dataclass
class DrainRun:
    """One run: the floor's and the drain's subprocess."""

    floor: Run
    drain: Run


def measure(template: Path, count: int, miso: CountingMiso) -> DrainRun:
    """Floor, then the real drain on a fresh copy of ``template``; both checked."""
    miso.zero()
    base = run([sys.executable, str(Path(__file__).resolve()), "--floor", str(template),
                miso.url, MISO_KEY])  # fmt: skip
    check("drain floor", base)
    if miso.delivered != count:
        raise BenchError(f"floor: FakeMiso received {miso.delivered:,} records of {count:,}")
    with tempfile.TemporaryDirectory(prefix="bench-drain-", dir=template.parent) as tmp:
        db = Path(tmp) / "adapter.db"
        copy_store(template, db)
        miso.zero()
        env = clean_env(
            ADAPTER_STORE=f"sqlite:///{db.resolve()}", MISO_API_URL=miso.url, MISO_API_KEY=MISO_KEY
        )
        result = run(cli("forward", "--until-empty"), env)
        check("forward --until-empty", result)
        if miso.delivered != count:
            raise BenchError(
                f"forward --until-empty: FakeMiso received {miso.delivered:,} records of {count:,}"
            )
    return DrainRun(base, result)


def prepare(folder: Path, count: int, seed: int) -> tuple[Path, float, float]:
    """Fill the template store; returns its path, average record bytes and seconds taken."""
    if not has_until_empty():
        raise BenchError(
            "this adapter's `miso-adapter forward` has no --until-empty option yet: "
            "the drain row needs it"
        )
    path = folder / "template.db"
    start = time.perf_counter()
    average = fill(path, count, seed)
    return path, average, time.perf_counter() - start


_ANONYMOUS_ID = re.compile(rb'"anonymous_id":"([0-9a-f]{32})"')


class DistinctMiso(CountingMiso):
    """A CountingMiso that also counts distinct records: each has its own anonymous id."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[bytes] = set()

    def _count(self, entry) -> None:
        super()._count(entry)
        if entry.status == 200 and entry.method == "POST":
            found = _ANONYMOUS_ID.findall(entry.body)
            with self._lock:
                self._seen.update(found)

    @property
    def distinct(self) -> int:
        with self._lock:
            return len(self._seen)

    def zero(self) -> None:
        super().zero()
        with self._lock:
            self._seen = set()


@dataclass
class SharedRun:
    """One drain of a shared (Redis) store by one or more forwarder processes."""

    processes: int
    seconds: float  # from the start of the first to the exit of the last
    peak_mb: float  # the largest of the processes'
    average: float  # record bytes
    filled: float  # seconds the fill took


def own_prefix(url: str) -> str:
    """``url`` with a key prefix of its own, under the URL's own prefix if it has one."""
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    options["prefix"] = f"{options.get('prefix', 'bench-drain:')}{uuid.uuid4().hex[:10]}:"
    return urlunsplit(parts._replace(query=urlencode(options)))


def redis_url() -> str:
    """The Redis the shared-store drain uses: ``$BENCH_REDIS_URL``, else the tests' one."""
    return os.environ.get("BENCH_REDIS_URL") or REDIS_URL


def redis_problem(url: str) -> str | None:
    """Why the Redis at ``url`` cannot be used (None: it answers a PING)."""
    import redis

    try:
        client = redis.Redis.from_url(
            urlunsplit(urlsplit(url)._replace(query="")), socket_connect_timeout=2
        )
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        return (
            f"no Redis at {url} ({exc}): start one (redis-server --save '' --appendonly no) "
            "or point BENCH_REDIS_URL at one"
        )
    return None


def measure_shared(
    url: str, count: int, seed: int, processes: int, miso: DistinctMiso
) -> SharedRun:
    """Fill a fresh prefix of the Redis at ``url``, drain it with ``processes`` forwarders."""
    import redis

    try:
        return _measure_shared(url, count, seed, processes, miso)
    except redis.RedisError as exc:  # Redis went away: a failed measure, not a crash
        raise BenchError(f"Redis at {url}: {exc}") from exc


def _measure_shared(
    url: str, count: int, seed: int, processes: int, miso: DistinctMiso
) -> SharedRun:
    import redis

    from adapter.store import open_store

    store_url = own_prefix(url)
    store = open_store(store_url)
    try:
        started = time.perf_counter()
        average = fill_store(store, count, seed)
        filled = time.perf_counter() - started
        if store.stats()["spool"] != count:
            raise BenchError(f"the filled spool holds {store.stats()}, not {count:,} records")
        miso.zero()
        env = clean_env(ADAPTER_STORE=store_url, MISO_API_URL=miso.url, MISO_API_KEY=MISO_KEY)
        results: list[Run | None] = [None] * processes

        def forward(n: int) -> None:
            results[n] = run(cli("forward", "--until-empty"), env)

        threads = [threading.Thread(target=forward, args=(n,)) for n in range(processes)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        for result in results:
            # One of several may end while another still holds a batch: it exits 1.
            if result is None or result.returncode not in ((0,) if processes == 1 else (0, 1)):
                raise BenchError(
                    f"forward --until-empty failed: {result and result.stderr[-3000:]}"
                )
        left = store.stats()
        if left["spool"] or left["dead_letters"]:
            raise BenchError(f"after {processes} forwarder(s) the store holds {left}")
        if (miso.delivered, miso.distinct) != (count, count):
            raise BenchError(
                f"{processes} forwarder(s): FakeMiso received {miso.delivered:,} records, "
                f"{miso.distinct:,} distinct, of {count:,}"
            )
    finally:
        store.close()
        client = redis.Redis.from_url(urlunsplit(urlsplit(url)._replace(query="")))
        prefix = dict(parse_qsl(urlsplit(store_url).query))["prefix"]
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
        client.close()
    peak = max(r.peak_mb for r in results if r is not None)
    return SharedRun(processes, seconds, peak, average, filled)


def main_shared(url: str, count: int, runs: int, seed: int) -> None:
    """``--store URL``: one and two forwarder processes on a shared store."""
    measured: list[SharedRun] = []
    try:
        with DistinctMiso() as miso:
            for _ in range(runs):
                for processes in (1, 2):
                    one = measure_shared(url, count, seed, processes, miso)
                    print(f"{processes} forwarder(s): {count / one.seconds:,.0f} records/s "
                          f"(filled in {one.filled:.1f}s)", file=sys.stderr)  # fmt: skip
                    measured.append(one)
    except BenchError as exc:
        sys.exit(f"error: {exc}")
    average = measured[0].average
    print(f"spool: {count:,} records in {urlsplit(url).hostname} (Redis), ~{average:.0f} bytes "
          f"each; median of {runs}; every record received exactly once")  # fmt: skip
    print(f"{'work':<44}{'records/s':>11}{'seconds':>10}{'peak RSS MB':>13}")
    for processes in (1, 2):
        picked = [r for r in measured if r.processes == processes]
        seconds = median([r.seconds for r in picked])
        label = f"forward --until-empty x{processes}"
        peak = max(r.peak_mb for r in picked)
        print(f"{label:<44}{count / seconds:>11,.0f}{seconds:>10.2f}{peak:>13,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=1, help="runs of each (medians shown)")
    parser.add_argument("--seed", type=int, default=20240501)
    parser.add_argument(
        "--store",
        metavar="URL",
        help="a redis:// store to drain instead, with one and with two forwarder processes",
    )
    parser.add_argument("--floor", nargs=3, help=argparse.SUPPRESS)  # DB URL KEY
    args = parser.parse_args()
    if args.floor is not None:
        db, url, key = args.floor
        print(floor(Path(db), url, key))
        return
    if args.store is not None:
        if not args.store.startswith(("redis://", "rediss://")):
            sys.exit("error: --store takes a redis:// URL (SQLite is the default run)")
        main_shared(args.store, args.records, args.runs, args.seed)
        return
    runs: list[DrainRun] = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp, CountingMiso() as miso:
            template, average, took = prepare(Path(tmp), args.records, args.seed)
            print(f"filled {args.records:,} records, {average:.0f} bytes each on average, "
                  f"in {took:.1f}s", file=sys.stderr)  # fmt: skip
            for _ in range(args.runs):
                runs.append(measure(template, args.records, miso))
    except BenchError as exc:
        sys.exit(f"error: {exc}")
    print(f"spool: {args.records:,} records, ~{average:.0f} bytes each; median of {args.runs}")
    print(f"{'work':<44}{'records/s':>11}{'seconds':>10}{'ratio':>8}{'peak RSS MB':>13}")
    for label, picked in (
        ("floor: SQLite pages + POST, keep-alive", [r.floor for r in runs]),
        ("forward --until-empty", [r.drain for r in runs]),
    ):
        seconds = median([r.seconds for r in picked])
        ratio = median([p.seconds / r.floor.seconds for p, r in zip(picked, runs, strict=True)])
        peak = max(r.peak_mb for r in picked)
        print(
            f"{label:<44}{args.records / seconds:>11,.0f}{seconds:>10.2f}{ratio:>7.1f}x"
            f"{peak:>13,.0f}"
        )


if __name__ == "__main__":
    main()
