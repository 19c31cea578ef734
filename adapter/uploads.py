"""Uploads: a file of any source posted over HTTP, streamed into the store.

``POST /mixpanel`` and the console's import (``POST /console/import?source=``) both call
:func:`upload`: the body (gzip by ``Content-Encoding`` or by its first bytes) is read by
the source a chunk at a time, never held whole, and each chunk is stored in its own
transaction, so a body cut off midway keeps what was stored and a re-post is
deduplicated. Query options: ``since``/``until`` (the event's own time), and for
Mixpanel ``project_timezone``/``time_offset``.
"""

from __future__ import annotations

import contextlib
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

from flask import current_app, request

from adapter import activity, reload
from adapter.http import ApiError, count_ingest, persisting
from adapter.ingest import SMALL_CHUNK, IngestResult, Intake, chunks, ingest_chunks
from adapter.sources import Source, Window, make_source, translator_for
from adapter.sources.inputs import UNREADABLE, InputError, open_body
from adapter.store import StoreError, anonymous_in
from adapter.store import current as current_store

__all__ = ["UPLOAD_TYPES", "upload"]

#: Content types an upload may have.
UPLOAD_TYPES = ("application/x-ndjson", "application/jsonl", "text/plain", "application/json")


def _source(name: str) -> Source:
    """The source ``name`` with this request's options; 400 for a bad one."""
    args = request.args
    try:
        offset = args.get("time_offset", type=float)
        if "time_offset" in args and offset is None:
            raise ValueError(f"time_offset must be a number of hours, got {args['time_offset']!r}")
        window = Window.parse(args.get("since"), args.get("until"))
        options = {}
        if name == "mixpanel":
            options = {"time_offset": offset, "timezone": args.get("project_timezone") or None}
        return make_source(name, window=window, **options)
    except (ValueError, OverflowError, ZoneInfoNotFoundError) as exc:
        raise ApiError(400, f"bad query parameter: {exc}") from None


def _translator(source: Source) -> Any:
    def table(name: str) -> Any:
        live = reload.tables()
        if name not in live:
            raise ApiError(503, f"no {name} mapping loaded (expected {name}.yaml in MAPPINGS_DIR)")
        return live[name]

    return translator_for(source, table)


def upload(source_name: str, *, progress: str | None = None) -> dict[str, Any]:
    """Stream this request's body of ``source_name`` events into the store; the counts.

    ``progress``: a status name under which each stored chunk publishes how many body
    bytes and values are stored (the console's progress bar reads it from any worker);
    removed at the end. Raises the right ApiError for a bad body.
    """
    source = _source(source_name)
    mimetype = request.mimetype
    if mimetype and mimetype not in UPLOAD_TYPES:
        raise ApiError(
            415, f"unsupported Content-Type {mimetype!r}: send {', '.join(UPLOAD_TYPES)}"
        )
    try:
        opened = open_body(
            request.stream,
            limit=current_app.config["MIXPANEL_MAX_BODY"],
            content_encoding=request.headers.get("Content-Encoding"),
            content_length=request.content_length,
        )
    except InputError as exc:
        raise ApiError(exc.status, exc.message) from None
    translator = _translator(source)
    store = current_store()
    source.use_anonymous_lookup(anonymous_in(store))
    intake = Intake()
    counted = 0

    def after(part: IngestResult, consumed: int, position: int) -> None:
        # What was read and stored counts, even when the upload is cut off later.
        nonlocal counted
        count_ingest(source.name, part, intake.malformed - counted)
        counted = intake.malformed

    def status(consumed: int, position: int) -> tuple[str, dict[str, Any]] | None:
        return None if progress is None else (progress, {"read": position, "rows": intake.rows})

    try:
        with persisting(), opened:
            parts = chunks(source, opened, intake, size=SMALL_CHUNK)
            ingest_chunks(store, translator, parts, source=source.name,
                          dedup_ttl=current_app.config["DEDUP_HOURS"] * 3600,
                          result=intake.result, status=status, after=after)  # fmt: skip
    except InputError as exc:
        raise ApiError(exc.status, exc.message) from None
    except UNREADABLE as exc:
        raise ApiError(400, f"body is not valid gzip: {exc}") from None
    finally:
        if intake.malformed != counted:
            count_ingest(source.name, IngestResult(), intake.malformed - counted)
        # An upload is worth seeing on the console at once, not a flush interval later.
        activity.current().flush()
        if progress is not None:
            with contextlib.suppress(StoreError):
                store.set_status(progress, None)
    _refuse_what_is_not_of(source, intake)
    result = intake.result
    return {
        **result.as_dict(),
        "malformed": intake.malformed,
        "errors": intake.errors,
        "types": dict(result.types.most_common()),
    }


def _refuse_what_is_not_of(source: Source, intake: Intake) -> None:
    """400 for a body with nothing of the source: empty, unreadable, or another shape.

    In a real file, the odd value that cannot be used is tolerated and counted; a body
    where none can is the wrong file, and saying so beats answering "0 accepted".
    """
    if not intake.rows:
        raise ApiError(400, f"empty body: expected {source.expected}")
    if not intake.result.received:
        first = intake.errors[0] if intake.errors else "nothing to read"
        raise ApiError(400, f"no readable {source.unit}: {first}")
    problem = source.not_of_this_source(intake.result.skipped, intake.result.received)
    if problem is not None:
        raise ApiError(400, problem)
