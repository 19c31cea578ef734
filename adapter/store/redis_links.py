"""Dedup keys, identity links and stored profiles on Redis, as replay, the CLI and the
console read them (the accept script writes them: :mod:`adapter.store.redis`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapter.store.redis_db import RedisDb, _profile_data, _seconds

__all__ = ["RedisLinks"]


class RedisLinks(RedisDb):
    """The Links role on Redis, and the console's overview of the links."""

    def seen(self, keys: Sequence[str]) -> set[str]:
        """The live dedup keys among ``keys`` (an expired key is gone); reads only."""
        unique = sorted(set(keys))
        if not unique:
            return set()
        with self._redis("read dedup keys"):
            pipe = self._client.pipeline(transaction=False)
            for key in unique:
                pipe.exists(self._key(f"dedup:{key}"))
            replies = pipe.execute()
        return {key for key, live in zip(unique, replies, strict=True) if live}

    def resolve(
        self, anonymous_ids: Sequence[str], user_ids: Sequence[str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """anonymous → user, and user → the anonymous id linked most recently."""
        anonymous = sorted(set(anonymous_ids))
        users = sorted(set(user_ids))
        if not anonymous and not users:
            return {}, {}
        with self._redis("resolve identity links"):
            pipe = self._client.pipeline(transaction=False)
            if anonymous:
                pipe.hmget(self._key("link"), anonymous)
            for user in users:
                pipe.zrevrange(self._key(f"user:{user}"), 0, 0)
            replies = pipe.execute()
        user_of: dict[str, str] = {}
        if anonymous:
            found = replies.pop(0)
            user_of = {a: u.decode() for a, u in zip(anonymous, found, strict=True) if u}
        anonymous_of = {u: r[0].decode() for u, r in zip(users, replies, strict=True) if r}
        return user_of, anonymous_of

    def links_of(self, any_id: str) -> dict[str, Any]:
        """The user an id belongs to (as anonymous), and the anonymous ids of an id (as user)."""
        as_anonymous, as_user = self._run("read identity links", "links_of", [any_id])
        pairs = zip(as_user[::2], as_user[1::2], strict=True)
        return {
            "user": {"user_id": as_anonymous[0].decode(), "linked_at": _seconds(as_anonymous[1])}
            if as_anonymous
            else None,
            "anonymous": [{"anonymous_id": a.decode(), "linked_at": _seconds(t)} for a, t in pairs],
        }

    def links_overview(self, limit: int = 20) -> dict[str, Any]:
        """How many anonymous ids are linked, and the newest links (the 100 newest are kept)."""
        total, newest = self._run("read the identity links overview", "links_overview", [limit])
        return {
            "total": int(total),
            "recent": [
                {"anonymous_id": a.decode(), "user_id": u.decode(), "linked_at": _seconds(t)}
                for a, u, t in zip(newest[::3], newest[1::3], newest[2::3], strict=True)
            ],
        }

    def profile_of(self, any_id: str) -> dict[str, Any] | None:
        """An id's stored profile, or None; read in one MULTI/EXEC, so consistent."""
        with self._redis("read a profile"):
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(self._key("profiles:updated"), any_id)
            pipe.sismember(self._key("profiles:anonymous"), any_id)
            pipe.hgetall(self._key(f"profile:{any_id}"))
            updated, anonymous, fields = pipe.execute()
        if updated is None:
            return None
        return {
            "data": _profile_data(fields.items()),
            "anonymous": bool(anonymous),
            "updated_at": _seconds(updated),
        }
