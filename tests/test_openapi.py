"""The published contract: /openapi.json, docs/openapi.json and the real answers agree."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from jsonschema import Draft4Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from adapter import api, create_app

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def client(tmp_path):
    app = create_app(
        {"TESTING": True, "ADAPTER_STORE": f"sqlite:///{tmp_path}/o.db", "MISO_API_KEY": "k"}
    )
    return app.test_client()


def conforms(document: dict, schema_name: str, body: object) -> list[str]:
    """Errors of ``body`` against a component schema of the document (OpenAPI 3.0 ≈ draft 4)."""
    registry = Registry().with_resource("doc", Resource(document, specification=DRAFT4))
    schema = {"$ref": f"doc#/components/schemas/{schema_name}"}
    return [e.message for e in Draft4Validator(schema, registry=registry).iter_errors(body)]


def test_served_document_is_the_generated_one(client):
    """/openapi.json serves exactly what the schemas generate."""
    assert client.get("/openapi.json").json == orjson.loads(orjson.dumps(api.openapi()))


def test_docs_copy_is_current():
    """docs/openapi.json is regenerated whenever the contract changes."""
    on_disk = orjson.loads((ROOT / "docs" / "openapi.json").read_bytes())
    assert on_disk == orjson.loads(orjson.dumps(api.openapi())), (
        "run: python -m adapter.api > docs/openapi.json"
    )


def test_every_route_is_documented(client):
    """Each documented path is served, and each served route has a documented path."""
    document = api.openapi()
    adapter = client.application.url_map.bind("localhost")
    for path, operations in document["paths"].items():
        for method in operations:
            endpoint, _ = adapter.match(path, method=method.upper())
            assert endpoint.startswith("adapter.")
    # The operator console (/console/...) is a browser UI, documented in docs/console.md;
    # its JSON feeds its own pages and is not part of the service's API.
    served = {
        r.rule
        for r in client.application.url_map.iter_rules()
        if r.endpoint != "static" and not r.endpoint.startswith("console.")
    }
    documented = set(document["paths"])
    for rule in served:
        if "<" in rule:  # /v1/<call>: documented call by call
            assert any(p.startswith(rule.split("<")[0]) for p in documented), rule
        else:
            assert rule in documented, rule


def test_answers_match_their_documented_schemas(client):
    """Real answers of every route validate against the schema the document gives them."""
    document = api.openapi()
    view = {"type": "track", "event": "Product Viewed", "userId": "u", "messageId": "m",
            "properties": {"product_id": "p"}}  # fmt: skip
    row = {"event": "Product Viewed", "properties": {"time": 1718035220, "distinct_id": "u",
                                                     "product_id": "p"}}  # fmt: skip
    cases = [
        ("Ingest", client.post("/segment", json=view)),
        ("Ingest", client.post("/segment", json=[view, {**view, "event": "Unmapped"}, 7])),
        ("Success", client.post("/v1/track", json=view)),
        ("MixpanelIngest", client.post("/mixpanel", data=orjson.dumps(row),
                                       content_type="application/x-ndjson")),
        ("Error", client.post("/segment", data=b"{", content_type="application/json")),
        ("Error", client.get("/nope")),
        ("Ready", client.get("/readyz")),
        ("Health", client.get("/healthz")),
    ]  # fmt: skip
    for schema_name, response in cases:
        assert conforms(document, schema_name, response.json) == [], (schema_name, response.json)
