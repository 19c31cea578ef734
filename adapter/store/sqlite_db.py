"""The SQLite backend's plumbing: the file and its schema, connections (one per thread),
the write lock, the group commit's queue, transactions, and the statements several roles
share.

The role classes (:mod:`adapter.store.sqlite_spool`, ``sqlite_links``, ``sqlite_status``)
build on :class:`SqliteDb`; :class:`adapter.store.sqlite.SqliteStore` combines them.
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
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import orjson

from adapter.store.roles import Incoming, StoreError

__all__ = ["SqliteDb"]

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

_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "extra": "EXTRA"}
# Each connection checkpoints the WAL after this many of its own write transactions
# (SQLite's default auto-checkpoint threshold is 1,000 pages).
_CHECKPOINT_EVERY = 200

log = logging.getLogger("adapter.store")


@dataclass(slots=True)
class _Accept:
    """One accept() call waiting for a group commit."""

    batch: Sequence[Incoming]
    dedup_ttl: float
    status: tuple[str, dict[str, Any]] | None
    duplicates: list[bool] = field(default_factory=list)
    error: BaseException | None = None
    done: bool = False


class SqliteDb:
    """One SQLite file in WAL mode: its connections, locks, group-commit queue and transactions."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "full",
        busy_timeout: float = 10.0,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
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
    def from_url(cls, url: str, *, readonly: bool = False) -> Self:
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

    # ------------------------------------------------------------------ shared statements

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
