"""The stores of the tests: the test Redis (a test without it skips, or fails where it is
required), and the URL that opens a store again from another process.

Needs pytest (the ``test`` extra): a test that finds no Redis ends through it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from adapter.store.sqlite import SqliteStore

if TYPE_CHECKING:
    import redis

    from adapter.store.redis import RedisStore

#: The test Redis (``.ci/run`` starts one when none answers).
REDIS = "redis://127.0.0.1:6379/0"
#: Set to 1 where the Redis tests must run (``.ci/run``): no Redis is then a failure.
REQUIRE_REDIS = "MISO_ADAPTER_REQUIRE_REDIS"
#: A dedup window of a day, in seconds.
DAY = 86400.0


def require_redis(url: str = REDIS) -> redis.Redis:
    """A client of the Redis at ``url``, which answers.

    When none answers, the calling test skips, saying why; with
    ``MISO_ADAPTER_REQUIRE_REDIS=1`` it fails instead, with the same reason.
    """
    import pytest
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        missing = f"no Redis at {url} ({exc}): start one to test the Redis store"
        if os.environ.get(REQUIRE_REDIS) == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    return client


def url_of(store: SqliteStore | RedisStore) -> str:
    """The ADAPTER_STORE URL of ``store``: another process opens the same store with it."""
    if isinstance(store, SqliteStore):
        return f"sqlite:///{store.path.resolve()}"
    return f"{REDIS}?prefix={store.prefix}"
