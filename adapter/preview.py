"""A dry run's store: what a replay would send now, written out instead of stored.

:class:`Preview` stands where the store stands in :func:`~adapter.ingest.ingest`, so a dry
run takes the very path a replay takes: the same dedup (within the run, and read-only
against a store's live keys), the same links learned, and each record completed with the
ids the forwarder would give it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import IO, Any

import orjson

from adapter.fingerprints import Fingerprints
from adapter.identity import Link, complete_ids
from adapter.store import Incoming, Store

__all__ = ["Preview"]


class Preview:
    """A dry run's store: it deduplicates and links as the store would, and writes records out.

    Given to :func:`~adapter.ingest.ingest` in place of the store, so a dry run takes the
    very path a replay takes. Dedup keys are remembered within the run as 64-bit hashes
    (:class:`~adapter.fingerprints.Fingerprints`: about 17 bytes per distinct event)
    and, when ``store`` is given, looked up among its live keys, read-only. Each record
    gets the ids the forwarder would give it as it goes out
    (:func:`adapter.identity.complete_ids`), from the links this run has learned so far
    (the newest ``LINKS_KEPT``) and the store's: what is written is what a replay would
    send now.
    """

    LINKS_KEPT = 200_000

    def __init__(self, output: IO[bytes] | None, store: Store | None = None) -> None:
        self.output = output
        self.store = store
        self.records = 0
        self._seen = Fingerprints()  # hash() of every dedup key passed
        self._user_of: OrderedDict[str, str] = OrderedDict()  # anonymous id -> user
        self._anonymous_of: OrderedDict[str, str] = OrderedDict()  # user -> latest anonymous

    def learn(self, links: Sequence[Link]) -> None:
        """Links as the store would keep them (the newest wins), in memory."""
        for link in links:
            pairs = (
                (self._user_of, link.anonymous_id, link.user_id),
                (self._anonymous_of, link.user_id, link.anonymous_id),
            )
            for table, key, value in pairs:
                table[key] = value
                table.move_to_end(key)
                if len(table) > self.LINKS_KEPT:
                    table.popitem(last=False)

    def _resolve(
        self, anonymous_ids: Sequence[str], user_ids: Sequence[str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        user_of = {a: self._user_of[a] for a in anonymous_ids if a in self._user_of}
        anonymous_of = {u: self._anonymous_of[u] for u in user_ids if u in self._anonymous_of}
        if self.store is not None:
            rest_a = [a for a in anonymous_ids if a not in user_of]
            rest_u = [u for u in user_ids if u not in anonymous_of]
            if rest_a or rest_u:
                more_users, more_anonymous = self.store.resolve(rest_a, rest_u)
                user_of = {**more_users, **user_of}
                anonymous_of = {**more_anonymous, **anonymous_of}
        return user_of, anonymous_of

    def accept(
        self,
        batch: Sequence[Incoming],
        dedup_ttl: float,
        status: tuple[str, dict[str, Any]] | None = None,
    ) -> list[bool]:
        """Which items are duplicates; the others' links are learned and their records
        written, completed with the ids a send would give them, not stored."""
        live: set[str] = set()
        if self.store is not None:
            fresh = [
                i.dedup_key for i in batch if i.dedup_key and hash(i.dedup_key) not in self._seen
            ]
            live = self.store.seen(fresh) if fresh else set()
        duplicates: list[bool] = []
        lines: list[bytes] = []
        first_seen = self._seen.add
        for item in batch:
            key = item.dedup_key
            if key is not None and (key in live or not first_seen(hash(key))):
                duplicates.append(True)
                continue
            duplicates.append(False)
            self.learn(item.links)
            lines.extend(item.records)
        lines = self._completed(lines)
        self.records += len(lines)
        if self.output is not None and lines:
            lines.append(b"")
            self.output.write(b"\n".join(lines))  # one write per chunk, not per record
        return duplicates

    def _completed(self, bodies: list[bytes]) -> list[bytes]:
        """The records with the ids the forwarder would add. A record is parsed only when a
        link may complete it: its one id is read from the serialised bytes, and looked up."""
        wanting: list[tuple[int, str]] = []  # (index, the id it has), records lacking one
        for index, body in enumerate(bodies):
            has_user, has_anonymous = b'"user_id"' in body, b'"anonymous_id"' in body
            if has_user != has_anonymous:
                known = _string_field(body, b'"user_id":"' if has_user else b'"anonymous_id":"')
                wanting.append((index, known))
        if not wanting:
            return bodies
        ids = [known for _, known in wanting]
        user_of, anonymous_of = self._resolve(ids, ids)
        linked = [i for i, known in wanting if known in user_of or known in anonymous_of]
        if not linked:
            return bodies
        records = [orjson.loads(bodies[i]) for i in linked]
        for index in complete_ids(records, lambda a, u: (user_of, anonymous_of)):
            bodies[linked[index]] = orjson.dumps(records[index])
        return bodies


def _string_field(body: bytes, opening: bytes) -> str:
    """A string field's value read from compact JSON (orjson's), without parsing the whole
    record; "" when it cannot be read that simply (then no link will match it)."""
    start = body.find(opening)
    if start < 0:
        return ""
    start += len(opening)
    end = body.find(b'"', start)
    token = body[start:end]
    if end < 0 or b"\\" in token:
        return orjson.loads(body).get(opening[1:-3].decode(), "") if end >= 0 else ""
    return token.decode("utf-8", "replace")
