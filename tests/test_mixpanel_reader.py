"""Reading Mixpanel export files (for ``replay mixpanel``): ``open_path`` and ``read_values``.

Exports are JSON Lines (raw export) or a JSON array, plain or gzip; the name of a file says
nothing reliable about its encoding, so gzip is recognised by content. A bad line is reported
with its ``file:line`` and reading goes on; files of millions of rows stream in constant memory.
"""

from __future__ import annotations

import gzip
import json
import re
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from adapter.sources.inputs import open_path
from adapter.sources.jsonvalues import ReadError, read_values

# Three raw-export lines with Mixpanel's real field names (made-up values): an anonymous web
# page view, a server-side /import-ed order, an Original-merge $identify of a pre-2023 project.
PAGE_VIEW = {
    "event": "$mp_web_page_view",
    "properties": {
        "time": 1718031512,
        "distinct_id": "$device:7c1e2a9b-4f3d-4e8a-9b61-2d5f0c8e1a44",
        "$device_id": "7c1e2a9b-4f3d-4e8a-9b61-2d5f0c8e1a44",
        "$insert_id": "k3v9q2m8x1z7w4p6",
        "$browser": "Chrome",
        "$browser_version": 125,
        "$os": "Mac OS X",
        "$current_url": "https://shop.example.com/pricing?utm_source=google&utm_medium=cpc",
        "$initial_referrer": "$direct",
        "$initial_referring_domain": "$direct",
        "$screen_height": 900,
        "$screen_width": 1440,
        "$lib_version": "2.60.0",
        "mp_lib": "web",
        "mp_sent_by_lib_version": "2.60.0",
        "$mp_api_endpoint": "api-js.mixpanel.com",
        "$mp_api_timestamp_ms": 1718031512840,
        "mp_processing_time_ms": 1718031513012,
        "$city": "Lyon",
        "$region": "Auvergne-Rhone-Alpes",
        "mp_country_code": "FR",
        "current_page_title": "Pricing",
        "current_domain": "shop.example.com",
        "current_url_path": "/pricing",
        "current_url_protocol": "https:",
        "current_url_search": "?utm_source=google&utm_medium=cpc",
        "utm_source": "google",
        "utm_medium": "cpc",
        "$mp_autocapture": True,
    },
}
ORDER = {
    "event": "Order Completed",
    "properties": {
        "time": 1718035220,
        "distinct_id": "u_48213",
        "$user_id": "u_48213",
        "$device_id": "7c1e2a9b-4f3d-4e8a-9b61-2d5f0c8e1a44",
        "$insert_id": "0f9b6c2e-81d4-4a7e-b3c5-6e2d9f1a7b30",
        "$import": True,
        "$mp_api_endpoint": "api.mixpanel.com",
        "$mp_api_timestamp_ms": 1718467301115,
        "mp_processing_time_ms": 1718467301260,
        "$city": "Lyon",
        "$region": "Auvergne-Rhone-Alpes",
        "mp_country_code": "FR",
        "order_id": "A-1009",
        "revenue": 59.9,
        "currency": "EUR",
    },
}
IDENTIFY = {
    "event": "$identify",
    "properties": {
        "time": 1580913600,
        "distinct_id": "0b6d1f4e-3a2c-4c8e-9d7a-5e1f2b3c4d5e",
        "$distinct_id_before_identity": "u_48213",
        "$identified_id": "u_48213",
        "$anon_id": "0b6d1f4e-3a2c-4c8e-9d7a-5e1f2b3c4d5e",
        "$insert_id": "9e2a4c6b8d0f1a3c",
        "mp_lib": "web",
        "$lib_version": "2.34.0",
        "mp_processing_time_ms": 1580942401337,
    },
}
ROWS = [PAGE_VIEW, ORDER, IDENTIFY]


def line(row: dict) -> bytes:
    """One raw-export line, compact like Mixpanel's export."""
    return json.dumps(row, separators=(",", ":")).encode()


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(line(r) + b"\n" for r in rows)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read_all(path: Path) -> list[tuple[str, Any]]:
    """Every ``(where, row)`` of a file, opened by content and closed afterwards."""
    with open_path(path) as opened:
        return list(read_values(opened.stream, path.name))


def rows_only(found: list[tuple[str, Any]]) -> list[Any]:
    return [value for _, value in found]


# --------------------------------------------------------------------------- JSON Lines


def test_jsonl_rows_with_file_and_line(tmp_path):
    """A raw export's lines are yielded in order, each located as file:line."""
    path = write(tmp_path, "export-2024-06-10.jsonl", jsonl(ROWS))
    assert read_all(path) == [
        ("export-2024-06-10.jsonl:1", PAGE_VIEW),
        ("export-2024-06-10.jsonl:2", ORDER),
        ("export-2024-06-10.jsonl:3", IDENTIFY),
    ]


def test_jsonl_last_line_without_newline(tmp_path):
    """A last line without a trailing newline is still read."""
    path = write(tmp_path, "export.jsonl", jsonl(ROWS).rstrip(b"\n"))
    assert rows_only(read_all(path)) == ROWS


def test_jsonl_crlf_line_endings(tmp_path):
    """Lines ending in CRLF (a file passed through Windows) are read like LF lines."""
    path = write(tmp_path, "export.jsonl", jsonl(ROWS).replace(b"\n", b"\r\n"))
    assert read_all(path) == [
        ("export.jsonl:1", PAGE_VIEW),
        ("export.jsonl:2", ORDER),
        ("export.jsonl:3", IDENTIFY),
    ]


def test_blank_lines_are_skipped_and_lines_keep_their_numbers(tmp_path):
    """Blank and whitespace-only lines yield nothing; locations stay physical line numbers."""
    data = b"\n" + line(PAGE_VIEW) + b"\n\n   \t\n" + line(ORDER) + b"\n\n"
    path = write(tmp_path, "export.jsonl", data)
    assert read_all(path) == [("export.jsonl:2", PAGE_VIEW), ("export.jsonl:5", ORDER)]


def test_malformed_line_is_reported_and_reading_continues(tmp_path):
    """A line that is not JSON yields a ReadError at file:line; the next lines are still read."""
    data = (
        line(PAGE_VIEW)
        + b"\n"
        + b'{"event":"Order Completed","properties":{"time":1718035220,"distinct_id":\n'
        + line(ORDER)
        + b"\n"
        + b"not json at all\n"
        + line(IDENTIFY)
        + b"\n"
    )
    found = read_all(write(tmp_path, "export.jsonl", data))
    assert [where for where, _ in found] == [
        "export.jsonl:1",
        "export.jsonl:2",
        "export.jsonl:3",
        "export.jsonl:4",
        "export.jsonl:5",
    ]
    assert found[0][1] == PAGE_VIEW
    assert isinstance(found[1][1], ReadError) and found[1][1].message
    assert found[2][1] == ORDER
    assert isinstance(found[3][1], ReadError) and found[3][1].message
    assert found[4][1] == IDENTIFY


def test_truncated_last_line_is_reported(tmp_path):
    """An export cut off mid-line (interrupted download) reports the last line as unreadable."""
    data = jsonl(ROWS[:2]) + line(IDENTIFY)[:57]
    found = read_all(write(tmp_path, "export.jsonl", data))
    assert rows_only(found[:2]) == ROWS[:2]
    assert found[2][0] == "export.jsonl:3"
    assert isinstance(found[2][1], ReadError)


def test_jsonl_with_bom(tmp_path):
    """A JSON Lines file starting with a UTF-8 BOM reads its first row normally."""
    path = write(tmp_path, "export.jsonl", b"\xef\xbb\xbf" + jsonl(ROWS))
    assert read_all(path) == [
        ("export.jsonl:1", PAGE_VIEW),
        ("export.jsonl:2", ORDER),
        ("export.jsonl:3", IDENTIFY),
    ]


def test_empty_file_yields_nothing(tmp_path):
    """An empty export (a day without events) yields no rows and no errors."""
    assert read_all(write(tmp_path, "export.jsonl", b"")) == []
    assert read_all(write(tmp_path, "blank.jsonl", b"\n\n")) == []


# --------------------------------------------------------------------------- JSON arrays


def item_number(where: str) -> int:
    found = re.search(r"\bitem (\d+)\b", where)
    assert found, where
    return int(found.group(1))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(json.dumps(ROWS, separators=(",", ":")).encode(), id="compact"),
        pytest.param(json.dumps(ROWS, indent=2).encode(), id="pretty-printed"),
        pytest.param(b"\n  " + json.dumps(ROWS).encode() + b"\n", id="leading-whitespace"),
        pytest.param(b"\xef\xbb\xbf" + json.dumps(ROWS).encode(), id="bom"),
    ],
)
def test_json_array_items_are_numbered(tmp_path, data):
    """A JSON array of export rows yields each item, located by file name and item number."""
    found = read_all(write(tmp_path, "export.json", data))
    assert rows_only(found) == ROWS
    assert [item_number(where) for where, _ in found] == [1, 2, 3]
    assert all(where.startswith("export.json") for where, _ in found)


def test_broken_json_array_reports_where_it_stopped(tmp_path):
    """An array cut off after two items yields them, then a ReadError saying where it stopped."""
    whole = json.dumps(ROWS, separators=(",", ":")).encode()
    cut = whole[: whole.index(b'{"event":"$identify"') + 30]
    found = read_all(write(tmp_path, "export.json", cut))
    assert rows_only(found[:2]) == ROWS[:2]
    assert len(found) == 3
    where, error = found[2]
    assert isinstance(error, ReadError) and error.message
    assert where.startswith("export.json")
    assert item_number(where) == 2, where  # the last good item


def test_json_array_with_garbage_between_items(tmp_path):
    """A syntax error inside an array is reported after the last good item."""
    data = b"[" + line(PAGE_VIEW) + b"," + line(ORDER) + b" oops " + line(IDENTIFY) + b"]"
    found = read_all(write(tmp_path, "export.json", data))
    assert rows_only(found[:2]) == ROWS[:2]
    assert isinstance(found[-1][1], ReadError)
    assert item_number(found[-1][0]) == 2


# --------------------------------------------------------------------------- gzip by content


@pytest.mark.parametrize(
    ("name", "data"),
    [
        pytest.param("export.jsonl.gz", gzip.compress(jsonl(ROWS)), id="gzip-named-gz"),
        pytest.param("export.jsonl", gzip.compress(jsonl(ROWS)), id="gzip-named-jsonl"),
        pytest.param("export.json", gzip.compress(jsonl(ROWS)), id="gzip-named-json"),
        pytest.param("export.gz", jsonl(ROWS), id="plain-named-gz"),
        pytest.param("export", gzip.compress(jsonl(ROWS)), id="gzip-no-extension"),
    ],
)
def test_gzip_is_recognised_by_content(tmp_path, name, data):
    """gzip is detected from the bytes, not the file name, for JSON Lines."""
    found = read_all(write(tmp_path, name, data))
    assert found == [(f"{name}:1", PAGE_VIEW), (f"{name}:2", ORDER), (f"{name}:3", IDENTIFY)]


def test_gzip_json_array(tmp_path):
    """A gzip-compressed JSON array (named .json) is read item by item."""
    data = gzip.compress(json.dumps(ROWS).encode())
    found = read_all(write(tmp_path, "export.json", data))
    assert rows_only(found) == ROWS
    assert [item_number(where) for where, _ in found] == [1, 2, 3]


def test_gzip_malformed_line_is_reported(tmp_path):
    """Inside a gzip file too, a malformed line is located by file:line and reading goes on."""
    data = gzip.compress(line(PAGE_VIEW) + b"\n{broken\n" + line(ORDER) + b"\n")
    found = read_all(write(tmp_path, "export-2024-06-10.json.gz", data))
    assert found[0] == ("export-2024-06-10.json.gz:1", PAGE_VIEW)
    assert found[1][0] == "export-2024-06-10.json.gz:2"
    assert isinstance(found[1][1], ReadError)
    assert found[2] == ("export-2024-06-10.json.gz:3", ORDER)


def test_multi_member_gzip(tmp_path):
    """Concatenated gzip members (daily chunks joined with cat) read as one export."""
    data = gzip.compress(jsonl(ROWS[:2])) + gzip.compress(jsonl(ROWS[2:]))
    found = read_all(write(tmp_path, "june.jsonl.gz", data))
    assert found == [
        ("june.jsonl.gz:1", PAGE_VIEW),
        ("june.jsonl.gz:2", ORDER),
        ("june.jsonl.gz:3", IDENTIFY),
    ]


# --------------------------------------------------------------------------- constant memory

LINES = 200_000


def _generate_export(path: Path, lines: int, compress: bool = False) -> None:
    """A raw export of ``lines`` realistic rows, written in chunks."""
    template = (
        '{{"event":"Product Viewed","properties":{{"time":{t},"distinct_id":"u_{u}",'
        '"$insert_id":"ins{n:013d}","mp_processing_time_ms":{ms},"product_id":"sku-{p}"}}}}\n'
    )
    out = gzip.open(path, "wb", compresslevel=1) if compress else open(path, "wb")  # noqa: SIM115
    with out:
        chunk: list[str] = []
        for n in range(lines):
            t = 1718031512 + n
            chunk.append(template.format(t=t, u=n % 5000, n=n, p=n % 997, ms=t * 1000 + 172))
            if len(chunk) == 10_000:
                out.write("".join(chunk).encode())
                chunk.clear()
        out.write("".join(chunk).encode())


def _stream_peak(path: Path) -> tuple[int, int, float]:
    """(rows read, tracemalloc peak in bytes, seconds) for streaming ``path`` once."""
    started = time.perf_counter()
    tracemalloc.start()
    try:
        count = 0
        with open_path(path) as opened:
            for _, row in read_values(opened.stream, path.name):
                assert not isinstance(row, ReadError), row
                count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return count, peak, time.perf_counter() - started


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_streaming_a_large_export_uses_constant_memory(tmp_path, compress):
    """200k lines stream through read_values with a peak of a few MB, not the file's size."""
    path = tmp_path / ("big.jsonl.gz" if compress else "big.jsonl")
    _generate_export(path, LINES, compress=compress)
    size = path.stat().st_size if not compress else LINES * 130
    count, peak, seconds = _stream_peak(path)
    assert count == LINES
    assert peak < 4 * 1024 * 1024, (
        f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB export ({seconds:.1f} s)"
    )


def test_streaming_a_large_json_array_uses_constant_memory(tmp_path):
    """A JSON array export is parsed incrementally: memory does not grow with its length."""
    lines_path = tmp_path / "big.jsonl"
    _generate_export(lines_path, 50_000)
    path = tmp_path / "big.json"
    with open(lines_path, "rb") as src, open(path, "wb") as out:
        out.write(b"[")
        for index, raw in enumerate(src):
            if index:
                out.write(b",")
            out.write(raw.rstrip(b"\n"))
        out.write(b"]")
    count, peak, seconds = _stream_peak(path)
    assert count == 50_000
    assert peak < 4 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB ({seconds:.1f} s)"
