"""HTTP routes and the one JSON error handler (README.md § Routes).

``POST /segment`` takes what Segment's Webhooks destinations send: one message, a bare
array (Webhooks (Actions) batching) or ``{"batch": [...]}``. ``/v1/track|page|screen|
identify|alias|group|batch`` speak Segment's HTTP Tracking API, so Segment's own SDKs
can post here directly. ``POST /mixpanel`` streams an export (:mod:`adapter.uploads`).
Records are durable in the store before any 200.

Status codes: 400 malformed or wrong-shaped body (saying what and where), 401 bad
signature, write key or token, 403 credentials for ``/metrics`` while ``ADAPTER_TOKEN`` is
unset, 413 over the size limit, 415 unsupported content type, 503 when the store cannot
persist (Segment retries 5xx for 4 hours).
"""

from __future__ import annotations

import base64
import hmac
import logging
from typing import Any

import orjson
from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from adapter import api, metrics, reload
from adapter.config import runs_kafka_consumer, runs_mixpanel_sync
from adapter.forwarder import refusal
from adapter.http import ApiError, count_ingest, http_error, persisting, token_required
from adapter.ingest import IngestResult, ingest
from adapter.mapping import Translator
from adapter.sources.inputs import InputError, gunzip_bounded
from adapter.sources.jsonvalues import parse_document
from adapter.sources.segment import SegmentSource, json_type, signature_ok
from adapter.store import StoreError
from adapter.store import current as current_store
from adapter.uploads import upload

__all__ = ["init_app", "readiness"]

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
_SEGMENT = SegmentSource()


def _translator(source: str) -> Translator:
    translators = reload.tables()
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
    try:
        raw = gunzip_bounded(raw, limit, request.headers.get("Content-Encoding"))
    except InputError as exc:
        raise ApiError(exc.status, exc.message) from None
    if not raw.strip():
        raise ApiError(400, "empty body: expected JSON")
    return raw


def _parse(raw: bytes) -> Any:
    try:
        return parse_document(raw)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


# --------------------------------------------------------------------------- ingestion


def _json(value: dict[str, Any], status: int = 200) -> Response:
    """A JSON answer serialised by orjson: the hot routes' answers are plain dicts whose
    shape the api schemas document (tests/test_openapi.py checks they agree), and
    jsonify plus a schema dump cost more than translating the event did."""
    return Response(orjson.dumps(value), status=status, mimetype="application/json")


def _ingest_segment(body: Any) -> IngestResult:
    """Translate and durably accept the messages of a body; 503 when the store cannot persist."""
    events = [(item.key, item.event) for item in _SEGMENT.items("", body)]
    with persisting():
        result = ingest(
            current_store(),
            _translator("segment"),
            events,  # type: ignore[arg-type]
            source="segment",
            dedup_ttl=current_app.config["DEDUP_HOURS"] * 3600,
        )
    count_ingest("segment", result)
    return result


@bp.post("/segment")
def segment_webhook():
    """Segment Webhooks (classic or Actions): one message, a bare array, or {"batch": [...]}."""
    raw = _read_body(current_app.config["SEGMENT_MAX_BODY"], ("application/json", "text/plain"))
    body = _parse(raw)
    secret = current_app.config["SEGMENT_SHARED_SECRET"]
    if secret and not signature_ok(secret, raw, body, request.headers.get("X-Signature")):
        raise ApiError(401, "missing or invalid X-Signature for the configured shared secret")
    if not isinstance(body, dict | list):
        raise ApiError(400, "expected a Segment message (JSON object) or an array of messages")
    batch = body.get("batch") if isinstance(body, dict) and "type" not in body else []
    if batch is not None and not isinstance(batch, list):
        # The envelope itself is malformed; items that are not messages are only skipped.
        raise ApiError(400, f"'batch' must be an array of messages, got {json_type(batch)}")
    result = _ingest_segment(body)
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
        _ingest_segment(body)
    else:
        # The route names the call, as in Segment's API (a body's own `type` does not win).
        _ingest_segment({**body, "type": call})
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


@bp.post("/mixpanel")
def mixpanel_export():
    """A Mixpanel export (JSON Lines or a JSON array, gzip allowed), streamed into the store."""
    token_required()
    return jsonify(_MIXPANEL.dump(upload("mixpanel")))


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
    store = current_store()
    try:
        store.ping()
        checks["store"] = "ok"
    except StoreError as exc:
        ready, checks["store"] = False, str(exc)
    translators = reload.tables()
    checks["mappings"] = ", ".join(sorted(translators)) or "none loaded"
    ready = ready and bool(translators)
    rejected = reload.rejections()
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
            refused = refusal(store, current_app.config["MISO_API_KEY"])
        except StoreError:
            refused = None
        if refused is not None:
            ready, checks["miso"] = False, refused["reason"]
        else:
            checks["miso"] = "ok"
    kafka = kafka_check(store)
    if kafka is not None:
        checks["kafka"] = kafka  # reported, not failing, for the same reason as the sync
    sync = sync_check(store)
    if sync is not None:
        # Reported, not failing: a sync in trouble must not take the webhooks out of a
        # load balancer with it.
        checks["mixpanel_sync"] = sync
    return ready, checks


def kafka_check(store: Any) -> str | None:
    """What ``/readyz`` says of the Kafka consumers of ``KAFKA_GROUP``, when serve runs one."""
    if not runs_kafka_consumer():
        return None
    from adapter.consume import configured_members

    try:
        group, members = configured_members(store)
    except StoreError as exc:
        return f"unknown: {exc}"
    if not members:
        return "no consumer running yet"
    failing = [m for m in members if not m.get("ok")]
    if failing:
        return f"FAILING: {failing[0]['member']}: {failing[0]['error']}"
    lag = sum(sum(m.get("lag", {}).values()) for m in members)
    return f"ok: {len(members)} consumer(s) of group {group}, lag {lag:,} messages"


def sync_check(store: Any) -> str | None:
    """What ``/readyz`` says of the Mixpanel sync ``serve`` runs (MIXPANEL_SYNC=1), or None."""
    if not runs_mixpanel_sync():
        return None
    from adapter.sync import configured_status

    try:
        project, status = configured_status(store)
    except StoreError as exc:
        return f"unknown: {exc}"
    cycle = (status or {}).get("last_cycle")
    if not project:
        return "FAILING: MIXPANEL_PROJECT_ID is not set"
    if not cycle:
        return "no cycle yet"
    if not cycle.get("ok"):
        return (
            f"FAILING: the last cycle ({cycle['first']}..{cycle['last']}) failed: {cycle['error']}"
        )
    return f"ok: last cycle {cycle['first']}..{cycle['last']}, {cycle['new']} new records"


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
    return Response(metrics.scrape(current_store()), content_type=metrics.CONTENT_TYPE)


@bp.get("/openapi.json")
def openapi_document():
    """The OpenAPI 3 document of these routes (also in docs/openapi.json)."""
    return jsonify(api.document())


# --------------------------------------------------------------------------- app wiring


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
    """Register the routes and the error handlers (the app's resources are set up first:
    its store, tallies, mapping tables and OpenAPI document)."""
    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, _unexpected)
    _warn_open(app)
