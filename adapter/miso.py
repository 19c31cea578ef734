"""The Miso client: send a batch, a deletion or user records, and say what Miso's answer means.

The key travels in the ``X-API-KEY`` header, never in the URL, so it cannot end up
in a proxy log or an exception message. Every answer is classified into an
:class:`Outcome` the forwarder acts on; this module decides nothing about retries.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

import orjson
import requests

from adapter import metrics

__all__ = ["MisoClient", "Outcome", "key_id", "named_records", "parse_422"]

Kind = Literal["ok", "retry", "rejected", "auth", "setup", "too_large", "fatal"]

# Miso's 422 lines: "data.3.product_ids is invalid. The attribute ..." (the pattern
# Miso's own Node SDK uses to recover the valid records of a refused batch).
_LINE = re.compile(r"^\s*data\.(\d+)(?:\.(\S+))?\s+(?:\(([^)]*)\)\s+)?is\s+invalid\.\s*(.*)$", re.S)
# Retried like Segment and analytics-python do; 501/505 mean "never going to work".
_RETRY = {408, 425, 429, 500, 502, 503, 504, 507, 508, 509, 510, 511, 598, 599}


@dataclass
class Outcome:
    """What an answer from Miso means for the items sent."""

    kind: Kind
    status: int | None = None
    message: str = ""
    retry_after: float | None = None  # seconds, from Retry-After
    rejected: dict[int, str] = field(default_factory=dict)  # 422: index → Miso's line
    data: Any = None  # a 200's parsed ``data`` (the Users API's task id and task status)

    @property
    def task_id(self) -> str | None:
        """The Users API's ``task_id`` of an accepted upload or deletion, if it gave one."""
        data = self.data
        task = data.get("task_id") if isinstance(data, dict) else None
        return task if isinstance(task, str) and task else None


def key_id(api_key: str) -> str:
    """A short, non-reversible fingerprint of a key: tells keys apart without showing one."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


def parse_422(body: bytes) -> dict[int, str]:
    """Record index → Miso's complaint, from a 422 body; empty when it names none."""
    try:
        lines = orjson.loads(body).get("data")
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    return named_records(lines if isinstance(lines, list) else [])


def named_records(lines: list) -> dict[int, str]:
    """Record index → Miso's complaint, from Miso's ``data.N ... is invalid.`` lines (of a
    422 answer, or of a failed Users API task); lines naming no record are left out."""
    out: dict[int, str] = {}
    for line in lines:
        match = _LINE.match(line) if isinstance(line, str) else None
        if match is not None:
            index = int(match.group(1))
            field_name = match.group(2)
            text = f"{field_name} is invalid. {match.group(4)}" if field_name else match.group(4)
            out[index] = f"{out[index]}; {text}" if index in out else text
    return out


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _message(response: requests.Response) -> str:
    """Miso's own message when it sent one, else the start of the body."""
    try:
        body = orjson.loads(response.content)
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return body["message"]
    except orjson.JSONDecodeError:
        pass
    return response.content[:200].decode("utf-8", "replace").strip() or response.reason or ""


class MisoClient:
    """Sends to one Miso environment; ``repr`` and errors never show the key."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: tuple[float, float] = (5.0, 20.0),
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self.timeout = timeout
        self._session = session or requests.Session()
        self._session.headers.update({"User-Agent": "miso-adapter/0.1"})

    def __repr__(self) -> str:
        return f"<MisoClient {self.base_url}>"

    @property
    def key_id(self) -> str:
        """Fingerprint of the key in use (see :func:`key_id`)."""
        return key_id(self._key)

    def send(self, bodies: list[bytes]) -> Outcome:
        """POST serialised records as one ``{"data": [...]}`` request."""
        payload = b'{"data":[' + b",".join(bodies) + b"]}"
        return self._call("POST", payload)

    def delete(self, user_ids: list[str]) -> Outcome:
        """DELETE /v1/interactions for these users."""
        return self._call("DELETE", orjson.dumps({"user_ids": user_ids}))

    def upload_users(self, bodies: list[bytes]) -> Outcome:
        """POST serialised UserRecords to /v1/users as one request (each replaces its user)."""
        payload = b'{"data":[' + b",".join(bodies) + b"]}"
        return self._call("POST", payload, "/v1/users")

    def delete_users(self, user_ids: list[str]) -> Outcome:
        """POST /v1/users/_delete: remove these users' records."""
        return self._call(
            "POST", orjson.dumps({"data": {"user_ids": user_ids}}), "/v1/users/_delete"
        )

    def task_status(self, task_id: str) -> Outcome:
        """GET /v1/users/_status/{task_id}: how a Users API task ended (``data``)."""
        return self._call("GET", None, f"/v1/users/_status/{quote(task_id, safe='')}")

    def _call(self, method: str, payload: bytes | None, path: str = "/v1/interactions") -> Outcome:
        started = time.perf_counter()
        outcome = self._request(method, payload, path)
        metrics.observe_miso(time.perf_counter() - started, outcome.kind)
        return outcome

    def _request(self, method: str, payload: bytes | None, path: str) -> Outcome:
        headers = {"X-API-KEY": self._key}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self._session.request(
                method,
                f"{self.base_url}{path}",
                data=payload,
                headers=headers,
                timeout=self.timeout,
            )
        except requests.Timeout:
            return Outcome("retry", message="Miso did not answer in time")
        except requests.RequestException as exc:
            # The exception text names host and port, never the key (it is a header).
            return Outcome("retry", message=f"cannot reach Miso: {type(exc).__name__}: {exc}")
        return classify(response)


def _data(response: requests.Response) -> Any:
    """The ``data`` of a JSON answer (None for any other body)."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    return body.get("data") if isinstance(body, dict) else None


def classify(response: requests.Response) -> Outcome:
    """Turn an HTTP answer from Miso into an Outcome."""
    status = response.status_code
    if 200 <= status < 300:
        return Outcome("ok", status, data=_data(response))
    if status == 422:
        return Outcome("rejected", status, _message(response), rejected=parse_422(response.content))
    if status in (401, 403):
        return Outcome("auth", status, _message(response))
    if status in (404, 405):
        # Every request will fail the same way: the URL is wrong, not the data.
        return Outcome("setup", status, f"{status} from {response.url}: is MISO_API_URL right?")
    if status == 413:
        return Outcome("too_large", status, _message(response))
    if status in _RETRY or (status >= 500 and status not in (501, 505)):
        return Outcome(
            "retry", status, _message(response), _retry_after(response.headers.get("Retry-After"))
        )
    return Outcome("fatal", status, _message(response))
