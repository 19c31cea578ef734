"""Mixpanel's Raw Event Export API as inputs of the Mixpanel source.

``GET {host}/api/2.0/export?project_id=&from_date=&to_date=`` (days inclusive, in the
project's timezone for projects created before 2023, UTC after) answers JSON Lines of
export rows — the same rows as an export file, so they are read by
:class:`~adapter.sources.mixpanel.MixpanelSource` like a file, streamed, never held whole.

Mixpanel's limits are ours: every request of this process takes a place in one
:class:`Budget` (3 requests in any second, 60 in any hour). A 429 waits ``Retry-After``
(or backs off); 5xx, timeouts and dropped connections before the body are retried with
backoff. A body cut off midway — a dropped connection, a last line that is not a row, or
Mixpanel's own ``terminated early`` — fails the day (:class:`InputFailed` with ``retry``):
the replay fetches it again, and its rows already stored are duplicates. 400, 401 and
403 are final: :class:`ExportRefused` with Mixpanel's own message.

Configuration (``MIXPANEL_*``, never logged): ``MIXPANEL_PROJECT_ID``,
``MIXPANEL_SERVICE_ACCOUNT`` (``username:secret``), ``MIXPANEL_REGION`` (``us``, ``eu``,
``in``) or ``MIXPANEL_EXPORT_URL`` (a host of your own, e.g. a proxy).
"""

from __future__ import annotations

import io
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import orjson
import requests
from urllib3.exceptions import HTTPError as Urllib3Error

from adapter.sources.inputs import Input, InputFailed

__all__ = [
    "BUDGET",
    "REGIONS",
    "Budget",
    "ExportClient",
    "ExportRange",
    "ExportRefused",
    "ExportSettings",
    "day_ranges",
]

log = logging.getLogger("adapter.mixpanel_api")

REGIONS = {
    "us": "https://data.mixpanel.com",
    "eu": "https://data-eu.mixpanel.com",
    "in": "https://data-in.mixpanel.com",
}
EXPORT_PATH = "/api/2.0/export"
_TERMINATED = b"terminated early"


class ExportRefused(InputFailed):
    """Mixpanel refused the request (400, 401, 403), or kept failing: the run stops."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry=False)


@dataclass(frozen=True)
class ExportSettings:
    """Where and as whom to export; the secret never appears in a repr or a message."""

    project_id: str
    username: str
    secret: str = field(repr=False)
    host: str = REGIONS["us"]

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ExportSettings:
        """The settings from ``MIXPANEL_*``; ValueError naming what is missing or wrong."""
        project = env.get("MIXPANEL_PROJECT_ID", "").strip()
        account = env.get("MIXPANEL_SERVICE_ACCOUNT", "")
        missing = [n for n, v in (("MIXPANEL_PROJECT_ID", project),
                                  ("MIXPANEL_SERVICE_ACCOUNT", account)) if not v]  # fmt: skip
        if missing:
            raise ValueError(f"set {' and '.join(missing)} to pull Mixpanel's Export API")
        username, colon, secret = account.partition(":")
        if not colon or not username or not secret:
            raise ValueError("MIXPANEL_SERVICE_ACCOUNT must be username:secret")
        region = env.get("MIXPANEL_REGION", "us").strip().lower() or "us"
        if region not in REGIONS:
            raise ValueError(f"MIXPANEL_REGION must be one of {', '.join(REGIONS)}, not {region!r}")
        host = env.get("MIXPANEL_EXPORT_URL", "").strip().rstrip("/") or REGIONS[region]
        if not host.startswith(("http://", "https://")):
            raise ValueError("MIXPANEL_EXPORT_URL must start with http:// or https://")
        return cls(project, username, secret, host)


class Budget:
    """Requests allowed: at most ``per_second`` in any second and ``per_hour`` in any hour.

    One per process, shared by every request it makes (Mixpanel counts per project; run
    one puller per project). :meth:`take` waits for a place.
    """

    def __init__(
        self,
        per_second: int = 3,
        per_hour: int = 60,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.per_second = per_second
        self.per_hour = per_hour
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._taken: deque[float] = deque()

    def wait_needed(self, now: float) -> float:
        """Seconds until a request may be made at ``now`` (0: at once)."""
        while self._taken and self._taken[0] <= now - 3600:
            self._taken.popleft()
        wait = 0.0
        if len(self._taken) >= self.per_hour:
            wait = self._taken[-self.per_hour] + 3600 - now
        # A second and a little: a request counted by Mixpanel a few ms after we sent it
        # must not land in the next second's window with three others (a needless 429).
        second = 1.05
        recent = [t for t in self._taken if t > now - second]
        if len(recent) >= self.per_second:
            wait = max(wait, recent[-self.per_second] + second - now)
        return max(0.0, wait)

    def take(self) -> None:
        """Wait for a place, then take it."""
        with self._lock:
            while True:
                now = self._clock()
                wait = self.wait_needed(now)
                if wait <= 0:
                    self._taken.append(now)
                    return
                if wait > 5:
                    log.warning("Mixpanel's request budget is used: waiting %.0f s", wait)
                self._sleep(wait + 0.001)


#: This process's budget: every ExportClient takes its places from it.
BUDGET = Budget()


def day_ranges(first: date, last: date, per_request: int = 1) -> list[tuple[date, date]]:
    """Inclusive ``(from_date, to_date)`` ranges of ``per_request`` days covering first..last."""
    if per_request < 1:
        raise ValueError("days per request must be at least 1")
    if last < first:
        raise ValueError(f"the last day ({last}) is before the first ({first})")
    out = []
    day = first
    while day <= last:
        end = min(last, day + timedelta(days=per_request - 1))
        out.append((day, end))
        day = end + timedelta(days=1)
    return out


class ExportClient:
    """Requests to the Export API, within the budget, retried as Mixpanel's answers ask."""

    def __init__(
        self,
        settings: ExportSettings,
        *,
        budget: Budget = BUDGET,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,  # an export can take minutes to start
        max_tries: int = 8,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.budget = budget
        self.timeout = (connect_timeout, read_timeout)
        self.max_tries = max_tries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._sleep = sleep
        self._session = requests.Session()
        self._session.auth = (settings.username, settings.secret)
        self._session.headers.update({"Accept-Encoding": "gzip", "Accept": "text/plain"})

    def __repr__(self) -> str:
        return f"<ExportClient {self.settings.host} project {self.settings.project_id}>"

    def _clean(self, text: str) -> str:
        return text.replace(self.settings.secret, "***") if self.settings.secret else text

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        return random.uniform(ceiling / 2, ceiling)

    def open(self, first: date, last: date) -> requests.Response:
        """The streamed answer for days ``first``..``last``; its body is not read yet."""
        params = {
            "project_id": self.settings.project_id,
            "from_date": first.isoformat(),
            "to_date": last.isoformat(),
        }
        url = f"{self.settings.host}{EXPORT_PATH}"
        problem = ""
        for attempt in range(1, self.max_tries + 1):
            self.budget.take()
            try:
                response = self._session.get(url, params=params, stream=True, timeout=self.timeout)
            except requests.RequestException as exc:
                problem = self._clean(f"{type(exc).__name__}: {exc}")
                delay = self._backoff(attempt)
            else:
                status = response.status_code
                if status == 200:
                    return response
                text = self._clean(_message(response))
                response.close()
                if status in (400, 401, 403, 404):
                    raise ExportRefused(f"Mixpanel refused the export of {first}..{last} "
                                        f"({status}): {text}")  # fmt: skip
                problem = f"{status}: {text}"
                delay = self._backoff(attempt)
                if status == 429:
                    delay = max(delay, _retry_after(response) or 0.0)
            if attempt < self.max_tries:
                log.warning("Mixpanel export of %s..%s failed (%s); again in %.1f s",
                            first, last, problem, delay)  # fmt: skip
                self._sleep(delay)
        raise ExportRefused(
            f"Mixpanel's export of {first}..{last} failed {self.max_tries} times; last: {problem}"
        )


def _message(response: requests.Response) -> str:
    """Mixpanel's own words for a refusal: its JSON ``error``, else the start of the body."""
    try:
        text = response.content[:2000].decode("utf-8", "replace")
    except (requests.RequestException, Urllib3Error):
        return response.reason or "no reason given"
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text.strip()[:300] or (response.reason or "no reason given")
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return text.strip()[:300]


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class _Body(io.RawIOBase):
    """A response body that fails (InputFailed, retry) unless it ends on a whole row.

    The last line is held back until the end: a body cut off midway, or one ending with
    Mixpanel's ``terminated early`` instead of a row, must not be taken for a complete
    day. Bytes counted for progress are the decoded ones.
    """

    def __init__(self, response: requests.Response, label: str) -> None:
        self._response = response
        self._raw = response.raw
        self._raw.decode_content = True
        self._label = label
        self._held = b""  # from the start of the last complete line on
        self._ready = b""
        self._done = False
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def _fail(self, why: str) -> InputFailed:
        return InputFailed(f"Mixpanel's answer for {self._label} was cut off ({why})", retry=True)

    def _fill(self) -> None:
        while not self._ready and not self._done:
            try:
                chunk = self._raw.read(65536)
            except (Urllib3Error, requests.RequestException, OSError) as exc:
                raise self._fail(f"{type(exc).__name__}: {exc}") from None
            if not chunk:
                self._done = True
                self._ready = self._finish()
                return
            data = self._held + chunk
            last = data.rfind(b"\n", 0, len(data) - 1)  # the start of the last line
            cut = last + 1
            self._ready, self._held = data[:cut], data[cut:]

    def _finish(self) -> bytes:
        tail = self._held.strip()
        if not tail:
            return self._held
        last = tail.rsplit(b"\n", 1)[-1]
        if last.lower() == _TERMINATED:
            raise self._fail("it ends with 'terminated early'")
        try:
            orjson.loads(last)
        except orjson.JSONDecodeError:
            raise self._fail(f"its last line is not a row: {last[:60]!r}") from None
        return self._held

    def readinto(self, buffer: Any) -> int:
        self._fill()
        size = min(len(buffer), len(self._ready))
        buffer[:size] = self._ready[:size]
        self._ready = self._ready[size:]
        self.consumed += size
        return size

    def close(self) -> None:
        self._response.close()
        super().close()


@dataclass
class ExportRange:
    """Days ``first``..``last`` of the Export API, as an input of a replay.

    Its checkpoint marks the range complete once all its rows are stored: a resumed run
    fetches only ranges not complete (a range is fetched whole again, never from the
    middle: an export is not sorted, and late rows may have joined it).
    """

    client: ExportClient
    first: date
    last: date
    size: int = 0
    whole: bool = True

    @property
    def name(self) -> str:
        return f"{self.first}" if self.first == self.last else f"{self.first}..{self.last}"

    @property
    def checkpoint(self) -> str:
        return f"mixpanel-export:{self.client.settings.project_id}:{self.first}:{self.last}"

    def open(self) -> Input:
        response = self.client.open(self.first, self.last)
        body = _Body(response, self.name)
        return Input(io.BufferedReader(body, 1 << 16), body, f"export {self.name}")
