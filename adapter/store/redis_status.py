"""Shared status, named leases, activity tallies and the spool's numbers on Redis."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import orjson

from adapter.store.redis_db import RedisDb, _seconds
from adapter.store.roles import ACTIVITY_KEEP_MINUTES

__all__ = ["RedisStatus"]


def _now_minute() -> int:
    return int(time.time() // 60)


def _activity_expiry(minute: int) -> int:
    """When a minute's tallies leave the keep (epoch seconds): as activity() stops reading it."""
    return (minute + ACTIVITY_KEEP_MINUTES + 1) * 60


class RedisStatus(RedisDb):
    """The Status role on Redis, and the spool's stats for the console and the metrics."""

    def set_status(self, name: str, value: dict[str, Any] | None) -> None:
        """Publish (or clear, with None) a status other processes read."""
        with self._redis(f"set status {name!r}"):
            if value is None:
                self._client.hdel(self._key("status"), name)
            else:
                self._client.hset(self._key("status"), name, orjson.dumps(value))

    def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Hold a named lease: a key that expires by itself, taken or renewed in one script."""
        with self._redis(f"take the lease {name!r}"):
            milliseconds = max(1, math.ceil(seconds * 1000))
            key = self._key(f"lease:{name}")
            return bool(self._leases["take"](keys=[key], args=[owner, milliseconds]))

    def drop_lease(self, name: str, owner: str) -> None:
        """Give up a named lease if ``owner`` holds it."""
        with self._redis(f"drop the lease {name!r}"):
            self._leases["drop"](keys=[self._key(f"lease:{name}")], args=[owner])

    def get_status(self, name: str) -> dict[str, Any] | None:
        """A status published by any process, or None."""
        with self._redis(f"read status {name!r}"):
            value = self._client.hget(self._key("status"), name)
        return orjson.loads(value) if value is not None else None

    def stats(self) -> dict[str, Any]:
        """Spool depth (in flight and waiting for a retry included), oldest age, dead letters,
        user tasks still to check, profiles (users, anonymous)."""
        depth, age, dead, tasks, users, anonymous = self._run("read the spool's stats", "stats", [])
        return {
            "spool": int(depth),
            "oldest_age": round(_seconds(age), 3) if age else 0.0,
            "dead_letters": int(dead),
            "user_tasks": int(tasks),
            "profiles": int(users),
            "anonymous_profiles": int(anonymous),
        }

    def add_activity(self, rows: Sequence[tuple[int, str, str, str, int]]) -> None:
        """Add to the per-minute tallies in one MULTI/EXEC; each minute's hash expires."""
        oldest = _now_minute() - ACTIVITY_KEEP_MINUTES
        # Summed here first: a call often repeats a tally, and it is one HINCRBY less.
        sums: dict[tuple[int, bytes], int] = {}
        for minute, metric, source, key, n in rows:
            if minute >= oldest:
                slot = (minute, orjson.dumps([metric, source, key]))
                sums[slot] = sums.get(slot, 0) + n
        if not sums:
            return
        with self._redis("add to the activity tallies"):
            pipe = self._client.pipeline(transaction=True)
            for (minute, name), n in sums.items():
                pipe.hincrby(self._key(f"activity:{minute}"), name, n)
            for minute in {minute for minute, _ in sums}:
                pipe.expireat(self._key(f"activity:{minute}"), _activity_expiry(minute))
            pipe.execute()

    def activity(self, since_minute: int) -> list[tuple[int, str, str, str, int]]:
        """The tallies of ``since_minute`` up to this minute, within the keep."""
        now = _now_minute()
        minutes = range(max(since_minute, now - ACTIVITY_KEEP_MINUTES), now + 1)
        if not minutes:
            return []
        with self._redis("read the activity tallies"):
            pipe = self._client.pipeline(transaction=False)
            for minute in minutes:
                pipe.hgetall(self._key(f"activity:{minute}"))
            tallies = pipe.execute()
        rows = []
        for minute, fields in zip(minutes, tallies, strict=True):
            for name, n in fields.items():
                metric, source, key = orjson.loads(name)
                rows.append((minute, metric, source, key, int(n)))
        return rows

    def ping(self) -> None:
        """Write a key: proves Redis is reachable and takes writes (not a replica, not full)."""
        with self._redis("write to the store"):
            self._client.set(self._key("ping"), b"1", px=60_000)
