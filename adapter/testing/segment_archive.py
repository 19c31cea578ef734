"""A deterministic, realistic Segment archive (the S3 / GCS destinations' layout), for tests
and benchmarks.

    python -m adapter.testing.segment_archive OUT [--messages 10000] [--days 3] [--seed N]
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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import orjson

from adapter.testing.segment_messages import DAY_MS, HOUR_MS, Generator, Message

__all__ = [
    "Archive",
    "Entry",
    "Expected",
    "read_jsonl",
    "record_key",
    "write_archive",
    "write_jsonl",
]

_HEX = "0123456789abcdef"

# Share of each hour's traffic (UTC), a European shop: quiet at night, busy evenings.
_DIURNAL = [2, 1, 1, 1, 1, 2, 3, 5, 6, 7, 7, 8, 8, 8, 8, 8, 9, 10, 11, 12, 11, 9, 6, 4]


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
    emit: Callable[[int, str, list[Message], random.Random], None],
) -> Archive:
    """Draw the archive hour by hour; ``emit(hour_ms, source_id, messages, side)`` writes
    each file (``side``: the random draws of file names, apart from the messages').

    Returns the Archive (without files and entries: the writers fill them in).
    """
    first = date.fromisoformat(start) if isinstance(start, str) else start
    start_ms = int(datetime(first.year, first.month, first.day, tzinfo=UTC).timestamp()) * 1000
    gen = Generator(seed, start_ms)
    gen.collect = collect
    side = random.Random(seed ^ 0x5E6)  # redeliveries and file names: apart from messages
    archive = Archive(Path())
    archive.sources = dict(gen.sources)
    recent: deque[Message] = deque(maxlen=2000)  # messages of earlier files
    for hour, count in enumerate(_hour_counts(lines, days * 24, side)):
        hour_ms = start_ms + hour * HOUR_MS
        offsets = sorted(side.randrange(HOUR_MS) for _ in range(count))
        files: dict[str, list[Message]] = {}
        fresh: list[Message] = []
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
    written: list[tuple[Path, list[Message]]] = []

    def emit(hour_ms: int, source_id: str, batch: list[Message], side: random.Random) -> None:
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
    written: list[tuple[Path, list[Message]]] = []
    with path.open("wb") as out:

        def emit(hour_ms: int, source_id: str, batch: list[Message], side: random.Random) -> None:
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


def _entries(written: list[tuple[Path, list[Message]]]) -> list[Entry]:
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
