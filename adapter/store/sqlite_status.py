"""Shared status, named leases, activity tallies and the spool's numbers in the SQLite store."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson

from adapter.store.roles import ACTIVITY_KEEP_MINUTES
from adapter.store.sqlite_db import SqliteDb

__all__ = ["SqliteStatus"]

_ADD_ACTIVITY = (
    "INSERT INTO activity (minute, metric, source, key, n) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (minute, metric, source, key) DO UPDATE SET n = n + excluded.n"
)


def _oldest_kept_minute() -> int:
    """The oldest minute whose activity is kept (now's minute - ACTIVITY_KEEP_MINUTES)."""
    return int(time.time() // 60) - ACTIVITY_KEEP_MINUTES


class SqliteStatus(SqliteDb):
    """The Status role on SQLite (leases are kept with the statuses), and the spool's stats."""

    def set_status(self, name: str, value: dict[str, Any] | None) -> None:
        """Publish (or clear, with None) a status other processes read."""
        with self._write() as db:
            self._put_status(db, name, value)

    def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Hold a named lease (kept with the statuses), in one write transaction."""
        key = f"lease:{name}"
        with self._write() as db:
            now = time.time()
            rows = db.execute("SELECT value FROM status WHERE name = ?", (key,)).fetchall()
            held = orjson.loads(rows[0][0]) if rows else None
            if held and held.get("owner") != owner and held.get("until", 0) > now:
                return False
            self._put_status(db, key, {"owner": owner, "until": now + seconds})
            return True

    def drop_lease(self, name: str, owner: str) -> None:
        """Give up a named lease if ``owner`` holds it."""
        key = f"lease:{name}"
        with self._write() as db:
            rows = db.execute("SELECT value FROM status WHERE name = ?", (key,)).fetchall()
            if rows and orjson.loads(rows[0][0]).get("owner") == owner:
                db.execute("DELETE FROM status WHERE name = ?", (key,))

    def get_status(self, name: str) -> dict[str, Any] | None:
        """A status published by any process, or None."""
        rows = self._read("SELECT value FROM status WHERE name = ?", (name,))
        return orjson.loads(rows[0][0]) if rows else None

    def stats(self) -> dict[str, Any]:
        """Spool depth by kind, oldest waiting age in seconds, dead letters."""
        now = time.time()
        depth, oldest = self._read("SELECT COUNT(*), MIN(created_at) FROM spool")[0]
        (dead,) = self._read("SELECT COUNT(*) FROM dead_letters")[0]
        users, anonymous = self._read(
            "SELECT COUNT(*) - COALESCE(SUM(anonymous), 0), COALESCE(SUM(anonymous), 0) "
            "FROM profiles"
        )[0]
        (tasks,) = self._read("SELECT COUNT(*) FROM spool WHERE kind = 'user_task'")[0]
        return {
            "spool": depth,
            "oldest_age": round(now - oldest, 3) if oldest is not None else 0.0,
            "dead_letters": dead,
            "user_tasks": tasks,
            "profiles": users,
            "anonymous_profiles": anonymous,
        }

    def add_activity(self, rows: Sequence[tuple[int, str, str, str, int]]) -> None:
        """Add to the per-minute tallies in one transaction; drops those past the keep."""
        oldest = _oldest_kept_minute()
        fresh = [row for row in rows if row[0] >= oldest]
        if not fresh:
            return
        with self._write() as db:
            db.executemany(_ADD_ACTIVITY, fresh)
            # A range of the primary key: one seek when there is nothing to drop.
            db.execute("DELETE FROM activity WHERE minute < ?", (oldest,))

    def activity(self, since_minute: int) -> list[tuple[int, str, str, str, int]]:
        """The tallies of ``since_minute`` on, within the keep."""
        since = max(since_minute, _oldest_kept_minute())
        return [
            tuple(row)
            for row in self._read(
                "SELECT minute, metric, source, key, n FROM activity WHERE minute >= ?", (since,)
            )
        ]

    def ping(self) -> None:
        """Take and release the write lock: proves the file is writable right now."""
        with self._write():
            pass
