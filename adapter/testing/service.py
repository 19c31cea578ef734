"""The real ``miso-adapter serve`` for end-to-end tests: a subprocess on a free loopback port,
started from a clean environment, and the signed Segment messages to send it.

    with FakeMiso(api_key=MISO_KEY) as miso, Service(tmp_path, miso) as service:
        service.post("/segment", message(product_id="p-1"))
        miso.wait_for(1)
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import requests

from adapter.testing.ports import free_port

if TYPE_CHECKING:
    from adapter.testing import FakeMiso

SECRET = "segment-shared-secret"
WRITE_KEY = "wk-test"
MISO_KEY = "miso-secret-key"

#: The prefixes of every setting the adapter reads from its environment.
SETTING_PREFIXES = ("MISO_", "SEGMENT_", "ADAPTER_", "MAPPINGS_", "KAFKA_", "MIXPANEL_")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the adapter's settings (a developer's shell may set some),
    then ``extra``: what an adapter subprocess of a test or benchmark starts from."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}
    env.update(extra)
    return env


class Service:
    """`miso-adapter serve` in its own process group, with its log kept for failures.

    Its store is ``adapter.db`` in ``folder``; ``env`` adds to (or replaces) the settings it
    starts with, as does editing :attr:`env` before :meth:`start`. As a context manager it is
    started on entry and stopped on exit.
    """

    def __init__(
        self,
        folder: Path,
        miso: FakeMiso,
        *,
        miso_key: str = MISO_KEY,
        workers: int = 2,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"service-{self.port}.log"
        self.env = clean_env(
            MISO_API_URL=miso.url,
            MISO_API_KEY=miso_key,
            ADAPTER_STORE=f"sqlite:///{folder}/adapter.db",
            SEGMENT_SHARED_SECRET=SECRET,
            SEGMENT_WRITE_KEYS=WRITE_KEY,
            ADAPTER_BACKOFF_BASE="0.05",
            ADAPTER_BACKOFF_CAP="0.2",
            ADAPTER_PAUSE_SECONDS="0.5",
            **(env or {}),
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> Service:
        """Start it and wait for ``/healthz`` (30 s at most); if it never answers, it is
        stopped and the failure shows its log."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "adapter.cli", "serve", "--bind", f"127.0.0.1:{self.port}",
                 "--workers", str(self.workers)],
                env=self.env, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            if self.process.poll() is not None:
                self.stop()
                raise AssertionError(f"service died:\n{self.tail()}")
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"service did not start:\n{self.tail()}")

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def kill9(self) -> None:
        """SIGKILL the whole service at once: supervisor, gunicorn, workers, forwarder."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 30 s); then nothing of it may outlive it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # Nothing of the service may outlive it (workers, forwarder).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run another miso-adapter command against this service's store."""
        return subprocess.run(
            [sys.executable, "-m", "adapter.cli", *args],
            env=self.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def post(
        self,
        path: str,
        body: Any,
        *,
        sign: bool = True,
        raw: bytes | None = None,
        timeout: float = 10,
        **headers: str,
    ) -> requests.Response:
        """POST ``body`` as JSON (or ``raw`` as it is); a ``/segment`` post is signed with
        :data:`SECRET` unless ``sign`` is false or an ``X-Signature`` is given."""
        data = raw if raw is not None else orjson.dumps(body)
        headers.setdefault("Content-Type", "application/json")
        if sign and path == "/segment":
            headers.setdefault("X-Signature", signature(data))
        return requests.post(f"{self.url}{path}", data=data, headers=headers, timeout=timeout)


def signature(data: bytes) -> str:
    """Segment's ``X-Signature`` of a body: HMAC-SHA1 with the shared :data:`SECRET`."""
    return hmac.new(SECRET.encode(), data, hashlib.sha1).hexdigest()


def message(event: str = "Product Viewed", **extra: Any) -> dict:
    """A realistic analytics.js message as Segment's webhook delivers it."""
    pid = extra.pop("product_id", f"p-{uuid.uuid4().hex[:8]}")
    return {
        "type": "track",
        "event": event,
        "messageId": f"ajs-next-{uuid.uuid4().hex}",
        "anonymousId": "anon-1",
        "timestamp": "2024-05-01T10:00:00.000Z",
        "receivedAt": "2024-05-01T10:00:00.250Z",
        "context": {"ip": "203.0.113.7", "library": {"name": "analytics.js"}},
        "properties": {"product_id": pid, "price": 10},
        **extra,
    }


def product_ids(miso: FakeMiso) -> list[str]:
    """Every product id of every record the fake Miso accepted, in order."""
    return [pid for r in miso.records for pid in r.get("product_ids", [])]
