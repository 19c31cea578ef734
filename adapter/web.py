"""HTTP routes and the one JSON error handler.

Mapping tables are compiled once, when the app is created: a broken table stops
the service at start-up with the file, line and key, instead of failing per event.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, jsonify
from werkzeug.exceptions import HTTPException

from adapter.mapping import load_mapping

__all__ = ["init_app"]

bp = Blueprint("adapter", __name__)


@bp.get("/healthz")
def healthz():
    """Process alive."""
    return jsonify(status="ok")


def _http_error(exc: HTTPException):
    """Every HTTP error has one JSON shape: {"error": what went wrong, "status": code}."""
    response = jsonify(error=exc.description, status=exc.code)
    response.status_code = exc.code or 500
    return response


def init_app(app: Flask) -> None:
    """Compile the mapping tables and register routes and the error handler on ``app``."""
    folder = Path(app.config["MAPPINGS_DIR"])
    app.extensions["miso-adapter.translators"] = {
        path.stem: load_mapping(path) for path in sorted(folder.glob("*.yaml"))
    }
    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, _http_error)
