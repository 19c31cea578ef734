"""FakeMixpanel (adapter.testing) behaves like Mixpanel's Raw Event Export API over real HTTP."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, date, datetime, timedelta

import pytest
import requests

from adapter.testing import EXPORT_PATH, GZIP_MIN_BYTES, TERMINATED_EARLY, FakeMixpanel
from adapter.testing.ports import free_port

USER, SECRET, PROJECT = "svc-user", "svc-secret-123", 4242
DAY = 86_400
JUNE_1 = 1_717_200_000  # 2024-06-01T00:00:00Z
TODAY = date(2024, 6, 30)


def row(event: str, when: float, n: int, **extra) -> dict:
    """A raw-export row with Mixpanel's field names."""
    properties = {"time": when, "distinct_id": f"u{n}", "$insert_id": f"insert-{n}", **extra}
    return {"event": event, "properties": properties}


# One row just outside each end of 2024-06-01..2024-06-02 (UTC) and one just inside.
BOUNDARY_ROWS = [
    row("Before", JUNE_1 - 1, 0),
    row("First", JUNE_1, 1),
    row("Last", JUNE_1 + 2 * DAY - 1, 2),
    row("After", JUNE_1 + 2 * DAY, 3),
]
# Fifty rows on 2024-06-05, in time order, long enough together to be gzip-worthy.
MANY_ROWS = [row("Page Viewed", JUNE_1 + 4 * DAY + 60 * i, 100 + i) for i in range(50)]


@pytest.fixture
def mixpanel():
    """A FakeMixpanel holding BOUNDARY_ROWS and MANY_ROWS, with no rate limits."""
    with FakeMixpanel(
        USER,
        SECRET,
        PROJECT,
        BOUNDARY_ROWS + MANY_ROWS,
        per_second=None,
        per_hour=None,
        today=TODAY,
    ) as fake:
        yield fake


def export(
    fake: FakeMixpanel,
    from_date: str = "2024-06-01",
    to_date: str = "2024-06-02",
    *,
    auth=(USER, SECRET),
    headers=None,
    **params,
) -> requests.Response:
    """GET the fake's export with the service account and project unless told otherwise."""
    query = {"project_id": PROJECT, "from_date": from_date, "to_date": to_date, **params}
    query = {name: value for name, value in query.items() if value is not None}
    return requests.get(fake.export_url, params=query, auth=auth, headers=headers, timeout=10)


def lines_of(response: requests.Response) -> list[dict]:
    """The JSON Lines of a 200 answer, checking each line ends with a newline."""
    text = response.text
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def insert_ids(rows: list[dict]) -> list[str]:
    """The $insert_id of each row, in order."""
    return [r["properties"]["$insert_id"] for r in rows]


def raw_get(
    fake: FakeMixpanel, query: str, headers: dict
) -> tuple[http.client.HTTPResponse, bytes | http.client.IncompleteRead]:
    """A GET through http.client, which reports exactly what arrived when a body is cut:
    the response and its body, or the IncompleteRead holding the part that came."""
    connection = http.client.HTTPConnection(fake.url.removeprefix("http://"), timeout=10)
    token = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    try:
        connection.request(
            "GET", f"{EXPORT_PATH}?{query}", headers={"Authorization": f"Basic {token}", **headers}
        )
        response = connection.getresponse()
        try:
            return response, response.read()
        except http.client.IncompleteRead as cut:
            return response, cut
    finally:
        connection.close()


# ------------------------------------------------------------------------ answers


def test_export_answers_json_lines_of_event_and_properties(mixpanel):
    """A good request gets 200 text/plain JSON Lines of {event, properties}, one row a line."""
    response = export(mixpanel)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    rows = lines_of(response)
    assert sorted(insert_ids(rows)) == ["insert-1", "insert-2"]
    for line in rows:
        assert set(line) == {"event", "properties"}
        assert set(line["properties"]) == {"time", "distinct_id", "$insert_id"}


def test_dates_are_inclusive_utc_days(mixpanel):
    """from_date and to_date both count, as whole UTC days: 00:00:00 and 23:59:59 are in."""
    assert sorted(r["event"] for r in lines_of(export(mixpanel))) == ["First", "Last"]
    assert [r["event"] for r in lines_of(export(mixpanel, "2024-05-31", "2024-05-31"))] == [
        "Before"
    ]
    assert [r["event"] for r in lines_of(export(mixpanel, "2024-06-03", "2024-06-03"))] == ["After"]


def test_project_timezone_serves_local_days_and_wall_clock_time():
    """With a pre-2023 project's zone, days are local and time reads as local wall clock."""
    utc_time = JUNE_1 + DAY + 3 * 3600  # 2024-06-02 03:00 UTC = 2024-06-01 20:00 PDT
    with FakeMixpanel(
        USER,
        SECRET,
        PROJECT,
        [row("Late Evening", utc_time, 1)],
        project_timezone="America/Los_Angeles",
        today=TODAY,
    ) as fake:
        assert fake.project_timezone == "America/Los_Angeles"
        (line,) = lines_of(export(fake, "2024-06-01", "2024-06-01"))
        assert line["properties"]["time"] == utc_time - 7 * 3600
        assert lines_of(export(fake, "2024-06-02", "2024-06-02")) == []


def test_time_in_ms_limit_and_event_filter(mixpanel):
    """time is whole seconds unless time_in_ms=true; limit caps rows; event keeps named events."""
    mixpanel.add_rows([row("Precise", JUNE_1 + 0.789, 9)])
    by_id = {r["properties"]["$insert_id"]: r for r in lines_of(export(mixpanel))}
    assert by_id["insert-9"]["properties"]["time"] == JUNE_1
    by_id = {
        r["properties"]["$insert_id"]: r for r in lines_of(export(mixpanel, time_in_ms="true"))
    }
    assert by_id["insert-9"]["properties"]["time"] == JUNE_1 * 1000 + 789
    assert by_id["insert-1"]["properties"]["time"] == JUNE_1 * 1000
    assert len(lines_of(export(mixpanel, "2024-06-05", "2024-06-05", limit=7))) == 7
    named = lines_of(export(mixpanel, event=json.dumps(["First", "Precise"])))
    assert sorted(r["event"] for r in named) == ["First", "Precise"]
    assert export(mixpanel, where='properties["x"] == 1').status_code == 200


def test_rows_come_unsorted_but_complete_and_in_a_stable_order(mixpanel):
    """All rows of the range come back, not in time order, in the same order each time."""
    first = lines_of(export(mixpanel, "2024-06-05", "2024-06-05"))
    times = [r["properties"]["time"] for r in first]
    assert sorted(insert_ids(first)) == sorted(insert_ids(MANY_ROWS))
    assert times != sorted(times)
    assert times != sorted(times, reverse=True)
    again = lines_of(export(mixpanel, "2024-06-05", "2024-06-05"))
    assert insert_ids(again) == insert_ids(first)


def test_gzip_only_when_asked_and_over_1400_bytes(mixpanel):
    """The body is gzip only when Accept-Encoding allows it and it is over 1400 bytes."""
    plain = export(mixpanel, "2024-06-05", "2024-06-05", headers={"Accept-Encoding": "identity"})
    assert len(plain.content) > GZIP_MIN_BYTES
    assert "Content-Encoding" not in plain.headers
    assert plain.headers["Transfer-Encoding"] == "chunked"  # large answers are streamed

    query = {"project_id": PROJECT, "from_date": "2024-06-05", "to_date": "2024-06-05"}
    packed = requests.get(
        mixpanel.export_url,
        params=query,
        auth=(USER, SECRET),
        headers={"Accept-Encoding": "gzip"},
        stream=True,
        timeout=10,
    )
    assert packed.headers["Content-Encoding"] == "gzip"
    wire = packed.raw.read(decode_content=False)
    assert wire[:2] == b"\x1f\x8b"
    assert gzip.decompress(wire) == plain.content

    small = export(mixpanel, headers={"Accept-Encoding": "gzip"})
    assert len(small.content) <= GZIP_MIN_BYTES
    assert "Content-Encoding" not in small.headers
    assert int(small.headers["Content-Length"]) == len(small.content)


@pytest.mark.parametrize(("size", "gzipped"), [(GZIP_MIN_BYTES, False), (GZIP_MIN_BYTES + 1, True)])
def test_gzip_threshold_is_over_1400_bytes_exactly(size, gzipped):
    """A body of exactly 1400 bytes goes plain; one byte more goes gzip."""
    base = json.dumps(row("E", JUNE_1, 1, pad=""), separators=(",", ":")) + "\n"
    padded = row("E", JUNE_1, 1, pad="x" * (size - len(base)))
    with FakeMixpanel(USER, SECRET, PROJECT, [padded], today=TODAY) as fake:
        response = export(fake, "2024-06-01", "2024-06-01", headers={"Accept-Encoding": "gzip"})
    assert len(response.content) == size
    assert (response.headers.get("Content-Encoding") == "gzip") is gzipped


# ------------------------------------------------------------------ refusals


def test_right_account_is_accepted_and_wrong_credentials_get_401(mixpanel):
    """Only the service account's user and secret are accepted; others get a JSON 401."""
    assert export(mixpanel).status_code == 200
    for auth in ((USER, "wrong-secret"), ("other-user", SECRET), None):
        response = export(mixpanel, auth=auth)
        assert response.status_code == 401
        body = response.json()
        assert set(body) == {"error", "status"} and body["status"] == 0
    assert export(mixpanel, auth=(USER, "wrong-secret")).json()["error"] == (
        "Invalid service account credentials"
    )


def test_wrong_project_gets_403_and_missing_project_400(mixpanel):
    """Another project's id gets 403; leaving project_id out gets 400."""
    response = export(mixpanel, project_id=999)
    assert response.status_code == 403
    assert "999" in response.json()["error"]
    missing = export(mixpanel, project_id=None)
    assert missing.status_code == 400
    assert "'project_id' is a required parameter" in missing.json()["error"]


@pytest.mark.parametrize(
    ("from_date", "to_date", "message"),
    [
        (None, "2024-06-02", "'from_date' is a required parameter"),
        ("2024-06-01", None, "'to_date' is a required parameter"),
        ("2024/06/01", "2024-06-02", "'from_date' is not a valid date"),
        ("2024-06-01", "2024-02-30", "'to_date' is not a valid date"),
        ("2024-06-03", "2024-06-02", "from_date cannot be later than to_date"),
        ("2024-06-01", "2024-07-01", "to_date cannot be later than today"),
    ],
)
def test_bad_dates_get_400(mixpanel, from_date, to_date, message):
    """Missing or malformed dates, a reversed range, and a to_date after today get 400."""
    response = export(mixpanel, from_date, to_date)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_to_date_after_the_real_today_gets_400():
    """Without a fixed date, today is the current UTC date: today is fine, later is 400."""
    today = datetime.now(UTC).date()
    with FakeMixpanel(USER, SECRET, PROJECT) as fake:
        assert export(fake, today.isoformat(), today.isoformat()).status_code == 200
        later = (today + timedelta(days=2)).isoformat()
        response = export(fake, today.isoformat(), later)
    assert response.status_code == 400
    assert response.json()["error"] == "to_date cannot be later than today"


# ------------------------------------------------------------------ rate limits


def test_three_queries_per_second_then_429_with_retry_after():
    """The 4th query within a second gets 429 and Retry-After; a second later it passes."""
    with FakeMixpanel(USER, SECRET, PROJECT, BOUNDARY_ROWS, per_hour=None, today=TODAY) as fake:
        assert [export(fake, auth=(USER, "bad")).status_code for _ in range(2)] == [401, 401]
        assert [export(fake).status_code for _ in range(3)] == [200, 200, 200]
        refused = export(fake)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert "per second" in refused.json()["error"]
        time.sleep(1.05)
        assert export(fake).status_code == 200
        statuses = [entry.status for entry in fake.requests]
    assert statuses == [401, 401, 200, 200, 200, 429, 200]


def test_hourly_limit_gets_429_with_retry_after_of_about_an_hour():
    """Over per_hour queries in an hour gets 429, Retry-After close to 3600 s; reset() clears it."""
    with FakeMixpanel(
        USER, SECRET, PROJECT, BOUNDARY_ROWS, per_second=None, per_hour=4, today=TODAY
    ) as fake:
        assert [export(fake).status_code for _ in range(4)] == [200] * 4
        refused = export(fake)
        assert refused.status_code == 429
        assert 3590 <= int(refused.headers["Retry-After"]) <= 3600
        assert "per hour" in refused.json()["error"]
        fake.reset()
        assert export(fake).status_code == 200


# ---------------------------------------------------------------------- faults


def test_injected_failures_are_answered_in_order(mixpanel):
    """fail_next answers the next requests with 429 (Retry-After), 500, 502, 503, then normally."""
    mixpanel.fail_next(429, retry_after=7)
    mixpanel.fail_next(500)
    mixpanel.fail_next(502, times=2)
    mixpanel.fail_next(503, retry_after=2)
    answers = [export(mixpanel) for _ in range(6)]
    assert [a.status_code for a in answers] == [429, 500, 502, 502, 503, 200]
    assert answers[0].headers["Retry-After"] == "7"
    assert answers[4].headers["Retry-After"] == "2"
    assert "Retry-After" not in answers[1].headers
    assert all("error" in a.json() for a in answers[:5])
    assert [e.fault for e in mixpanel.requests] == ["fail"] * 5 + [None]


@pytest.mark.parametrize("accept", ["identity", "gzip"])
def test_cut_with_content_length_is_an_incomplete_read(mixpanel, accept):
    """A body cut short of its Content-Length fails in requests with IncompleteRead."""
    query = "project_id=4242&from_date=2024-06-05&to_date=2024-06-05"
    _, whole = raw_get(mixpanel, query, {"Accept-Encoding": accept})
    mixpanel.cut_next(after_bytes=500, framing="content-length")
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        export(mixpanel, "2024-06-05", "2024-06-05", headers={"Accept-Encoding": accept})

    mixpanel.cut_next(after_bytes=500, framing="content-length")
    response, cut = raw_get(mixpanel, query, {"Accept-Encoding": accept})
    assert response.status == 200
    assert int(response.getheader("Content-Length")) == len(whole) > 500
    assert isinstance(cut, http.client.IncompleteRead)
    assert cut.partial == whole[:500]


def test_cut_chunked_body_ends_without_its_last_chunk(mixpanel):
    """A chunked body that stops without the final chunk fails in requests as incomplete."""
    query = "project_id=4242&from_date=2024-06-05&to_date=2024-06-05"
    _, whole = raw_get(mixpanel, query, {"Accept-Encoding": "identity"})
    mixpanel.cut_next(after_bytes=1000)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        export(mixpanel, "2024-06-05", "2024-06-05", headers={"Accept-Encoding": "identity"})

    mixpanel.cut_next(after_bytes=1000, framing="chunked")
    response, cut = raw_get(mixpanel, query, {"Accept-Encoding": "identity"})
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert isinstance(cut, http.client.IncompleteRead)
    assert cut.partial == whole[:1000]
    assert [e.fault for e in mixpanel.requests][-1] == "cut"
    assert export(mixpanel, "2024-06-05", "2024-06-05").status_code == 200


def test_terminated_early_tail_replaces_the_last_row(mixpanel):
    """terminate_early_next sends a 200 whose last line is 'terminated early', not a row."""
    mixpanel.terminate_early_next(after_rows=5)
    mixpanel.terminate_early_next(newline=True)
    response = export(mixpanel, "2024-06-05", "2024-06-05")
    assert response.status_code == 200
    *rows, last = response.text.split("\n")
    assert last == TERMINATED_EARLY
    assert len([json.loads(line) for line in rows]) == 5

    halved = export(mixpanel, "2024-06-05", "2024-06-05").text
    assert halved.endswith(TERMINATED_EARLY + "\n")
    assert len(halved.splitlines()) == len(MANY_ROWS) // 2 + 1
    assert [e.fault for e in mixpanel.requests] == ["terminate", "terminate"]


def test_delay_next_makes_a_client_time_out(mixpanel):
    """delay_next holds the answer back, so a short read timeout fires; the next is prompt."""
    mixpanel.delay_next(0.6)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(
            mixpanel.export_url,
            params={"project_id": PROJECT, "from_date": "2024-06-01", "to_date": "2024-06-01"},
            auth=(USER, SECRET),
            timeout=(5, 0.2),
        )
    started = time.monotonic()
    assert export(mixpanel).status_code == 200
    assert time.monotonic() - started < 0.5


# -------------------------------------------------------------- rows and log


def test_add_rows_is_seen_by_the_next_request(mixpanel):
    """Rows added while serving (a late row on a past day, a new one today) show up next time."""
    assert len(lines_of(export(mixpanel, "2024-06-01", "2024-06-01"))) == 1
    today_noon = int(datetime(2024, 6, 30, 12, tzinfo=UTC).timestamp())
    assert mixpanel.add_rows([row("Late", JUNE_1 + 5, 7), row("Today", today_noon, 8)]) == 2
    assert len(lines_of(export(mixpanel, "2024-06-01", "2024-06-01"))) == 2
    assert [r["event"] for r in lines_of(export(mixpanel, "2024-06-30", "2024-06-30"))] == ["Today"]


def test_add_rows_from_many_threads_keeps_every_row(mixpanel):
    """Concurrent add_rows calls, while requests are answered, lose no row."""
    batches = [
        [row("Bulk", JUNE_1 + 9 * DAY + i, 1000 * t + i) for i in range(200)] for t in range(4)
    ]
    threads = [threading.Thread(target=mixpanel.add_rows, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        assert export(mixpanel, "2024-06-10", "2024-06-10").status_code == 200
    for thread in threads:
        thread.join()
    assert len(lines_of(export(mixpanel, "2024-06-10", "2024-06-10"))) == 800


def test_bad_rows_are_refused():
    """A row without a numeric properties.time is refused with ValueError, and none is kept."""
    with FakeMixpanel(USER, SECRET, PROJECT) as fake:
        with pytest.raises(ValueError, match=r"row 1: 'properties.time' must be a number"):
            fake.add_rows([row("Good", JUNE_1, 1), {"event": "Bad", "properties": {}}])
        assert fake.rows == []


def test_request_log_holds_account_query_gzip_status_and_time(mixpanel):
    """Each request is logged with its query, headers (Authorization too), account and status."""
    before = time.time()
    export(mixpanel, "2024-06-05", "2024-06-05", headers={"Accept-Encoding": "gzip"})
    export(mixpanel, auth=(USER, "nope"))
    after = time.time()
    ok, refused = mixpanel.requests
    assert (ok.method, ok.path, ok.status, ok.rows, ok.gzip) == ("GET", EXPORT_PATH, 200, 50, True)
    assert ok.query == {
        "project_id": str(PROJECT),
        "from_date": "2024-06-05",
        "to_date": "2024-06-05",
    }
    token = base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    assert ok.header("authorization") == f"Basic {token}"
    assert ok.header("Accept-Encoding") == "gzip"
    assert (ok.username, ok.auth_ok) == (USER, True)
    assert before <= ok.time <= refused.time <= after
    assert (refused.status, refused.username, refused.auth_ok) == (401, USER, False)
    assert SECRET not in repr(ok) and token not in repr(ok)
    mixpanel.reset()
    assert mixpanel.requests == []


def test_repr_never_shows_the_secret(mixpanel):
    """The fake's repr names the URL, project and account, never the secret."""
    text = repr(mixpanel)
    assert mixpanel.url in text and str(PROJECT) in text and USER in text
    assert SECRET not in text
    assert mixpanel.auth == (USER, SECRET)


# ------------------------------------------------------------------ command line


def test_cli_runs_fake_mixpanel(tmp_path):
    """`python -m adapter.testing mixpanel ...` serves the rows file on the port given."""
    rows_file = tmp_path / "export.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in BOUNDARY_ROWS))
    port = free_port()
    command = [
        sys.executable, "-m", "adapter.testing", "mixpanel", "--port", str(port),
        "--username", USER, "--secret", SECRET, "--project-id", str(PROJECT),
        "--rows", str(rows_file),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = process.stdout.readline()
        assert banner.startswith(f"FakeMixpanel listening on http://127.0.0.1:{port} ")
        assert SECRET not in banner
        response = requests.get(
            f"http://127.0.0.1:{port}{EXPORT_PATH}",
            params={"project_id": PROJECT, "from_date": "2024-06-01", "to_date": "2024-06-02"},
            auth=(USER, SECRET),
            timeout=10,
        )
        assert response.status_code == 200
        assert sorted(r["event"] for r in lines_of(response)) == ["First", "Last"]
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert f"GET {EXPORT_PATH} 2024-06-01..2024-06-02 -> 200 (2 rows)" in out
    assert "FakeMixpanel stopped; 1 requests answered." in out


@pytest.mark.parametrize("prefix", [[], ["miso"]])
def test_cli_without_mixpanel_still_runs_fake_miso(prefix):
    """`python -m adapter.testing [miso] --port N --api-key K` still starts FakeMiso."""
    port = free_port()
    command = [sys.executable, "-m", "adapter.testing", *prefix, "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--api-key", "cli-key"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stdout.readline()
        assert banner.startswith(f"FakeMiso listening on http://127.0.0.1:{port} ")
        response = requests.post(
            f"http://127.0.0.1:{port}/v1/interactions",
            params={"api_key": "cli-key"},
            json={"data": [{"type": "home_page_view", "user_id": "u1"}]},
            timeout=10,
        )
        assert response.status_code == 200
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert "POST /v1/interactions -> 200 (1 records)" in out
