"""Dedup keys, identity links and stored profiles in the SQLite store, as replay, the CLI
and the console read them (accepting writes them: :mod:`adapter.store.sqlite`)."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from adapter.store.sqlite_db import SqliteDb

__all__ = ["SqliteLinks"]


def _parts(items: list[str], size: int = 500) -> Iterator[list[str]]:
    """Chunks small enough for SQLite's bound-parameter limit."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SqliteLinks(SqliteDb):
    """The Links role on SQLite, and the console's overview of the links."""

    def seen(self, keys: Sequence[str]) -> set[str]:
        """The live dedup keys among ``keys``; reads only."""
        now = time.time()
        live: set[str] = set()
        for part in _parts(sorted(set(keys))):
            marks = ",".join("?" * len(part))
            live.update(
                key
                for (key,) in self._read(
                    f"SELECT key FROM dedup WHERE key IN ({marks}) AND expires_at > ?",
                    [*part, now],
                )
            )
        return live

    def resolve(
        self, anonymous_ids: Sequence[str], user_ids: Sequence[str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """anonymous → user, and user → the anonymous id linked most recently."""
        users: dict[str, str] = {}
        anonymous: dict[str, str] = {}
        for part in _parts(sorted(set(anonymous_ids))):
            marks = ",".join("?" * len(part))
            rows = self._read(
                f"SELECT anonymous_id, user_id FROM links WHERE anonymous_id IN ({marks})", part
            )
            users.update(rows)
        for part in _parts(sorted(set(user_ids))):
            marks = ",".join("?" * len(part))
            # Ascending time: the dict keeps the last, i.e. most recent, per user.
            rows = self._read(
                f"SELECT user_id, anonymous_id FROM links WHERE user_id IN ({marks}) "
                "ORDER BY linked_at",
                part,
            )
            anonymous.update(rows)
        return users, anonymous

    def links_of(self, any_id: str) -> dict[str, Any]:
        """The user an id belongs to (as anonymous), and the anonymous ids of an id (as user)."""
        as_anonymous = self._read(
            "SELECT user_id, linked_at FROM links WHERE anonymous_id = ?", (any_id,)
        )
        as_user = self._read(
            "SELECT anonymous_id, linked_at FROM links WHERE user_id = ? ORDER BY linked_at DESC",
            (any_id,),
        )
        return {
            "user": {"user_id": as_anonymous[0][0], "linked_at": as_anonymous[0][1]}
            if as_anonymous
            else None,
            "anonymous": [{"anonymous_id": a, "linked_at": t} for a, t in as_user],
        }

    def links_overview(self, limit: int = 20) -> dict[str, Any]:
        """How many anonymous ids are linked, and the ``limit`` newest links (links_recent)."""
        (total,) = self._read("SELECT COUNT(*) FROM links")[0]
        recent = self._read(
            "SELECT anonymous_id, user_id, linked_at FROM links ORDER BY linked_at DESC LIMIT ?",
            (max(0, limit),),
        )
        return {
            "total": total,
            "recent": [{"anonymous_id": a, "user_id": u, "linked_at": t} for a, u, t in recent],
        }

    def profile_of(self, any_id: str) -> dict[str, Any] | None:
        """An id's stored profile, or None."""
        rows = self._read(
            "SELECT data, anonymous, updated_at FROM profiles WHERE id = ?", (any_id,)
        )
        if not rows:
            return None
        data, anonymous, updated_at = rows[0]
        return {"data": orjson.loads(data), "anonymous": bool(anonymous), "updated_at": updated_at}
