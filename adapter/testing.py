"""Test helpers for miso-adapter: a fake Miso Interactions API on a real loopback HTTP server.

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

Fault injection (``fail_next``, ``disconnect_next``, ``reject_records``, ``set_delay``,
``set_valid_keys``) is thread-safe and can be used while a client is sending.  Injected faults
apply to ``POST``/``DELETE /v1/interactions`` before the key check and before validation.

Schema validation needs ``jsonschema`` and ``rfc3339-validator``, which come with the ``test``
extra (``pip install 'miso-adapter[test]'``).  They are imported only when validation is on;
``FakeMiso(validate=False)`` works without them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hmac
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import orjson

from adapter.sources.inputs import InputError, gunzip_bounded

__all__ = [
    "BOT_BLOCKED_BODY",
    "INTERACTIONS_PATH",
    "INVALID_KEY_BODY",
    "SCHEMA_ERROR_MESSAGE",
    "SUCCESS_BODY",
    "FakeMiso",
    "RequestLog",
    "main",
]

INTERACTIONS_PATH = "/v1/interactions"
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
_MAX_CHUNK_LINE = 1024


@dataclass(frozen=True)
class RequestLog:
    """One request FakeMiso answered.  The API key itself is never stored.

    ``path`` is the URL path without its query string; ``query`` holds the query parameters
    except ``api_key``.  ``body`` is the request body after gzip decoding (the raw bytes when
    decoding failed) and ``content_encoding`` the ``Content-Encoding`` header as sent.
    ``n_records`` is the length of the body's ``data`` list for a POST, of ``user_ids`` for a
    DELETE, and 0 when the body could not be read that far; it counts records *sent*, whatever
    the answer was.  ``status`` is 0 for a request answered by dropping the connection.
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


class FakeMiso:
    """A fake Miso Interactions API served over real HTTP on loopback.

    The server starts when the object is created and stops on :meth:`close` (or at the end of a
    ``with`` block).  ``host`` and ``port`` choose where it listens (port 0: a free port).  The
    key given as ``api_key`` is the only one accepted until :meth:`set_valid_keys` changes that.
    ``validate`` switches the per-record schema validation (turn it off for benchmarks).
    ``on_request`` is called with each :class:`RequestLog` after the answer is decided (from the
    server's threads; keep it quick).
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
        self._faults: collections.deque[_Fault | None] = collections.deque()
        self._rules: list[_Rule] = []
        self._delay = 0.0
        self._validate = False
        self.on_request = on_request
        #: Exceptions raised while answering (e.g. by a reject_records predicate); each such
        #: request was answered 500.
        self.server_errors: list[BaseException] = []
        self.validate = validate  # loads the validators (and checks jsonschema) when True
        self._closed = False
        self._closing = threading.Event()  # wakes handlers sleeping in set_delay()
        self._server = _Server((host, port), _Handler, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FakeMiso:{self._server.server_address[1]}",
            daemon=True,
        )
        self._thread.start()

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> FakeMiso:
        if self._closed:
            raise RuntimeError("FakeMiso is closed")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving, drop open keep-alive connections and join the server's threads."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._server.shutdown()
        self._thread.join()
        self._server.server_close()
        self._server.close_connections()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        with self._cond:
            n_records = len(self._records)
        return f"<FakeMiso {state} url={self.url!r} records={n_records} validate={self._validate}>"

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``; clients post to ``{url}/v1/interactions``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

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
        """User ids received by ``DELETE /v1/interactions``, in order (a copy)."""
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
        self._validate = bool(value)

    def fail_next(
        self,
        status: int,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | dict | list | None = None,
    ) -> None:
        """Answer the next ``times`` POST/DELETE requests with ``status``, after earlier faults.

        ``headers`` are added to the answer (e.g. ``{"Retry-After": "1"}`` for a 429).  ``body``
        may be bytes, text, or a JSON value; the default is Miso's body for 401, 403 and 500,
        otherwise ``{"message": <reason phrase>}``.
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
        with self._cond:
            self._faults.extend([fault] * times)

    def disconnect_next(self, times: int = 1) -> None:
        """Drop the connection, without answering, on the next ``times`` POST/DELETE requests.

        Queued in the same FIFO as :meth:`fail_next`.  Clients see a connection error.
        """
        with self._cond:
            self._faults.extend([None] * times)

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

        Valid keys and ``validate`` stay as configured.
        """
        with self._cond:
            self._records.clear()
            self._deleted.clear()
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

        if parts.path != INTERACTIONS_PATH:
            return _json_answer(404, {"message": "Not Found"}), log(404)
        if method not in ("POST", "DELETE"):
            answer = _json_answer(405, {"message": "Method Not Allowed"})
            answer.headers.append(("Allow", "POST, DELETE"))
            return answer, log(405)

        list_key = "data" if method == "POST" else "user_ids"
        items = document.get(list_key) if isinstance(document, dict) else None
        n = len(items) if isinstance(items, list) else 0
        with self._cond:
            if self._faults:
                fault = self._faults.popleft()
                if fault is None:
                    return _Answer(0, b"", disconnect=True), log(0, n)
                answer = _Answer(fault.status, fault.body, [("Content-Type", "application/json")])
                for name, value in fault.headers:
                    answer.headers = [h for h in answer.headers if h[0].lower() != name.lower()]
                    answer.headers.append((name, value))
                return answer, log(fault.status, n)
        if not key_ok:
            return _json_answer(401, INVALID_KEY_BODY), log(401, n)
        if not encoding_ok:
            message = f"Unsupported Content-Encoding: {encoding}"
            return _json_answer(415, {"message": message}), log(415, n)
        if decode_error is not None or parse_error is not None:
            return _schema_error([f"body is invalid. {decode_error or parse_error}"]), log(422, n)
        if method == "DELETE":
            return self._delete(document, log, n)
        return self._post(document, log, n)

    def _post(
        self, document: Any, log: Callable[..., RequestLog], n: int
    ) -> tuple[_Answer, RequestLog]:
        if not isinstance(document, dict):
            line = f"body is invalid. {_short(document)} is not of type 'object'"
            return _schema_error([line]), log(422, n)
        if "data" not in document:
            return _schema_error(["data is invalid. 'data' is a required property"]), log(422, n)
        records = document["data"]
        if not isinstance(records, list):
            line = f"data is invalid. {_short(records)} is not of type 'array'"
            return _schema_error([line]), log(422, n)
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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every keep-alive answer.
    disable_nagle_algorithm = True
    server_version = "FakeMiso/1.0"
    sys_version = ""
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

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


# ----------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Run a fake Miso in the foreground until interrupted; print its URL and each request."""
    parser = argparse.ArgumentParser(
        prog="python -m adapter.testing",
        description="Run a fake Miso Interactions API locally, to try miso-adapter offline.",
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
            for item in body.get("data", []) if isinstance(body, dict) else []:
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
        print(f"FakeMiso listening on {miso.url} (POST/DELETE {INTERACTIONS_PATH})", flush=True)
        print(f"  MISO_API_URL={miso.url}  (key: the --api-key value)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        print(f"FakeMiso stopped; {len(miso.records)} records accepted.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
