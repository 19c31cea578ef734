"""HTTP routes and the one JSON error handler (README.md § Routes).

``POST /segment`` takes what Segment's Webhooks destinations send: one message, a bare
array (Webhooks (Actions) batching) or ``{"batch": [...]}``. ``/v1/track|page|screen|
identify|alias|group|batch`` speak Segment's HTTP Tracking API, so Segment's own SDKs
can post here directly. Records are durable in the store before any 200.

Status codes: 400 malformed or wrong-shaped body (saying what and where), 401 bad
signature, write key or token, 403 credentials for ``/metrics`` while ``ADAPTER_TOKEN`` is
unset, 413 over the size limit, 415 unsupported content type, 503 when the store cannot
persist (Segment retries 5xx for 4 hours).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gzip
import hmac
import io
import logging
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

import orjson
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from adapter import api, metrics, segment
from adapter.activity import Activity
from adapter.forwarder import MISO_STATUS
from adapter.ingest import IngestResult, ingest
from adapter.mapping import Translator, load_mapping
from adapter.miso import key_id
from adapter.mixpanel import NOT_AN_EVENT, NOT_AN_OBJECT, Normalizer, iter_rows
from adapter.reader import ReadError, read_json_values
from adapter.reload import MappingWatcher
from adapter.replay import CHUNK as REPLAY_CHUNK
from adapter.replay import ReplaySummary, chunks
from adapter.store import Store, StoreError, anonymous_in, open_store

__all__ = [
    "ApiError",
    "http_error",
    "init_app",
    "mixpanel_upload",
    "readiness",
    "segment_upload",
    "token_required",
]

log = logging.getLogger("adapter.web")

bp = Blueprint("adapter", __name__)

# Answers are dumped through the schemas the OpenAPI document is generated from.
_MIXPANEL = api.MixpanelIngestSchema()
_ERROR = api.ErrorSchema()
_READY = api.ReadySchema()
_HEALTH = api.HealthSchema()

_TRACKING_CALLS = ("track", "page", "screen", "identify", "alias", "group")
# analytics.js's short paths for the same calls.
_SHORT = {"t": "track", "p": "page", "s": "screen", "i": "identify", "a": "alias", "g": "group"}
# analytics.js posts text/plain (no preflight)
_JSON_TYPES = ("application/json", "text/plain")


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


def _json(value: dict[str, Any], status: int = 200) -> Response:
    """A JSON answer serialised by orjson: the hot routes' answers are plain dicts whose
    shape the api schemas document (tests/test_openapi.py checks they agree), and
    jsonify plus a schema dump cost more than translating the event did."""
    return Response(orjson.dumps(value), status=status, mimetype="application/json")


def _dedup_key(message: dict) -> str | None:
    message_id = message.get("messageId")
    if isinstance(message_id, str) and message_id.strip():
        return f"segment:{message_id}"
    return None


_NOT_SEGMENT = "not a Segment message"


def _segment_event(message: dict | None, problem: str | None) -> tuple[str | None, dict | str]:
    """An ingest event: the message with its dedup key, or why it is not a message."""
    if message is None:
        return None, f"{_NOT_SEGMENT}: {problem}"
    return _dedup_key(message), message


@contextlib.contextmanager
def _persisting() -> Iterator[None]:
    """A store that cannot persist is a 503 (Segment retries), logged once, no secret."""
    try:
        yield
    except StoreError as exc:
        log.error("store cannot persist, answering 503: %s", exc, extra={"event": "store_error"})
        raise ApiError(503, "cannot store the events right now; retry later") from None


def _count(source: str, result: IngestResult, malformed: int = 0) -> None:
    """What a request (or an upload's chunk) did: Prometheus counters and console tallies."""
    metrics.count_ingest(source, result, malformed=malformed)
    current_app.extensions["miso-adapter.activity"].ingest(source, result, malformed=malformed)


def _ingest_segment(messages: list[tuple[str, dict | None, str | None]]):
    """Translate and durably accept; 503 when the store cannot persist."""
    events = [_segment_event(m, problem) for _, m, problem in messages]
    with _persisting():
        result = ingest(
            _store(),
            _translator("segment"),
            events,
            source="segment",
            dedup_ttl=current_app.config["DEDUP_HOURS"] * 3600,
        )
    _count("segment", result)
    return result


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
    batch = body.get("batch") if isinstance(body, dict) and "type" not in body else []
    if batch is not None and not isinstance(batch, list):
        # The envelope itself is malformed; items that are not messages are only skipped.
        raise ApiError(400, f"'batch' must be an array of messages, got {segment.json_type(batch)}")
    result = _ingest_segment(list(segment.iter_messages("", body)))
    return _json(result.as_dict())


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


def _known_key(given: str | None, keys: frozenset[str]) -> bool:
    """Constant-time membership: every configured key is compared, whatever matches."""
    candidate = (given or "").encode()
    known = False
    for key in keys:
        known |= hmac.compare_digest(candidate, key.encode())
    return known and given is not None


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
    if keys and not _known_key(_write_key(body), keys):
        raise ApiError(401, "missing or unknown write key")
    if call is None:
        if not isinstance(body.get("batch"), list):
            raise ApiError(400, "'batch' must be an array of messages")
        messages = list(segment.iter_messages("", body))
    else:
        # The route names the call, as in Segment's API (a body's own `type` does not win).
        messages = [("", {**body, "type": call}, None)]
    _ingest_segment(messages)
    return _json({"success": True})


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


class _Bounded(io.RawIOBase):
    """A read-only stream that refuses to deliver more than ``limit`` bytes (413)."""

    def __init__(self, stream: Any, limit: int, what: str) -> None:
        self._stream = stream
        self._left = limit
        self._limit = limit
        self._what = what

    def readable(self) -> bool:
        return True

    @property
    def consumed(self) -> int:
        """Bytes delivered so far."""
        return self._limit - self._left

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(min(len(buffer), self._left + 1))
        if len(data) > self._left:
            raise ApiError(413, f"{self._what} is over the limit of {self._limit} bytes")
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)


def token_required(*, always: bool = False) -> None:
    """Operator routes need ``Authorization: Bearer <ADAPTER_TOKEN>`` when it is set.

    ``always``: a route that must never be open (it reveals traffic) is refused while
    no token is configured: 401 to a request without credentials (HTTP's "authenticate
    first"), 403 to one with credentials, both saying to set ADAPTER_TOKEN.
    """
    token = current_app.config["ADAPTER_TOKEN"]
    if not token and not always:
        return
    header = request.headers.get("Authorization", "")
    if not token:
        unset = f"ADAPTER_TOKEN is not set: set it to use {request.path}, which is never open"
        raise ApiError(403 if header else 401, unset if header else f"missing token; {unset}")
    given = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "missing or invalid bearer token")


def _mixpanel_normalizer() -> Normalizer:
    """Options of a pre-2023 project's export, from the query string (like the CLI's)."""
    args = request.args
    try:
        offset = args.get("time_offset", type=float)
        if "time_offset" in args and offset is None:
            raise ValueError(f"time_offset must be a number of hours, got {args['time_offset']!r}")
        return Normalizer(
            time_offset=offset,
            timezone=args.get("project_timezone") or None,
            since=_query_instant("since", end_of_day=False),
            until=_query_instant("until", end_of_day=True),
            known_anonymous=anonymous_in(_store()),
        )
    except (ValueError, OverflowError, ZoneInfoNotFoundError) as exc:
        raise ApiError(400, f"bad query parameter: {exc}") from None


def _query_instant(name: str, *, end_of_day: bool) -> datetime | None:
    text = request.args.get(name)
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment + timedelta(days=1) if end_of_day and len(text) == 10 else moment


def _upload_stream(
    allowed: tuple[str, ...], *, sniff_gzip: bool = False
) -> tuple[io.BufferedReader, _Bounded]:
    """The request body as a bounded byte stream, gunzipped when so encoded (uploads),
    and the raw body's reader (whose ``consumed`` says how far the upload is read).

    ``sniff_gzip``: a browser sends a ``.gz`` file as it is, without Content-Encoding,
    so gzip is also recognised by its first bytes.
    """
    mimetype = request.mimetype
    if mimetype and mimetype not in allowed:
        raise ApiError(415, f"unsupported Content-Type {mimetype!r}: send {', '.join(allowed)}")
    limit = current_app.config["MIXPANEL_MAX_BODY"]
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"body of {request.content_length} bytes is over the limit of {limit}")
    raw = _Bounded(request.stream, limit, "body")
    stream: Any = raw
    encoding = (request.headers.get("Content-Encoding") or "").strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip"):
        raise ApiError(415, f"unsupported Content-Encoding {encoding!r}: send gzip or none")
    gzipped = encoding in ("gzip", "x-gzip")
    if not gzipped and sniff_gzip:
        stream = io.BufferedReader(stream)
        gzipped = stream.peek(2)[:2] == b"\x1f\x8b"
    if gzipped:
        stream = _Bounded(gzip.GzipFile(fileobj=stream), limit, "decompressed body")
    return io.BufferedReader(stream), raw


_UPLOAD_TYPES = ("application/x-ndjson", "application/jsonl", "text/plain", "application/json")


def _store_chunks(
    source: str,
    chunks_of: Any,
    summary: ReplaySummary,
    progress: tuple[str, _Bounded] | None = None,
) -> None:
    """Ingest an upload's chunks as they are read: counts go to ``summary``, to the
    metrics and to the console's activity chunk by chunk; a store failure is a 503.

    ``progress`` (status name, raw body): each chunk publishes how many body bytes and
    rows are stored, in the chunk's own transaction (the console's progress bar reads
    it from any worker); the status is removed at the end.
    """
    translator = _translator(source)
    ttl = current_app.config["DEDUP_HOURS"] * 3600
    counted_malformed = summary.malformed

    def count(part: IngestResult) -> None:
        # What was read and stored counts, even when the upload is cut off later.
        nonlocal counted_malformed
        _count(source, part, summary.malformed - counted_malformed)
        counted_malformed = summary.malformed

    try:
        with _persisting():
            for chunk in chunks_of:
                status = None
                if progress is not None:
                    status = (progress[0], {"read": progress[1].consumed, "rows": summary.rows})
                part = IngestResult()
                if chunk:
                    part = ingest(_store(), translator, chunk, source=source, dedup_ttl=ttl,
                                  status=status)  # fmt: skip
                summary.result.add(part)
                count(part)
    except (OSError, EOFError, zlib.error) as exc:
        raise ApiError(400, f"body is not valid gzip: {exc}") from None
    finally:
        if summary.malformed != counted_malformed:
            count(IngestResult())
        # An upload is worth seeing on the console at once, not a flush interval later.
        current_app.extensions["miso-adapter.activity"].flush()
        if progress is not None:
            with contextlib.suppress(StoreError):
                _store().set_status(progress[0], None)


_SHOWN_ERRORS = 20  # unreadable rows an upload's answer names, located


def _keep_error(errors: list[str], where: str, message: str) -> None:
    if len(errors) < _SHOWN_ERRORS:
        errors.append(f"{where}: {message}")


def _upload_answer(summary: ReplaySummary, errors: list[str]) -> dict[str, Any]:
    result = summary.result
    return {
        **result.as_dict(),
        "malformed": summary.malformed,
        "errors": errors,
        "types": dict(result.types.most_common()),
    }


def mixpanel_upload(*, sniff_gzip: bool = False, progress: str | None = None) -> dict[str, Any]:
    """Stream this request's Mixpanel export into the store (``POST /mixpanel`` and the
    console's import); returns the counts answered, or raises the right ApiError.

    Rows are stored a chunk at a time as they arrive, never holding the body: a body cut
    off midway keeps what was stored, and a re-post is deduplicated.
    """
    body, raw = _upload_stream(_UPLOAD_TYPES, sniff_gzip=sniff_gzip)
    normalizer = _mixpanel_normalizer()
    summary = ReplaySummary()
    errors: list[str] = []

    rows = ((where, row, 0) for where, row in iter_rows(body, "body"))
    report = functools.partial(_keep_error, errors)
    parts = (chunk for chunk, _, _ in chunks(rows, normalizer, summary, report))
    _store_chunks("mixpanel", parts, summary, (progress, raw) if progress else None)
    if summary.rows and summary.malformed == summary.rows:
        raise ApiError(400, f"no readable Mixpanel rows: {errors[0]}")
    if not summary.rows:
        raise ApiError(400, "empty body: expected Mixpanel export rows")
    # The wrong shape altogether (no row is a Mixpanel event) is refused; in a real export,
    # the odd row that cannot be used is tolerated and counted as skipped.
    skipped = summary.result.skipped
    not_events = sum(n for reason, n in skipped.items() if reason.startswith(NOT_AN_EVENT))
    if not_events == summary.rows - summary.malformed:
        if skipped.get(NOT_AN_OBJECT, 0) == not_events:
            raise ApiError(400, "no Mixpanel events in the body: expected JSON objects as rows")
        raise ApiError(
            400, "no Mixpanel events in the body: rows need an event name ('event' or "
            "'event_name') and their properties"
        )  # fmt: skip
    return _upload_answer(summary, errors)


def segment_upload(*, sniff_gzip: bool = False, progress: str | None = None) -> dict[str, Any]:
    """Stream this request's file of Segment messages (JSON Lines, a JSON array, or one
    ``{"batch": [...]}``; gzip allowed) into the store, a chunk at a time, deduplicated
    by ``messageId`` like webhooks; returns the counts, or raises the right ApiError."""
    body, raw = _upload_stream(_UPLOAD_TYPES, sniff_gzip=sniff_gzip)
    summary = ReplaySummary()
    errors: list[str] = []

    def messages() -> Any:
        chunk: list[tuple[str | None, dict | str]] = []
        for where, value in read_json_values(body):
            summary.rows += 1
            if isinstance(value, ReadError):
                summary.malformed += 1
                _keep_error(errors, where, value.message)
                continue
            chunk += [
                _segment_event(m, problem) for _, m, problem in segment.iter_messages(where, value)
            ]
            if len(chunk) >= REPLAY_CHUNK:
                yield chunk
                chunk = []
        yield chunk

    _store_chunks("segment", messages(), summary, (progress, raw) if progress else None)
    if not summary.rows:
        raise ApiError(400, "empty body: expected Segment messages, one JSON object per line")
    if summary.malformed == summary.rows:
        raise ApiError(400, f"no readable Segment messages: {errors[0]}")
    result = summary.result
    if result.received and result.received == sum(
        n for reason, n in result.skipped.items() if reason.startswith(_NOT_SEGMENT)
    ):
        raise ApiError(400, "no Segment messages in the body: expected JSON objects with a 'type'")
    return _upload_answer(summary, errors)


@bp.post("/mixpanel")
def mixpanel_export():
    """A Mixpanel export (JSON Lines or a JSON array, gzip allowed), streamed into the store."""
    token_required()
    return jsonify(_MIXPANEL.dump(mixpanel_upload()))


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
    return jsonify(_HEALTH.dump({"status": "ok"}))


def readiness() -> tuple[bool, dict[str, str]]:
    """(ready, a word per check): the store writable, mappings loaded, Miso's key set and
    not refused (``/readyz`` and the console)."""
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
    rejected = current_app.extensions["miso-adapter.mapping-rejections"]
    if rejected:
        # Still ready: the last good tables serve. Failing readiness would take every
        # instance with the same bad file out of the load balancer at once.
        checks["mappings"] += "; REJECTED edits, serving the last good version: " + "; ".join(
            problem for name in sorted(rejected) for problem in rejected[name]
        )
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
    return ready, checks


@bp.get("/readyz")
def readyz():
    """Ready when the store is writable, mappings loaded, and Miso's key set and accepted."""
    ready, checks = readiness()
    response = jsonify(_READY.dump({"ready": ready, "checks": checks}))
    response.status_code = 200 if ready else 503
    return response


@bp.get("/metrics")
def metrics_exposition():
    """Prometheus metrics of every process of the service; needs ADAPTER_TOKEN, always."""
    token_required(always=True)
    return Response(metrics.scrape(_store()), content_type=metrics.CONTENT_TYPE)


@bp.get("/openapi.json")
def openapi_document():
    """The OpenAPI 3 document of these routes (also in docs/openapi.json)."""
    return jsonify(current_app.extensions["miso-adapter.openapi"])


# --------------------------------------------------------------------------- app wiring


def http_error(exc: HTTPException) -> Response:
    """Every HTTP error has one JSON shape: {"error": what went wrong, "status": code}."""
    response = jsonify(_ERROR.dump({"error": exc.description, "status": exc.code}))
    response.status_code = exc.code or 500
    # Keep the headers HTTP requires with the error (e.g. Allow on a 405), not its body type.
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _unexpected(exc: Exception):
    """A bug must not leak a traceback (or a secret inside one) to the client."""
    log.exception("unexpected error on %s %s", request.method, request.path)
    response = jsonify(_ERROR.dump({"error": "internal error", "status": 500}))
    response.status_code = 500
    return response


def _warn_open(app: Flask) -> None:
    if not app.config["SEGMENT_SHARED_SECRET"]:
        log.warning("SEGMENT_SHARED_SECRET is not set: /segment accepts unsigned requests")
    if not app.config["SEGMENT_WRITE_KEYS"]:
        log.warning("SEGMENT_WRITE_KEYS is not set: /v1/* accepts any write key")
    if not app.config["MISO_API_KEY"]:
        log.warning("MISO_API_KEY is not set: events are stored but not sent; /readyz says so")
    if not app.config["ADAPTER_TOKEN"]:
        log.warning(
            "ADAPTER_TOKEN is not set: /mixpanel accepts uploads from anyone; /metrics is refused"
        )


def init_app(app: Flask) -> None:
    """Compile the mapping tables, open the store, register routes and the error handler."""
    app.extensions["miso-adapter.store"] = open_store(app.config["ADAPTER_STORE"])
    # Started by the first event a worker sees (after gunicorn forks), not here.
    app.extensions["miso-adapter.activity"] = Activity(app.extensions["miso-adapter.store"])
    folder = Path(app.config["MAPPINGS_DIR"])
    translators = {path.stem: load_mapping(path) for path in sorted(folder.glob("*.yaml"))}
    rejections: dict[str, list[str]] = {}
    app.extensions["miso-adapter.translators"] = translators
    app.extensions["miso-adapter.mapping-rejections"] = rejections
    if app.config["MAPPINGS_RELOAD_SECONDS"] > 0:
        MappingWatcher(folder, translators, rejections, app.config["MAPPINGS_RELOAD_SECONDS"],
                       store=app.extensions["miso-adapter.store"]).start()  # fmt: skip
    app.extensions["miso-adapter.openapi"] = api.openapi()
    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, _unexpected)
    _warn_open(app)
