"""The forwarder's side of the Redis spool: queue, claim and settle items, dead letters.

Each operation that writes is one script of ``adapter/store/lua`` (see
:mod:`adapter.store.redis` for the keys and the states an item goes through).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapter.store.redis_db import RedisDb, _num, _profile_data, _seconds, _sid
from adapter.store.roles import KINDS, Claimed, DeadLetter

__all__ = ["RedisSpool"]


class RedisSpool(RedisDb):
    """The Spool role on Redis, but for accept (:class:`adapter.store.redis.RedisStore`)."""

    #: Seconds after which a consumer holding nothing is forgotten by purge_expired().
    idle_consumer = 3600.0

    def take_profiles(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The users' merged profiles; their queued uploads stop waiting (see Store)."""
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        reply = self._run("take profiles to upload", "take_profiles", ids)
        return {
            user.decode(): _profile_data(zip(fields[::2], fields[1::2], strict=True))
            for user, fields in zip(reply[::2], reply[1::2], strict=True)
        }

    def enqueue(
        self, kind: str, bodies: Sequence[bytes], source: str, delay: float = 0.0
    ) -> list[int]:
        """New spool items of ``kind``, ready after ``delay`` seconds."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if not bodies:
            return []
        delay_us = max(0, round(delay * 1_000_000))
        first = self._run(f"queue {kind} items", "enqueue", [kind, source, delay_us, *bodies])
        return list(range(first, first + len(bodies)))

    # ------------------------------------------------------------------ forwarding

    def claim(
        self, kind: str, limit: int, max_bytes: int, lease: float, owner: str
    ) -> list[Claimed]:
        """Lease the longest-ready items; the first always fits, however large."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if limit < 1:
            return []
        reply = self._run(
            f"claim {kind} items",
            "claim",
            [kind, limit, max_bytes, max(0, round(lease * 1_000_000)), owner],
        )
        if not reply:  # deletions wait for a cancelled send
            return []
        meta, *bodies = reply
        claimed = []
        for line, body in zip(meta.splitlines(), bodies, strict=True):
            n, attempts, first, created = line.split()
            claimed.append(
                Claimed(int(n), kind, body, int(attempts), _seconds(first), _seconds(created))
            )
        return claimed

    def ack(self, ids: Sequence[int]) -> None:
        """Delivered: gone from the spool."""
        if ids:
            self._run("acknowledge delivered items", "ack", [" ".join(map(str, ids))])

    def retry_later(self, ids: Sequence[int], delay: float, error: str) -> None:
        """Back on the spool after ``delay`` seconds, remembering the last error."""
        if ids:
            delay_us = max(0, round(delay * 1_000_000))
            self._run("schedule a retry", "unsent", ["retry", delay_us, error, *map(_sid, ids)])

    def release(self, ids: Sequence[int]) -> None:
        """Unsent: ready now, and this attempt does not count."""
        if ids:
            self._run("release unsent items", "unsent", ["release", 0, "", *map(_sid, ids)])

    def dead_letter(self, items: Sequence[tuple[int, str]]) -> None:
        """Move items to the dead letters, each with its reason, in one script."""
        if items:
            args = [part for spool_id, reason in items for part in (_sid(spool_id), reason)]
            self._run("move items to the dead letters", "dead_letter", args)

    # ------------------------------------------------------------------ dead letters

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        with self._redis("read the dead letters"):
            entries = self._client.xrange(self._key("dead"), count=limit or None)
        letters = []
        for sid, fields in entries:
            f = {k.decode(): v for k, v in fields.items()}
            letters.append(
                DeadLetter(
                    id=_num(sid),
                    kind=f["k"].decode(),
                    body=f["b"],
                    source=f["s"].decode(),
                    reason=f["r"].decode(),
                    attempts=int(f["n"]),
                    created_at=_seconds(f["c"]),
                    dead_at=_seconds(f["d"]),
                )
            )
        return letters

    def requeue_dead(self, ids: Sequence[int] | None) -> int:
        """Back onto the spool as new items (attempts reset); returns how many moved."""
        if ids is not None and not ids:
            return 0
        args = ["all"] if ids is None else ["some", *map(_sid, sorted(set(ids)))]
        return int(self._run("requeue dead letters", "requeue", args))

    def purge_dead(self) -> int:
        """Delete every dead letter."""
        return int(self._run("purge the dead letters", "purge_dead", []))

    def purge_expired(self) -> int:
        """Dedup keys expire by themselves (their TTL): 0.

        The forwarder's hourly upkeep: also forgets the group's consumers (one per
        forwarder process ever started) that hold nothing and were idle an hour.
        """
        self._run("tidy the consumer group", "upkeep", [round(self.idle_consumer * 1000)])
        return 0
