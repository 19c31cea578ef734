"""HTTP routes and the one JSON error handler (SPEC §3.2).

``POST /segment`` takes what Segment's Webhooks destinations send: one message, a bare
array (Webhooks (Actions) batching) or ``{"batch": [...]}``. ``/v1/track|page|screen|
identify|alias|group|batch`` speak Segment's HTTP Tracking API, so Segment's own SDKs
can post here directly. Records are durable in the store before any 200.

Status codes: 400 malformed or wrong-shaped body (saying what and where), 401 bad
signature or write key, 413 over the size limit, 415 unsupported content type, 503
when the store cannot persist (Segment retries 5xx for 4 hours).
"""

from __future__ import annotations

import base64
import logging
import zlib
from pathlib import Path
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from adapter import segment
from adapter.forwarder import MISO_STATUS
from adapter.ingest import ingest
from adapter.mapping import Translator, load_mapping
from adapter.miso import key_id
from adapter.store import Store, StoreError, open_store

__all__ = ["init_app"]

log = logging.getLogger("adapter.web")

bp = Blueprint("adapter", __name__)

_TRACKING_CALLS = ("track", "page", "screen", "identify", "alias", "group")
# analytics.js's short paths for the same calls.
_SHORT = {"t": "track", "p": "page", "s": "screen", "i": "identify", "a": "alias", "g": "group"}
_JSON_TYPES = ("application/json", "text/plain")  # analytics.js posts text/plain (no preflight)


class ApiError(HTTPException):
    """An HTTP error with our message; rendered by the one error handler."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(description=message)
        self.code = code


def _store() -> Store:
    return current_app.extensions["miso-adapter.store"]


def _translator(source: str) -> Translator:
    translators = current_app.extensions["miso-adapter.translators"]
    if source not in translators:
        raise ApiError(503, f"no {source} mapping loaded (expected {source}.yaml in MAPPINGS_DIR)")
    return translators[source]


# --------------------------------------------------------------------------- body reading


def _read_body(limit: int, allowed_types: tuple[str, ...]) -> bytes:
    """The raw body, bounded by ``limit`` bytes (after gzip), or the right 4xx."""
    mimetype = request.mimetype
    if mimetype and mimetype not in allowed_types and not mimetype.endswith("+json"):
        raise ApiError(
            415, f"unsupported Content-Type {mimetype!r}: send {' or '.join(allowed_types)}"
        )
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, f"body of {length} bytes is over the limit of {limit} bytes")
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise ApiError(413, f"body is over the limit of {limit} bytes")
    encoding = (request.headers.get("Content-Encoding") or "").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        raw = _gunzip(raw, limit)
    elif encoding not in ("", "identity"):
        raise ApiError(415, f"unsupported Content-Encoding {encoding!r}: send gzip or none")
    if not raw.strip():
        raise ApiError(400, "empty body: expected JSON")
    return raw


def _gunzip(raw: bytes, limit: int) -> bytes:
    """Decompress without ever holding more than ``limit`` bytes (no zip bombs)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, limit + 1)
    except zlib.error as exc:
        raise ApiError(400, f"body is not valid gzip: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ApiError(413, f"body is over the limit of {limit} bytes once decompressed")
    return out


def _parse(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None


# --------------------------------------------------------------------------- ingestion


def _dedup_key(message: dict) -> str | None:
    message_id = message.get("messageId")
    if isinstance(message_id, str) and message_id.strip():
        return f"segment:{message_id}"
    return None


def _ingest_segment(messages: list[tuple[str, dict | None, str | None]]):
    """Translate and durably accept; 503 when the store cannot persist."""
    events = [
        (_dedup_key(m), m) if m is not None else (None, f"not a Segment message: {problem}")
        for _, m, problem in messages
    ]
    try:
        return ingest(
            _store(),
            _translator("segment"),
            events,
            source="segment",
            dedup_ttl=current_app.config["DEDUP_HOURS"] * 3600,
        )
    except StoreError as exc:
        log.error("store cannot persist, answering 503: %s", exc)
        raise ApiError(503, "cannot store the events right now; retry later") from None


@bp.post("/segment")
def segment_webhook():
    """Segment Webhooks (classic or Actions): one message, a bare array, or {"batch": [...]}."""
    raw = _read_body(current_app.config["SEGMENT_MAX_BODY"], ("application/json", "text/plain"))
    body = _parse(raw)
    secret = current_app.config["SEGMENT_SHARED_SECRET"]
    if secret and not segment.signature_ok(secret, raw, body, request.headers.get("X-Signature")):
        raise ApiError(401, "missing or invalid X-Signature for the configured shared secret")
    if not isinstance(body, dict | list):
        raise ApiError(400, "expected a Segment message (JSON object) or an array of messages")
    messages = list(segment.iter_messages("", body))
    if len(messages) == 1 and messages[0][1] is None:
        raise ApiError(400, messages[0][2] or "not a Segment message")
    result = _ingest_segment(messages)
    return jsonify(result.as_dict())


def _write_key(body: Any) -> str | None:
    """The write key: HTTP Basic user (Segment's SDKs), else ``writeKey`` in the body."""
    header = request.headers.get("Authorization", "")
    if header[:6].lower() == "basic ":
        try:
            user = base64.b64decode(header[6:].strip(), validate=True).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            raise ApiError(401, "malformed Basic authorization header") from None
        return user
    key = body.get("writeKey") if isinstance(body, dict) else None
    return key if isinstance(key, str) else None


def _tracking(call: str | None):
    """One Tracking API call (``call`` set) or a ``/v1/batch``."""
    config = current_app.config
    limit = config["TRACKING_MAX_BATCH"] if call is None else config["TRACKING_MAX_MESSAGE"]
    body = _parse(_read_body(limit, _JSON_TYPES))
    if call is None and isinstance(body, list):
        body = {"batch": body}  # some browser batchers post the bare array
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object")
    keys = config["SEGMENT_WRITE_KEYS"]
    if keys and _write_key(body) not in keys:
        raise ApiError(401, "missing or unknown write key")
    if call is None:
        if not isinstance(body.get("batch"), list):
            raise ApiError(400, "'batch' must be an array of messages")
        messages = list(segment.iter_messages("", body))
    else:
        # The route names the call, as in Segment's API (a body's own `type` does not win).
        messages = [("", {**body, "type": call}, None)]
    _ingest_segment(messages)
    return jsonify(success=True)


@bp.post("/v1/<call>")
def tracking_call(call: str):
    """Segment HTTP Tracking API: /v1/track, page, screen, identify, alias, group, batch.

    analytics.js and the mobile SDKs use the short forms (/v1/t, /v1/p, ... /v1/b).
    """
    if call in ("batch", "b"):
        return _tracking(None)
    name = _SHORT.get(call, call)
    if name not in _TRACKING_CALLS:
        raise ApiError(404, f"unknown Tracking API call '/v1/{call}'")
    return _tracking(name)


@bp.after_request
def _cors(response: Response) -> Response:
    """Browsers (analytics.js) may post to the Tracking API from another origin.

    Flask answers the OPTIONS preflight itself; these headers make it (and the POST)
    acceptable to the browser.
    """
    if request.path.startswith("/v1/"):
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
        response.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
    return response


# --------------------------------------------------------------------------- health


@bp.get("/healthz")
def healthz():
    """Process alive."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    """Ready when the store is writable, mappings loaded, and Miso's key set and accepted."""
    checks: dict[str, str] = {}
    ready = True
    try:
        _store().ping()
        checks["store"] = "ok"
    except StoreError as exc:
        ready, checks["store"] = False, str(exc)
    translators = current_app.extensions["miso-adapter.translators"]
    checks["mappings"] = ", ".join(sorted(translators)) or "none loaded"
    ready = ready and bool(translators)
    if not current_app.config["MISO_API_KEY"]:
        ready, checks["miso"] = False, "MISO_API_KEY is not set: events are kept, nothing is sent"
    else:
        try:
            status = _store().get_status(MISO_STATUS)
        except StoreError:
            status = None
        refused = status is not None and not status.get("ready", True)
        if refused and status.get("key_id") in (None, key_id(current_app.config["MISO_API_KEY"])):
            ready, checks["miso"] = False, status["reason"]
        else:
            checks["miso"] = "ok"
    response = jsonify(ready=ready, checks=checks)
    response.status_code = 200 if ready else 503
    return response


# --------------------------------------------------------------------------- app wiring


def _http_error(exc: HTTPException):
    """Every HTTP error has one JSON shape: {"error": what went wrong, "status": code}."""
    response = jsonify(error=exc.description, status=exc.code)
    response.status_code = exc.code or 500
    return response


def _unexpected(exc: Exception):
    """A bug must not leak a traceback (or a secret inside one) to the client."""
    log.exception("unexpected error on %s %s", request.method, request.path)
    response = jsonify(error="internal error", status=500)
    response.status_code = 500
    return response


def _warn_open(app: Flask) -> None:
    if not app.config["SEGMENT_SHARED_SECRET"]:
        log.warning("SEGMENT_SHARED_SECRET is not set: /segment accepts unsigned requests")
    if not app.config["SEGMENT_WRITE_KEYS"]:
        log.warning("SEGMENT_WRITE_KEYS is not set: /v1/* accepts any write key")
    if not app.config["MISO_API_KEY"]:
        log.warning("MISO_API_KEY is not set: events are stored but not sent; /readyz says so")


def init_app(app: Flask) -> None:
    """Compile the mapping tables, open the store, register routes and the error handler."""
    folder = Path(app.config["MAPPINGS_DIR"])
    app.extensions["miso-adapter.translators"] = {
        path.stem: load_mapping(path) for path in sorted(folder.glob("*.yaml"))
    }
    app.extensions["miso-adapter.store"] = open_store(app.config["ADAPTER_STORE"])
    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
    _warn_open(app)
