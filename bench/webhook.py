"""Benchmark: signed Segment webhooks over HTTP, the service against a bare Flask floor.

    python bench/webhook.py [--seconds 20] [--connections 16] [--workers 2] [--threads 4]

Needs ``wrk`` (Debian: ``apt-get install -y wrk``). In one run, on the same gunicorn
settings, it measures:

* floor: a bare Flask app (``floor_app`` below) whose one ``POST /segment`` route reads
  the body and answers ``{"ok": true}``, served by gunicorn with the very command line
  ``miso-adapter serve`` uses (``adapter.serve.gunicorn_command``, only the app target
  swapped, so the settings cannot drift): the least any Flask service on gunicorn can do
  per request, HTTP parsing and keep-alive included;
* adapter: ``miso-adapter serve`` itself, as in production: a fresh SQLite store in a temp
  folder, ``SEGMENT_SHARED_SECRET`` set (every request's signature is checked), and the
  forwarder sending to a ``FakeMiso(validate=False)`` running in this process. Each 200
  means: body read, signature verified, message translated, record committed to SQLite
  (``synchronous=FULL``: an fsync per commit, on whatever disk ``$TMPDIR`` is on; a tmpfs
  would make it look free) — while the forwarder drains the store to Miso alongside.

The load is the same for both: single-message webhooks as Segment delivers them, each an
analytics.js ``track`` "Product Viewed" of about 1 KB with its context, each with a unique
``messageId`` (repeats would be answered as cheap duplicates) and its correct
``X-Signature``. They are generated up front into a temp file that ``bench/
wrk_requests.lua`` loads, so the client spends no time on JSON or HMAC; each request is
sent once (the script warns if a run used them all up: raise --bodies). ``--connections``
keep-alive clients send as fast as answers come back (closed loop), first for
``--warmup`` seconds, not counted, then for ``--seconds``. The warm-up and the measured
run use different messages.

How the connections meet the workers: wrk opens all its connections at once, and a
keep-alive connection stays with the gunicorn worker that accepted it. Often (a third to
a half of the draws here, with 2 idle workers and 16 connections) one worker accepts them
all, and the run then measures one GIL-bound process instead of ``--workers`` of them: the
floor drops from ~5,000 to ~1,800 requests/s, and the ratio means nothing. Segment's
deliveries do not arrive as one burst on idle workers, so such a run is stopped a moment
after it starts and drawn again (``--redraws``, default 10). The split is read with
``ss`` and shown in the table's conns/worker column (``?`` where ``ss`` is missing: no
redraws then); both servers get the same treatment. Uneven splits that reach every
worker are kept: they move the floor by about +-15%, which is the noise to expect.

CPU placement on a 2-core box: nothing is pinned (no taskset). wrk runs one thread
(``--wrk-threads``); its event loop keeps 16 connections busy at these rates on about a
quarter of one core (floor) or a tenth (adapter), and a second thread would only take CPU
from the servers. The servers use both cores, as in production. Pinning wrk to one core
(``taskset -c 1``, servers free) was tried: both rows rose by 4-10% and the ratio stayed
the same, which is not worth a Linux-only wrapper. FakeMiso's share (taking the
forwarder's 1,000-record POSTs) falls on the adapter's run only; it is small.

Prints requests/s, p50 and p99 latency (from wrk's own histogram, via the script's
``done``) and non-2xx answers (wrk counts statuses >= 400) for both, and the adapter's
requests/s as a fraction of the floor's. Then, as a check that the adapter's 200s were
real, it waits (up to 30 s) for FakeMiso to receive one record per acknowledged request:
each message makes exactly one ``product_detail_page_view``. Exit status: 0, or 1 when a
check failed (non-2xx answers, socket errors, records missing), 2 when wrk is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import http.client
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import orjson

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

LUA = BENCH / "wrk_requests.lua"
SECRET = "bench-segment-shared-secret"
API_KEY = "bench-miso-key"
APP_TARGET = "adapter:create_app()"
FLOOR_TARGET = "webhook:floor_app()"  # this module, imported with bench/ on PYTHONPATH


def floor_app():
    """The floor: a bare Flask app that reads a POST /segment body and answers {"ok": true}."""
    from flask import Flask, jsonify, request

    app = Flask("floor")

    @app.post("/segment")
    def segment():
        request.get_data()
        return jsonify(ok=True)

    return app


# --------------------------------------------------------------------------- the load

_PATHS = ["/products/{}", "/c/shoes/{}", "/search?q=trail&p={}"]


def make_message(rng: random.Random, index: int) -> dict:
    """One analytics.js "Product Viewed" track call as Segment's webhook delivers it."""
    anon = f"{rng.getrandbits(128):032x}"
    product = f"p{rng.randint(1, 5000)}"
    day, hour, minute = 1 + index % 28, index % 24, index % 60
    second, milli = rng.randint(0, 59), rng.randint(0, 999)
    stamp = f"2024-05-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{milli:03d}Z"
    path = rng.choice(_PATHS).format(product)
    message: dict = {
        "type": "track",
        "event": "Product Viewed",
        "messageId": f"ajs-next-{index:08d}-{rng.getrandbits(64):016x}",  # unique by index
        "anonymousId": anon,
        "channel": "client",
        "timestamp": stamp,
        "originalTimestamp": stamp,
        "sentAt": stamp,
        "receivedAt": stamp,
        "integrations": {},
        "projectId": "Rx3pJbNZ2kUq9bC1",
        "version": 2,
        "properties": {
            "product_id": product,
            "sku": f"G-{rng.randint(10, 99)}",
            "category": "Shoes",
            "name": "Trail Runner 2",
            "brand": "Acme",
            "variant": rng.choice(["blue", "black", "red"]),
            "price": 89.0,
            "currency": "USD",
            "quantity": 1,
            "url": f"https://shop.example.com/products/{product}",
            "image_url": f"https://cdn.example.com/{product}.jpg",
        },
        "context": {
            "ip": f"203.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            "library": {"name": "analytics.js", "version": "next-1.64.0"},
            "locale": "en-US",
            "page": {
                "path": path,
                "referrer": "https://www.google.com/",
                "search": "",
                "title": "Trail Runner 2 | Acme Shop",
                "url": f"https://shop.example.com{path}",
            },
            "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
            "campaign": {"name": "spring_sale", "source": "google", "medium": "cpc"},
        },
    }
    if rng.random() < 0.3:  # signed-in visitors: the message also links the two ids
        message["userId"] = f"u_{rng.randint(1, 50_000)}"
    return message


def write_requests(path: Path, count: int, secret: str) -> int:
    """Write ``count`` signed webhooks, one ``SIGNATURE BODY`` line each; returns body bytes."""
    rng = random.Random(20241126)
    key = secret.encode()
    total = 0
    with path.open("wb") as out:
        for index in range(count):
            body = orjson.dumps(make_message(rng, index))
            signature = hmac.new(key, body, hashlib.sha1).hexdigest().encode()
            out.write(signature + b" " + body + b"\n")
            total += len(body)
    return total


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Group:
    """A child started in its own session, so its whole process group can be stopped."""

    def __init__(self, name: str, command: list[str], log: Path, **popen) -> None:
        self.name, self.log, self.stopped = name, log, False
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def _signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the group, give it ``grace`` seconds, then SIGKILL whatever is left."""
        if self.stopped:
            return
        self.stopped = True
        self._signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=grace)
        self._signal(signal.SIGKILL)  # stragglers (and the leader, if it did not stop)
        self.process.wait()

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def wait_ready(service: Group, port: int, method: str, path: str, timeout: float = 60.0) -> None:
    """Poll until the service answers ``method path`` with 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.alive():
            sys.exit(f"error: {service.name} exited early:\n{service.tail()}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            body = b"{}" if method == "POST" else None
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.2)
    sys.exit(f"error: {service.name} not ready after {timeout:.0f}s:\n{service.tail()}")


@dataclass
class Load:
    """What one wrk run saw."""

    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    taken: int  # request bodies consumed (sent, in flight at the end, or wrk's one probe)
    taken_max: int  # by the busiest thread
    available: int  # bodies each thread had (the smallest share)
    split: list[int] | None  # connections per gunicorn worker, most first (None: unknown)
    lopsided: bool  # some worker got no connection

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx


def connection_split(port: int) -> list[int] | None:
    """Established connections to ``port`` per server process, most first (None: no ``ss``)."""
    command = ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return sorted(Counter(re.findall(r"pid=(\d+),", out)).values(), reverse=True)


def run_wrk(
    port: int, seconds: float, args: argparse.Namespace, first: int, log: Path, redraw: bool
) -> Load:
    """One wrk run sending the bodies from ``first`` on; returns what it measured.

    While it runs, sees how its connections landed on gunicorn's workers. With ``redraw``,
    a lopsided split (some worker holds none) stops the run early, marked ``lopsided``.
    """
    threads = args.wrk_threads
    url = f"http://127.0.0.1:{port}/segment"
    command = [
        "wrk", "--threads", str(threads), "--connections", str(args.connections),
        "--duration", f"{max(1, round(seconds))}s", "--timeout", "10s", "--latency",
        "--script", str(LUA), url,
        "--", str(args.requests_file), str(first), str(args.bodies), str(threads),
    ]  # fmt: skip
    wrk = Group("wrk", command, log)
    split: list[int] | None = None  # connections per worker, once all are seen
    lopsided = False
    watch_until = time.monotonic() + 10  # wrk connects once its script has loaded the bodies
    try:
        while wrk.process.poll() is None:
            time.sleep(0.25)
            if split is None and time.monotonic() < watch_until:
                seen = connection_split(port)
                if seen is None:  # no `ss` here: cannot tell
                    watch_until = 0
                elif sum(seen) >= args.connections:
                    split = seen
                    lopsided = len(split) < min(args.workers, args.connections)
                    if lopsided and redraw:
                        wrk.process.send_signal(signal.SIGINT)  # wrk stops and reports
        code = wrk.process.wait()
    finally:
        if wrk.alive():
            wrk.stop(grace=2)
    output = log.read_text(errors="replace")
    found = re.findall(r"^WRK_JSON (\{.*\})$", output, re.MULTILINE)
    if code != 0 or not found:
        sys.exit(f"error: wrk failed (exit {code}):\n{output[-3000:]}")
    r = orjson.loads(found[-1])
    return Load(
        requests=r["requests"],
        seconds=r["duration_us"] / 1e6,
        non_2xx=r["status_errors"],
        socket_errors=r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"],
        p50_ms=r["p50_us"] / 1000,
        p90_ms=r["p90_us"] / 1000,
        p99_ms=r["p99_us"] / 1000,
        max_ms=r["max_us"] / 1000,
        taken=r["taken_sum"],
        taken_max=r["taken_max"],
        available=r["available_min"],
        split=split,
        lopsided=lopsided,
    )


def load_service(name: str, port: int, args: argparse.Namespace, logs: Path) -> list[Load]:
    """Warm up, then measure; returns every run, the measured one last.

    Each run starts after the last body the previous one took, so no message is sent
    twice. A measured run whose connections all landed on fewer workers than there are is
    stopped and drawn again, up to --redraws times (see the module docstring).
    """
    runs: list[Load] = []
    first = 0

    def one(label: str, seconds: float, redraw: bool) -> Load:
        nonlocal first
        print(f"  {name}: {label} {seconds:g}s ...", file=sys.stderr, flush=True)
        load = run_wrk(port, seconds, args, first, logs / f"wrk-{name}-{len(runs)}.log", redraw)
        if load.taken_max > load.available:
            print(
                f"  warning: {name} {label} ran out of unique bodies and repeated some; "
                f"raise --bodies (now {args.bodies:,})",
                file=sys.stderr,
            )
        first += args.wrk_threads * load.taken_max
        runs.append(load)
        return load

    if args.warmup > 0:
        one("warm-up", args.warmup, redraw=False)
    for draw in range(args.redraws + 1):
        load = one("measured", args.seconds, redraw=draw < args.redraws)
        if not load.lopsided or draw == args.redraws:
            break
        print(
            f"  {name}: all {args.connections} connections landed on {len(load.split or [])} "
            f"of {args.workers} workers; stopped after {load.seconds:.1f}s, drawing again",
            file=sys.stderr,
        )
    return runs


def run_floor(args: argparse.Namespace, tmp: Path, stack) -> Load:
    """Measure the floor app under ``serve``'s gunicorn settings."""
    port = free_port()
    command = [*gunicorn_for(args, port)[:-1], FLOOR_TARGET]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT)])}
    floor = Group("floor (gunicorn)", command, tmp / "floor.log", env=env, cwd=tmp)
    stack.callback(floor.stop)
    wait_ready(floor, port, "POST", "/segment")
    load = load_service("floor", port, args, tmp)[-1]
    floor.stop()
    return load


def run_adapter(args: argparse.Namespace, tmp: Path, stack) -> tuple[Load, str]:
    """Measure ``miso-adapter serve``; returns the measured run and the delivery check."""
    from adapter.testing import FakeMiso

    miso = stack.enter_context(FakeMiso(api_key=API_KEY, validate=False))
    port = free_port()
    command = [
        sys.executable, "-m", "adapter.cli", "serve", "--bind", f"127.0.0.1:{port}",
        "--workers", str(args.workers), "--threads", str(args.threads),
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ADAPTER_STORE": f"sqlite:///{tmp / 'adapter.db'}?synchronous={args.synchronous}",
        "MISO_API_URL": miso.url,
        "MISO_API_KEY": API_KEY,
        "SEGMENT_SHARED_SECRET": SECRET,
    }
    adapter = Group("miso-adapter serve", command, tmp / "adapter.log", env=env, cwd=tmp)
    stack.callback(adapter.stop)
    wait_ready(adapter, port, "GET", "/healthz")
    runs = load_service("adapter", port, args, tmp)
    check = delivery_check(miso, runs)
    adapter.stop()
    return runs[-1], check


def delivery_check(miso, runs: list[Load], timeout: float = 30.0) -> str:
    """Wait for FakeMiso to hold a record per acknowledged request; describe the outcome.

    Acknowledged: wrk's 2xx answers, warm-up included. A request still in flight when wrk
    stopped may have been stored without being counted, so up to ``taken`` may arrive.
    """
    acked = sum(load.ok for load in runs)
    ceiling = sum(load.taken for load in runs)
    start = deadline = time.monotonic()
    deadline += timeout
    received, last_change = len(miso.records), start
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now_received = len(miso.records)
        if now_received != received:
            received, last_change = now_received, time.monotonic()
        # Done once all acknowledged arrived and nothing more came for 3 s (stragglers).
        if received >= acked and time.monotonic() - last_change > 3:
            break
    waited = time.monotonic() - start
    verdict = "ok" if acked <= received <= ceiling else "MISMATCH"
    return (
        f"delivery check: {verdict}: FakeMiso received {received:,} records for {acked:,} "
        f"acknowledged requests (warm-up included; at most {ceiling - acked:,} more may have "
        f"been in flight when wrk stopped), after waiting {waited:.1f}s"
    )


def gunicorn_for(args: argparse.Namespace, port: int) -> list[str]:
    """``serve``'s own gunicorn command line; fails loudly if its app target moved."""
    from adapter.serve import gunicorn_command

    command = gunicorn_command(f"127.0.0.1:{port}", args.workers, args.threads)
    if command[-1] != APP_TARGET:
        sys.exit(f"error: gunicorn_command() no longer ends with {APP_TARGET!r}: {command}")
    return command


# --------------------------------------------------------------------------- main


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanup below, as Ctrl-C does


def run(args: argparse.Namespace, stack: contextlib.ExitStack) -> int:
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-webhook-")))
    args.requests_file = tmp / "requests.txt"
    start = time.perf_counter()
    size = write_requests(args.requests_file, args.bodies, SECRET)
    print(
        f"generated {args.bodies:,} signed webhooks, {size / args.bodies:,.0f} bytes a body on "
        f"average, in {time.perf_counter() - start:.1f}s",
        file=sys.stderr,
    )
    floor = run_floor(args, tmp, stack)
    adapter, check = run_adapter(args, tmp, stack)

    cpus = os.cpu_count()
    print()
    print(
        f"gunicorn: {args.workers} workers x {args.threads} threads (gthread, keep-alive 5), "
        f"{cpus} CPUs; wrk: {args.wrk_threads} thread(s), {args.connections} keep-alive "
        f"connections, {args.seconds:g}s after a {args.warmup:g}s warm-up; "
        f"~{size / args.bodies / 1000:.1f} KB signed single-message webhooks"
    )
    print(
        f"{'work':<38}{'requests/s':>11}{'p50 ms':>8}{'p99 ms':>8}{'non-2xx':>8}"
        f"{'conns/worker':>14}"
    )
    rows = (
        ("floor: bare Flask, read body, {ok}", floor),
        ("adapter: verify, translate, SQLite", adapter),
    )
    for label, load in rows:
        split = "/".join(map(str, load.split)) if load.split else "?"
        split += " (!)" if load.lopsided else ""
        print(
            f"{label:<38}{load.rate:>11,.0f}{load.p50_ms:>8.2f}{load.p99_ms:>8.2f}"
            f"{load.non_2xx:>8,}{split:>14}"
        )
    print(f"ratio adapter/floor (requests/s): {adapter.rate / floor.rate:.2f}")
    if floor.lopsided or adapter.lopsided:
        print(
            "(!) some worker had no connection in every draw: that row measured fewer "
            "workers than configured"
        )
    print(check)
    failed = "MISMATCH" in check
    for label, load in rows:
        if load.non_2xx or load.socket_errors:
            failed = True
            print(f"check failed: {label}: {load.non_2xx} non-2xx, {load.socket_errors} "
                  "socket errors (connect/read/write/timeout)")  # fmt: skip
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per server")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds, not counted")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive clients")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk's threads")
    parser.add_argument("--bodies", type=int, default=300_000, help="unique webhooks to make")
    parser.add_argument(
        "--synchronous",
        choices=["full", "normal"],
        default="full",
        help="the adapter store's durability: full (the default: fsync per commit) or normal",
    )
    parser.add_argument(
        "--redraws", type=int, default=10, help="new tries when the connections miss a worker"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print(
            "error: this benchmark needs wrk (https://github.com/wg/wrk) on PATH.\n"
            "  Debian/Ubuntu: apt-get install -y wrk    macOS: brew install wrk",
            file=sys.stderr,
        )
        return 2
    if args.connections < args.wrk_threads or min(args.workers, args.threads) < 1:
        parser.error("need --workers, --threads >= 1 and --connections >= --wrk-threads")
    signal.signal(signal.SIGTERM, _terminate)
    with contextlib.ExitStack() as stack:
        try:
            return run(args, stack)
        except KeyboardInterrupt:
            print("\ninterrupted: stopping servers and removing temp files", file=sys.stderr)
            return 130
        finally:
            # No second Ctrl-C half way through the cleanup that the stack does next.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
