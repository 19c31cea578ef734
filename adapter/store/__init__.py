"""The store: spool, dead letters, dedup keys and shared status, behind one interface.

Every entry point (webhook routes, replay) hands translated records to
:meth:`Store.accept`, which deduplicates and enqueues them in one transaction: when
it returns, they are durable (on Redis: as its persistence settings make them), and
only then do we answer 200. The forwarder
:meth:`~Store.claim`\\ s batches with a lease, and :meth:`~Store.ack`\\ s,
:meth:`~Store.retry_later`\\ s or :meth:`~Store.dead_letter`\\ s them. A shared
backend (Redis) implements the same interface without touching routes or forwarder.

``open_store(url)`` picks the implementation from ``ADAPTER_STORE``:

* ``sqlite:///var/adapter.db`` (relative path) or ``sqlite:////srv/adapter.db``
  (absolute): one file shared by the processes of one host (:mod:`adapter.store.sqlite`);
* ``redis://[:password@]host:6379/0`` (``rediss://`` for TLS, ``?prefix=NAME:`` to share
  a Redis): one Redis shared by several hosts (:mod:`adapter.store.redis`, imported
  only then).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from adapter.identity import Link, ProfileChange

if TYPE_CHECKING:
    from flask import Flask

__all__ = [
    "ACTIVITY_KEEP_MINUTES",
    "KINDS",
    "UPLOAD_DELAY",
    "Claimed",
    "DeadLetter",
    "Incoming",
    "Store",
    "StoreError",
    "anonymous_in",
    "current",
    "init_app",
    "open_store",
]


#: What the spool holds: records to POST; deletion notices (``{"user_ids": [...]}``);
#: user uploads (``{"user_id": U}``: upload U's merged profile as it is when sent); and
#: Miso user tasks to check (``{"task_id": T, "user_ids": [...]}``).
KINDS = ("record", "delete", "user", "user_task")

#: Seconds a user's queued upload waits before a forwarder may take it, so the changes
#: that follow within it (an identify, then a group call) go out in one upload.
UPLOAD_DELAY = 1.0

#: Minutes per-minute activity tallies are kept (a day and an hour); older ones are dropped.
ACTIVITY_KEEP_MINUTES = 25 * 60


class StoreError(Exception):
    """The store cannot persist or read right now (disk full, locked; Redis down or full)."""


@dataclass
class Incoming:
    """What one source message produced, to be accepted atomically.

    ``dedup_key`` (e.g. ``segment:<messageId>``) makes a second delivery of the same
    message a duplicate for the dedup window; ``None`` means "cannot dedup".
    """

    dedup_key: str | None
    records: list[bytes] = field(default_factory=list)  # serialised Miso records
    deletions: list[str] = field(default_factory=list)  # user ids to delete in Miso
    source: str = "segment"
    links: list[Link] = field(default_factory=list)  # anonymous ↔ user links learned
    profiles: list[ProfileChange] = field(default_factory=list)  # profile changes


@dataclass
class Claimed:
    """A spooled item leased to one forwarder."""

    id: int
    kind: str  # one of KINDS
    body: bytes
    attempts: int  # including the current one
    first_attempt_at: float
    created_at: float


@dataclass
class DeadLetter:
    """An item Miso refused, or that could not be delivered in time, with why."""

    id: int
    kind: str
    body: bytes
    source: str
    reason: str
    attempts: int
    created_at: float
    dead_at: float


class Store(Protocol):
    """The operations routes, replay and forwarder need; nothing else."""

    def accept(
        self,
        batch: Sequence[Incoming],
        dedup_ttl: float,
        status: tuple[str, dict[str, Any]] | None = None,
    ) -> list[bool]:
        """Dedup and enqueue in one transaction; returns a duplicate flag per item.

        ``status`` (name, value) is published in the same transaction: a replay's
        checkpoint is then exactly as far as what it has stored.

        Per new item, in order: its links are stored, and the profile of each newly
        linked anonymous id joins its user's (the user's own values win) and is gone;
        its profile changes are merged (:func:`adapter.identity.merge_profile`) into
        the profile of the change's user, else of its anonymous id's linked user, else
        of the anonymous id itself; a change no older than a deletion of its user is
        ignored. A user whose profile changed gets one queued ``user`` upload, ready
        ``upload_delay`` seconds later (none when one waits already; anonymous profiles
        never). Then its deletions drop the
        users' queued items, dead letters, links and profiles, and remember the
        deletion time.
        """

    def claim(
        self, kind: str, limit: int, max_bytes: int, lease: float, owner: str
    ) -> list[Claimed]:
        """Lease up to ``limit`` ready items of ``kind`` totalling at most ``max_bytes``."""

    def take_profiles(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The merged profiles of these users, to upload now: ``{user id: {source: {part:
        {key: value}}}}`` (users without a profile left out).

        Taking them ends the waiting of their queued upload: a change stored after this
        queues a new one, so no change is ever left behind an upload that read too early.
        """

    def profile_of(self, any_id: str) -> dict[str, Any] | None:
        """``{"data", "anonymous", "updated_at"}`` of an id's stored profile, or None."""

    def enqueue(
        self, kind: str, bodies: Sequence[bytes], source: str, delay: float = 0.0
    ) -> list[int]:
        """Put new items of ``kind`` on the spool, ready after ``delay`` seconds; their ids."""

    def seen(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` that are live dedup keys (an accept would call them duplicates).

        Read-only: a dry run uses it to preview what a replay would send now.
        """

    def resolve(
        self, anonymous_ids: Sequence[str], user_ids: Sequence[str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Known links: anonymous id → its user, and user → most recently linked anonymous id."""

    def links_of(self, any_id: str) -> dict[str, Any]:
        """What an id is linked to, both ways (for `identity show`)."""

    def ack(self, ids: Sequence[int]) -> None:
        """Delivered: remove from the spool."""

    def retry_later(self, ids: Sequence[int], delay: float, error: str) -> None:
        """Not delivered yet: make ready again after ``delay`` seconds."""

    def release(self, ids: Sequence[int]) -> None:
        """Give back unsent (e.g. Miso refused the key): ready now, attempt not counted."""

    def dead_letter(self, items: Sequence[tuple[int, str]]) -> None:
        """Move spooled items to the dead letters with a reason each."""

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first."""

    def requeue_dead(self, ids: Sequence[int] | None) -> int:
        """Put dead letters back on the spool (all when ``ids`` is None); returns how many."""

    def purge_dead(self) -> int:
        """Delete every dead letter; returns how many."""

    def set_status(self, name: str, value: dict[str, Any] | None) -> None:
        """Shared status between processes (e.g. the forwarder's view of Miso's key)."""

    def get_status(self, name: str) -> dict[str, Any] | None:
        """Read a shared status set by any process."""

    def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Hold the lease ``name`` for ``seconds`` when it is free, expired or ``owner``'s
        already (a renewal); False when another owner holds it. One step, on every host."""

    def drop_lease(self, name: str, owner: str) -> None:
        """Give up the lease ``name`` if ``owner`` holds it."""

    def stats(self) -> dict[str, Any]:
        """``spool`` (items waiting, every kind), ``oldest_age`` (s), ``dead_letters``,
        ``user_tasks`` (Miso tasks still to check, counted in ``spool`` too), ``profiles``
        (users with a stored profile) and ``anonymous_profiles``."""

    def ping(self) -> None:
        """Raise StoreError unless the store is writable."""

    def add_activity(self, rows: Sequence[tuple[int, str, str, str, int]]) -> None:
        """Add to per-minute tallies: (minute, metric, source, key, n), minute = epoch s // 60.

        Tallies older than ACTIVITY_KEEP_MINUTES are dropped (here or by purge_expired).
        """

    def activity(self, since_minute: int) -> list[tuple[int, str, str, str, int]]:
        """Tallies of minutes >= since_minute, one row per (minute, metric, source, key), summed
        over every process/host that added to it; any order."""

    def links_overview(self, limit: int = 20) -> dict[str, Any]:
        """{"total": number of anonymous ids linked to a user, "recent": up to `limit` links,
        newest first, each {"anonymous_id", "user_id", "linked_at"}} (for the operator console)."""

    def purge_expired(self) -> int:
        """Drop expired dedup keys (returns how many) and activity tallies past their keep."""

    def close(self) -> None:
        """Release connections."""


_EXTENSION = "miso-adapter.store"


def init_app(app: Flask) -> None:
    """Open the app's store (``ADAPTER_STORE``); :func:`current` returns it."""
    app.extensions[_EXTENSION] = open_store(app.config["ADAPTER_STORE"])


def current(app: Flask | None = None) -> Store:
    """The store of ``app`` (default: the app handling this request)."""
    if app is None:
        from flask import current_app as app
    return app.extensions[_EXTENSION]


def anonymous_in(store: Store) -> Callable[[list[str]], Iterable[str]]:
    """A look-up of which ids ``store`` links as anonymous ids (to a user)."""

    def known(ids: list[str]) -> Iterable[str]:
        return store.resolve(ids, [])[0]

    return known


def open_store(url: str, *, readonly: bool = False) -> Store:
    """Open the store named by an ``ADAPTER_STORE`` URL.

    ``readonly``: for reads only, and never created (a SQLite file that does not exist
    is a StoreError, not a new store); writing through it fails.
    """
    if url.startswith("sqlite:///"):
        from adapter.store.sqlite import SqliteStore

        return SqliteStore.from_url(url, readonly=readonly)
    if url.startswith(("redis://", "rediss://")):
        try:
            from adapter.store.redis import RedisStore
        except ImportError as exc:  # pragma: no cover - redis is a dependency
            raise StoreError(f"the Redis store needs the redis package ({exc})") from None
        return RedisStore.from_url(url)
    # Only the scheme is echoed: the rest of a URL may hold a password.
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise StoreError(
        f"unsupported ADAPTER_STORE scheme {scheme!r}: use sqlite:///relative/path.db, "
        "sqlite:////absolute/path.db or redis://host:6379/0"
    )
