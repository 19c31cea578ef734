"""ingest(): the one path every entry point uses after reading its source.

Source readers yield (dedup key, event); ingest translates each event, then hands
every resulting record to the store in ONE transaction with the dedup keys, so
what it reports as accepted is durable, and a redelivered message is a duplicate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from adapter.mapping import Translator
from adapter.store import Incoming, Store

__all__ = ["IngestResult", "ingest"]


@dataclass
class IngestResult:
    """What happened to a request's (or a file chunk's) events."""

    received: int = 0
    accepted: int = 0  # records now durably queued for Miso
    duplicates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason → count
    links: int = 0
    deletions: int = 0
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
    # Per incoming item: records, deletions, links, and its skip reason (a link-only
    # message is skipped as an interaction): counted only once dedup has spoken.
    counted: list[tuple[list, int, int, str | None, tuple[str, str] | None]] = []
    for key, event in events:
        result.received += 1
        if isinstance(event, str):
            result.skipped[event] += 1
            continue
        translation = translator.translate(event)
        if not (translation.records or translation.deletions or translation.links):
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
            )
        )
        counted.append(
            ([r.get("type") for r in translation.records], len(translation.deletions),
             len(translation.links), translation.skipped, translation.uncovered)
        )  # fmt: skip
    duplicates = store.accept(incoming, dedup_ttl, status) if incoming or status else []
    for (types, n_deletions, n_links, skipped, uncovered), duplicate in zip(
        counted, duplicates, strict=True
    ):
        if duplicate:
            result.duplicates += 1
            continue
        result.accepted += len(types)
        result.types.update(types)
        result.deletions += n_deletions
        result.links += n_links
        if skipped is not None:
            result.skipped[skipped] += 1
        if uncovered is not None:
            result.uncovered[uncovered] += 1
    return result
