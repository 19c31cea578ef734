"""FakeMiso's vocabulary and rules: Miso's routes and answer bodies, the request log entry, and
the pure functions that check a request (schemas, envelopes, ids) and build Miso's answers."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import unquote

import orjson

from adapter.sources.inputs import InputError, gunzip_bounded
from adapter.testing._loopback import _json_bytes, _short

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


def _path_text(path: Iterable[Any]) -> str:
    return ".".join(str(part) for part in path)


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


def _build_validators() -> dict[str, Any]:
    """Type name -> jsonschema validator for that interaction type's ``$defs`` entry."""
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


def _build_user_validator() -> Any:
    """The jsonschema validator of one User record (``UserRecord``)."""
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


def _schema_lines(records: list[Any], validators: dict[str, Any]) -> list[str]:
    """Miso-style lines for every invalid record of a ``POST /v1/interactions``, in order."""
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
            lines.append(f"{prefix}.type is invalid. {_short(type_name)} is not one of [{choices}]")
            continue
        lines.extend(_distinct_lines(prefix, validator.iter_errors(record), _error_lines))
    return lines


def _user_lines(records: list[Any], validator: Any) -> list[str]:
    """Miso-style lines for every invalid record of a ``POST /v1/users``, in order.

    ``validator`` None (validation off) still checks what storing a record needs: an id.
    """
    lines: list[str] = []
    for index, record in enumerate(records):
        prefix = f"data.{index}"
        if not isinstance(record, dict):
            lines.append(f"{prefix} is invalid. {_short(record)} is not of type 'object'")
            continue
        user_id = record.get("user_id")
        if validator is None:
            if not isinstance(user_id, str) or not user_id:
                lines.append(
                    f"{prefix}.user_id is invalid. {_short(user_id)} is not a non-empty string"
                )
            continue
        lines.extend(_distinct_lines(prefix, validator.iter_errors(record), _user_error_lines))
        if isinstance(user_id, str) and user_id.startswith("_"):
            lines.append(
                f"{prefix}.user_id is invalid. {_short(user_id)} starts with '_', which a "
                "user_id must not"
            )
    return lines


def _distinct_lines(
    prefix: str, errors: Iterable[Any], lines_of: Callable[[str, Any], list[str]]
) -> list[str]:
    """The lines of a record's jsonschema errors, each once (several errors can give one line)."""
    return list(dict.fromkeys(line for error in errors for line in lines_of(prefix, error)))
