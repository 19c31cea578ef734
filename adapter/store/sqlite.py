"""The embedded store: one SQLite file in WAL mode, shared by every process on the host.

Gunicorn workers, their threads, the forwarder and the CLI each open their own
connection (one per thread); SQLite's locking makes them one store. Writes are
``BEGIN IMMEDIATE`` transactions, so two forwarders can never lease the same rows.
``synchronous=FULL`` by default: a commit survives power loss, not only ``kill -9``
(``?synchronous=normal`` in the URL trades the power-loss guarantee for speed).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from adapter.identity import ProfileChange, merge_profile
from adapter.store import (
    ACTIVITY_KEEP_MINUTES,
    UPLOAD_DELAY,
    Claimed,
    DeadLetter,
    Incoming,
    StoreError,
)

__all__ = ["SqliteStore"]

# The spool row is narrow and its body lives in `bodies`: a claim rewrites the rows it
# leases, and with ~600-byte bodies inline that rewrote every page of the spool once
# more per record (1M records: ~1.3 GB of extra WAL and checkpoint writes, and the
# forwarder waited on the disk). A body is written once and freed with its page.
_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,                 -- one of store.KINDS, or 'cancelled'
    size INTEGER NOT NULL,              -- of the body
    source TEXT NOT NULL,
    created_at REAL NOT NULL,
    ready_at REAL NOT NULL,             -- not before: backoff delay or lease expiry
    owner TEXT,                         -- forwarder holding the lease
    attempts INTEGER NOT NULL DEFAULT 0,
    first_attempt_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS spool_ready ON spool (kind, ready_at, id);
CREATE TABLE IF NOT EXISTS bodies (
    id INTEGER PRIMARY KEY,             -- the spool item's id
    body BLOB NOT NULL                  -- serialised JSON
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    created_at REAL NOT NULL,
    dead_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dedup (
    key TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS links (
    anonymous_id TEXT PRIMARY KEY,      -- one anonymous id belongs to one user (latest wins)
    user_id TEXT NOT NULL,
    linked_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS links_user ON links (user_id, linked_at);
-- The console's newest links: read backwards from the top instead of sorting every link.
CREATE INDEX IF NOT EXISTS links_recent ON links (linked_at);
CREATE TABLE IF NOT EXISTS profiles (
    id TEXT PRIMARY KEY,                -- a user id, or an anonymous id no link names yet
    anonymous INTEGER NOT NULL,         -- 1: kept aside for its user, never uploaded
    data BLOB NOT NULL,                 -- JSON {source: {part: {key: value}}}
    updated_at REAL NOT NULL,
    queued INTEGER NOT NULL DEFAULT 0   -- 1: a 'user' upload waits that has not read it
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS profile_deletions (
    user_id TEXT PRIMARY KEY,           -- a deleted user: older profile changes are ignored
    deleted_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS status (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS activity (
    minute INTEGER NOT NULL,            -- epoch seconds // 60
    metric TEXT NOT NULL,
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    n INTEGER NOT NULL,                 -- summed over every process that added to it
    PRIMARY KEY (minute, metric, source, key)
) WITHOUT ROWID;
"""

_ADD_ACTIVITY = (
    "INSERT INTO activity (minute, metric, source, key, n) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (minute, metric, source, key) DO UPDATE SET n = n + excluded.n"
)

_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "extra": "EXTRA"}
# Each connection checkpoints the WAL after this many of its own write transactions
# (SQLite's default auto-checkpoint threshold is 1,000 pages).
_CHECKPOINT_EVERY = 200

log = logging.getLogger("adapter.store")


def _parts(items: list[str], size: int = 500) -> Iterator[list[str]]:
    """Chunks small enough for SQLite's bound-parameter limit."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(slots=True)
class _Accept:
    """One accept() call waiting for a group commit."""

    batch: Sequence[Incoming]
    dedup_ttl: float
    status: tuple[str, dict[str, Any]] | None
    duplicates: list[bool] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False


class SqliteStore:
    """The :class:`adapter.store.Store` interface on one SQLite file."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "full",
        busy_timeout: float = 10.0,
        readonly: bool = False,
    ):
        self.path = Path(path)
        self.readonly = readonly
        #: Seconds a queued user upload waits (store.UPLOAD_DELAY); tests set 0.
        self.upload_delay = UPLOAD_DELAY
        if synchronous.lower() not in _SYNCHRONOUS:
            raise StoreError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}")
        self._synchronous = _SYNCHRONOUS[synchronous.lower()]
        self._busy_ms = int(busy_timeout * 1000)
        self._local = threading.local()
        # Writers queue on a kernel lock (threads on a mutex, processes on flock) instead of
        # in SQLite's busy handler, which sleeps in growing steps of up to 100 ms: under load
        # the unlucky writer slept for hundreds of ms (measured p99 ~370 ms -> see bench/).
        self._write_lock = threading.Lock()
        # Group commit: accepts that arrive while another thread commits leave their work
        # here, and the next leader commits all of it in one transaction (one fsync).
        self._pending: list[_Accept] = []
        self._group = threading.Condition()  # guards _pending and _leading
        self._leading = False  # a thread is committing a group
        self._lock_path = Path(f"{self.path}.lock")
        self._lock_fd: int | None = None
        self._lock_pid = 0
        if readonly:
            if not self.path.is_file():
                raise StoreError(f"no store at {self.path}")
            try:
                self._conn().execute("SELECT 1 FROM dedup LIMIT 1").fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read the store at {self.path}: {exc}") from None
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._write() as db:
                for statement in _SCHEMA.split(";\n"):
                    if statement.strip():
                        db.execute(statement)
                self._migrate(db)
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the store at {self.path}: {exc}") from None

    @classmethod
    def from_url(cls, url: str, *, readonly: bool = False) -> SqliteStore:
        """``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``?synchronous=normal``."""
        parts = urlsplit(url)
        path = url[len("sqlite:///") :].split("?", 1)[0]
        if not path:
            raise StoreError("ADAPTER_STORE sqlite URL has no path: sqlite:///var/adapter.db")
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(options) - {"synchronous"}
        if unknown:
            raise StoreError(f"unknown ADAPTER_STORE option(s): {', '.join(sorted(unknown))}")
        return cls(path, synchronous=options.get("synchronous", "full"), readonly=readonly)

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path}>"

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        """Bring a store written by an earlier version up to date, in the open transaction."""
        columns = {row[1] for row in db.execute("PRAGMA table_info(spool)")}
        if "body" in columns:  # version 1: bodies inline in the spool
            db.execute("INSERT INTO bodies (id, body) SELECT id, body FROM spool")
            db.execute("ALTER TABLE spool DROP COLUMN body")

    # ------------------------------------------------------------------ connections

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self.readonly:
                conn = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None
                )
                conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
                self._local.conn = conn
                self._local.writes = 0
                return conn
            # isolation_level=None: we issue BEGIN ourselves, so every transaction is explicit.
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=self._busy_ms / 1000)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            conn.execute(f"PRAGMA busy_timeout={self._busy_ms}")
            # 16 MB of page cache instead of 2: the dedup index takes random inserts, and
            # keeping its inner pages in memory took a sixth off a 1,000-event commit.
            conn.execute("PRAGMA cache_size=-16384")
            # SQLite checkpoints inside COMMIT, i.e. while this writer holds the lock every
            # other writer waits on; we checkpoint after releasing it instead (see _write).
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._local.conn = conn
            self._local.writes = 0
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction; any SQLite failure is a StoreError."""
        with self._write_lock, self._file_lock(), self._transaction() as conn:
            yield conn
        self._after_write(conn)

    def _after_write(self, conn: sqlite3.Connection) -> None:
        self._local.writes += 1
        if self._local.writes % _CHECKPOINT_EVERY == 0:
            # PASSIVE: copies what it can without blocking writers (or waiting for readers).
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # a later checkpoint catches up
                log.warning("WAL checkpoint failed: %s", exc)

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        if self._lock_fd is None or self._lock_pid != os.getpid():
            # One descriptor per process: flock is held per open file, so a forked child
            # must not share its parent's.
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            self._lock_pid = os.getpid()
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"store unavailable: {exc}") from None
        try:
            yield conn
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StoreError(f"store write failed: {exc}") from None
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"store commit failed: {exc}") from None

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"store read failed: {exc}") from None

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

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

    def take_profiles(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The users' merged profiles; their queued uploads stop waiting (see Store)."""
        if not user_ids:
            return {}
        with self._write() as db:
            rows = db.execute(
                "UPDATE profiles SET queued = 0 WHERE anonymous = 0 AND id IN "
                "(SELECT value FROM json_each(?)) RETURNING id, data",
                (orjson.dumps(list(user_ids)),),
            ).fetchall()
        return {user_id: orjson.loads(data) for user_id, data in rows}

    def profile_of(self, any_id: str) -> dict[str, Any] | None:
        """An id's stored profile, or None."""
        rows = self._read(
            "SELECT data, anonymous, updated_at FROM profiles WHERE id = ?", (any_id,)
        )
        if not rows:
            return None
        data, anonymous, updated_at = rows[0]
        return {"data": orjson.loads(data), "anonymous": bool(anonymous), "updated_at": updated_at}

    def enqueue(
        self, kind: str, bodies: Sequence[bytes], source: str, delay: float = 0.0
    ) -> list[int]:
        """New spool items of ``kind``, ready after ``delay`` seconds."""
        if not bodies:
            return []
        now = time.time()
        with self._write() as db:
            return self._insert_spool(
                db, [(kind, body, len(body), source, now, now + delay) for body in bodies]
            )

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
    def _insert_spool(db: sqlite3.Connection, rows: list[tuple]) -> list[int]:
        """Enqueue ``(kind, body, size, source, created_at, ready_at)`` rows, bodies apart;
        returns their ids.

        Ids are handed out from AUTOINCREMENT's counter under the write lock, so they
        stay unique for ever (an ack can never hit a later item) and link row and body.
        """
        if not rows:
            return []
        (last,) = db.execute(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'spool'), "
            "(SELECT MAX(id) FROM spool), 0)"
        ).fetchone()
        first = (last or 0) + 1
        db.executemany(
            "INSERT INTO spool (id, kind, size, source, created_at, ready_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(first + n, kind, size, source, created, ready)
             for n, (kind, _, size, source, created, ready) in enumerate(rows)],
        )  # fmt: skip
        db.executemany(
            "INSERT INTO bodies (id, body) VALUES (?, ?)",
            [(first + n, row[1]) for n, row in enumerate(rows)],
        )
        return list(range(first, first + len(rows)))

    @staticmethod
    def _drop(db: sqlite3.Connection, where: str, args: Sequence[Any] = ()) -> int:
        """Delete the spool items matching ``where`` (over ``spool``) with their bodies."""
        ids = [row[0] for row in db.execute(f"DELETE FROM spool WHERE {where} RETURNING id", args)]
        if ids:
            db.execute(
                "DELETE FROM bodies WHERE id IN (SELECT value FROM json_each(?))",
                (orjson.dumps(ids),),
            )
        return len(ids)

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

    # ------------------------------------------------------------------ identity

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

    # ------------------------------------------------------------------ forwarding

    def claim(
        self, kind: str, limit: int, max_bytes: int, lease: float, owner: str
    ) -> list[Claimed]:
        """Lease the oldest ready items; the first always fits, however large."""
        now = time.time()
        with self._write() as db:
            if kind == "delete":
                # Cancelled sends whose lease ran out will never settle (their sender died).
                self._drop(db, "kind = 'cancelled' AND ready_at <= ?", (now,))
                in_flight = db.execute(
                    "SELECT 1 FROM spool WHERE kind = 'cancelled' LIMIT 1"
                ).fetchone()
                if in_flight:
                    return []  # a deleted user's record is still being sent: wait for it
            # Oldest-ready first, in the order of the spool_ready index: the LIMIT stops
            # the index scan, where ORDER BY id sorted every ready row (a 1M-row spool
            # spent 60% of forwarding in that sort).
            rows = db.execute(
                "WITH ready AS ("
                "  SELECT id, ready_at, size FROM spool"
                "  WHERE kind = ? AND ready_at <= ? ORDER BY ready_at, id LIMIT ?"
                "), running AS ("
                "  SELECT id, SUM(size + 1) OVER win AS total, ROW_NUMBER() OVER win AS n"
                "  FROM ready WINDOW win AS (ORDER BY ready_at, id)"
                ") "
                "UPDATE spool SET ready_at = ?, owner = ?, attempts = attempts + 1,"
                "  first_attempt_at = COALESCE(first_attempt_at, ?) "
                "WHERE id IN (SELECT id FROM running WHERE total <= ? OR n = 1) "
                "RETURNING id, kind, attempts, first_attempt_at, created_at",
                (kind, now, limit, now + lease, owner, now, max_bytes),
            ).fetchall()
            if not rows:
                return []
            bodies = dict(
                db.execute(
                    "SELECT id, body FROM bodies WHERE id IN (SELECT value FROM json_each(?))",
                    (orjson.dumps([row[0] for row in rows]),),
                )
            )
        rows.sort()
        return [
            Claimed(id, kind, bodies[id], attempts, first_attempt_at, created_at)
            for id, kind, attempts, first_attempt_at, created_at in rows
        ]

    def ack(self, ids: Sequence[int]) -> None:
        """Delivered: gone from the spool."""
        if ids:
            with self._write() as db:
                # One statement for the batch: 1,000 single-row DELETEs cost 7% of forwarding.
                self._drop(db, "id IN (SELECT value FROM json_each(?))", (orjson.dumps(list(ids)),))

    def retry_later(self, ids: Sequence[int], delay: float, error: str) -> None:
        """Back on the spool after ``delay`` seconds, remembering the last error."""
        ready = time.time() + delay
        self._settle_unsent(
            ids,
            "UPDATE spool SET ready_at = ?, owner = NULL, last_error = ? WHERE id = ?",
            [(ready, error, i) for i in ids],
        )

    def release(self, ids: Sequence[int]) -> None:
        """Unsent: ready now, and this attempt does not count."""
        now = time.time()
        self._settle_unsent(
            ids,
            "UPDATE spool SET ready_at = ?, owner = NULL, attempts = MAX(attempts - 1, 0) "
            "WHERE id = ?",
            [(now, i) for i in ids],
        )

    def _settle_unsent(self, ids: Sequence[int], sql: str, rows: list[tuple]) -> None:
        """Items not delivered go back on the spool, except cancelled ones (user deleted)."""
        if not ids:
            return
        with self._write() as db:
            self._drop(db, "kind = 'cancelled' AND id IN (SELECT value FROM json_each(?))",
                       (orjson.dumps(list(ids)),))  # fmt: skip
            db.executemany(sql, rows)

    def dead_letter(self, items: Sequence[tuple[int, str]]) -> None:
        """Move items to the dead letters, each with its reason, in one transaction."""
        if not items:
            return
        now = time.time()
        ids = orjson.dumps([spool_id for spool_id, _ in items])
        with self._write() as db:
            # A cancelled item's user was deleted: it is dropped, not kept as a dead letter.
            self._drop(db, "kind = 'cancelled' AND id IN (SELECT value FROM json_each(?))", (ids,))
            db.executemany(
                "INSERT INTO dead_letters "
                "(kind, body, source, reason, attempts, created_at, dead_at) "
                "SELECT kind, body, source, ?, attempts, created_at, ? "
                "FROM spool JOIN bodies USING (id) WHERE id = ?",
                [(reason, now, spool_id) for spool_id, reason in items],
            )
            self._drop(db, "id IN (SELECT value FROM json_each(?))", (ids,))

    # ------------------------------------------------------------------ dead letters

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        sql = (
            "SELECT id, kind, body, source, reason, attempts, created_at, dead_at "
            "FROM dead_letters ORDER BY id"
        )
        rows = self._read(sql + (" LIMIT ?" if limit else ""), (limit,) if limit else ())
        return [DeadLetter(*row) for row in rows]

    def requeue_dead(self, ids: Sequence[int] | None) -> int:
        """Back onto the spool as new items (attempts reset); returns how many moved."""
        if ids is not None and not ids:
            return 0
        now = time.time()
        where, args = "", ()
        if ids is not None:
            where, args = "WHERE id IN (SELECT value FROM json_each(?))", (orjson.dumps(list(ids)),)
        with self._write() as db:
            rows = db.execute(
                "SELECT kind, body, length(body), source, created_at, ? "
                f"FROM dead_letters {where} ORDER BY id",
                (now, *args),
            ).fetchall()
            self._insert_spool(db, rows)
            db.execute(f"DELETE FROM dead_letters {where}", args)
        return len(rows)

    def purge_dead(self) -> int:
        """Delete every dead letter."""
        with self._write() as db:
            return db.execute("DELETE FROM dead_letters").rowcount

    # ------------------------------------------------------------------ status, upkeep

    def set_status(self, name: str, value: dict[str, Any] | None) -> None:
        """Publish (or clear, with None) a status other processes read."""
        with self._write() as db:
            self._put_status(db, name, value)

    @staticmethod
    def _put_status(db: sqlite3.Connection, name: str, value: dict[str, Any] | None) -> None:
        if value is None:
            db.execute("DELETE FROM status WHERE name = ?", (name,))
        else:
            db.execute(
                "INSERT INTO status (name, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (name, orjson.dumps(value), time.time()),
            )

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

    def purge_expired(self) -> int:
        """Drop dedup keys past their window (returns how many) and activity past its keep."""
        with self._write() as db:
            # add_activity drops old tallies too, but only while something adds to them.
            db.execute("DELETE FROM activity WHERE minute < ?", (_oldest_kept_minute(),))
            return db.execute("DELETE FROM dedup WHERE expires_at <= ?", (time.time(),)).rowcount


def _oldest_kept_minute() -> int:
    """The oldest minute whose activity is kept (now's minute - ACTIVITY_KEEP_MINUTES)."""
    return int(time.time() // 60) - ACTIVITY_KEEP_MINUTES
