"""The embedded store: one SQLite file in WAL mode, shared by every process on the host.

Gunicorn workers, their threads, the forwarder and the CLI each open their own
connection (one per thread); SQLite's locking makes them one store. Writes are
``BEGIN IMMEDIATE`` transactions, so two forwarders can never lease the same rows.
``synchronous=FULL`` by default: a commit survives power loss, not only ``kill -9``
(``?synchronous=normal`` in the URL trades the power-loss guarantee for speed).

Accepting (with its group commit, profile merges and deletions) is here; the other roles
are in :mod:`adapter.store.sqlite_spool`, ``sqlite_links`` and ``sqlite_status``, on the
plumbing of :mod:`adapter.store.sqlite_db`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import orjson

from adapter.identity import ProfileChange, merge_profile
from adapter.store.roles import UPLOAD_DELAY, Incoming, StoreError
from adapter.store.sqlite_db import _Accept
from adapter.store.sqlite_links import SqliteLinks
from adapter.store.sqlite_spool import SqliteSpool
from adapter.store.sqlite_status import SqliteStatus

__all__ = ["SqliteStore"]


class SqliteStore(SqliteSpool, SqliteLinks, SqliteStatus):
    """The :class:`adapter.store.Store` interface on one SQLite file."""

    #: Seconds a queued user upload waits (store.UPLOAD_DELAY); tests set 0.
    upload_delay = UPLOAD_DELAY

    # ------------------------------------------------------------------ intake

    def accept(
        self,
        batch: Sequence[Incoming],
        dedup_ttl: float,
        status: tuple[str, dict[str, Any]] | None = None,
    ) -> list[bool]:
        """Dedup and enqueue in one transaction: all of it is durable, or none of it.

        Concurrent calls from threads of this process are committed together (group
        commit): each returns only once the transaction holding its items has committed,
        and a failure fails every call in it, none partly.
        """
        job = _Accept(batch, dedup_ttl, status)
        with self._group:
            self._pending.append(job)
            # Wait while another thread leads a commit: it may take this job with its own.
            # Waiting here, not on the write lock, lets a committed job return at once
            # instead of queueing behind the next group's commit.
            while self._leading and not job.done:
                self._group.wait()
            lead = not job.done
            if lead:
                self._leading = True
        if lead:
            committed = self._lead_group_commit()
            if committed is not None:
                self._after_write(committed)  # the checkpoint, once no writer waits on us
        if job.error is not None:
            raise job.error
        return job.duplicates

    def _take_pending(self) -> list[_Accept]:
        with self._group:
            jobs, self._pending = self._pending, []
        return jobs

    def _lead_group_commit(self) -> sqlite3.Connection | None:
        """Commit every waiting accept in one transaction, as the group's leader.

        The waiting accepts are taken once both locks are held: those that arrived while
        the other processes' commits held the file lock ride along. Returns the
        connection when the transaction committed.
        """
        jobs: list[_Accept] = []
        try:
            with self._write_lock, self._file_lock():
                jobs = self._take_pending()
                with self._transaction() as conn:
                    now = time.time()
                    for job in jobs:
                        job.duplicates = self._accept_in(conn, job, now)
        except StoreError as exc:
            for job in jobs or self._take_pending():
                job.error = StoreError(str(exc))
        except BaseException as exc:
            jobs = jobs or self._take_pending()
            for job in jobs:
                job.error = StoreError(f"store write failed: {type(exc).__name__}")
            raise
        else:
            return conn
        finally:
            with self._group:
                for job in jobs:
                    job.done = True
                self._leading = False
                self._group.notify_all()
        return None

    def _accept_in(self, db: sqlite3.Connection, job: _Accept, now: float) -> list[bool]:
        """One accept's dedup and inserts, inside the group's transaction."""
        keys = [i.dedup_key for i in job.batch if i.dedup_key]
        fresh = self._fresh_keys(db, keys, job.dedup_ttl, now)
        duplicates: list[bool] = []
        rows: list[tuple] = []
        # Links are written a batch at a time (most events carry both ids: a statement per
        # event was a fifth of a replay's store time), and before any profile change or
        # deletion that follows them, which must see them.
        links: list[tuple[str, str, str]] = []
        for item in job.batch:
            if item.dedup_key is not None:
                if item.dedup_key not in fresh:
                    duplicates.append(True)
                    continue
                fresh.discard(item.dedup_key)  # a second item with it is a duplicate
            duplicates.append(False)
            for body in item.records:
                rows.append(("record", body, len(body), item.source, now, now))
            links.extend((x.anonymous_id, x.user_id, item.source) for x in item.links)
            if item.profiles or item.deletions:
                self._link(db, links, now)
                links = []
            for change in item.profiles:
                self._change_profile(db, change, item.source, now)
            if item.deletions:
                # Records before the deletion notice go in first, so it can drop them.
                self._insert_spool(db, rows)
                rows = []
                for user_id in item.deletions:
                    self._forget(db, user_id)
                body = orjson.dumps({"user_ids": item.deletions})
                rows.append(("delete", body, len(body), item.source, now, now))
        self._link(db, links, now)
        self._insert_spool(db, rows)
        if job.status is not None:
            self._put_status(db, *job.status)
        return duplicates

    def _link(self, db: sqlite3.Connection, links: list[tuple[str, str, str]], now: float) -> None:
        """Store ``(anonymous id, user id, source)`` links, in order (the latest wins), and
        join each newly linked anonymous profile into its user's."""
        if not links:
            return
        db.executemany(
            "INSERT INTO links (anonymous_id, user_id, linked_at) VALUES (?, ?, ?) "
            "ON CONFLICT (anonymous_id) DO UPDATE SET user_id = excluded.user_id, "
            "linked_at = excluded.linked_at",
            [(anonymous, user, now) for anonymous, user, _ in links],
        )
        # One look for the batch: anonymous profiles are rare, links are not.
        waiting = {
            profile_id
            for (profile_id,) in db.execute(
                "SELECT id FROM profiles WHERE anonymous = 1 AND id IN "
                "(SELECT value FROM json_each(?))",
                (orjson.dumps([anonymous for anonymous, _, _ in links]),),
            )
        }
        for anonymous, user, source in links:
            if anonymous in waiting:
                self._join_profile(db, anonymous, user, source, now)

    # ------------------------------------------------------------------ profiles

    @staticmethod
    def _load_profile(db: sqlite3.Connection, profile_id: str) -> tuple[dict, bool] | None:
        row = db.execute("SELECT data, queued FROM profiles WHERE id = ?", (profile_id,)).fetchone()
        return None if row is None else (orjson.loads(row[0]), bool(row[1]))

    def _save_profile(
        self,
        db: sqlite3.Connection,
        user_id: str,
        data: dict,
        anonymous: bool,
        queued: bool,
        source: str,
        now: float,
    ) -> None:
        """Write a profile; a user's changed profile gets an upload queued unless one waits."""
        enqueue = not anonymous and not queued
        db.execute(
            "INSERT INTO profiles (id, anonymous, data, updated_at, queued) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (id) DO UPDATE SET anonymous = excluded.anonymous, data = excluded.data, "
            "updated_at = excluded.updated_at, queued = excluded.queued",
            (user_id, int(anonymous), orjson.dumps(data), now, int(queued or enqueue)),
        )
        if enqueue:
            body = orjson.dumps({"user_id": user_id})
            ready = now + self.upload_delay
            self._insert_spool(db, [("user", body, len(body), source, now, ready)])

    def _change_profile(
        self, db: sqlite3.Connection, change: ProfileChange, source: str, now: float
    ) -> None:
        target, anonymous = change.user_id, False
        if target is None:
            row = db.execute(
                "SELECT user_id FROM links WHERE anonymous_id = ?", (change.anonymous_id,)
            ).fetchone()
            target, anonymous = (row[0], False) if row else (change.anonymous_id, True)
        deleted = db.execute(
            "SELECT deleted_at FROM profile_deletions WHERE user_id = ?", (target,)
        ).fetchone()
        if deleted is not None and change.at <= deleted[0]:
            return  # older than the user's deletion: it must not bring them back
        loaded = self._load_profile(db, target)
        data, queued = loaded if loaded is not None else ({}, False)
        merge_profile(data.setdefault(change.table, {}), change.changes)
        self._save_profile(db, target, data, anonymous, queued, source, now)

    def _join_profile(
        self, db: sqlite3.Connection, anonymous_id: str, user_id: str, source: str, now: float
    ) -> None:
        """A link names an anonymous profile's user: its values fill the user's gaps."""
        row = db.execute(
            "DELETE FROM profiles WHERE id = ? AND anonymous = 1 RETURNING data", (anonymous_id,)
        ).fetchone()
        if row is None:
            return
        loaded = self._load_profile(db, user_id)
        data, queued = loaded if loaded is not None else ({}, False)
        for each, parts in orjson.loads(row[0]).items():
            mine = data.setdefault(each, {})
            for part, values in parts.items():
                mine[part] = {**values, **mine.get(part, {})}
        self._save_profile(db, user_id, data, False, queued, source, now)

    @staticmethod
    def _fresh_keys(db: sqlite3.Connection, keys: list[str], ttl: float, now: float) -> set[str]:
        """Record the dedup keys; returns those that were new (or expired), in one statement.

        A new key is inserted and an expired one revived; a live key changes nothing and
        is not returned. One statement per batch: a statement per key was a tenth of a
        replay's time.
        """
        if not keys:
            return set()
        return {
            key
            for (key,) in db.execute(
                "INSERT INTO dedup (key, expires_at) SELECT value, ? FROM json_each(?) WHERE true "
                "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at "
                "WHERE dedup.expires_at <= ? RETURNING key",
                (now + ttl, orjson.dumps(keys), now),
            )
        }

    @staticmethod
    def _forget(db: sqlite3.Connection, user_id: str) -> None:
        """A deletion notice: drop the user's queued records and uploads, dead letters,
        links and profiles (their anonymous ids' too), and remember when.

        Records of the user's anonymous ids go too: once sent they would be joined to the
        user. A record being sent right now cannot be recalled: it is marked 'cancelled',
        so a failed send is never retried, and Miso's deletion waits until no cancelled
        send is in flight (see claim), so it always lands after such a record.
        """
        mine = (
            "(json_extract(body, '$.user_id') = ?1 OR json_extract(body, '$.anonymous_id') IN "
            "(SELECT anonymous_id FROM links WHERE user_id = ?1))"
        )
        in_spool = f"id IN (SELECT id FROM bodies WHERE {mine})"
        now = time.time()
        db.execute(
            f"UPDATE spool SET kind = 'cancelled' WHERE kind IN ('record', 'user') "
            f"AND owner IS NOT NULL AND ready_at > ?2 AND {in_spool}",
            (user_id, now),
        )
        SqliteStore._drop(db, f"kind IN ('record', 'user') AND {in_spool}", (user_id,))
        db.execute(
            f"DELETE FROM dead_letters WHERE kind IN ('record', 'user') AND {mine}", (user_id,)
        )
        db.execute(
            "DELETE FROM profiles WHERE id = ?1 OR id IN "
            "(SELECT anonymous_id FROM links WHERE user_id = ?1)",
            (user_id,),
        )
        db.execute(
            "INSERT INTO profile_deletions (user_id, deleted_at) VALUES (?, ?) "
            "ON CONFLICT (user_id) DO UPDATE SET deleted_at = excluded.deleted_at",
            (user_id, now),
        )
        db.execute("DELETE FROM links WHERE user_id = ?", (user_id,))
