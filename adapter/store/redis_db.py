"""The Redis backend's plumbing: the connection, its URL, failures as StoreError, and the
Lua scripts of ``adapter/store/lua`` registered on it.

The role classes (:mod:`adapter.store.redis_spool`, ``redis_links``, ``redis_status``)
build on :class:`RedisDb`; :class:`adapter.store.redis.RedisStore` combines them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib.resources import files
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from adapter.store.roles import KINDS, StoreError

__all__ = ["DEFAULT_PREFIX", "GROUP", "RedisDb"]

DEFAULT_PREFIX = "miso-adapter:"
#: The consumer group every forwarder reads the spool streams in (G in lua/prelude.lua).
GROUP = "forwarders"
_DEFAULT_TIMEOUT = 10.0  # seconds for any one command

# The spool's kinds as the table the prelude's helpers visit: generated, so KINDS stays
# the one list of them.
_LUA_KINDS = "local KINDS = {" + ", ".join(f"'{kind}'" for kind in KINDS) + "}\n"

# The named leases touch one key each, given as KEYS: no prelude, no prefix.
_LEASES = {"take": "take_lease", "drop": "drop_lease"}
_LUA_FOLDER = files("adapter.store") / "lua"


def _lua(name: str) -> str:
    """The source of ``adapter/store/lua/<name>.lua`` (package data, so also when installed)."""
    return (_LUA_FOLDER / f"{name}.lua").read_text(encoding="utf-8")


# Every other script starts with the prelude: it takes the key prefix as ARGV[1] and
# works out its keys from it. Run by its file's name through RedisDb._run.
_SCRIPTS = sorted(
    entry.name.removesuffix(".lua")
    for entry in _LUA_FOLDER.iterdir()
    if entry.name.endswith(".lua") and entry.name[:-4] not in {"prelude", *_LEASES.values()}
)

# Read once, when the module is imported.
_PRELUDE = _LUA_KINDS + _lua("prelude")
_SOURCES = {name: _PRELUDE + _lua(name) for name in _SCRIPTS}
_LEASE_SOURCES = {name: _lua(file) for name, file in _LEASES.items()}


def _sid(n: int) -> str:
    return f"0-{n}"


def _num(sid: bytes | str) -> int:
    return int(sid[2:])


def _seconds(us: bytes | str | float) -> float:
    return int(us) / 1_000_000


def _profile_data(fields: Iterable[tuple[bytes, bytes]]) -> dict[str, dict[str, Any]]:
    """A profile hash's (field, value) pairs as ``{table: {part: {key: value}}}``."""
    data: dict[str, dict[str, Any]] = {}
    for name, value in fields:
        table, *path = orjson.loads(name)
        parts = data.setdefault(table, {})
        if path:
            part, key = path
            parts.setdefault(part, {})[key] = orjson.loads(value)
    return data


class RedisDb:
    """A connection pool to one Redis, under a key prefix, with the store's scripts."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        *,
        password: str | None = None,
        username: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = _DEFAULT_TIMEOUT,
        tls: bool = False,
    ) -> None:
        if not prefix:
            raise StoreError("the Redis store's key prefix must not be empty")
        self.host, self.port, self.db, self.prefix, self.tls = host, port, db, prefix, tls
        self._password = password
        # One retry, at once, on a connection error only (a pooled connection Redis had
        # closed); never on a timeout, when the command may still run.
        self._client = redis.Redis(
            host=host,
            port=port,
            db=db,
            username=username or None,
            password=password or None,
            ssl=tls,
            socket_timeout=timeout,
            socket_connect_timeout=min(timeout, 5.0),
            socket_keepalive=True,
            health_check_interval=30,
            protocol=2,  # what every redis-py version speaks by default (8 moved to RESP3)
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        self._scripts = {
            name: self._client.register_script(source) for name, source in _SOURCES.items()
        }
        self._leases = {
            name: self._client.register_script(source) for name, source in _LEASE_SOURCES.items()
        }

    @classmethod
    def from_url(cls, url: str) -> Self:
        """``redis://[[user]:password@]host[:port][/db][?prefix=NAME:&timeout=SECONDS]``."""
        # Errors here name the part that is wrong, never the URL: it may hold a password.
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise StoreError("ADAPTER_STORE Redis URL must start with redis:// or rediss://")
        try:
            port = parts.port or 6379
        except ValueError:
            raise StoreError("ADAPTER_STORE Redis URL has an invalid port") from None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise StoreError(
                "ADAPTER_STORE Redis URL: the database must be a number: redis://host:6379/0"
            )
        options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = set(options) - {"prefix", "timeout"}
        if unknown:
            raise StoreError(f"unknown ADAPTER_STORE option(s): {', '.join(sorted(unknown))}")
        try:
            timeout = float(options.get("timeout", _DEFAULT_TIMEOUT))
        except ValueError:
            timeout = math.nan
        if not timeout > 0 or math.isinf(timeout):
            raise StoreError("ADAPTER_STORE option timeout must be a number of seconds > 0")
        return cls(
            parts.hostname or "127.0.0.1",
            port,
            int(path or 0),
            password=unquote(parts.password) if parts.password else None,
            username=unquote(parts.username) if parts.username else None,
            prefix=options.get("prefix", DEFAULT_PREFIX),
            timeout=timeout,
            tls=parts.scheme == "rediss",
        )

    def __repr__(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"<RedisStore {scheme}://{self.host}:{self.port}/{self.db} prefix={self.prefix!r}>"

    @contextmanager
    def _redis(self, what: str) -> Iterator[None]:
        """Any Redis failure as a StoreError saying what failed where, password-free."""
        try:
            yield
        except (redis.RedisError, OSError) as exc:
            raise StoreError(self._describe(what, exc)) from None

    def _describe(self, what: str, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        where = f"Redis at {self.host}:{self.port}"
        if isinstance(exc, redis.TimeoutError):
            return f"{what}: {where} did not answer in time ({text})"
        if isinstance(exc, redis.AuthenticationError):
            return f"{what}: {where} refused the credentials ({text})"
        if isinstance(exc, redis.ConnectionError):
            return f"{what}: {where} is unreachable ({text})"
        if text.startswith("READONLY"):
            return f"{what}: {where} is a read-only replica ({text})"
        if text.startswith("OOM"):
            return f"{what}: {where} is out of memory (maxmemory reached: {text})"
        if text.startswith("BUSY"):
            return f"{what}: {where} is busy running a long script ({text})"
        return f"{what}: {where} failed: {text}"

    def _run(self, what: str, script: str, args: Sequence[Any]) -> Any:
        with self._redis(what):
            return self._scripts[script](args=[self.prefix, *args])

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def close(self) -> None:
        """Close this process's connections (they reopen if the store is used again)."""
        with self._redis("close the store"):
            self._client.connection_pool.disconnect()
