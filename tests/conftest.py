"""Shared fixtures.

Every record any test produces through a translator is checked against Miso's own
JSON Schema (vendored from Miso's OpenAPI document), so the whole suite proves
the invariant "we only ever emit records Miso accepts".
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from adapter import mapping, records

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
