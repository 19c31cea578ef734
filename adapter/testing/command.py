"""The command line, ``python -m adapter.testing [miso | mixpanel] ...``: run a fake in the
foreground, print its URL and each request, and stop on Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time
import zoneinfo
from typing import Any

import orjson

from adapter.sources.inputs import open_path
from adapter.testing.miso import FakeMiso
from adapter.testing.miso_checks import INTERACTIONS_PATH, USERS_PATH, RequestLog
from adapter.testing.mixpanel import FakeMixpanel
from adapter.testing.mixpanel_wire import EXPORT_PATH, MixpanelRequest


def main(argv: list[str] | None = None) -> int:
    """Run a fake in the foreground until interrupted; print its URL and each request.

    The first argument picks the fake: ``miso`` (the default, may be left out) or
    ``mixpanel`` (a fake Mixpanel Raw Event Export API; see ``mixpanel --help``).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["mixpanel"]:
        return _mixpanel_main(argv[1:])
    if argv[:1] == ["miso"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog="python -m adapter.testing [miso]",
        description="Run a fake Miso (Interactions and User APIs) locally, to try miso-adapter "
        "offline.",
        epilog="python -m adapter.testing mixpanel --help: a fake Mixpanel export API instead.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="port (8090; 0 = any free port)")
    parser.add_argument("--api-key", default="test-key", help="the key to accept (test-key)")
    parser.add_argument(
        "--no-validate", action="store_true", help="accept records without schema validation"
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait per request")
    parser.add_argument("--quiet", action="store_true", help="do not print each request")
    args = parser.parse_args(argv)

    def show(entry: RequestLog) -> None:
        print(
            f"{entry.method} {entry.path} -> {entry.status} ({entry.n_records} records)",
            flush=True,
        )
        # For offline trials, show the records each request carried.
        if entry.status in (200, 422) and entry.body:
            try:
                body = orjson.loads(entry.body)
            except orjson.JSONDecodeError:
                return
            items = body.get("data") if isinstance(body, dict) else None
            for item in items if isinstance(items, list) else []:
                print(f"  {orjson.dumps(item).decode()}", flush=True)

    try:
        miso = FakeMiso(
            args.api_key,
            host=args.host,
            port=args.port,
            validate=not args.no_validate,
            on_request=None if args.quiet else show,
        )
    except (ImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.delay:
        miso.set_delay(args.delay)

    with miso:
        _serve_until_interrupted(
            [
                f"FakeMiso listening on {miso.url} (POST/DELETE {INTERACTIONS_PATH}, {USERS_PATH})",
                f"  MISO_API_URL={miso.url}  (key: the --api-key value)",
            ]
        )
        print(
            f"FakeMiso stopped; {len(miso.records)} records accepted, "
            f"{len(miso.users)} users stored.",
            flush=True,
        )
    return 0


def _mixpanel_main(argv: list[str]) -> int:
    """Run a fake Mixpanel export API in the foreground until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m adapter.testing mixpanel",
        description="Run a fake Mixpanel Raw Event Export API (GET /api/2.0/export) locally.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8091, help="port (8091; 0 = any free port)")
    parser.add_argument("--username", default="test-user", help="service account (test-user)")
    parser.add_argument("--secret", default="test-secret", help="its secret (test-secret)")
    parser.add_argument("--project-id", default="12345", help="the project to serve (12345)")
    parser.add_argument(
        "--rows",
        action="append",
        default=[],
        metavar="FILE",
        help="raw-export JSON Lines to serve, plain or gzip (repeatable)",
    )
    parser.add_argument(
        "--per-second", type=int, default=3, help="queries per second (3; 0 = no limit)"
    )
    parser.add_argument(
        "--per-hour", type=int, default=60, help="queries per hour (60; 0 = no limit)"
    )
    parser.add_argument(
        "--project-timezone",
        default=None,
        help="serve local days and times, like a project created before 2023 (e.g. Europe/Paris)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print each request")
    args = parser.parse_args(argv)

    rows: list[Any] = []
    for path in args.rows:
        try:
            with open_path(path) as source:
                for number, line in enumerate(source.stream, 1):
                    if line.strip():
                        try:
                            rows.append(orjson.loads(line))
                        except orjson.JSONDecodeError as exc:
                            print(f"error: {path}:{number}: not JSON: {exc}", file=sys.stderr)
                            return 1
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    def show(entry: MixpanelRequest) -> None:
        dates = f"{entry.query.get('from_date', '?')}..{entry.query.get('to_date', '?')}"
        notes = "".join(
            [
                f"{entry.rows} rows",
                ", gzip" if entry.gzip else "",
                f", {entry.fault}" * bool(entry.fault),
            ]
        )
        print(f"{entry.method} {entry.path} {dates} -> {entry.status} ({notes})", flush=True)

    try:
        fake = FakeMixpanel(
            args.username,
            args.secret,
            args.project_id,
            rows,
            host=args.host,
            port=args.port,
            per_second=args.per_second or None,
            per_hour=args.per_hour or None,
            project_timezone=args.project_timezone,
            on_request=None if args.quiet else show,
        )
    except (ValueError, OSError, zoneinfo.ZoneInfoNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    with fake:
        _serve_until_interrupted(
            [
                f"FakeMixpanel listening on {fake.url} (GET {EXPORT_PATH}, project "
                f"{fake.project_id}, user {fake.username}, {len(rows)} rows)"
            ]
        )
        print(f"FakeMixpanel stopped; {len(fake.requests)} requests answered.", flush=True)
    return 0


def _serve_until_interrupted(banner: list[str]) -> None:
    """Print ``banner``, then sleep until Ctrl-C or SIGTERM (both end the sleep quietly)."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Installed before the banner: whoever reads it may send SIGTERM at once.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
    for line in banner:
        print(line, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            time.sleep(3600)
