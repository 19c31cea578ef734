"""FakeMiso: a fake Miso Interactions API and User APIs on a real loopback HTTP server, with
request logging and fault injection."""

from __future__ import annotations

import collections
import hmac
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import orjson

from adapter.testing._loopback import _json_bytes, _LoopbackServer, _phrase, _short, _wait_until
from adapter.testing.miso_checks import (
    _REJECTED_MESSAGE,
    _ROUTE_METHODS,
    _SERVER_ERROR_BODY,
    BOT_BLOCKED_BODY,
    INTERACTIONS_PATH,
    INVALID_KEY_BODY,
    SUCCESS_BODY,
    USER_PATH,
    USERS_DELETE_PATH,
    USERS_PATH,
    USERS_STATUS_PATH,
    RequestLog,
    _Answer,
    _build_validators,
    _count_sent,
    _decode,
    _envelope_line,
    _Fault,
    _json_answer,
    _line_index,
    _QueuedFault,
    _route,
    _Rule,
    _rule_lines,
    _schema_error,
    _schema_lines,
)
from adapter.testing.miso_handler import _Handler
from adapter.testing.miso_users import _UsersAPI


class FakeMiso(_UsersAPI, _LoopbackServer):
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
        self._init_users()
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
    def requests(self) -> list[RequestLog]:
        """Every request answered so far, in order (a copy)."""
        with self._cond:
            return list(self._requests)

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Any]:
        """Block until at least ``n`` records were accepted; return them all.

        Raises AssertionError, saying how many arrived, when ``timeout`` seconds pass first.
        """
        with self._cond:
            _wait_until(
                self._cond,
                lambda: len(self._records) >= n,
                timeout,
                lambda: (
                    f"FakeMiso: expected at least {n} accepted records within {timeout}s, "
                    f"got {len(self._records)} (from {len(self._requests)} requests)"
                ),
            )
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
            self._forget_users()
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
                cls._validators = _build_validators()
            return cls._validators

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
        lines = _schema_lines(records, self._load_validators()) if self._validate else []
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

    def _record_request(self, entry: RequestLog) -> None:
        with self._cond:
            self._requests.append(entry)
        callback = self.on_request
        if callback is not None:
            callback(entry)

    def _current_delay(self) -> float:
        with self._cond:
            return self._delay
