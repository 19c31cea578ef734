"""ingest(): the one path every entry point uses after reading its source.

Sources (:mod:`adapter.sources`) yield (dedup key, event); ingest translates each event,
then hands every resulting record to the store in ONE transaction with the dedup keys,
so what it reports as accepted is durable, and a redelivered message is a duplicate.
A long input (a replayed file, an upload) is read in chunks (:func:`chunks`) and each
chunk ingested in its own transaction (:func:`ingest_chunks`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from adapter.mapping import Translator
from adapter.sources.jsonvalues import ReadError, read_values
from adapter.store import Incoming, Store

if TYPE_CHECKING:
    from adapter.sources import Source
    from adapter.sources.inputs import Input

__all__ = ["CHUNK", "SMALL_CHUNK", "IngestResult", "Intake", "chunks", "ingest", "ingest_chunks"]


@dataclass
class IngestResult:
    """What happened to a request's (or a file chunk's) events."""

    received: int = 0
    accepted: int = 0  # records now durably queued for Miso
    duplicates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason → count
    links: int = 0
    deletions: int = 0
    profiles: int = 0  # profile changes stored (uploaded to Miso's Users API)
    types: Counter[str] = field(default_factory=Counter)  # Miso type → records accepted
    # (kind, name/path/call) no rule claimed → events: what the console offers stubs for
    uncovered: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, other: IngestResult) -> None:
        """Add ``other``'s counts to these (a chunk's counts to an upload's)."""
        self.received += other.received
        self.accepted += other.accepted
        self.duplicates += other.duplicates
        self.skipped.update(other.skipped)
        self.links += other.links
        self.deletions += other.deletions
        self.profiles += other.profiles
        self.types.update(other.types)
        self.uncovered.update(other.uncovered)

    def as_dict(self) -> dict:
        """The JSON answer of the ingestion routes."""
        return {
            "received": self.received,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "skipped": dict(self.skipped),
            "links": self.links,
            "deletions": self.deletions,
            "profiles": self.profiles,
        }


def ingest(
    store: Store,
    translator: Translator,
    events: Iterable[tuple[str | None, dict | str]],
    *,
    source: str,
    dedup_ttl: float,
    status: tuple[str, dict[str, Any]] | None = None,
    result: IngestResult | None = None,
) -> IngestResult:
    """Translate ``(dedup_key, event)`` pairs and accept their records atomically.

    An event given as a string is an input that could not be read as an event; the
    string says why, and it is counted as skipped with that reason. ``status`` is
    stored in the same transaction (a replay checkpoint); counts add to ``result``
    when one is given (a long stream ingested chunk by chunk).
    """
    result = result if result is not None else IngestResult()
    incoming: list[Incoming] = []
    # Per incoming item: records, deletions, links, profile changes, and its skip reason
    # (a link-only message is skipped as an interaction): counted once dedup has spoken.
    counted: list[tuple[list, int, int, int, str | None, tuple[str, str] | None]] = []
    for key, event in events:
        result.received += 1
        if isinstance(event, str):
            result.skipped[event] += 1
            continue
        translation = translator.translate(event)
        profiles = translation.profiles
        if not (translation.records or translation.deletions or translation.links or profiles):
            result.skipped[translation.skipped or "nothing to send"] += 1
            if translation.uncovered is not None:
                result.uncovered[translation.uncovered] += 1
            continue
        incoming.append(
            Incoming(
                key,
                [orjson.dumps(r) for r in translation.records],
                translation.deletions,
                source,
                translation.links,
                profiles,
            )
        )
        counted.append(
            ([r.get("type") for r in translation.records], len(translation.deletions),
             len(translation.links), len(profiles), translation.skipped, translation.uncovered)
        )  # fmt: skip
    duplicates = store.accept(incoming, dedup_ttl, status) if incoming or status else []
    for (types, n_deletions, n_links, n_profiles, skipped, uncovered), duplicate in zip(
        counted, duplicates, strict=True
    ):
        if duplicate:
            result.duplicates += 1
            continue
        result.accepted += len(types)
        result.types.update(types)
        result.deletions += n_deletions
        result.links += n_links
        result.profiles += n_profiles
        if skipped is not None:
            result.skipped[skipped] += 1
        if uncovered is not None:
            result.uncovered[uncovered] += 1
    return result


# --------------------------------------------------------------------------- streams

#: Events per transaction of a replay (files, an Export API day). One commit per 5,000:
#: fewer fsyncs, and each commit writes a dedup-index page once for all its keys that land
#: there. A commit then takes ~60 ms, which is also what a webhook arriving during it
#: waits for the store at most.
CHUNK = 5000
#: Events per chunk where big transactions do not pay: an upload to the service (it runs
#: in a web worker beside live webhooks, and each stored chunk is a step of the console's
#: progress bar) and a dry run (it commits nothing; a chunk's events are what it holds).
SMALL_CHUNK = 1000
#: Unreadable inputs named one by one in an answer or on stderr; the rest only counted.
SHOWN_ERRORS = 20


@dataclass
class Intake:
    """What reading one or more inputs did, and what ingesting them did (``result``)."""

    rows: int = 0  # JSON values read (lines, array items, documents)
    resumed_rows: int = 0  # values passed over because a checkpoint said they were done
    malformed: int = 0  # values (or records) that were unusable input, each reported
    errors: list[str] = field(default_factory=list)  # the first SHOWN_ERRORS, located
    result: IngestResult = field(default_factory=IngestResult)

    def bad(self, where: str, message: str) -> None:
        """Count an unusable input, keeping the first few with their location."""
        self.malformed += 1
        if len(self.errors) < SHOWN_ERRORS:
            self.errors.append(f"{where}: {message}")


Chunk = list[tuple[str | None, "dict | str"]]


def chunks(
    source: Source,
    opened: Input,
    intake: Intake,
    *,
    skip: int = 0,
    report: Callable[[str, str], None] | None = None,
    size: int = CHUNK,
) -> Iterator[tuple[Chunk, int, int]]:
    """An input's events in chunks of about ``size``: ``(chunk, values consumed, raw bytes
    read)``.

    A chunk ends after a whole value, so "values consumed" is a checkpoint: a resumed
    read passes over the first ``skip`` values. Unusable values are counted in
    ``intake`` (and given to ``report``), never fatal. The last chunk may be empty.
    """
    chunk: Chunk = []
    append = chunk.append
    consumed = 0
    items = source.items
    values = read_values(opened.stream, opened.name)
    for _ in range(skip):  # a resumed read: the values already stored
        if next(values, None) is None:
            break
        consumed += 1
        intake.resumed_rows += 1
    # Rows read are counted at each chunk's end: an attribute write per row cost more.
    first_row = intake.rows - consumed
    one = source.one_event
    for where, value in values:
        consumed += 1
        if isinstance(value, ReadError):
            _bad(intake, report, where, value.message)
            continue
        if one is not None:  # the hot path of sources whose every value is one event
            append(one(value))
        else:
            for place, key, event in items(where, value):
                if isinstance(event, ReadError):
                    _bad(intake, report, place, event.message)
                else:
                    append((key, event))
        if len(chunk) >= size:
            intake.rows = first_row + consumed
            source.end_chunk()
            yield chunk, consumed, opened.position()
            chunk = []
            append = chunk.append
    intake.rows = first_row + consumed
    source.end_chunk()
    yield chunk, consumed, opened.position()


def _bad(
    intake: Intake, report: Callable[[str, str], None] | None, where: str, message: str
) -> None:
    intake.bad(where, message)
    if report is not None:
        report(where, message)


def ingest_chunks(
    store: Store,
    translator: Translator,
    parts: Iterable[tuple[Chunk, int, int]],
    *,
    source: str,
    dedup_ttl: float,
    result: IngestResult,
    status: Callable[[int, int], tuple[str, dict[str, Any]] | None] | None = None,
    after: Callable[[IngestResult, int, int], None] | None = None,
) -> None:
    """Ingest chunks as they are read, each in its own transaction: a long input is
    durable chunk by chunk, and an input cut off midway keeps what was stored.

    ``status(consumed, position)`` is stored with each chunk (a checkpoint, an upload's
    progress); ``after(part, consumed, position)`` sees each chunk's counts once stored.
    """
    for chunk, consumed, position in parts:
        checkpoint = status(consumed, position) if status is not None else None
        part = IngestResult()
        if chunk or checkpoint:
            part = ingest(store, translator, chunk, source=source, dedup_ttl=dedup_ttl,
                          status=checkpoint)  # fmt: skip
        result.add(part)
        if after is not None:
            after(part, consumed, position)
