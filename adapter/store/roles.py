"""The store's interface: its shared data types and its roles, one protocol each.

:class:`Store` combines the roles; each backend implements all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from adapter.identity import Link, ProfileChange

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


class Spool(Protocol):
    """The spool: what the entry points accept, and what a forwarder claims and settles."""

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

    def enqueue(
        self, kind: str, bodies: Sequence[bytes], source: str, delay: float = 0.0
    ) -> list[int]:
        """Put new items of ``kind`` on the spool, ready after ``delay`` seconds; their ids."""

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

    def purge_expired(self) -> int:
        """Drop expired dedup keys (returns how many) and activity tallies past their keep."""


class Links(Protocol):
    """Dedup keys, identity links and stored profiles, read by replay, the mapping and the CLI."""

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

    def profile_of(self, any_id: str) -> dict[str, Any] | None:
        """``{"data", "anonymous", "updated_at"}`` of an id's stored profile, or None."""


class Status(Protocol):
    """Shared status, named leases and activity tallies between processes and hosts."""

    def set_status(self, name: str, value: dict[str, Any] | None) -> None:
        """Shared status between processes (e.g. the forwarder's view of Miso's key)."""

    def get_status(self, name: str) -> dict[str, Any] | None:
        """Read a shared status set by any process."""

    def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Hold the lease ``name`` for ``seconds`` when it is free, expired or ``owner``'s
        already (a renewal); False when another owner holds it. One step, on every host."""

    def drop_lease(self, name: str, owner: str) -> None:
        """Give up the lease ``name`` if ``owner`` holds it."""

    def add_activity(self, rows: Sequence[tuple[int, str, str, str, int]]) -> None:
        """Add to per-minute tallies: (minute, metric, source, key, n), minute = epoch s // 60.

        Tallies older than ACTIVITY_KEEP_MINUTES are dropped (here or by purge_expired).
        """

    def activity(self, since_minute: int) -> list[tuple[int, str, str, str, int]]:
        """Tallies of minutes >= since_minute, one row per (minute, metric, source, key), summed
        over every process/host that added to it; any order."""

    def ping(self) -> None:
        """Raise StoreError unless the store is writable."""


class ConsoleReads(Protocol):
    """Summaries for the operator console, the metrics and the CLI."""

    def stats(self) -> dict[str, Any]:
        """``spool`` (items waiting, every kind), ``oldest_age`` (s), ``dead_letters``,
        ``user_tasks`` (Miso tasks still to check, counted in ``spool`` too), ``profiles``
        (users with a stored profile) and ``anonymous_profiles``."""

    def links_overview(self, limit: int = 20) -> dict[str, Any]:
        """{"total": number of anonymous ids linked to a user, "recent": up to `limit` links,
        newest first, each {"anonymous_id", "user_id", "linked_at"}} (for the operator console)."""


class Store(Spool, Links, Status, ConsoleReads, Protocol):
    """Every role: the operations routes, replay and forwarder need; nothing else.

    Both backends implement all of it; a caller that needs one role may ask for just that.
    """

    def close(self) -> None:
        """Release connections."""
