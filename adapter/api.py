"""The published HTTP contract: marshmallow schemas of bodies and answers, and OpenAPI.

The routes dump their answers through these schemas, and :func:`openapi` generates the
OpenAPI 3 document from the same classes (apispec), so the document served at
``/openapi.json`` (and kept in ``docs/openapi.json``) cannot drift from what the
service answers. Request bodies are Segment's and Mixpanel's own formats: their schemas
name the fields the adapter reads and let everything else through, as the routes do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from zoneinfo import available_timezones

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import INCLUDE, Schema, fields

if TYPE_CHECKING:
    from flask import Flask

__all__ = [
    "ErrorSchema",
    "HealthSchema",
    "IngestSchema",
    "MixpanelIngestSchema",
    "ReadySchema",
    "SuccessSchema",
    "document",
    "init_app",
    "openapi",
]

VERSION = "0.1.0"
_WHEN = {"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}]}


class ErrorSchema(Schema):
    """Every error answer: what went wrong and where, and the HTTP status."""

    error = fields.String(required=True, metadata={"example": "malformed JSON: line 1 column 28"})
    status = fields.Integer(required=True, metadata={"example": 400})


class IngestSchema(Schema):
    """What happened to the events of a request; 200 only once they are durably stored."""

    received = fields.Integer(required=True, metadata={"description": "messages read"})
    accepted = fields.Integer(required=True, metadata={"description": "Miso records stored"})
    duplicates = fields.Integer(required=True, metadata={"description": "already seen messages"})
    skipped = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={"description": "reason → count", "example": {"no rule for event 'X'": 1}},
    )
    links = fields.Integer(required=True, metadata={"description": "identity links learned"})
    deletions = fields.Integer(required=True, metadata={"description": "user deletions queued"})
    profiles = fields.Integer(
        required=True, metadata={"description": "user profile changes stored (Users API)"}
    )


class MixpanelIngestSchema(IngestSchema):
    """The counts of an export upload, plus its unreadable rows."""

    malformed = fields.Integer(required=True, metadata={"description": "unreadable rows"})
    errors = fields.List(
        fields.String(), required=True, metadata={"description": "the first 20, located"}
    )
    types = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={"description": "records stored, by Miso type", "example": {"add_to_cart": 3}},
    )


class SuccessSchema(Schema):
    """The Tracking API's answer, as Segment's own."""

    success = fields.Boolean(required=True, metadata={"example": True})


class HealthSchema(Schema):
    status = fields.String(required=True, metadata={"example": "ok"})


class ReadySchema(Schema):
    """Readiness, with the state of each dependency (never a secret)."""

    ready = fields.Boolean(required=True)
    checks = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        required=True,
        metadata={"example": {"store": "ok", "mappings": "mixpanel, segment", "miso": "ok"}},
    )


# Items of an array that are not messages are skipped (counted with the reason), never a
# reason to refuse the request: Segment drops a whole batch on a 4xx.
_TOLERANT_ITEMS = {
    "description": "messages; an item that is not an object is skipped, not refused",
}


def _tolerated(description: str, **metadata: Any) -> fields.Raw:
    """A request field the adapter reads but does not enforce: a row or message with an
    unusable value is accepted and counted as skipped with its reason, never refused."""
    return fields.Raw(metadata={"description": description, **metadata})


class SegmentMessageSchema(Schema):
    """A Segment message (its common fields); unknown keys are allowed, as Segment adds them."""

    class Meta:
        unknown = INCLUDE

    # Field names are Segment's own (camelCase), so the document shows the real keys.
    type = _tolerated("call type: track, page, screen, identify, alias, group, delete",
                      example="track")  # fmt: skip
    event = _tolerated("event name (track calls)", example="Product Viewed")
    messageId = _tolerated("deduplication key")
    userId = _tolerated("string (numbers are accepted)")
    anonymousId = _tolerated("string (numbers are accepted)")
    previousId = _tolerated("alias: the former id")
    timestamp = _tolerated("ISO-8601 date-time", example="2024-05-01T10:00:00.000Z")
    properties = _tolerated("object")
    context = _tolerated("object")
    traits = _tolerated("object")
    integrations = _tolerated("object")


class SegmentBatchSchema(Schema):
    """Tracking API ``/v1/batch`` body: items plus shared context and integrations."""

    class Meta:
        unknown = INCLUDE

    batch = fields.List(
        fields.Raw(), required=True, metadata={"description": _TOLERANT_ITEMS["description"]}
    )
    context = _tolerated("object, merged into each item")
    integrations = _tolerated("object, merged into each item")
    writeKey = _tolerated("the write key, when not sent as HTTP Basic user")


class MixpanelRowSchema(Schema):
    """A raw-export row (``event`` + ``properties``); Data Pipelines rows are accepted too."""

    class Meta:
        unknown = INCLUDE

    event = _tolerated("event name", example="Add To Cart")
    properties = _tolerated("object", example={"time": 1718035220, "distinct_id": "u1"})


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "malformed JSON (with line and column) or a body of the wrong shape",
        401: "bad signature, write key or token",
        403: "credentials sent, but ADAPTER_TOKEN is not set: this route is never open",
        413: "over the size limit",
        415: "unsupported Content-Type or Content-Encoding",
        503: "the store cannot persist right now: retry",
    }
    return {
        str(code): {"description": reasons[code], "content": _json("ErrorSchema")} for code in codes
    }


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


def _segment_body() -> dict[str, Any]:
    one = {"$ref": "#/components/schemas/SegmentMessage"}
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "anyOf": [
                        one,
                        {"type": "array", "items": _TOLERANT_ITEMS},
                        {"$ref": "#/components/schemas/SegmentBatch"},
                    ]
                }
            }
        },
    }


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.0 document of every route, generated from the schemas above."""
    spec = APISpec(
        title="miso-adapter",
        version=VERSION,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
        info={"description": "Feeds Miso's Interactions API from Segment and Mixpanel."},
    )
    for name, schema in (
        ("Error", ErrorSchema), ("Ingest", IngestSchema), ("MixpanelIngest", MixpanelIngestSchema),
        ("Success", SuccessSchema), ("Health", HealthSchema), ("Ready", ReadySchema),
        ("SegmentMessage", SegmentMessageSchema), ("SegmentBatch", SegmentBatchSchema),
        ("MixpanelRow", MixpanelRowSchema),
    ):  # fmt: skip
        spec.components.schema(name, schema=schema)
    spec.components.security_scheme("segmentSignature", {
        "type": "apiKey", "in": "header", "name": "X-Signature",
        "description": "hex HMAC-SHA1 of the body (or of JSON.stringify(body[0]) for arrays)",
    })  # fmt: skip
    spec.components.security_scheme("writeKey", {"type": "http", "scheme": "basic"})
    spec.components.security_scheme("adapterToken", {"type": "http", "scheme": "bearer"})
    ok = {"description": "stored durably; counts", "content": _json("Ingest")}
    spec.path(path="/segment", operations={"post": {
        "summary": "Segment Webhooks (classic or Actions): one message, an array, or a batch",
        "security": [{"segmentSignature": []}, {}],  # required when configured
        "requestBody": _segment_body(),
        "responses": {"200": ok, **_errors(400, 401, 413, 415, 503)},
    }})  # fmt: skip
    for call in ("track", "page", "screen", "identify", "alias", "group"):
        spec.path(path=f"/v1/{call}", operations={"post": {
            "summary": f"Segment HTTP Tracking API: {call}",
            "security": [{"writeKey": []}, {}],  # required when configured
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/SegmentMessage"}}}},
            "responses": {"200": {"description": "stored", "content": _json("Success")},
                          **_errors(400, 401, 413, 415, 503)},
        }})  # fmt: skip
    spec.path(path="/v1/batch", operations={"post": {
        "summary": "Segment HTTP Tracking API: batch",
        "security": [{"writeKey": []}, {}],  # required when configured
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"anyOf": [{"$ref": "#/components/schemas/SegmentBatch"},
                                 {"type": "array", "items": _TOLERANT_ITEMS}]}}}},
        "responses": {"200": {"description": "stored", "content": _json("Success")},
                      **_errors(400, 401, 413, 415, 503)},
    }})  # fmt: skip
    spec.path(path="/mixpanel", operations={"post": {
        "summary": "A Mixpanel export (JSON Lines or a JSON array, gzip allowed), streamed",
        "security": [{"adapterToken": []}, {}],  # required when configured
        "parameters": [
            {"name": "project_timezone", "in": "query",
             "description": "a pre-2023 project's timezone (IANA name)", "allowEmptyValue": True,
             "schema": {"type": "string", "enum": sorted(available_timezones())}},
            {"name": "time_offset", "in": "query", "description": "or its fixed UTC offset, hours",
             "allowEmptyValue": True,
             "schema": {"type": "number", "minimum": -24, "maximum": 24}},
            {"name": "since", "in": "query", "schema": _WHEN, "allowEmptyValue": True},
            {"name": "until", "in": "query", "description": "a date includes the whole day",
             "schema": _WHEN, "allowEmptyValue": True},
        ],
        "requestBody": {"required": True, "content": {
            "application/x-ndjson": {"schema": {"type": "string"}},
            "application/json": {"schema": {"anyOf": [
                {"type": "array", "minItems": 1,
                 "items": {"$ref": "#/components/schemas/MixpanelRow"}},
                {"$ref": "#/components/schemas/MixpanelRow"},
            ]}},
        }},
        "responses": {"200": {"description": "stored; counts", "content": _json("MixpanelIngest")},
                      **_errors(400, 401, 413, 415, 503)},
    }})  # fmt: skip
    spec.path(path="/healthz", operations={"get": {
        "summary": "the process is alive",
        "responses": {"200": {"description": "alive", "content": _json("Health")}},
    }})  # fmt: skip
    spec.path(path="/readyz", operations={"get": {
        "summary": "store writable, mappings loaded, Miso key set and accepted",
        "responses": {"200": {"description": "ready", "content": _json("Ready")},
                      "503": {"description": "not ready: the reason per check",
                              "content": _json("Ready")}},
    }})  # fmt: skip
    spec.path(path="/metrics", operations={"get": {
        "summary": "Prometheus metrics of every process (text format 0.0.4)",
        "description": "Always needs `Authorization: Bearer <ADAPTER_TOKEN>`: metrics reveal "
                       "traffic, so while ADAPTER_TOKEN is not set every request is refused "
                       "(401 without credentials, 403 with them).",
        "security": [{"adapterToken": []}],
        "responses": {"200": {"description": "the exposition text", "content": {
                          "text/plain": {"schema": {"type": "string"}}}},
                      **_errors(401, 403)},
    }})  # fmt: skip
    spec.path(path="/openapi.json", operations={"get": {
        "summary": "this document",
        "responses": {"200": {"description": "OpenAPI 3 document"}},
    }})  # fmt: skip
    return spec.to_dict()


if __name__ == "__main__":  # pragma: no cover - `python -m adapter.api > docs/openapi.json`
    import json
    import sys

    json.dump(openapi(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


_EXTENSION = "miso-adapter.openapi"


def init_app(app: Flask) -> None:
    """Generate the app's OpenAPI document once; :func:`document` returns it."""
    app.extensions[_EXTENSION] = openapi()


def document(app: Flask | None = None) -> dict[str, Any]:
    """The OpenAPI document of ``app`` (default: the app handling this request)."""
    if app is None:
        from flask import current_app as app
    return app.extensions[_EXTENSION]
