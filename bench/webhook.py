"""Benchmark: signed Segment webhooks over HTTP, the service against a bare Flask floor.

    python bench/webhook.py [--seconds 20] [--connections 16] [--workers 2] [--threads N]
                            [--batch 1000]

Needs ``wrk`` (Debian: ``apt-get install -y wrk``). In one run, on the same gunicorn
settings, it measures:

* floor: a bare Flask app (``floor_app`` below) whose one ``POST /segment`` route reads
  the body, parses it with ``orjson`` and answers ``{"ok": true}``, served by gunicorn
  with the very command line ``miso-adapter serve`` uses
  (``adapter.serve.gunicorn_command``, only the app target swapped, so the settings
  cannot drift): the least any Flask service on gunicorn can do per request, HTTP
  parsing and keep-alive included (the JSON parse is a few microseconds for a single
  message, and a real share of the floor for a 1,000-message array);
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
sent once to the adapter (the script warns if a run used them all up: raise --bodies);
the floor starts from the first body each run and may cycle through them.
``--connections`` keep-alive clients send as fast as answers come back (closed loop),
first for ``--warmup`` seconds, not counted, then for ``--seconds``. The warm-up and the
measured run use different messages.

With ``--batch N`` (N > 1) each request is instead a Webhooks (Actions) batch: a bare JSON
array of N such messages, every one with its own ``messageId``, written as
``JSON.stringify`` writes it, and ``X-Signature`` the HMAC-SHA1 of ``JSON.stringify`` of
the first element, as Segment signs batches (``adapter.sources.segment.signature_ok``). To keep
a run's gigabytes of unique bodies out of memory, ``bench/wrk_requests.lua`` assembles each
request from a pre-signed first message and one shared text of the other N-1 messages
whose messageIds it stamps with the request's number. The default is then 8 connections:
a 1 MB request keeps a worker's interpreter busy for tens of milliseconds, so more
connections only queue, which adds latency and no throughput.

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

Prints requests/s, events/s (messages in 2xx-answered requests per second), p50 and p99
latency per request (from wrk's own histogram, via the script's ``done``) and non-2xx
answers (wrk counts statuses >= 400) for both, and the adapter's requests/s as a
fraction of the floor's. Then, as a check that the adapter's 200s were real, it waits (up
to 30 s) for FakeMiso to receive one record per acknowledged message: each message makes
exactly one ``product_detail_page_view``. Exit status: 0, or 1 when a
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
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(ROOT))

from common import BenchError, CountingMiso  # noqa: E402

from adapter.testing.ports import free_port  # noqa: E402

LUA = BENCH / "wrk_requests.lua"
SECRET = "bench-segment-shared-secret"
API_KEY = "bench-miso-key"
APP_TARGET = "adapter:create_app()"
FLOOR_TARGET = "webhook:floor_app()"  # this module, imported with bench/ on PYTHONPATH


def floor_app():
    """The floor: a bare Flask app whose POST /segment reads and parses the body, answers ok."""
    from flask import Flask, jsonify, request

    app = Flask("floor")

    @app.post("/segment")
    def segment():
        # Parsed as well as read: no service can do anything with a body it has not
        # parsed, and for a 1,000-message array the parse is a real share of the floor.
        orjson.loads(request.get_data())
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


PLACEHOLDER = "@@@@@@@@"  # replaced per request by wrk_requests.lua (8 hex digits)


def write_batches(heads: Path, rest: Path, count: int, batch: int, secret: str) -> int:
    """Write what wrk_requests.lua needs for ``count`` arrays of ``batch`` messages.

    ``heads``: one ``SIGNATURE FIRST-MESSAGE`` line per request, the signature being the
    HMAC-SHA1 of ``JSON.stringify`` of that first message, as Segment signs a Webhooks
    (Actions) batch; ``rest``: the other ``batch - 1`` messages, comma-separated, each
    messageId holding :data:`PLACEHOLDER`. Written as ``JSON.stringify`` would (``89``,
    not ``89.0``), byte for byte what Segment sends. Returns the bytes of one request body.
    """
    from adapter.sources.segment import js_stringify

    rng = random.Random(20241127)
    key = secret.encode()
    others = []
    for index in range(1, batch):
        message = make_message(rng, index)
        message["messageId"] = f"ajs-next-{PLACEHOLDER}-{index:04d}-{rng.getrandbits(32):08x}"
        others.append(js_stringify(message))
    text = ",".join(others).encode()
    rest.write_bytes(text)
    size = 0
    with heads.open("wb") as out:
        for index in range(count):
            message = make_message(rng, index)
            message["messageId"] = f"ajs-head-{index:08d}-{rng.getrandbits(64):016x}"
            head = js_stringify(message).encode()
            signature = hmac.new(key, head, hashlib.sha1).hexdigest().encode()
            out.write(signature + b" " + head + b"\n")
            size = len(head)
    return 2 + size + (1 + len(text) if text else 0)  # "[" head "," rest "]"


# --------------------------------------------------------------------------- processes


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
            raise BenchError(f"{service.name} exited early:\n{service.tail()}")
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
    raise BenchError(f"{service.name} not ready after {timeout:.0f}s:\n{service.tail()}")


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
    script, extra = LUA, [str(args.rest_file)] if args.batch > 1 else []
    command = [
        "wrk", "--threads", str(threads), "--connections", str(args.connections),
        "--duration", f"{max(1, round(seconds))}s", "--timeout", "10s", "--latency",
        "--script", str(script), url,
        "--", str(args.requests_file), str(first), str(args.bodies), str(threads), *extra,
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
        raise BenchError(f"wrk failed (exit {code}):\n{output[-3000:]}")
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


def load_service(
    name: str, port: int, args: argparse.Namespace, logs: Path, unique: bool
) -> list[Load]:
    """Warm up, then measure; returns every run, the measured one last.

    With ``unique``, each run starts after the last body the previous one took, so no
    message is sent twice (the adapter would answer a repeat as a cheap duplicate). The
    floor reads bodies and nothing more, so it starts at the first body every time and
    may cycle through them. A measured run whose connections all landed on fewer workers
    than there are is stopped and drawn again, up to --redraws times (see the module
    docstring).
    """
    runs: list[Load] = []
    first = 0

    def one(label: str, seconds: float, redraw: bool) -> Load:
        nonlocal first
        print(f"  {name}: {label} {seconds:g}s ...", file=sys.stderr, flush=True)
        load = run_wrk(port, seconds, args, first, logs / f"wrk-{name}-{len(runs)}.log", redraw)
        if unique:
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
        # The stopped draw's requests are still being served (8 arrays of 1,000 messages
        # are most of a second of work): let them finish before the next draw's clock.
        time.sleep(1.0)
    return runs


def run_floor(args: argparse.Namespace, tmp: Path, stack: contextlib.ExitStack) -> Load:
    """Measure the floor app under ``serve``'s gunicorn settings."""
    port = free_port()
    command = [*gunicorn_for(args, port)[:-1], FLOOR_TARGET]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH), str(ROOT)])}
    floor = Group("floor (gunicorn)", command, tmp / "floor.log", env=env, cwd=tmp)
    stack.callback(floor.stop)
    wait_ready(floor, port, "POST", "/segment")
    load = load_service("floor", port, args, tmp, unique=False)[-1]
    floor.stop()
    return load


@dataclass
class Delivery:
    """What FakeMiso received from the adapter against what it acknowledged (messages)."""

    acked: int  # messages in 2xx-answered requests, warm-up included
    ceiling: int  # messages in every request sent (some were in flight when wrk stopped)
    received: int
    waited: float

    @property
    def ok(self) -> bool:
        return self.acked <= self.received <= self.ceiling

    def __str__(self) -> str:
        verdict = "ok" if self.ok else "MISMATCH"
        return (
            f"delivery check: {verdict}: FakeMiso received {self.received:,} records for "
            f"{self.acked:,} acknowledged messages (warm-up included; at most "
            f"{self.ceiling - self.acked:,} more may have been in flight when wrk stopped), "
            f"after waiting {self.waited:.1f}s"
        )


def run_adapter(
    args: argparse.Namespace, tmp: Path, stack: contextlib.ExitStack
) -> tuple[Load, Delivery]:
    """Measure ``miso-adapter serve``; returns the measured run and the delivery check."""
    miso = stack.enter_context(CountingMiso(API_KEY))
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
    runs = load_service("adapter", port, args, tmp, unique=True)
    delivery = delivery_check(miso, runs, args.batch)
    adapter.stop()
    return runs[-1], delivery


def delivery_check(
    miso: CountingMiso, runs: list[Load], batch: int, timeout: float = 30.0
) -> Delivery:
    """Wait for FakeMiso to hold a record per acknowledged message (each makes one).

    Acknowledged: the messages of wrk's 2xx answers, warm-up included. A request still in
    flight when wrk stopped may have been stored without being counted, so up to
    ``taken`` requests' worth may arrive. Done once all acknowledged arrived and nothing
    more came for 3 s (stragglers), or after ``timeout`` seconds.
    """
    acked = batch * sum(load.ok for load in runs)
    ceiling = batch * sum(load.taken for load in runs)
    received, waited = miso.wait_quiet(acked, timeout)
    return Delivery(acked, ceiling, received, waited)


def gunicorn_for(args: argparse.Namespace, port: int) -> list[str]:
    """``serve``'s own gunicorn command line; fails loudly if its app target moved."""
    from adapter.serve import gunicorn_command

    command = gunicorn_command(f"127.0.0.1:{port}", args.workers, args.threads)
    if command[-1] != APP_TARGET:
        raise BenchError(f"gunicorn_command() no longer ends with {APP_TARGET!r}: {command}")
    return command


@dataclass
class Result:
    """One measurement: the floor and the adapter under the same load."""

    floor: Load
    adapter: Load
    delivery: Delivery
    batch: int  # messages per request
    body_bytes: float  # average request body

    @property
    def ratio(self) -> float:
        """The adapter's rate over the floor's (same bodies, same gunicorn settings)."""
        return self.adapter.rate / self.floor.rate

    def events_per_second(self, load: Load) -> float:
        """Messages in 2xx-answered requests per second."""
        return load.ok * self.batch / load.seconds

    def failures(self) -> list[str]:
        """Why this measurement cannot be trusted (empty when it can)."""
        problems = [] if self.delivery.ok else [str(self.delivery)]
        for label, load in (("floor", self.floor), ("adapter", self.adapter)):
            if load.non_2xx or load.socket_errors:
                problems.append(
                    f"{label}: {load.non_2xx} non-2xx, {load.socket_errors} socket errors "
                    "(connect/read/write/timeout)"
                )
        return problems


@contextlib.contextmanager
def cleanup_uninterrupted() -> Iterator[contextlib.ExitStack]:
    """An ExitStack whose cleanup (stopping servers, removing files) Ctrl-C cannot cut short."""
    stack = contextlib.ExitStack()
    try:
        yield stack
    finally:
        previous = {
            signum: signal.signal(signum, signal.SIG_IGN)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            stack.close()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def measure(args: argparse.Namespace) -> Result:
    """Generate the load, then measure the floor and the adapter on it, one after the other."""
    with cleanup_uninterrupted() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-webhook-")))
        args.requests_file = tmp / "requests.txt"
        args.rest_file = tmp / "rest.json"
        start = time.perf_counter()
        if args.batch > 1:
            size = write_batches(
                args.requests_file, args.rest_file, args.bodies, args.batch, SECRET
            )
            what = f"arrays of {args.batch:,} messages"
        else:
            size = write_requests(args.requests_file, args.bodies, SECRET) / args.bodies
            what = "single-message webhooks"
        print(
            f"generated {args.bodies:,} signed {what}, {size:,.0f} bytes a body on average, in "
            f"{time.perf_counter() - start:.1f}s",
            file=sys.stderr,
        )
        floor = run_floor(args, tmp, stack)
        adapter, delivery = run_adapter(args, tmp, stack)
    return Result(floor, adapter, delivery, args.batch, size)


# --------------------------------------------------------------------------- main


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanup below, as Ctrl-C does


def report(result: Result, args: argparse.Namespace) -> int:
    """Print the table and the checks; returns the exit status (1 when a check failed)."""
    cpus = os.cpu_count()
    what = (
        f"arrays of {result.batch:,} messages (Webhooks (Actions))"
        if result.batch > 1
        else "single-message webhooks"
    )
    print()
    print(
        f"gunicorn: {args.workers} workers x {args.threads} threads (gthread, keep-alive 5), "
        f"{cpus} CPUs; wrk: {args.wrk_threads} thread(s), {args.connections} keep-alive "
        f"connections, {args.seconds:g}s after a {args.warmup:g}s warm-up; "
        f"~{result.body_bytes / 1000:,.1f} KB signed {what}"
    )
    print(
        f"{'work':<38}{'requests/s':>11}{'events/s':>10}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'non-2xx':>8}{'conns/worker':>14}"
    )
    rows = (
        ("floor: bare Flask, read+parse, {ok}", result.floor),
        ("adapter: verify, translate, SQLite", result.adapter),
    )
    for label, load in rows:
        split = "/".join(map(str, load.split)) if load.split else "?"
        split += " (!)" if load.lopsided else ""
        print(
            f"{label:<38}{load.rate:>11,.0f}{result.events_per_second(load):>10,.0f}"
            f"{load.p50_ms:>8.2f}{load.p99_ms:>8.2f}{load.non_2xx:>8,}{split:>14}"
        )
    print(f"ratio adapter/floor (requests/s): {result.ratio:.2f}")
    if result.floor.lopsided or result.adapter.lopsided:
        print(
            "(!) some worker had no connection in every draw: that row measured fewer "
            "workers than configured"
        )
    print(result.delivery)
    problems = result.failures()
    for problem in problems:
        print(f"check failed: {problem}")
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    """This script's options (``python -m bench`` builds its runs from them too)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="measured seconds per server")
    parser.add_argument("--warmup", type=float, default=3, help="warm-up seconds, not counted")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="messages per request: 1 (single messages) or more (Webhooks (Actions) arrays)",
    )
    parser.add_argument(
        "--connections", type=int, help="keep-alive clients (default 16; 8 with --batch > 1)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument(
        "--threads", type=int, help="threads per worker (default: serve's own default)"
    )
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk's threads")
    parser.add_argument(
        "--bodies",
        type=int,
        help="unique requests to make (default 300,000; 4,000 with --batch > 1)",
    )
    parser.add_argument(
        "--synchronous",
        choices=["full", "normal"],
        default="full",
        help="the adapter store's durability: full (the default: fsync per commit) or normal",
    )
    parser.add_argument(
        "--redraws", type=int, default=10, help="new tries when the connections miss a worker"
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and complete the options (defaults that depend on --batch)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is None:
        from adapter.serve import THREADS

        args.threads = THREADS
    if args.connections is None:
        args.connections = 16 if args.batch == 1 else 8
    if args.bodies is None:
        args.bodies = 300_000 if args.batch == 1 else 4_000
    if args.connections < args.wrk_threads or min(args.workers, args.threads, args.batch) < 1:
        parser.error("need --workers, --threads, --batch >= 1 and --connections >= --wrk-threads")
    return args


WRK_MISSING = (
    "this benchmark needs wrk (https://github.com/wg/wrk) on PATH.\n"
    "  Debian/Ubuntu: apt-get install -y wrk    macOS: brew install wrk"
)


def main() -> int:
    args = parse_args()
    if shutil.which("wrk") is None:
        print(f"error: {WRK_MISSING}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return report(measure(args), args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, temp files removed", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
