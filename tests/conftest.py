"""Shared fixtures.

Every record any test produces through a translator is checked against Miso's own
JSON Schema (vendored from Miso's OpenAPI document), so the whole suite proves
the invariant "we only ever emit records Miso accepts".

The stores: ``store`` runs a test once per backend (``test_x[sqlite]``, ``test_x[redis]``);
``sqlite_store`` and ``redis_store`` are one backend's. The Redis ones need the test Redis
(``redis_client``), each with a key prefix of its own, deleted afterwards.
"""

from __future__ import annotations

import uuid
from importlib import resources
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from adapter import mapping, records
from adapter.store import open_store
from adapter.store.sqlite import SqliteStore
from adapter.testing.stores import REDIS, require_redis

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def miso_validator() -> Draft202012Validator:
    """A validator for Miso's ``POST /v1/interactions`` body, with format checks on."""
    text = resources.files("adapter").joinpath("data/miso-interactions.schema.json").read_text()
    return Draft202012Validator(orjson.loads(text), format_checker=FormatChecker())


def miso_errors(validator: Draft202012Validator, record: dict) -> list[str]:
    """Miso-schema errors for one record (empty when Miso would accept it)."""
    return [e.message for e in validator.iter_errors({"data": [record]})]


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
    """Each test gets its own store and none of the developer's adapter settings."""
    for name in (
        "MISO_API_KEY", "MISO_API_URL", "SEGMENT_SHARED_SECRET", "SEGMENT_WRITE_KEYS",
        "ADAPTER_TOKEN", "MAPPINGS_DIR",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ADAPTER_STORE", f"sqlite:///{tmp_path}/adapter.db")
    # Apps made in tests do not watch their mapping folder unless a test asks for it.
    monkeypatch.setenv("ADAPTER_RELOAD_SECONDS", "0")


@pytest.fixture(autouse=True)
def _every_record_is_valid_for_miso(monkeypatch, miso_validator):
    """Wrap Translator.translate so a record failing Miso's schema (or ours) fails the test."""
    original = mapping.Translator.translate

    def checked(self, event):
        result = original(self, event)
        for record in result.records:
            # Round-trip through JSON: what Miso sees is the serialised record.
            wire = orjson.loads(orjson.dumps(record))
            problems = miso_errors(miso_validator, wire)
            assert not problems, f"record rejected by Miso's schema: {problems}: {record}"
            assert records.is_valid(wire), f"record rejected by our model: {record}"
        return result

    monkeypatch.setattr(mapping.Translator, "translate", checked)


@pytest.fixture(scope="session")
def segment_translator() -> mapping.Translator:
    """The shipped default Segment mapping table."""
    return mapping.load_mapping(ROOT / "mappings" / "segment.yaml")


@pytest.fixture(scope="session")
def redis_client():
    """A client of the test Redis at 127.0.0.1:6379. When none answers, the Redis tests
    skip, saying why; with ``MISO_ADAPTER_REQUIRE_REDIS=1`` (as ``.ci/run`` sets) they fail
    with that reason instead."""
    client = require_redis(REDIS)
    yield client
    client.close()


@pytest.fixture
def sqlite_store(tmp_path):
    """A fresh SQLite store in a temporary folder."""
    s = SqliteStore(tmp_path / "var" / "adapter.db")
    yield s
    s.close()


@pytest.fixture
def redis_store(redis_client):
    """A fresh Redis store: a key prefix of its own, whose keys are deleted afterwards."""
    prefix = f"test-store-{uuid.uuid4().hex[:12]}:"
    s = open_store(f"{REDIS}?prefix={prefix}")
    yield s
    s.close()
    for key in redis_client.scan_iter(match=f"{prefix}*", count=1000):
        redis_client.delete(key)


@pytest.fixture(params=["sqlite", "redis"])
def store(request):
    """A fresh store of each backend: a SQLite file in a temporary folder, a Redis prefix."""
    return request.getfixturevalue(f"{request.param}_store")
