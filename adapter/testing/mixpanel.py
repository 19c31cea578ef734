"""FakeMixpanel: a fake Mixpanel Raw Event Export API on a real loopback HTTP server, holding
event rows and serving them with Mixpanel's auth, query checks, rate limits and faults."""

from __future__ import annotations

import base64
import collections
import hmac
import json
import math
import random
import threading
import time
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

from adapter.testing._loopback import _json_bytes, _LoopbackServer, _phrase, _short
from adapter.testing.mixpanel_wire import (
    _DATE_SHAPE,
    _EPOCH_DAY,
    _FRAMINGS,
    _MIXPANEL_FAULT_MESSAGES,
    _MS_PER_DAY,
    _MS_THRESHOLD,
    EXPORT_PATH,
    MAX_EXPORT_LIMIT,
    TERMINATED_EARLY,
    MixpanelRequest,
    _accepts_gzip,
    _export_line,
    _is_export_path,
    _mixpanel_error_body,
    _MixpanelFault,
    _MixpanelHandler,
    _Plan,
    _retry_after_text,
    _StoredRow,
)


class FakeMixpanel(_LoopbackServer):
    """A fake Mixpanel Raw Event Export API (``GET /api/2.0/export``) on real loopback HTTP.

    It holds event rows and serves them the way the export does (see Mixpanel's reference,
    https://developer.mixpanel.com/reference/raw-event-export):

    * Authentication is HTTP Basic with a service account, ``username:secret``; then
      ``project_id`` is required.  Missing or wrong credentials get 401, a missing
      ``project_id`` 400, another project's id 403.
    * ``from_date`` and ``to_date`` (``YYYY-MM-DD``) are required and both inclusive.  A missing
      or malformed date, ``from_date`` after ``to_date``, or ``to_date`` after today gets 400
      (``to_date cannot be later than today``).  ``limit`` (at most 100000) caps the rows,
      ``event`` (a JSON array of names) keeps those events only, ``time_in_ms=true`` serves
      ``time`` in milliseconds instead of whole seconds; ``where`` is accepted and ignored.
    * At most ``per_second`` queries in any second and ``per_hour`` in any hour (sliding
      windows, for this server); a query over either gets 429 with ``Retry-After`` (whole
      seconds until the window has room).  Only requests with valid credentials count, and
      refused ones do not.  ``None`` switches a limit off.
    * Success is ``200 text/plain``: JSON Lines, one ``{"event", "properties"}`` object per
      line, each line ending with ``\\n``.  Rows come in no particular order (a deterministic
      shuffle: the same rows and query give the same order).  A body over 1400 bytes is gzip
      (``Content-Encoding: gzip``) when the request sent ``Accept-Encoding: gzip``.  Large
      bodies are streamed with chunked transfer encoding, piece by piece; small ones carry a
      ``Content-Length``.
    * Errors are JSON: ``{"error": "<message>", "status": 0}``.

    Rows are raw-export rows: ``{"event": name, "properties": {"time": t, ...}}``, ``t`` being
    the event's Unix time in seconds (int or float; a value of 10^11 or more is read as
    milliseconds).  A row is served on the UTC day of its ``time``.  ``project_timezone``
    (e.g. ``"America/Los_Angeles"``) makes the fake behave like a project created before 2023,
    whose data Mixpanel stores in project-local time: each row's ``time`` is shifted by the
    zone's UTC offset at that instant (so ``time`` reads as local wall-clock time), days are
    local days, and "today" is the local date.  Rows given to the fake always carry true UTC
    times.

    ``today`` fixes the date the fake takes for today (a date, or a callable returning one);
    by default it is the current date in UTC (or in ``project_timezone``).  ``shuffle_seed``
    changes the order rows come in.  ``on_request`` is called with each
    :class:`MixpanelRequest` after the answer is decided (from the server's threads).

    Faults are queued with :meth:`fail_next`, :meth:`cut_next`, :meth:`terminate_early_next`
    and :meth:`delay_next`, in one FIFO: each ``GET`` of the export path takes the next one,
    whatever else is right or wrong with the request.  The secret never appears in the repr of
    the fake or of its request log.
    """

    def __init__(
        self,
        username: str = "test-user",
        secret: str = "test-secret",
        project_id: int | str = 12345,
        rows: Iterable[Mapping[str, Any]] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        per_second: int | None = 3,
        per_hour: int | None = 60,
        project_timezone: str | None = None,
        today: date | Callable[[], date] | None = None,
        shuffle_seed: int = 0,
        on_request: Callable[[MixpanelRequest], None] | None = None,
    ) -> None:
        for name, value in (("username", username), ("secret", secret)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty string")
        project = str(project_id).strip()
        if not project:
            raise ValueError("project_id must not be empty")
        self._username = username
        self._secret = secret
        self._project_id = project
        self._zone = zoneinfo.ZoneInfo(project_timezone) if project_timezone else None
        self._today = today
        self._seed = shuffle_seed
        #: Queries allowed in any one-second window (None: no limit); settable at any time.
        self.per_second = per_second
        #: Queries allowed in any one-hour window (None: no limit); settable at any time.
        self.per_hour = per_hour
        self.on_request = on_request
        #: Exceptions raised while answering; each such request was answered 500.
        self.server_errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._rows: list[_StoredRow] = []
        self._requests: list[MixpanelRequest] = []
        self._faults: collections.deque[_MixpanelFault] = collections.deque()
        self._last_second: collections.deque[float] = collections.deque()
        self._last_hour: collections.deque[float] = collections.deque()
        self.add_rows(rows)
        self._serve(host, port, _MixpanelHandler)  # _closing wakes handlers in delay_next()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        with self._lock:
            n_rows = len(self._rows)
        return (
            f"<FakeMixpanel {state} url={self.url!r} project_id={self._project_id!r} "
            f"username={self._username!r} rows={n_rows}>"
        )

    # ------------------------------------------------------------------ addresses

    @property
    def export_url(self) -> str:
        """``{url}/api/2.0/export``."""
        return self.url + EXPORT_PATH

    @property
    def username(self) -> str:
        """The service account's user name."""
        return self._username

    @property
    def project_id(self) -> str:
        """The project id the account may export, as a string."""
        return self._project_id

    @property
    def auth(self) -> tuple[str, str]:
        """``(username, secret)``, ready for ``requests``' ``auth=``."""
        return (self._username, self._secret)

    @property
    def project_timezone(self) -> str | None:
        """The zone of a pre-2023 project, or None (UTC days and times)."""
        return self._zone.key if self._zone is not None else None

    def today(self) -> date:
        """The date the fake takes for today (``to_date`` may not be later)."""
        if self._today is not None:
            return self._today() if callable(self._today) else self._today
        return datetime.now(self._zone or UTC).date()

    # ----------------------------------------------------------------- the rows

    def add_rows(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Store more rows (thread-safe; visible to the next request); return how many.

        Each row must be ``{"event": str, "properties": {"time": number, ...}}``; a bad row
        raises ValueError and none of ``rows`` is stored.
        """
        stored = [self._store(index, row) for index, row in enumerate(rows)]
        with self._lock:
            self._rows.extend(stored)
        return len(stored)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Every row held, as given (a new list on each access)."""
        with self._lock:
            return [stored.row for stored in self._rows]

    def _store(self, index: int, row: Mapping[str, Any]) -> _StoredRow:
        if not isinstance(row, Mapping):
            raise ValueError(f"row {index}: not an object: {_short(row)}")
        event, properties = row.get("event"), row.get("properties")
        if not isinstance(event, str):
            raise ValueError(f"row {index}: 'event' must be a string")
        if not isinstance(properties, Mapping):
            raise ValueError(f"row {index}: 'properties' must be an object")
        when = properties.get("time")
        if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
            raise ValueError(f"row {index}: 'properties.time' must be a number")
        ms = int(when) if abs(when) >= _MS_THRESHOLD else round(when * 1000)
        if self._zone is not None:
            instant = datetime.fromtimestamp(ms / 1000, self._zone)
            offset = instant.utcoffset() or timedelta(0)
            ms += int(offset.total_seconds() * 1000)
        day = _EPOCH_DAY + timedelta(days=ms // _MS_PER_DAY)
        return _StoredRow(day, ms, event, dict(row))

    # --------------------------------------------------------------- observations

    @property
    def requests(self) -> list[MixpanelRequest]:
        """Every request answered so far, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    # ------------------------------------------------------------ fault injection

    def fail_next(
        self,
        status: int,
        *,
        retry_after: float | None = None,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | dict | list | None = None,
    ) -> None:
        """Answer the next ``times`` export requests with ``status`` (e.g. 429, 500, 502, 503).

        These answers skip the credential check and are not counted by the rate limits.
        ``retry_after`` adds a ``Retry-After`` header (seconds; none by default).  ``body`` may
        be bytes, text or a JSON value; the default is ``{"error": <message>, "status": 0}``.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"not an HTTP error status: {status!r}")
        if body is None:
            payload = _mixpanel_error_body(_MIXPANEL_FAULT_MESSAGES.get(status, _phrase(status)))
        elif isinstance(body, str):
            payload = body.encode()
        elif isinstance(body, bytes):
            payload = body
        else:
            payload = _json_bytes(body)
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = _retry_after_text(retry_after)
        self._queue(_MixpanelFault("fail", status, tuple(extra.items()), payload), times)

    def cut_next(self, after_bytes: int = 0, *, framing: str = "chunked", times: int = 1) -> None:
        """Cut the next ``times`` answers after ``after_bytes`` bytes of body, then hang up.

        The status and headers go out as usual, then ``after_bytes`` bytes of the body as it
        goes on the wire (compressed, when gzip), then the connection closes.  With
        ``framing="chunked"`` the body is chunked and stops without its final chunk; with
        ``framing="content-length"`` it carries a ``Content-Length`` larger than what is sent.
        Either way the client's read of the body fails as incomplete.  Applies to whatever the
        answer would have been (a 200 with rows, or an error).
        """
        if framing not in _FRAMINGS:
            raise ValueError(f"framing must be one of {_FRAMINGS}, not {framing!r}")
        if after_bytes < 0:
            raise ValueError("after_bytes must be >= 0")
        self._queue(_MixpanelFault("cut", after_bytes=after_bytes, framing=framing), times)

    def terminate_early_next(
        self, after_rows: int | None = None, *, newline: bool = False, times: int = 1
    ) -> None:
        """End the next ``times`` 200 answers with a last line ``terminated early``.

        The body holds the first ``after_rows`` rows of the full answer (default: half of
        them, rounded down), then the text ``terminated early`` instead of a row, with a
        trailing newline only when ``newline`` is true.  The status stays 200.  When the
        request is answered with an error instead, the fault is used up without effect.
        """
        if after_rows is not None and after_rows < 0:
            raise ValueError("after_rows must be >= 0")
        fault = _MixpanelFault("terminate", after_rows=after_rows, newline=newline)
        self._queue(fault, times)

    def delay_next(self, seconds: float, *, times: int = 1) -> None:
        """Wait ``seconds`` before answering each of the next ``times`` requests, then answer.

        Nothing is sent while waiting, so a client's read timeout fires.  Closing the fake cuts
        the wait short and drops the connection.
        """
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self._queue(_MixpanelFault("delay", seconds=float(seconds)), times)

    def reset(self) -> None:
        """Forget requests and server errors, drop queued faults and the rate-limit history.

        Rows, credentials and limits stay as they are.
        """
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self._last_second.clear()
            self._last_hour.clear()
            self.server_errors.clear()

    def _queue(self, fault: _MixpanelFault, times: int) -> None:
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            self._faults.extend([fault] * times)

    # ------------------------------------------------------------------- internals

    def _take_fault(self) -> _MixpanelFault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _credentials(self, header: str | None) -> tuple[str | None, bool]:
        """(user name, whether account and secret are right) from an Authorization header."""
        if not header:
            return None, False
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return None, False
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None, False
        user, sep, secret = decoded.partition(":")
        if not sep:
            return user, False
        user_ok = hmac.compare_digest(user.encode(), self._username.encode())
        secret_ok = hmac.compare_digest(secret.encode(), self._secret.encode())
        return user, user_ok and secret_ok

    def _admit(self) -> tuple[int, str] | None:
        """Count one query, or return (Retry-After seconds, message) when a limit is reached."""
        now = time.monotonic()
        with self._lock:
            second, hour = self._last_second, self._last_hour
            while second and second[0] <= now - 1.0:
                second.popleft()
            while hour and hour[0] <= now - 3600.0:
                hour.popleft()
            per_hour, per_second = self.per_hour, self.per_second
            if per_hour is not None and len(hour) >= per_hour:
                wait = hour[len(hour) - per_hour] + 3600.0 - now if per_hour else 3600.0
                message = f"Query rate limit exceeded: at most {per_hour} queries per hour"
                return max(1, math.ceil(wait)), message
            if per_second is not None and len(second) >= per_second:
                wait = second[len(second) - per_second] + 1.0 - now if per_second else 1.0
                message = f"Query rate limit exceeded: at most {per_second} queries per second"
                return max(1, math.ceil(wait)), message
            second.append(now)
            hour.append(now)
        return None

    def _answer(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        fault: _MixpanelFault | None,
        arrived: float,
    ) -> tuple[_Plan, MixpanelRequest]:
        """Decide the answer to one request (called from the handler threads)."""
        parts = urlsplit(target)
        params = parse_qs(parts.query, keep_blank_values=True)
        query = {name: values[0] for name, values in params.items()}
        username, auth_ok = self._credentials(headers.get("Authorization"))
        gzip_ok = _accepts_gzip(headers.get("Accept-Encoding"))
        cut = fault if fault is not None and fault.kind == "cut" else None

        def done(
            status: int,
            body: bytes | Iterable[bytes],
            extra: Iterable[tuple[str, str]] = (),
            *,
            rows: int = 0,
            content_type: str = "application/json",
            used: _MixpanelFault | None = None,
        ) -> tuple[_Plan, MixpanelRequest]:
            lines = [body] if isinstance(body, bytes) else body
            extra = list(extra)
            if not any(name.lower() == "content-type" for name, _ in extra):
                extra.insert(0, ("Content-Type", content_type))
            plan = _Plan(status, extra, lines, cut=cut)
            if status == 200:
                plan.gzip_ok = gzip_ok
            used = used or cut or (fault if fault is not None and fault.kind == "delay" else None)
            entry = MixpanelRequest(
                method=method,
                path=parts.path,
                query=query,
                headers=dict(headers.items()),
                status=status,
                time=arrived,
                username=username,
                auth_ok=auth_ok,
                rows=rows,
                gzip=False,  # filled in by the handler once the body's size is known
                fault=used.kind if used is not None else None,
            )
            return plan, entry

        def error(status: int, message: str, extra: Iterable[tuple[str, str]] = ()):
            return done(status, _mixpanel_error_body(message), extra)

        if not _is_export_path(parts.path):
            return error(404, f"Not found: {parts.path}")
        if method != "GET":
            return error(405, f"Method {method} not allowed", [("Allow", "GET")])
        if fault is not None and fault.kind == "fail":
            return done(fault.status, fault.body, fault.headers, used=fault)
        if not auth_ok:
            message = (
                "Invalid service account credentials"
                if username is not None
                else "Authentication required: use HTTP Basic with a service account"
            )
            return error(401, message, [("WWW-Authenticate", 'Basic realm="Mixpanel"')])
        limited = self._admit()
        if limited is not None:
            retry_after, message = limited
            return error(429, message, [("Retry-After", str(retry_after))])

        project = query.get("project_id")
        if project is None or not project.strip():
            return error(400, "'project_id' is a required parameter for service accounts")
        if project.strip() != self._project_id:
            message = f"Service account {username!r} has no access to project {project.strip()}"
            return error(403, message)
        dates: dict[str, date] = {}
        for name in ("from_date", "to_date"):
            text = query.get(name)
            if not text:
                return error(400, f"'{name}' is a required parameter")
            try:
                if not _DATE_SHAPE.fullmatch(text):
                    raise ValueError
                dates[name] = date.fromisoformat(text)
            except ValueError:
                return error(400, f"'{name}' is not a valid date (expected yyyy-mm-dd): {text!r}")
        first, last = dates["from_date"], dates["to_date"]
        if first > last:
            return error(400, "from_date cannot be later than to_date")
        if last > self.today():
            return error(400, "to_date cannot be later than today")
        limit = None
        if "limit" in query:
            try:
                limit = int(query["limit"])
            except ValueError:
                limit = -1
            if not 0 < limit <= MAX_EXPORT_LIMIT:
                message = f"'limit' must be a positive integer no larger than {MAX_EXPORT_LIMIT}"
                return error(400, message)
        events = None
        if "event" in query:
            try:
                events = json.loads(query["event"])
            except ValueError:
                events = None
            if isinstance(events, str):
                events = [events]
            if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
                return error(400, "'event' must be a JSON array of event names")
        in_ms_text = query.get("time_in_ms", "false").strip().lower()
        if in_ms_text not in ("true", "false", "1", "0", ""):
            return error(400, "'time_in_ms' must be true or false")
        in_ms = in_ms_text in ("true", "1")

        wanted = set(events) if events is not None else None
        with self._lock:
            chosen = [
                stored
                for stored in self._rows
                if first <= stored.day <= last and (wanted is None or stored.event in wanted)
            ]
        random.Random(f"{self._seed}|{first}|{last}|{len(chosen)}").shuffle(chosen)
        if limit is not None:
            del chosen[limit:]
        tail = None
        used = cut
        if fault is not None and fault.kind == "terminate":
            keep = len(chosen) // 2 if fault.after_rows is None else fault.after_rows
            del chosen[keep:]
            tail = TERMINATED_EARLY.encode() + (b"\n" if fault.newline else b"")
            used = fault

        def lines() -> Iterator[bytes]:
            for stored in chosen:
                yield _export_line(stored, in_ms)
            if tail is not None:
                yield tail

        content_type = "text/plain; charset=utf-8"
        return done(200, lines(), rows=len(chosen), content_type=content_type, used=used)

    def _record_request(self, entry: MixpanelRequest) -> None:
        with self._lock:
            self._requests.append(entry)
        callback = self.on_request
        if callback is not None:
            callback(entry)
