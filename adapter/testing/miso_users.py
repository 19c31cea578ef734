"""FakeMiso's User APIs (``/v1/users...``): the stored users, their upload and delete tasks,
and the routes that serve them, as a mixin of :class:`~adapter.testing.miso.FakeMiso`."""

from __future__ import annotations

import collections
import copy
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any, ClassVar
from urllib.parse import quote

from adapter.testing._loopback import _wait_until
from adapter.testing.miso_checks import (
    _FAILED_TASK_MESSAGE,
    _MAX_USER_ID,
    _NOT_FOUND_BODY,
    USERS_PATH,
    RequestLog,
    _Answer,
    _attribute_kind,
    _build_user_validator,
    _bulk_delete_details,
    _envelope_line,
    _json_answer,
    _schema_error,
    _Task,
    _task_answer,
    _TaskPlan,
    _user_lines,
)


class _UsersAPI:
    """The User APIs' state and routes; FakeMiso's docstring describes how they behave.

    FakeMiso mixes this in: it owns the lock and condition (``_cond``) that guard this state
    too, the base ``url``, and the ``validate`` switch, and routes ``/v1/users...`` requests
    here after its own fault and key checks.
    """

    # The validator of one User record; shared by all instances.
    _user_validator: ClassVar[Any] = None
    _user_validator_lock: ClassVar[threading.Lock] = threading.Lock()

    # Provided by FakeMiso.
    _cond: threading.Condition
    _validate: bool
    url: str

    def _init_users(self) -> None:
        self._users: dict[str, dict[str, Any]] = {}
        self._user_uploads: list[list[Any]] = []
        self._deleted_users: list[str] = []
        self._tasks: dict[str, _Task] = {}
        self._task_plans: collections.deque[_TaskPlan] = collections.deque()
        self._custom_types: dict[str, str] = {}  # custom attribute -> the kind it was given

    def _forget_users(self) -> None:
        """Clear the User APIs' state (lock held)."""
        self._users.clear()
        self._user_uploads.clear()
        self._deleted_users.clear()
        self._tasks.clear()
        self._task_plans.clear()
        self._custom_types.clear()

    # ------------------------------------------------------------------ addresses

    @property
    def users_url(self) -> str:
        """``{url}/v1/users``."""
        return self.url + USERS_PATH

    def user_url(self, user_id: str) -> str:
        """``{url}/v1/users/{user_id}`` with the id percent-encoded (``/`` too)."""
        return f"{self.users_url}/{quote(user_id, safe='')}"

    # --------------------------------------------------------------- observations

    @property
    def users(self) -> dict[str, dict[str, Any]]:
        """The stored User records by ``user_id``, in first-upload order (deep copies)."""
        with self._cond:
            return copy.deepcopy(self._users)

    @property
    def user_uploads(self) -> list[list[Any]]:
        """The records of each ``POST /v1/users`` answered 200, one list per request, in order
        (deep copies), whatever became of its task: to check batch sizes and duplicates."""
        with self._cond:
            return copy.deepcopy(self._user_uploads)

    @property
    def deleted_users(self) -> list[str]:
        """User ids deleted through ``DELETE /v1/users/{user_id}`` and ``POST /v1/users/_delete``,
        in order, once their task succeeded (ids that were not stored included; a copy)."""
        with self._cond:
            return list(self._deleted_users)

    @property
    def tasks(self) -> dict[str, dict[str, Any]]:
        """Every User API task by id, in order: ``{"task_id", "kind": "upload" | "delete",
        "status", "errors"}`` (copies)."""
        with self._cond:
            return {
                task_id: {**task.status_data(), "kind": task.kind}
                for task_id, task in self._tasks.items()
            }

    def wait_for_users(self, n: int, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
        """Block until at least ``n`` users are stored; return :attr:`users`.

        Raises AssertionError, saying how many are stored, when ``timeout`` seconds pass first.
        """
        with self._cond:
            _wait_until(
                self._cond,
                lambda: len(self._users) >= n,
                timeout,
                lambda: (
                    f"FakeMiso: expected at least {n} stored users within {timeout}s, "
                    f"got {len(self._users)} (from {len(self._user_uploads)} uploads)"
                ),
            )
            return copy.deepcopy(self._users)

    # ------------------------------------------------------------ task outcomes

    def fail_next_task(self, errors: Iterable[str] | None = None, times: int = 1) -> None:
        """Make the next ``times`` User API tasks (uploads or deletes) fail after acceptance.

        The request itself is still answered 200 with a ``task_id``; none of the task's changes
        are made, and ``GET /v1/users/_status/{task_id}`` answers ``"status": "failed"`` with
        ``errors`` (default: one line saying this method failed it).  Queued in one FIFO with
        :meth:`hold_next_task`.
        """
        lines = [_FAILED_TASK_MESSAGE] if errors is None else [str(line) for line in errors]
        if times > 0:
            with self._cond:
                self._task_plans.append(_TaskPlan(lines, times))

    def hold_next_task(self, times: int = 1) -> None:
        """Keep the next ``times`` User API tasks ``"pending"``, their changes not yet made,
        until :meth:`complete_task` ends each one."""
        if times > 0:
            with self._cond:
                self._task_plans.append(_TaskPlan(None, times))

    def complete_task(self, task_id: str, errors: Iterable[str] | None = None) -> dict[str, Any]:
        """End a pending task: make its changes (``errors`` None), or fail it with ``errors``.

        Returns the task's status (the ``data`` of its status answer).  KeyError for an unknown
        task, ValueError for one that is not pending.
        """
        with self._cond:
            task = self._tasks[task_id]
            if task.status != "pending":
                raise ValueError(f"task {task_id} is {task.status}, not pending")
            if errors is None:
                self._apply_task(task)
            else:
                task.status, task.errors = "failed", [str(line) for line in errors]
            self._cond.notify_all()
            return task.status_data()

    # ------------------------------------------------------------------- internals

    @classmethod
    def _load_user_validator(cls) -> Any:
        with cls._user_validator_lock:
            if cls._user_validator is None:
                cls._user_validator = _build_user_validator()
            return cls._user_validator

    def _post_users(
        self, document: Any, log: Callable[..., RequestLog], n: int
    ) -> tuple[_Answer, RequestLog]:
        line = _envelope_line(document)
        if line is not None:
            return _schema_error([line]), log(422, n)
        records = document["data"]
        validator = self._load_user_validator() if self._validate else None
        lines = _user_lines(records, validator)
        if lines:
            return _schema_error(lines), log(422, n)
        with self._cond:
            self._user_uploads.append(records)
            task = self._start_task("upload", records)
        return _task_answer("success", task), log(200, n)

    def _user(
        self, method: str, user_id: str, log: Callable[..., RequestLog], n: int
    ) -> tuple[_Answer, RequestLog]:
        if len(user_id) > _MAX_USER_ID:
            message = f"ensure this value has at most {_MAX_USER_ID} characters"
            kind = "value_error.any_str.max_length"
            detail = {"loc": ["path", "user_id"], "msg": message, "type": kind}
            return _json_answer(422, {"detail": [detail]}), log(422, n)
        if method == "GET":
            with self._cond:
                record = self._users.get(user_id)  # stored records are replaced, never changed
            if record is None:
                return _json_answer(404, _NOT_FOUND_BODY), log(404, n)
            return _json_answer(200, {"message": "success", "data": record}), log(200, n)
        with self._cond:
            task = self._start_task("delete", [user_id])
        return _task_answer("deleted", task), log(200, n)

    def _delete_users(
        self,
        document: Any,
        body_error: str | None,
        log: Callable[..., RequestLog],
        n: int,
    ) -> tuple[_Answer, RequestLog]:
        details = _bulk_delete_details(document, body_error)
        if details:
            return _json_answer(422, {"detail": details}), log(422, n)
        with self._cond:
            task = self._start_task("delete", list(document["data"]["user_ids"]))
        return _task_answer("deleted", task), log(200, n)

    def _task_status(
        self, task_id: str, log: Callable[..., RequestLog]
    ) -> tuple[_Answer, RequestLog]:
        with self._cond:
            task = self._tasks.get(task_id)
            data = None if task is None else task.status_data()
        if data is None:
            return _json_answer(404, _NOT_FOUND_BODY), log(404)
        return _json_answer(200, {"data": data}), log(200)

    def _start_task(self, kind: str, payload: list[Any]) -> _Task:
        """Create a task and, unless a queued plan holds or fails it, apply it (lock held)."""
        task = _Task(str(uuid.uuid4()), kind, payload)
        self._tasks[task.task_id] = task
        plan = self._task_plans[0] if self._task_plans else None
        if plan is None:
            self._apply_task(task)
        else:
            plan.left -= 1
            if plan.left <= 0:
                self._task_plans.popleft()
            if plan.errors is not None:
                task.status, task.errors = "failed", list(plan.errors)
        self._cond.notify_all()
        return task

    def _apply_task(self, task: _Task) -> None:
        """Make a task's changes and set its outcome (lock held)."""
        if task.kind == "delete":
            for user_id in task.payload:
                self._users.pop(user_id, None)
                self._deleted_users.append(user_id)
            task.status, task.errors = "success", []
            return
        errors: list[str] = []
        for index, record in enumerate(task.payload):
            lines = self._custom_type_lines(index, record)
            if lines:
                errors.extend(lines)
            else:
                self._users[record["user_id"]] = record
        task.status, task.errors = ("failed" if errors else "success"), errors

    def _custom_type_lines(self, index: int, record: dict[str, Any]) -> list[str]:
        """Lines for custom attributes whose type differs from earlier records' (lock held);
        when there are none, the record's types become the known ones."""
        attributes = record.get("custom_attributes")
        if not isinstance(attributes, dict):
            return []
        lines: list[str] = []
        new: dict[str, str] = {}
        for key, value in attributes.items():
            kind = _attribute_kind(value)
            if kind is None:
                continue
            known = self._custom_types.get(key)
            if known is None:
                new[key] = kind
            elif known != kind:
                lines.append(
                    f"data.{index}.custom_attributes.{key} is invalid. The attribute holds a "
                    f"{kind} here but a {known} in earlier User records; each custom attribute "
                    "must keep one type."
                )
        if not lines:
            self._custom_types.update(new)
        return lines
