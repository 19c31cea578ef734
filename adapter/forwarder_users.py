"""The forwarder's Users API part: deletions, profile uploads and the tasks they start.

:class:`UserForwarding` is a part of :class:`adapter.forwarder.Forwarder`, kept apart
because it speaks to a different API with its own rules: Miso's Users API replaces a
user's whole record, so each queued ``user`` item names a user whose merged profile is
read as it is when sent; an upload or a deletion answers with a task id, and the task is
checked until it ends. It uses the forwarder's store, client, settings, ``users`` tables
and its send-and-settle loop (``_deliver``, ``_settle``, ``_dead_lettered``).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from adapter.miso import Outcome, named_records
from adapter.store import Claimed

if TYPE_CHECKING:
    from collections.abc import Callable

    from adapter.forwarder import ForwarderSettings
    from adapter.miso import MisoClient
    from adapter.store import Store
    from adapter.users import UsersTables

__all__ = ["UserForwarding"]

log = logging.getLogger("adapter.forwarder")

#: Users API tasks looked at per cycle: each is a request, and records wait behind them.
_TASKS_PER_CYCLE = 5
_TASK_RUNNING = frozenset({"pending", "queued", "running", "processing", "started", "in_progress"})
_TASK_FAILED = frozenset({"failed", "failure", "error", "errored"})


class UserForwarding:
    """Deletions, user uploads and task checks, as methods of the forwarder."""

    store: Store
    client: MisoClient | None
    settings: ForwarderSettings
    users: UsersTables
    owner: str

    if TYPE_CHECKING:  # the forwarder's own send-and-settle loop, which this part uses

        def _deliver(
            self,
            items: list[Claimed],
            send: Callable[[list[bytes]], Outcome],
            accepted: Callable[[list[Claimed], Outcome], None] | None = None,
        ) -> None: ...

        def _settle(self, items: list[Claimed], outcome: Outcome) -> list[list[Claimed]]: ...

        def _dead_lettered(self, kind: str, why: str, n: int) -> None: ...

    def _forward_deletions(self) -> int:
        s = self.settings
        claimed = self.store.claim("delete", 100, s.max_bytes, s.lease, self.owner)
        for item in claimed:
            user_ids = orjson.loads(item.body)["user_ids"]
            outcome = self.client.delete(user_ids)  # type: ignore[union-attr]
            if outcome.kind == "ok":
                # Then the user records: a retry repeats both, and deleting twice is harmless.
                outcome = self.client.delete_users(user_ids)  # type: ignore[union-attr]
                if outcome.kind == "ok":
                    self._task_sent(outcome, "delete", user_ids)
            if outcome.kind == "rejected":
                outcome.kind = "fatal"  # a deletion has no records to pick apart
            self._settle([item], outcome)
        return len(claimed)

    def _forward_users(self) -> int:
        """Upload the profiles of up to ``users_batch`` queued users; returns items taken."""
        s = self.settings
        claimed = self.store.claim("user", s.users_batch, s.max_bytes, s.lease, self.owner)
        if not claimed:
            return 0
        first: dict[str, Claimed] = {}
        extra: list[int] = []  # a user queued twice: one record per user and request
        for item in claimed:
            user_id = orjson.loads(item.body)["user_id"]
            if user_id in first:
                extra.append(item.id)
            else:
                first[user_id] = item
        profiles = self.store.take_profiles(list(first))
        sending: list[Claimed] = []
        gone: list[int] = []
        unmapped: list[tuple[int, str]] = []
        for user_id, item in first.items():
            profile = profiles.get(user_id)
            if profile is None:
                gone.append(item.id)  # deleted since it was queued: nothing to send
                continue
            record = self.users.record(user_id, profile)
            if record is None:
                unmapped.append((item.id, self._unmapped(user_id, profile)))
                continue
            item.body = orjson.dumps(record)  # what is sent (the spool keeps the user id)
            sending.append(item)
        self.store.ack(extra + gone)
        if unmapped:
            self.store.dead_letter(unmapped)
            self._dead_lettered("user", "invalid", len(unmapped))
        user_of = {item.id: user_id for user_id, item in first.items()}

        def accepted(part: list[Claimed], outcome: Outcome) -> None:
            self._task_sent(outcome, "user", [user_of[i.id] for i in part])

        self._deliver(sending, self.client.upload_users, accepted)  # type: ignore[union-attr]
        return len(claimed)

    def _unmapped(self, user_id: str, profile: dict) -> str:
        """Why a stored profile makes no user record (a dead letter's reason)."""
        tables = [t for t in sorted(profile) if self.users(t) is not None]
        if not tables:
            return (f"not sent: no table has a users: section for this profile "
                    f"({', '.join(sorted(profile))}.yaml in {self.users.folder})")  # fmt: skip
        return (f"not sent: the users: section of {', '.join(tables)} finds no user id Miso "
                f"takes for {user_id!r} (1 to 512 characters, not starting with '_')")  # fmt: skip

    def _task_sent(self, outcome: Outcome, kind: str, user_ids: list[str]) -> None:
        """Remember a Users API task, to check how it ended (:meth:`_check_tasks`).

        Tasks, and what a failed one dead-letters, have the source ``users``: one upload
        may hold the profiles of several sources."""
        task_id = outcome.task_id
        if task_id is None:
            return  # no task to follow: the 200 is all Miso says
        body = orjson.dumps({"task_id": task_id, "kind": kind, "user_ids": user_ids})
        self.store.enqueue("user_task", [body], "users", self.settings.task_check)

    def _check_tasks(self) -> int:
        """Ask Miso how the due Users API tasks ended; returns how many were looked at."""
        s = self.settings
        claimed = self.store.claim("user_task", _TASKS_PER_CYCLE, s.max_bytes, s.lease, self.owner)
        for item in claimed:
            task = orjson.loads(item.body)
            outcome = self.client.task_status(task["task_id"])  # type: ignore[union-attr]
            if outcome.kind == "ok":
                self._task_ended(item, task, outcome.data)
            elif outcome.status == 404:
                # Miso no longer knows the task (kept for a while only): nothing to act on.
                log.warning("Miso does not know user task %s any more; not checked",
                            task["task_id"], extra={"event": "user_task_unknown"})  # fmt: skip
                self.store.ack([item.id])
            else:
                self._settle([item], outcome)
        return len(claimed)

    def _task_ended(self, item: Claimed, task: dict, data: Any) -> None:
        """Act on a task's status: done, failed (dead-letter its users), or not yet.

        A status Miso does not name, without errors, counts as done: the upload was
        accepted, and only a task that says it failed or lists errors has failed."""
        data = data if isinstance(data, dict) else {}
        status = str(data.get("status") or data.get("state") or "").lower()
        errors = data.get("errors")
        lines = [str(line) for line in errors] if isinstance(errors, list) else []
        if status in _TASK_RUNNING:
            if time.time() - item.first_attempt_at < self.settings.max_retry_age:
                delay = self.settings.task_check * 2 ** min(item.attempts, 6)
                self.store.retry_later([item.id], delay, f"task {task['task_id']} {status}")
                return
            lines = [f"still {status} after {item.attempts} checks"]
        elif not lines and status not in _TASK_FAILED:
            self.store.ack([item.id])
            return
        self._task_failed(item, task, lines)

    def _task_failed(self, item: Claimed, task: dict, lines: list[str]) -> None:
        """Dead-letter what a failed task did not do, with Miso's words: the users its
        errors name (all of them when they name none), as uploads or a deletion."""
        user_ids: list[str] = task.get("user_ids", [])
        named = {i: msg for i, msg in named_records(lines).items() if 0 <= i < len(user_ids)}
        words = "; ".join(lines) or "no reason given"
        prefix = f"Miso's task {task['task_id']} failed"
        if task.get("kind") == "delete":
            bodies = [orjson.dumps({"user_ids": user_ids})]
            reasons = [f"{prefix}: {words}"]
            kind = "delete"
        elif named:
            bodies = [orjson.dumps({"user_id": user_ids[i]}) for i in named]
            reasons = [f"{prefix}: {msg}" for msg in named.values()]
            kind = "user"
        else:
            bodies = [orjson.dumps({"user_id": u}) for u in user_ids]
            reasons = [f"{prefix}: {words}"] * len(bodies)
            kind = "user"
        ids = self.store.enqueue(kind, bodies, "users")
        self.store.dead_letter(list(zip(ids, reasons, strict=True)))
        self._dead_lettered(kind, "task_failed", len(ids))
        self.store.ack([item.id])
        log.warning(
            "%s: %d %s dead-lettered",
            prefix,
            len(ids),
            kind,
            extra={"event": "dead_letter", "count": len(ids), "reason": "task_failed"},
        )
