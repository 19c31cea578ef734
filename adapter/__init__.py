"""miso-adapter: feed Miso's Interactions API from Segment and Mixpanel.

Public surface: :func:`create_app` (the Flask app factory used by ``wsgi.py`` and
gunicorn), :func:`load_mapping` and :class:`Translator` (compile a mapping table and
translate source events), :class:`Translation`, :class:`Link`, :class:`MappingError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adapter.identity import Link
from adapter.mapping import MappingError, Translation, Translator, load_mapping

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["Link", "MappingError", "Translation", "Translator", "create_app", "load_mapping"]


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask app; ``test_config`` replaces settings read from the environment."""
    # Imported here so the CLI's translate path never pays for Flask's import.
    from flask import Flask

    from adapter import activity, api, console, logs, reload, store, web
    from adapter.config import Config

    # Under gunicorn (or a bare `flask run`) nobody configured logging: the format serve
    # and forward write (adapter.logs); an application's own setup is kept.
    logs.configure()
    app = Flask(__name__)
    app.config.from_object(Config())
    if test_config is not None:
        app.config.update(test_config)
    store.init_app(app)
    activity.init_app(app)
    reload.init_app(app)
    api.init_app(app)
    web.init_app(app)
    console.init_app(app)
    return app
