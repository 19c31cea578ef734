"""``serve``, ``forward``, ``dead-letters`` and ``identity``: running the service and the
forwarder, and looking into what the store holds."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from adapter.cli.common import Command, duration, service_logging
from adapter.config import Config, runs_kafka_consumer, runs_mixpanel_sync
from adapter.mapping import MappingError, load_mapping
from adapter.store import Store, StoreError, open_store

if TYPE_CHECKING:
    from adapter.forwarder import Forwarder


def _serve_args(parser: argparse.ArgumentParser) -> None:
    from adapter.serve import THREADS, WORKERS

    parser.add_argument("--bind", default="127.0.0.1:8000", help="HOST:PORT (default %(default)s)")
    parser.add_argument(
        "--workers",
        type=int,
        default=WORKERS,
        help="gunicorn worker processes (default %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=THREADS, help="threads per worker (default %(default)s)"
    )


def _serve(args: argparse.Namespace) -> int:
    from adapter.serve import serve

    service_logging()
    if args.workers < 1 or args.threads < 1:
        print("error: --workers and --threads must be at least 1", file=sys.stderr)
        return 2
    config = _preflight()
    if config is None:
        return 1
    if runs_mixpanel_sync():
        from adapter.sources.mixpanel_api import ExportSettings
        from adapter.sync import check_cadence

        try:  # the sync child would only fail, again and again: say why now
            ExportSettings.from_env()
            lookback = int(os.environ.get("MIXPANEL_SYNC_LOOKBACK_DAYS") or 5)
            every = duration(os.environ.get("MIXPANEL_SYNC_EVERY") or "15m")
            check_cadence(lookback, 1, every, config.DEDUP_HOURS)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            print(f"error: MIXPANEL_SYNC=1: {exc}", file=sys.stderr)
            return 1
    if runs_kafka_consumer():
        from adapter.sources.kafka import KafkaSettings, kafka_client_missing

        try:  # the consumer child would only fail, again and again: say why now
            KafkaSettings.from_options()
            missing = kafka_client_missing()
            if missing is not None:
                raise ValueError(missing)
        except ValueError as exc:
            print(f"error: KAFKA_BOOTSTRAP_SERVERS and KAFKA_TOPICS are set: {exc}",
                  file=sys.stderr)  # fmt: skip
            return 1
    return serve(args.bind, args.workers, args.threads)


def _preflight(*, mappings: bool = True) -> Config | None:
    """Check what a service needs before starting anything: tables (for web) and store."""
    config = Config()
    folder = Path(config.MAPPINGS_DIR)
    problems = []
    for path in sorted(folder.glob("*.yaml")) if mappings else ():
        try:
            load_mapping(path)
        except MappingError as exc:
            problems += [str(p) for p in exc.problems]
    if mappings and not (folder / "segment.yaml").is_file():
        problems.append(f"{folder / 'segment.yaml'}: missing (MAPPINGS_DIR={folder})")
    try:
        store = open_store(config.ADAPTER_STORE)
        try:
            store.ping()  # a Redis store connects lazily: a wrong host or password shows here
        finally:
            store.close()
    except StoreError as exc:
        problems.append(str(exc))
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return None if problems else config


def _forward_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--until-empty",
        action="store_true",
        help="send what is ready, then exit: 0 when the spool is empty, 1 when records remain",
    )


def _forward(args: argparse.Namespace) -> int:
    from adapter.forwarder import Forwarder, settings_from_env
    from adapter.miso import MisoClient

    service_logging()
    config = _preflight(mappings=False)  # the forwarder sends records; it never translates
    if config is None:
        return 1
    store = open_store(config.ADAPTER_STORE)
    settings = settings_from_env()
    # A send must end before its lease does, or another forwarder could send it again.
    timeout = (min(5.0, settings.lease / 3), min(20.0, settings.lease * 2 / 3))
    client = None
    if config.MISO_API_KEY:
        client = MisoClient(config.MISO_API_URL, config.MISO_API_KEY, timeout=timeout)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    logging.getLogger("adapter.forwarder").info(
        "forwarding from %s to %s (pid %d)", store, config.MISO_API_URL, os.getpid()
    )
    forwarder = Forwarder(store, client, settings)
    if not args.until_empty:
        forwarder.run(stop)
        return 0
    return _drain(forwarder, store, stop)


def _drain(forwarder: Forwarder, store: Store, stop: threading.Event) -> int:
    """``forward --until-empty``: send what is ready, say what is left, exit 1 if anything is."""
    from adapter.forwarder import refusal

    if forwarder.client is None:
        print("error: MISO_API_KEY is not set: nothing can be sent", file=sys.stderr)
        return 1
    started = time.monotonic()
    try:
        taken = forwarder.drain(stop)
        stats = store.stats()
        refused = refusal(store)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds = time.monotonic() - started
    print(f"forwarded {taken:,} items in {seconds:.1f}s ({taken / max(seconds, 1e-9):,.0f}/s); "
          f"spool: {stats['spool']:,} waiting, {stats['dead_letters']:,} dead letters",
          file=sys.stderr)  # fmt: skip
    if stats["spool"] == 0:
        return 0
    if refused is not None:
        print(f"error: not sent: {refused['reason']}", file=sys.stderr)
    else:
        print("error: records wait for a retry (Miso was unavailable); run it again later, "
              "or keep `miso-adapter forward` running", file=sys.stderr)  # fmt: skip
    return 1


def _dead_letters_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "retry", "purge"])
    parser.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead letters to retry")
    parser.add_argument("--all", action="store_true", help="retry every dead letter")
    parser.add_argument("--json", action="store_true", help="list as JSON Lines")


def _dead_letters(args: argparse.Namespace) -> int:
    try:
        store = open_store(Config().ADAPTER_STORE)
        if args.action == "list":
            letters = store.dead_letters()
            for d in letters:
                body = orjson.loads(d.body)
                if args.json:
                    line = {
                        "id": d.id,
                        "kind": d.kind,
                        "source": d.source,
                        "reason": d.reason,
                        "attempts": d.attempts,
                        "dead_at": _when(d.dead_at),
                        "body": body,
                    }
                    print(orjson.dumps(line).decode())
                else:
                    print(
                        f"#{d.id} {_when(d.dead_at)} {d.source} {d.kind}, "
                        f"{d.attempts} attempt(s): {d.reason}"
                    )
                    print(f"    {orjson.dumps(body).decode()}")
            print(f"{len(letters)} dead letters", file=sys.stderr)
            return 0
        if args.action == "retry":
            if args.all == bool(args.ids):
                print("error: give dead-letter IDs or --all", file=sys.stderr)
                return 2
            moved = store.requeue_dead(None if args.all else args.ids)
            print(f"requeued {moved} dead letters; the running forwarder sends them")
            return 0 if args.all or moved == len(set(args.ids)) else 1
        print(f"purged {store.purge_dead()} dead letters")
        return 0
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _identity_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["show"])
    parser.add_argument("id", help="a user id or an anonymous id")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _identity(args: argparse.Namespace) -> int:
    """`identity show ID`: what an id is linked to, as anonymous id and as user id, and
    its stored profile with the user record it uploads as."""
    from adapter.users import UsersTables

    config = Config()
    try:
        store = open_store(config.ADAPTER_STORE)
        links = store.links_of(args.id)
        profile = store.profile_of(args.id)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    record = None
    if profile is not None and not profile["anonymous"]:
        record = UsersTables(config.MAPPINGS_DIR).record(args.id, profile["data"])
    if args.json:
        print(orjson.dumps({"id": args.id, **links, "profile": profile,
                            "user_record": record}).decode())  # fmt: skip
        return 0
    user, anonymous = links["user"], links["anonymous"]
    if user is None and not anonymous:
        print(f"{args.id}: no links known")
    if user is not None:
        print(f"{args.id} is an anonymous id of user {user['user_id']} "
              f"(linked {_when(user['linked_at'])})")  # fmt: skip
    if anonymous:
        print(f"{args.id} is a user with {len(anonymous)} anonymous id(s), most recent first:")
        for link in anonymous:
            print(f"  {link['anonymous_id']}  (linked {_when(link['linked_at'])})")
    if profile is None:
        print(f"{args.id}: no profile stored")
        return 0
    kept = "kept for its user until a link names them" if profile["anonymous"] else "stored"
    print(f"profile {kept} (changed {_when(profile['updated_at'])}):")
    print(f"  {orjson.dumps(profile['data']).decode()}")
    if record is not None:
        print(f"uploads to Miso as:\n  {orjson.dumps(record).decode()}")
    return 0


COMMANDS: dict[str, Command] = {
    "serve": (
        "run the web service (gunicorn) and the forwarder",
        _serve_args,
        _serve,
    ),
    "forward": ("run the forwarder alone [--until-empty]", _forward_args, _forward),
    "identity": (
        "what an id is linked to, and its profile: identity show ID [--json]",
        _identity_args,
        _identity,
    ),
    "dead-letters": (
        "inspect and resend what Miso refused: list | retry [--all | ID...] | purge",
        _dead_letters_args,
        _dead_letters,
    ),
}
