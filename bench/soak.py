"""Soak test: mixed traffic and a fault schedule against ``miso-adapter serve``; nothing lost.

    python bench/soak.py [--minutes 10] [--clients 4] [--replay-lines N] [--validate] [--keep]

Not a CI test: it runs for minutes and kills processes. In one run it starts, in a temp
folder, a ``FakeMiso`` in this process and ``miso-adapter serve`` (2 gunicorn workers and
the forwarder, its own process group, a fresh SQLite store), then sends:

* ``--clients`` threads posting signed Segment webhooks (``X-Signature``: HMAC-SHA1 of the
  body), mostly single messages and some bare arrays of 2-5, each event a "Product Viewed"
  with a unique product id ``s-<n>``. A client retries the same body (same ``messageId``)
  until it gets a 200, as Segment does, so an event counts as *acknowledged* on its 200;
* one ``miso-adapter replay mixpanel`` subprocess of a generated export
  (``adapter/testing/mixpanel_export.py``: unique tags ``p-<n>``, ``q-<n>``, ``h-<n>``; its events
  count as acknowledged when the replay exits 0: it stores before it returns).

while a fault schedule (printed at the start, each fault logged with its time) runs over
the same minutes: flapping 5xx phases, 429 bursts with ``Retry-After``, a slow phase
(``set_delay``), ``kill -9`` of one gunicorn worker, and ``kill -9`` of the whole service
(its process group) followed by a restart on the same store. At the end the clients stop,
and it waits (up to 60 s) for every acknowledged event to reach the fake Miso, then prints
events sent, acknowledged, delivered (unique tags), duplicated (tags delivered more than
once, broken down by whether the first delivery coincides with a kill), dead-lettered and
LOST (acknowledged, never delivered, not dead-lettered). Exit status 1 when anything is lost.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import requests

from adapter.testing import FakeMiso, RequestLog
from adapter.testing.mixpanel_export import record_key, write_export
from adapter.testing.ports import free_port
from adapter.testing.service import clean_env

SECRET = "soak-shared-secret"
MISO_KEY = "soak-miso-key"
DRAIN_SECONDS = 60.0
KILL_WINDOW = 2.0  # a duplicate "coincides" with a kill when first delivered this close before it


def log(t0: float, text: str) -> None:
    print(f"[{time.monotonic() - t0:7.1f}s] {text}", flush=True)


class Service:
    """``miso-adapter serve`` in its own process group (as ``adapter.testing.service`` runs it)."""

    def __init__(self, folder: Path, miso: FakeMiso) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "service.log"
        self.env = clean_env(
            MISO_API_URL=miso.url,
            MISO_API_KEY=MISO_KEY,
            ADAPTER_STORE=f"sqlite:///{folder}/adapter.db",
            SEGMENT_SHARED_SECRET=SECRET,
            ADAPTER_BACKOFF_BASE="0.2",
            ADAPTER_BACKOFF_CAP="5",
            ADAPTER_PAUSE_SECONDS="1",
        )  # the lease stays at its production default (30 s)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "adapter.cli", "serve", "--bind", f"127.0.0.1:{self.port}",
                 "--workers", "2"],
                env=self.env, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"service died:\n{self.tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"service did not start:\n{self.tail()}")

    def kill9(self) -> None:
        """SIGKILL the whole service at once: supervisor, gunicorn, workers, forwarder."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def worker_pids(self) -> list[int]:
        """The gunicorn worker processes: children of the gunicorn master, found via /proc."""
        workers = []
        for child in children(self.process.pid):
            if b"gunicorn" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.extend(children(child))
        return workers

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "adapter.cli", *args],
            env=self.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found.extend(int(p) for p in (task / "children").read_text().split())
    return found


# ------------------------------------------------------------------------------- traffic


@dataclass
class Ledger:
    """What the clients sent and what the adapter acknowledged, by tag."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: set[str] = field(default_factory=set)
    acked: set[str] = field(default_factory=set)
    requests: Counter = field(default_factory=Counter)  # answer status (or error) -> count
    counter: itertools.count = field(default_factory=itertools.count)


def message(tag: str) -> dict:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "type": "track",
        "event": "Product Viewed",
        "messageId": f"soak-{uuid.uuid4().hex}",
        "anonymousId": f"anon-{random.randrange(500)}",
        "timestamp": now,
        "receivedAt": now,
        "context": {"ip": "203.0.113.7", "library": {"name": "analytics.js"}},
        "properties": {"product_id": tag, "price": 10, "name": "Trail Runner 2"},
    }


def client(url: str, ledger: Ledger, stop: threading.Event, give_up: list[float]) -> None:
    """Post signed webhooks until ``stop``; retry each body until 200 (or the give-up time)."""
    session = requests.Session()
    rng = random.Random()
    while not stop.is_set():
        size = 1 if rng.random() < 0.7 else rng.randint(2, 5)
        with ledger.lock:
            tags = [f"s-{next(ledger.counter)}" for _ in range(size)]
            ledger.sent.update(tags)
        messages = [message(tag) for tag in tags]
        raw = orjson.dumps(messages[0] if size == 1 else messages)
        headers = {
            "Content-Type": "application/json",
            "X-Signature": hmac.new(SECRET.encode(), raw, hashlib.sha1).hexdigest(),
        }
        while True:
            try:
                answer = session.post(f"{url}/segment", data=raw, headers=headers, timeout=10)
                outcome: int | str = answer.status_code
            except requests.RequestException as exc:
                outcome = type(exc).__name__
                session = requests.Session()
            with ledger.lock:
                ledger.requests[outcome] += 1
                if outcome == 200:
                    ledger.acked.update(tags)
            if outcome == 200 or (give_up and time.monotonic() > give_up[0]):
                break
            time.sleep(0.5)
        time.sleep(rng.uniform(0.01, 0.04))


# -------------------------------------------------------------------------------- faults


@dataclass
class Fault:
    at: float  # seconds after the start
    name: str
    action: object  # callable


def schedule(duration: float, miso: FakeMiso, service: Service, t0: float, marks: dict) -> list:
    def flap(status: int, times: int):
        return lambda: miso.fail_next(status, times)

    def burst_429(times: int, after: str):
        return lambda: miso.fail_next(429, times, headers={"Retry-After": after})

    def kill_worker():
        workers = service.worker_pids()
        if not workers:
            return "no worker found"
        victim = random.choice(workers)
        os.kill(victim, signal.SIGKILL)
        marks["worker_kill"] = time.monotonic()
        return f"killed worker pid {victim} (of {workers})"

    def kill_service():
        marks["service_kill"] = time.monotonic()
        service.kill9()
        time.sleep(2.0)
        started = time.monotonic()
        service.start()
        marks["restarted"] = time.monotonic()
        return f"killed process group {service.process.pid}; restarted in " + (
            f"{2.0 + time.monotonic() - started:.1f}s on the same store"
        )

    d = duration
    faults = []
    # Flapping 5xx: 10-20% of the run, a burst every ~3 s, alternating 500/502/503.
    for i, at in enumerate(_spread(0.10 * d, 0.20 * d, 3.0)):
        status = (500, 502, 503)[i % 3]
        faults.append(
            Fault(at, f"flap: next {2 + i % 3} POSTs -> {status}", flap(status, 2 + i % 3))
        )
    # 429 bursts with Retry-After: 25-32%.
    for at in _spread(0.25 * d, 0.32 * d, 5.0):
        faults.append(Fault(at, "429 x4, Retry-After: 2", burst_429(4, "2")))
    faults.append(Fault(0.36 * d, "kill -9 one gunicorn worker", kill_worker))
    faults.append(Fault(0.45 * d, "slow phase: Miso answers after 3 s", lambda: miso.set_delay(3)))
    faults.append(Fault(0.55 * d, "slow phase ends", lambda: miso.set_delay(0)))
    faults.append(Fault(0.65 * d, "kill -9 the whole service, restart", kill_service))
    for i, at in enumerate(_spread(0.78 * d, 0.88 * d, 3.0)):
        status = (503, 500)[i % 2]
        faults.append(Fault(at, f"flap: next 3 POSTs -> {status}", flap(status, 3)))
    faults.append(Fault(0.90 * d, "429 x6, Retry-After: 1", burst_429(6, "1")))
    return sorted(faults, key=lambda f: f.at)


def _spread(start: float, end: float, every: float) -> list[float]:
    out, at = [], start
    while at < end:
        out.append(at)
        at += every
    return out


def run_faults(faults: list, t0: float, stop: threading.Event, errors: list) -> None:
    for fault in faults:
        if stop.wait(max(0.0, t0 + fault.at - time.monotonic())):
            return
        started = time.monotonic()
        try:
            note = fault.action()
        except Exception as exc:  # report, keep going: the accounting still matters
            errors.append(f"{fault.name}: {exc}")
            note = f"FAILED: {exc}"
        text = fault.name + (f" ({note})" if isinstance(note, str) else "")
        print(f"[{started - t0:7.1f}s] {text}", flush=True)


# ---------------------------------------------------------------------------- accounting


def tags_of(body: bytes) -> list[str]:
    try:
        records = orjson.loads(body).get("data", [])
    except (orjson.JSONDecodeError, AttributeError):
        return []
    out = []
    for record in records:
        with contextlib.suppress(KeyError, IndexError, TypeError, AttributeError):
            out.append(record_key(record))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="traffic duration")
    parser.add_argument("--clients", type=int, default=4, help="webhook client threads")
    parser.add_argument("--replay-lines", type=int, default=0, help="export lines (default 8k/min)")
    parser.add_argument("--validate", action="store_true", help="FakeMiso schema validation on")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()
    duration = args.minutes * 60
    folder = Path(tempfile.mkdtemp(prefix="miso-soak-"))

    deliveries: list[tuple[float, bytes]] = []  # (when, body) of every POST Miso accepted

    def on_request(entry: RequestLog) -> None:
        if entry.method == "POST" and entry.status == 200:
            deliveries.append((time.monotonic(), entry.body))

    miso = FakeMiso(MISO_KEY, validate=args.validate, on_request=on_request)
    service = Service(folder, miso)
    export_lines = args.replay_lines or int(8000 * args.minutes)
    export = write_export(folder / "export.jsonl", export_lines)
    print(f"soak: {args.minutes:g} min, {args.clients} webhook clients, replay of "
          f"{export.lines:,} export lines ({len(export.expected):,} tagged events); "
          f"folder {folder}")  # fmt: skip
    service.start()

    t0 = time.monotonic()
    marks: dict[str, float] = {}
    faults = schedule(duration, miso, service, t0, marks)
    replay_at = 0.08 * duration
    print("fault schedule (seconds after start):")
    print(f"  {replay_at:7.1f}s  start the Mixpanel replay subprocess")
    for fault in faults:
        print(f"  {fault.at:7.1f}s  {fault.name}")
    print(f"  {duration:7.1f}s  traffic stops; drain up to {DRAIN_SECONDS:.0f} s", flush=True)

    ledger = Ledger()
    stop, give_up = threading.Event(), []
    threads = [
        threading.Thread(target=client, args=(service.url, ledger, stop, give_up), daemon=True)
        for _ in range(args.clients)
    ]
    fault_errors: list[str] = []
    fault_thread = threading.Thread(
        target=run_faults, args=(faults, t0, stop, fault_errors), daemon=True
    )
    for thread in [*threads, fault_thread]:
        thread.start()

    replay = None
    replay_log = folder / "replay.log"
    status = 1
    try:
        time.sleep(replay_at)
        log(t0, "replay started")
        with replay_log.open("wb") as out:
            replay = subprocess.Popen(
                [sys.executable, "-m", "adapter.cli", "replay", "mixpanel", str(export.path)],
                env=service.env, stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip
        while time.monotonic() < t0 + duration:
            time.sleep(min(10.0, t0 + duration - time.monotonic()))
            with ledger.lock:
                sent, acked = len(ledger.sent), len(ledger.acked)
            rc = replay.poll()
            state = "running" if rc is None else f"exited {rc}"
            log(t0, f"webhook events sent {sent:,} acked {acked:,}; Miso accepted "
                    f"{len(miso.records):,} records; replay {state}")  # fmt: skip
        give_up.append(time.monotonic() + 30)
        stop.set()
        for thread in threads:
            thread.join(40)
        fault_thread.join(60)
        log(t0, "traffic stopped")
        try:
            replay_rc = replay.wait(timeout=max(60.0, duration))
        except subprocess.TimeoutExpired:
            replay_rc = None
        log(t0, f"replay exited with {replay_rc}")

        acked = set(ledger.acked)
        if replay_rc == 0:
            acked |= set(export.expected)
        deadline = time.monotonic() + DRAIN_SECONDS
        while time.monotonic() < deadline:
            delivered = {tag for _, body in list(deliveries) for tag in tags_of(body)}
            if acked <= delivered:
                break
            time.sleep(1.0)
        log(t0, "drain done")
        status = report(ledger, export, replay_rc, acked, deliveries, marks, service, fault_errors)
    finally:
        stop.set()
        if replay is not None and replay.poll() is None:
            os.killpg(replay.pid, signal.SIGKILL)
            replay.wait()
        service.stop()
        miso.close()
        if status == 0 and not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"logs and store kept in {folder}")
    return status


def report(ledger, export, replay_rc, acked, deliveries, marks, service, fault_errors) -> int:
    times: dict[str, list[float]] = defaultdict(list)
    batches: list[tuple[float, int]] = []
    for when, body in deliveries:
        tags = tags_of(body)
        batches.append((when, len(tags)))
        for tag in tags:
            times[tag].append(when)
    dead: set[str] = set()
    listing = service.cli("dead-letters", "list", "--json")
    for line in listing.stdout.splitlines():
        with contextlib.suppress(Exception):
            body = orjson.loads(line)["body"]
            for record in body if isinstance(body, list) else [body]:
                dead.add(record_key(record))

    def row(name: str, pred) -> list[int]:
        sent = {t for t in (ledger.sent | set(export.expected)) if pred(t)}
        ack = {t for t in acked if pred(t)}
        delivered = {t for t in times if pred(t)}
        dup = {t for t in delivered if len(times[t]) > 1}
        dl = {t for t in dead if pred(t)}
        lost = ack - delivered - dl
        return [name, len(sent), len(ack), len(delivered), len(dup), len(dl), len(lost)]

    rows = [
        row("segment webhooks (s-)", lambda t: t.startswith("s-")),
        row("mixpanel replay (p-/q-/h-)", lambda t: not t.startswith("s-")),
        row("total", lambda t: True),
    ]
    head = ["source", "sent", "acked (200)", "delivered", "duplicated", "dead-lettered", "LOST"]
    rows = [[r[0], *(f"{v:,}" for v in r[1:])] for r in rows]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        cells = [str(r[0]).ljust(widths[0])]
        cells += [v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)]
        print("| " + " | ".join(cells) + " |")

    # Duplicates, by where their first delivery falls relative to the kills.
    kinds: Counter = Counter()
    dup_batches: dict[str, set[float]] = defaultdict(set)
    for whens in times.values():
        if len(whens) < 2:
            continue
        first, later = whens[0], whens[1:]
        kind = "other (no kill nearby)"
        for mark, label in (("service_kill", "service kill -9"), ("worker_kill", "worker kill -9")):
            k = marks.get(mark)
            if k is not None and k - KILL_WINDOW <= first <= k and any(w > k for w in later):
                kind = f"first delivered <= {KILL_WINDOW:g} s before the {label}, again after it"
                break
        kinds[kind] += 1
        dup_batches[kind].add(first)
    print()
    total_dups = sum(kinds.values())
    print(f"duplicated tags: {total_dups:,} (extra deliveries: "
          f"{sum(len(w) - 1 for w in times.values()):,})")  # fmt: skip
    for kind, n in kinds.most_common():
        print(f"  {n:,} {kind} ({len(dup_batches[kind])} original Miso request(s))")
    answers = ", ".join(f"{k}: {v:,}" for k, v in sorted(ledger.requests.items(), key=str))
    print(f"webhook answers: {answers}")
    print(f"replay exit status: {replay_rc}; Miso accepted {len(deliveries):,} POSTs")
    for error in fault_errors:
        print(f"fault error: {error}")
    if "service_kill" in marks:
        k = marks["service_kill"]
        near = [n for when, n in batches if k - KILL_WINDOW <= when <= k]
        print(f"Miso accepted {len(near)} POST(s) ({sum(near):,} records) in the "
              f"{KILL_WINDOW:g} s before the service kill -9")  # fmt: skip
    lost = int(rows[-1][-1].replace(",", ""))
    if lost:
        missing = sorted(acked - set(times) - dead)[:20]
        print(f"LOST: {lost} acknowledged events never reached Miso, e.g. {missing}")
    return 1 if lost or replay_rc != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
