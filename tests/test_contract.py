"""Contract fuzzing: schemathesis drives every documented operation from /openapi.json.

It generates requests from the published document and checks each answer against it:
no server error, a documented status code, a documented content type, and a body that
matches the documented schema.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import orjson
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from adapter import create_app

# schemathesis reads the document at collection time, so this app is built once for
# the module (on its own temporary store), not per test as elsewhere.
_FOLDER = Path(tempfile.mkdtemp(prefix="contract-"))
APP = create_app(
    {
        "TESTING": True,
        "ADAPTER_STORE": f"sqlite:///{_FOLDER}/contract.db",
        "MISO_API_KEY": "k",
        "MAPPINGS_RELOAD_SECONDS": 0,
    }
)
SCHEMA = schemathesis.openapi.from_wsgi("/openapi.json", APP)


@schemathesis.serializer("application/x-ndjson")
def _json_lines(ctx: schemathesis.SerializationContext, value: object) -> bytes:
    """An export body as JSON Lines: one row per line (a lone value is one line)."""
    rows = value if isinstance(value, list) else [value]
    return b"".join(_json_line(row) for row in rows)


def _json_line(row: object) -> bytes:
    try:
        return orjson.dumps(row) + b"\n"
    except TypeError:  # integers past 64 bits, which hypothesis generates: the stdlib writes them
        return json.dumps(row, separators=(",", ":")).encode() + b"\n"


@SCHEMA.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_honours_the_contract(case):
    """Any generated request gets a documented answer: status, content type and body."""
    response = case.call()
    # Every check but one: OpenAPI 3.0 cannot say that project_timezone and time_offset
    # exclude each other, so a request with both is rightly refused (400) although each
    # parameter alone is valid. Server errors, status codes, content types, answer
    # schemas, refusal of invalid data, auth and methods are all checked.
    case.validate_response(response, excluded_checks=[positive_data_acceptance])
