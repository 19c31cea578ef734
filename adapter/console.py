"""The operator console (``/console``): what flows, what is not mapped, what Miso refused.

Pages are rendered on the server (Jinja) from the same data ``GET /console/api/overview``
answers; a small script (``static/console.js``, no CDN, no framework) adds the retry
buttons, copy buttons and the import page's upload with a progress bar.

Access needs ``ADAPTER_TOKEN``, always (the console shows traffic and can resend it):
scripts send ``Authorization: Bearer <token>``; a browser signs in once with the token
and gets a session cookie (HttpOnly, SameSite=Strict, signed with a key derived from the
token, so every worker and host accepts it and changing the token signs everyone out).
A request that changes something with a cookie must also carry the page's CSRF token.
Without credentials a page answers 401 with the sign-in form; the API answers 401 JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from adapter import activity, reload, web
from adapter.forwarder import MISO_STATUS
from adapter.http import ApiError, http_error, token_required
from adapter.sources import REGISTRY, source_class
from adapter.store import StoreError
from adapter.store import current as _store
from adapter.uploads import upload

__all__ = ["COOKIE", "SESSION_SECONDS", "init_app", "overview_data"]

log = logging.getLogger("adapter.console")

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

COOKIE = "miso_adapter_console"
SESSION_SECONDS = 12 * 3600
DEAD_LETTERS_SHOWN = 100
_CSRF_HEADER = "X-CSRF-Token"
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
# No inline script or style, nothing from elsewhere: a stored event name cannot run code.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class _SignIn(Exception):
    """A page asked for without a valid session: answer with the sign-in form."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# --------------------------------------------------------------------------- sessions


def _serializer() -> URLSafeTimedSerializer:
    token = current_app.config["ADAPTER_TOKEN"] or ""
    # Derived, not the token itself: the cookie's signature reveals nothing usable.
    key = hmac.new(token.encode(), b"miso-adapter console session", hashlib.sha256).digest()
    return URLSafeTimedSerializer(key, salt="miso-adapter.console")


def _session() -> dict[str, Any] | None:
    raw = request.cookies.get(COOKIE)
    if not raw or not current_app.config["ADAPTER_TOKEN"]:
        return None
    try:
        value = _serializer().loads(raw, max_age=SESSION_SECONDS)
    except BadSignature:
        return None
    return value if isinstance(value, dict) and isinstance(value.get("csrf"), str) else None


def _bearer() -> bool:
    """True when the request carries the right bearer token; 401 when a wrong one."""
    if not request.headers.get("Authorization"):
        return False
    token_required(always=True)
    return True


def _authorize(*, write: bool = False, page: bool = False) -> dict[str, Any] | None:
    """Let the request in, or refuse it; returns the browser session (None: bearer)."""
    if not current_app.config["ADAPTER_TOKEN"]:
        if page:
            raise _SignIn("The console is off: set ADAPTER_TOKEN and restart to use it.", 403)
        token_required(always=True)  # raises: the console is never open
    if _bearer():
        return None
    session = _session()
    if session is None:
        if page:
            raise _SignIn("Sign in with the adapter's token (ADAPTER_TOKEN).")
        raise ApiError(401, "sign in to the console, or send Authorization: Bearer <token>")
    if write:
        given = request.headers.get(_CSRF_HEADER) or request.form.get("csrf") or ""
        if not hmac.compare_digest(given.encode(), session["csrf"].encode()):
            raise ApiError(403, f"missing or wrong {_CSRF_HEADER}: reload the console page")
    return session


def _safe_next(target: str | None) -> str:
    """Where to go after signing in: only a console path of this site (no dot segments
    leading out of it, nothing a Location header cannot carry)."""
    if target and target.isprintable() and "\\" not in target:
        parts = urlsplit(target)
        path = parts.path
        if (
            not parts.scheme
            and not parts.netloc
            and (path == "/console" or path.startswith("/console/"))
            and not {".", ".."} & set(unquote(path).split("/"))
        ):
            return target
    return "/console"


def _page(template: str, session: dict[str, Any] | None, **context: Any) -> str:
    return render_template(f"console/{template}", csrf=(session or {}).get("csrf", ""), **context)


def _wanted() -> str | None:
    """The console page the user was after: the form's or query's ``next``, else this one."""
    wanted = request.form.get("next") or request.args.get("next")
    if wanted is None and request.path.rstrip("/") not in ("/console/login", "/console/logout"):
        wanted = request.full_path.rstrip("?")
    return wanted


def _sign_in_page(message: str, status: int, *, failed: bool = False) -> Response:
    body = render_template(
        "console/login.html",
        message=message,
        failed=failed,
        next=_safe_next(_wanted()),
        enabled=bool(current_app.config["ADAPTER_TOKEN"]),
    )
    return Response(body, status=status, mimetype="text/html")


_PAGES = ("console.overview", "console.import_page")


@bp.errorhandler(ApiError)
def _page_error(exc: ApiError) -> Response:
    """A page that fails (the store is down) says so as a page; the JSON routes, and a
    script's wrong bearer token on a page, keep the service's one JSON error shape."""
    if request.endpoint not in _PAGES or (exc.code or 500) < 500:
        return http_error(exc)
    body = render_template("console/error.html", message=exc.description, status=exc.code,
                           csrf=(_session() or {}).get("csrf", ""))  # fmt: skip
    return Response(body, status=exc.code, mimetype="text/html")


@bp.errorhandler(StoreError)
def _store_down(exc: StoreError) -> Response:
    """Any console route whose store call fails answers 503 saying so (no secret: store
    errors name host and port, never a password)."""
    doing = "read" if request.method == "GET" else "write"
    return _page_error(ApiError(503, f"cannot {doing} the store right now: {exc}"))


@bp.errorhandler(_SignIn)
def _signed_out(exc: _SignIn) -> Response:
    return _sign_in_page(exc.message, exc.status)


@bp.get("/login")
def login_form():
    """The sign-in form."""
    return _sign_in_page("Sign in with the adapter's token (ADAPTER_TOKEN).", 200)


@bp.post("/login")
def login():
    """Check the token; on success set the session cookie and go to the console."""
    token = current_app.config["ADAPTER_TOKEN"]
    if not token:
        return _sign_in_page("The console is off: set ADAPTER_TOKEN and restart to use it.", 403)
    given = request.form.get("token", "").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        log.warning("console sign-in refused", extra={"event": "console_login", "status": 401})
        return _sign_in_page("That is not the adapter's token.", 401, failed=True)
    cookie = _serializer().dumps({"csrf": secrets.token_urlsafe(24)})
    response = Response(status=303, headers={"Location": _safe_next(request.form.get("next"))})
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=SESSION_SECONDS,
        path="/console",
        httponly=True,
        samesite="Strict",
        secure=request.is_secure,
    )
    log.info("console sign-in", extra={"event": "console_login", "status": 303})
    return response


@bp.post("/logout")
def logout():
    """Forget the session cookie (only the caller's own: no credentials needed)."""
    response = Response(status=303, headers={"Location": "/console/login"})
    response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="Strict")
    return response


# --------------------------------------------------------------------------- data


def _when(epoch: float | None) -> str:
    if not epoch:
        return ""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _mappings() -> list[dict[str, Any]]:
    """The live tables of this worker: file, rules, last change, rejected edits."""
    translators = reload.tables()
    rejected = reload.rejections()
    folder = Path(current_app.config["MAPPINGS_DIR"])
    out = []
    for name in sorted(set(translators) | set(rejected)):
        path = folder / f"{name}.yaml"
        try:
            modified = os.stat(path).st_mtime
        except OSError:
            modified = None
        translator = translators.get(name)
        out.append({
            "name": name,
            "path": str(path),
            "rules": translator.rule_count if translator is not None else 0,
            "file_modified": _when(modified),
            "status": "rejected edit" if name in rejected else ("live" if translator else "none"),
            "problems": list(rejected.get(name, [])),
        })  # fmt: skip
    return out


def _dead_letters(store: Any) -> list[dict[str, Any]]:
    shown = []
    for dead in store.dead_letters(limit=DEAD_LETTERS_SHOWN):
        try:
            record = orjson.loads(dead.body)
        except orjson.JSONDecodeError:
            record = None
        text = dead.body.decode("utf-8", "replace")
        shown.append({
            "id": dead.id,
            "kind": dead.kind,
            "source": dead.source,
            "type": record.get("type", "") if isinstance(record, dict) else "",
            "reason": dead.reason,
            "attempts": dead.attempts,
            "created_at": _when(dead.created_at),
            "dead_at": _when(dead.dead_at),
            "body": text if len(text) <= 400 else text[:400] + "…",
        })  # fmt: skip
    return shown


def _chart(series: dict[str, Any]) -> dict[str, Any]:
    """Polylines of the last hour's per-minute counts, in a 600 x 180 box (SVG units)."""
    lines = [
        ("received", "events received"),
        ("stored", "records stored"),
        ("forwarded", "sent to Miso"),
        ("dead_lettered", "dead-lettered"),
    ]
    peak = max([1, *(max(series[m]) for m, _ in lines)])
    top = _nice(peak)
    width, height = 600, 180
    out = []
    for metric, label in lines:
        values = series[metric]
        step = width / (len(values) - 1)
        points = " ".join(
            f"{i * step:.1f},{height - v / top * height:.1f}" for i, v in enumerate(values)
        )
        out.append({"metric": metric, "label": label, "points": points, "total": sum(values)})
    return {"lines": out, "top": top, "width": width, "height": height}


def _nice(value: int) -> int:
    """The smallest of 1, 2 or 5 times a power of ten at or above ``value`` (a round axis top)."""
    magnitude = 1
    while True:
        for factor in (1, 2, 5, 10):
            if factor * magnitude >= value:
                return factor * magnitude
        magnitude *= 10


def overview_data() -> dict[str, Any]:
    """Everything the console shows, as JSON-ready data (``/console/api/overview``)."""
    store = _store()
    ready, checks = web.readiness()
    tallies = activity.overview(store)
    stats = store.stats()
    dead = _dead_letters(store)
    links = store.links_overview(20)
    miso = store.get_status(MISO_STATUS)
    for link in links["recent"]:
        link["linked_at"] = _when(link["linked_at"])
    sync = _sync(store)
    kafka = _kafka(store)
    return {
        "generated_at": _when(time.time()),
        "ready": ready,
        "checks": checks,
        "spool": stats,
        "miso": miso,
        "activity": tallies,
        "dead_letters": dead,
        "links": links,
        "profiles": _profiles(stats, tallies["profiles"]),
        "mappings": _mappings(),
        "sync": sync,
        "kafka": kafka,
    }


def _profiles(stats: dict[str, Any], tallies: dict[str, Any]) -> dict[str, Any]:
    """User profiles: how many are stored now (users; anonymous ids awaiting a link), and
    per window the changes stored, users uploaded to Miso and uploads it refused."""
    return {
        "stored": stats.get("profiles", 0),
        "anonymous": stats.get("anonymous_profiles", 0),
        **tallies,
    }


def _kafka(store: Any) -> dict[str, Any] | None:
    """The live consumers of ``KAFKA_GROUP``: brokers reached or not, lag per partition."""
    from adapter.consume import configured_members

    group, members = configured_members(store)
    if not members:
        return None
    for member in members:
        member["updated"] = _when(member.get("updated_at"))
    return {"group": group, "members": members}


def _sync(store: Any) -> dict[str, Any] | None:
    """The Mixpanel Export API sync of ``MIXPANEL_PROJECT_ID``, when one has run: its cursor,
    its last cycle (window, rows pulled, new and duplicate, error) and its next run."""
    from adapter.sync import configured_status

    project, status = configured_status(store)
    if not status:
        return None
    cycle = dict(status.get("last_cycle") or {})
    for name in ("started_at", "ended_at"):
        cycle[name] = _when(cycle.get(name))
    return {
        "project": project,
        "cursor": status.get("cursor"),
        "cycle": cycle,
        "last_success": _when(status.get("last_success_at")),
        "next_run": _when(status.get("next_run_at")),
    }


# --------------------------------------------------------------------------- pages


@bp.get("")
@bp.get("/")
def overview():
    """The console's front page."""
    session = _authorize(page=True)
    data = overview_data()
    lookup = (request.args.get("id") or "").strip()
    found = None
    if lookup:
        links = _store().links_of(lookup)
        user = links.get("user") or {}
        found = {
            "user": user.get("user_id"),
            "user_linked_at": _when(user.get("linked_at")),
            "anonymous": [
                {"anonymous_id": a["anonymous_id"], "linked_at": _when(a["linked_at"])}
                for a in links.get("anonymous", [])
            ],
        }
    return _page(
        "overview.html",
        session,
        data=data,
        chart=_chart(data["activity"]["series"]),
        lookup=lookup,
        found=found,
    )


@bp.get("/import")
def import_page():
    """Upload a Mixpanel export or a Segment JSON Lines file, with a progress bar."""
    session = _authorize(page=True)
    limit = current_app.config["MIXPANEL_MAX_BODY"]
    # Every registered source can be imported: the form lists them from the registry.
    sources = [(name, source_class(name).describes) for name in REGISTRY]
    return _page("import.html", session, limit_mb=limit / 1024 / 1024, limit_bytes=limit,
                 sources=sources)  # fmt: skip


# --------------------------------------------------------------------------- API


@bp.get("/api/overview")
def overview_api():
    """The console's data as JSON."""
    _authorize()
    return jsonify(overview_data())


@bp.post("/import")
def import_upload():
    """Stream an uploaded file through the same pipeline as ``POST /mixpanel``
    (``?source=segment``: Segment messages, deduplicated by messageId); answers counts."""
    _authorize(write=True)
    source = request.args.get("source", "mixpanel")
    progress = _progress_name(request.args.get("id")) if "id" in request.args else None
    if source not in REGISTRY:
        raise ApiError(400, f"unknown source {source!r}: use {', '.join(REGISTRY)}")
    counts = upload(source, progress=progress)
    log.info(
        "console import of a %s file: %d events, %d records stored",
        source,
        counts["received"],
        counts["accepted"],
        extra={"event": "import", "count": counts["accepted"]},
    )
    return jsonify({"source": source, **counts})


def _progress_name(upload_id: str | None) -> str:
    """The store status an upload publishes its progress under (``?id=`` of the upload)."""
    if not upload_id or not _UPLOAD_ID.fullmatch(upload_id):
        raise ApiError(400, "'id' must be 8 to 64 letters, digits, '-' or '_'")
    return f"console.import.{upload_id}"


@bp.get("/import/progress")
def import_progress():
    """How far the upload ``?id=`` is stored: ``{"read": body bytes, "rows": rows}``;
    404 once it is finished (or before its first chunk is stored)."""
    _authorize()
    status = _store().get_status(_progress_name(request.args.get("id")))
    if status is None:
        raise ApiError(404, "no upload in progress with this id")
    return jsonify(status)


@bp.post("/dead-letters/retry")
def retry_dead_letters():
    """Put dead letters back on the spool: ``{"ids": [...]}`` or ``{"all": true}``."""
    _authorize(write=True)
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, 'expected a JSON object: {"ids": [1, 2]} or {"all": true}')
    if body.get("all") is True:
        ids = None
    else:
        ids = body.get("ids")
        if (
            not isinstance(ids, list)
            or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        ):
            raise ApiError(400, "'ids' must be a non-empty array of dead-letter ids (integers)")
    requeued = _store().requeue_dead(ids)
    log.info(
        "console: %d dead letters put back on the spool",
        requeued,
        extra={"event": "dead_letters_retry", "count": requeued},
    )
    return jsonify({"requeued": requeued})


@bp.after_request
def _headers(response: Response) -> Response:
    """Console answers are private, never cached, never framed."""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def init_app(app: Flask) -> None:
    """Register the console's routes, templates and static files."""
    app.register_blueprint(bp)
