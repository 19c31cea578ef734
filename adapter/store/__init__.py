"""The store: spool, dead letters, dedup keys and shared status, behind one interface.

Every entry point (webhook routes, replay) hands translated records to
:meth:`Store.accept`, which deduplicates and enqueues them in one transaction: when
it returns, they are durable (on Redis: as its persistence settings make them), and
only then do we answer 200. The forwarder
:meth:`~Store.claim`\\ s batches with a lease, and :meth:`~Store.ack`\\ s,
:meth:`~Store.retry_later`\\ s or :meth:`~Store.dead_letter`\\ s them. A shared
backend (Redis) implements the same interface without touching routes or forwarder.

The interface is cut into roles by who calls what (:mod:`adapter.store.roles`):
:class:`Spool`, :class:`Links`, :class:`Status` and :class:`ConsoleReads`;
:class:`Store` is all of them, and both backends implement it whole.

``open_store(url)`` picks the implementation from ``ADAPTER_STORE``:

* ``sqlite:///var/adapter.db`` (relative path) or ``sqlite:////srv/adapter.db``
  (absolute): one file shared by the processes of one host (:mod:`adapter.store.sqlite`);
* ``redis://[:password@]host:6379/0`` (``rediss://`` for TLS, ``?prefix=NAME:`` to share
  a Redis): one Redis shared by several hosts (:mod:`adapter.store.redis`, imported
  only then).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from adapter.store.roles import (
    ACTIVITY_KEEP_MINUTES,
    KINDS,
    UPLOAD_DELAY,
    Claimed,
    ConsoleReads,
    DeadLetter,
    Incoming,
    Links,
    Spool,
    Status,
    Store,
    StoreError,
)

if TYPE_CHECKING:
    from flask import Flask

__all__ = [
    "ACTIVITY_KEEP_MINUTES",
    "KINDS",
    "UPLOAD_DELAY",
    "Claimed",
    "ConsoleReads",
    "DeadLetter",
    "Incoming",
    "Links",
    "Spool",
    "Status",
    "Store",
    "StoreError",
    "anonymous_in",
    "current",
    "init_app",
    "open_store",
]


_EXTENSION = "miso-adapter.store"


def init_app(app: Flask) -> None:
    """Open the app's store (``ADAPTER_STORE``); :func:`current` returns it."""
    app.extensions[_EXTENSION] = open_store(app.config["ADAPTER_STORE"])


def current(app: Flask | None = None) -> Store:
    """The store of ``app`` (default: the app handling this request)."""
    if app is None:
        from flask import current_app as app
    return app.extensions[_EXTENSION]


def anonymous_in(store: Links) -> Callable[[list[str]], Iterable[str]]:
    """A look-up of which ids ``store`` links as anonymous ids (to a user)."""

    def known(ids: list[str]) -> Iterable[str]:
        return store.resolve(ids, [])[0]

    return known


def open_store(url: str, *, readonly: bool = False) -> Store:
    """Open the store named by an ``ADAPTER_STORE`` URL.

    ``readonly``: for reads only, and never created (a SQLite file that does not exist
    is a StoreError, not a new store); writing through it fails.
    """
    if url.startswith("sqlite:///"):
        from adapter.store.sqlite import SqliteStore

        return SqliteStore.from_url(url, readonly=readonly)
    if url.startswith(("redis://", "rediss://")):
        try:
            from adapter.store.redis import RedisStore
        except ImportError as exc:  # pragma: no cover - redis is a dependency
            raise StoreError(f"the Redis store needs the redis package ({exc})") from None
        return RedisStore.from_url(url)
    # Only the scheme is echoed: the rest of a URL may hold a password.
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise StoreError(
        f"unsupported ADAPTER_STORE scheme {scheme!r}: use sqlite:///relative/path.db, "
        "sqlite:////absolute/path.db or redis://host:6379/0"
    )
