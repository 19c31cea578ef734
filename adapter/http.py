"""What every HTTP route shares: the one error type and shape, the bearer token, store
failures as 503, and counting what a request ingested.

Errors always answer ``{"error": "what went wrong and where", "status": code}``
(:func:`http_error`, registered for every HTTPException by :mod:`adapter.web`).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import Iterator

from flask import Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from adapter import activity, api, metrics
from adapter.ingest import IngestResult
from adapter.store import StoreError

__all__ = ["ApiError", "count_ingest", "http_error", "persisting", "token_required"]

log = logging.getLogger("adapter.web")

_ERROR = api.ErrorSchema()


class ApiError(HTTPException):
    """An HTTP error with our message; rendered by the one error handler."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(description=message)
        self.code = code


def http_error(exc: HTTPException) -> Response:
    """Every HTTP error has one JSON shape: {"error": what went wrong, "status": code}."""
    response = jsonify(_ERROR.dump({"error": exc.description, "status": exc.code}))
    response.status_code = exc.code or 500
    # Keep the headers HTTP requires with the error (e.g. Allow on a 405), not its body type.
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


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


@contextlib.contextmanager
def persisting() -> Iterator[None]:
    """A store that cannot persist is a 503 (Segment retries), logged once, no secret."""
    try:
        yield
    except StoreError as exc:
        log.error("store cannot persist, answering 503: %s", exc, extra={"event": "store_error"})
        raise ApiError(503, "cannot store the events right now; retry later") from None


def count_ingest(source: str, result: IngestResult, malformed: int = 0) -> None:
    """What a request (or an upload's chunk) did: Prometheus counters and console tallies."""
    metrics.count_ingest(source, result, malformed=malformed)
    activity.current().ingest(source, result, malformed=malformed)
