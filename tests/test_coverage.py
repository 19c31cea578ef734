"""Mapping coverage (adapter/coverage.py): what a table maps, skips and misses in a real file.

Inputs are realistic: the analytics.js session in ``examples/segment-events.jsonl`` (and
variations of its messages), and Mixpanel raw exports from ``adapter/testing/mixpanel_export.py``.
Every rule stub the report suggests is pasted into a copy of the shipped table, which must
load and then report the key as mapped.
"""

from __future__ import annotations

import copy
import gzip
import io
import re
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.coverage import (
    NO_NAME,
    OTHER_KEYS,
    CoverageReport,
    Row,
    coverage,
    escape_regex,
    render_json,
    render_text,
    rule_stub,
    yaml_scalar,
)
from adapter.mapping import Translator, load_mapping, load_mapping_text
from adapter.testing.mixpanel_export import write_export

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "segment-events.jsonl"
SEGMENT_TABLE = ROOT / "mappings" / "segment.yaml"
MIXPANEL_TABLE = ROOT / "mappings" / "mixpanel.yaml"

IDENTITY = "identity call, not an interaction"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def segment_table() -> Translator:
    return load_mapping(SEGMENT_TABLE)


@pytest.fixture(scope="module")
def mixpanel_table() -> Translator:
    return load_mapping(MIXPANEL_TABLE)


def example_messages() -> list[dict]:
    """The example session's messages, in file order."""
    return [orjson.loads(line) for line in EXAMPLE.read_bytes().splitlines() if line.strip()]


def message(event: str) -> dict:
    """A copy of the session's message for ``event`` (a track event name, or a call type)."""
    for msg in example_messages():
        if msg.get("event") == event or (msg["type"] == event and "event" not in msg):
            return copy.deepcopy(msg)
    raise LookupError(event)


def track(name: str) -> dict:
    """The session's `Cart Viewed` track call, renamed."""
    msg = message("Cart Viewed")
    msg["event"] = name
    return msg


def page(path: str) -> dict:
    """The session's `/about` page call, moved to ``path``."""
    msg = next(m for m in example_messages() if m.get("properties", {}).get("path") == "/about")
    msg = copy.deepcopy(msg)
    msg["properties"]["path"] = path
    msg["properties"]["url"] = "https://shop.example.com" + path
    return msg


def jsonl(path: Path, values: list) -> Path:
    path.write_bytes(b"".join(orjson.dumps(v, option=orjson.OPT_APPEND_NEWLINE) for v in values))
    return path


def by_key(report: CoverageReport) -> dict[str, Row]:
    """The report's rows by key (every key here has one outcome)."""
    rows = {row.key: row for row in report.rows}
    assert len(rows) == len(report.rows), "a key appears with two outcomes"
    return rows


def paste(table: Path, report: CoverageReport, into: Path) -> Path:
    """A copy of ``table`` with every stub of ``report`` pasted right under `rules:`."""
    text = table.read_text(encoding="utf-8")
    stubs = "".join(stub.yaml for stub in report.stubs)
    pasted, found = re.subn(r"(?m)^rules:[^\n]*\n", lambda m: m.group() + stubs, text, count=1)
    assert found == 1
    into.write_text(pasted, encoding="utf-8")
    return into


# --------------------------------------------------------------------------- Segment


def test_segment_example_counts_every_key_with_its_outcome(segment_table):
    """Each key of the example session is reported with its count, outcome and detail."""
    report = coverage("segment", EXAMPLE, segment_table)
    rows = by_key(report)
    assert rows["Product Viewed"] == Row("Product Viewed", 1, "mapped", "product_detail_page_view")
    assert rows["Order Completed"] == Row("Order Completed", 1, "mapped", "checkout")
    assert rows["page /"] == Row("page /", 1, "mapped", "home_page_view")
    assert rows["identify"] == Row("identify", 1, "skipped", IDENTITY)
    assert rows["alias"] == Row("alias", 1, "skipped", IDENTITY)
    assert rows["Cart Viewed"] == Row(
        "Cart Viewed", 1, "uncovered", "no rule for event 'Cart Viewed'"
    )
    assert rows["Newsletter Subscribed"].outcome == "uncovered"
    assert rows["page /about"] == Row(
        "page /about", 1, "uncovered", "no rule for page path '/about'"
    )
    assert len(report.rows) == 16
    t = report.totals
    assert (t.events, t.mapped, t.skipped, t.uncovered, t.malformed) == (16, 11, 2, 3, 0)
    assert report.source == "segment"
    assert report.table_name == "segment.yaml"


def test_rows_are_sorted_by_count_then_key(segment_table, tmp_path):
    """Rows come most frequent first; equal counts in key order, case-insensitively."""
    session = example_messages()
    extra = [message("Product Viewed")] * 3 + [message("Cart Viewed")] * 2 + [page("/about")] * 2
    report = coverage("segment", jsonl(tmp_path / "s.jsonl", session + extra), segment_table)
    counts = [row.count for row in report.rows]
    assert counts == sorted(counts, reverse=True)
    assert [(r.key, r.count) for r in report.rows[:3]] == [
        ("Product Viewed", 4),
        ("Cart Viewed", 3),
        ("page /about", 3),
    ]
    ones = [row.key for row in report.rows if row.count == 1]
    assert ones == sorted(ones, key=str.casefold)
    assert ones[0] == "alias"
    assert report.totals.events == 23
    assert [s.count for s in report.stubs] == [3, 3, 1]
    assert [s.keys for s in report.stubs] == [
        ("Cart Viewed",),
        ("page /about",),
        ("Newsletter Subscribed",),
    ]


def test_page_views_are_keyed_by_path_and_pathless_screens_by_call(segment_table, tmp_path):
    """Page calls are counted per URL path (query dropped), each uncovered path gets a
    `pages:` stub; a screen call without a path is keyed by its call and gets `calls:`."""
    pages = [page("/"), page("/c/shoes"), page("/c/shoes"), page("/help/faq.html")]
    pages[2]["properties"]["path"] = "/c/shoes?sort=price"  # a path with its query string
    screen = {k: v for k, v in message("identify").items() if k not in ("traits", "userId")}
    screen.update(type="screen", name="Home", properties={"variation": "blue"})
    del screen["context"]["page"]  # an app screen: no web page, so no path
    path = jsonl(tmp_path / "p.jsonl", [*pages, screen])
    report = coverage("segment", path, segment_table)
    assert by_key(report) == {
        "page /c/shoes": Row("page /c/shoes", 2, "uncovered", "no rule for page path '/c/shoes'"),
        "page /": Row("page /", 1, "mapped", "home_page_view"),
        "page /help/faq.html": Row(
            "page /help/faq.html", 1, "uncovered", "no rule for page path '/help/faq.html'"
        ),
        "screen": Row("screen", 1, "uncovered", "page view without a path"),
    }
    assert [(s.kind, s.match) for s in report.stubs] == [
        ("page", "/c/shoes"),
        ("page", "/help/faq.html"),
        ("call", "screen"),
    ]
    assert "  - pages: ['^/help/faq\\.html$']\n" in report.stubs[1].yaml
    assert "  - calls: [screen]\n" in report.stubs[2].yaml
    table = load_mapping(paste(SEGMENT_TABLE, report, tmp_path / "segment.yaml"))
    assert {r.key: r.detail for r in coverage("segment", path, table).rows} == {
        "page /c/shoes": "custom",
        "page /": "home_page_view",
        "page /help/faq.html": "custom",
        "screen": "custom",
    }


def test_malformed_lines_and_messages_are_counted_not_fatal(segment_table, tmp_path):
    """Unparsable lines and non-object messages count as malformed; the rest is still read."""
    lines = EXAMPLE.read_bytes().splitlines()
    lines.insert(3, b'{"type":"track","event":"Product Viewed","properties":{')  # line 4
    lines.insert(6, b"42")  # line 7: JSON, but not a message
    lines.append(orjson.dumps({"batch": [message("Product Viewed"), "oops"]}))  # line 19
    path = tmp_path / "broken.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = coverage("segment", path, segment_table)
    t = report.totals
    assert (t.events, t.malformed) == (17, 3)
    assert by_key(report)["Product Viewed"].count == 2
    assert [where for where, _ in report.malformed] == [
        f"{path}:4",
        f"{path}:7",
        f"{path}:19, batch item 2",
    ]
    assert report.malformed[0][1].startswith("invalid JSON")
    assert "got number" in report.malformed[1][1]
    text = render_text(report)
    assert "3 malformed rows" in text
    assert f"malformed: {path}:7: expected a Segment message (JSON object), got number" in text


def test_json_array_and_gzip_segment_input(segment_table, tmp_path):
    """A Segment file may be one JSON array, and gzip-compressed: same report as JSON Lines."""
    path = tmp_path / "session.json.gz"
    path.write_bytes(gzip.compress(orjson.dumps(example_messages())))
    report = coverage("segment", path, segment_table)
    assert report.rows == coverage("segment", EXAMPLE, segment_table).rows


def test_stdin_is_read_for_dash(segment_table, monkeypatch):
    """`-` reads standard input."""
    stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO(EXAMPLE.read_bytes())))
    monkeypatch.setattr(sys, "stdin", stdin)
    report = coverage("segment", Path("-"), segment_table)
    assert report.totals.events == 16
    assert report.file == "-"


def test_unknown_source_is_refused(segment_table):
    """Only segment and mixpanel inputs exist."""
    with pytest.raises(ValueError, match="unknown source 'amplitude'"):
        coverage("amplitude", EXAMPLE, segment_table)


def test_distinct_keys_are_bounded(segment_table):
    """Past max_keys distinct rows, further keys are counted together; totals stay exact."""
    report = coverage("segment", EXAMPLE, segment_table, max_keys=4)
    assert len(report.rows) <= 4 + 3  # one (other keys) row per outcome at most
    other = [row for row in report.rows if row.key == OTHER_KEYS]
    assert other and sum(row.count for row in other) == 12
    t = report.totals
    assert (t.events, t.mapped, t.skipped, t.uncovered) == (16, 11, 2, 3)


# --------------------------------------------------------------------------- Mixpanel


def mixpanel_names(path: Path) -> Counter[str]:
    """Event names of a generated export, read independently (hot shards restored)."""
    names: Counter[str] = Counter()
    with gzip.open(path, "rb") as stream:
        for line in stream:
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            name = row["event"]
            if name == "$hotshard_events":
                name = row["properties"].get("mp_original_event_name") or name
            names[name] += 1
    return names


def test_mixpanel_gzip_export(mixpanel_table, tmp_path):
    """A gzip raw export: every row counted by event name (page views by path), bad lines
    malformed, and the counts agree with an independent reading of the file."""
    export = write_export(tmp_path / "export.jsonl.gz", 600, gzip=True, malformed_at=(10, 321))
    report = coverage("mixpanel", export.path, mixpanel_table)
    rows = by_key(report)
    t = report.totals
    assert t.malformed == export.malformed == 2
    assert t.events == export.lines - 2
    assert t.events == t.mapped + t.skipped + t.uncovered
    assert [where for where, _ in report.malformed] == [
        f"{export.path}:10",
        f"{export.path}:321",
    ]
    names = mixpanel_names(export.path)
    for name in ("Product Viewed", "Add To Cart", "Purchase", "Search", "$mp_click", "Signed Up"):
        assert rows[name].count == names[name], name
    assert rows["Product Viewed"].outcome == "mapped"
    assert rows["Product Viewed"].detail == "product_detail_page_view"
    assert rows["Purchase"].detail == "checkout"
    assert rows["$mp_click"][2:] == ("skipped", "Mixpanel autocapture event")
    assert rows["$identify"][2:] == ("skipped", "identity event, not an interaction")
    assert rows["Signed Up"][2:] == ("uncovered", "no rule for event 'Signed Up'")
    assert rows["page /"][2:] == ("mapped", "home_page_view")
    assert rows["page /about"][2:] == ("uncovered", "no rule for page path '/about'")
    pages = sum(row.count for row in report.rows if row.key.startswith("page "))
    assert pages == names["$mp_web_page_view"]
    # Every tagged row maps; so may the exact duplicate lines of tagged rows.
    assert len(export.expected) <= t.mapped <= len(export.expected) + export.duplicates
    assert {s.kind for s in report.stubs} == {"event", "page"}


def test_mixpanel_rows_dropped_before_mapping_are_skipped_with_their_reason(
    mixpanel_table, tmp_path
):
    """Rows the normaliser drops count as skipped with its reason, under their event name."""
    good = {"event": "Product Viewed", "properties": {"time": 1714557482, "product_id": "p1",
                                                      "distinct_id": "u1"}}  # fmt: skip
    rows = [
        good,
        {"event": "Product Viewed", "properties": {"distinct_id": "u1"}},  # no time
        {"event_name": "Signed Up", "time": "yesterday", "distinct_id": "u2"},  # Data Pipelines
        {"properties": {"time": 1714557482}},  # no event name
        ["not", "a", "row"],
    ]
    report = coverage("mixpanel", jsonl(tmp_path / "rows.jsonl", rows), mixpanel_table)
    assert set(report.rows) == {
        Row("Product Viewed", 1, "mapped", "product_detail_page_view"),
        Row("Product Viewed", 1, "skipped", "no valid time"),
        Row("Signed Up", 1, "skipped", "no valid time"),
        Row(NO_NAME, 1, "skipped", "not a Mixpanel event: no event name"),
        Row(NO_NAME, 1, "skipped", "not a Mixpanel event: expected a JSON object"),
    }
    assert report.totals.skipped == 4
    assert report.stubs == []


def test_mixpanel_json_array_export(mixpanel_table, tmp_path):
    """A Mixpanel export written as one JSON array is read row by row."""
    rows = [
        {"event": "Signed Up", "properties": {"time": 1714557482 + i, "distinct_id": f"u{i}"}}
        for i in range(3)
    ]
    path = tmp_path / "array.json"
    path.write_bytes(orjson.dumps(rows))
    report = coverage("mixpanel", path, mixpanel_table)
    assert report.rows == [Row("Signed Up", 3, "uncovered", "no rule for event 'Signed Up'")]


# --------------------------------------------------------------------------- rendering


def test_render_text_on_the_example_session(segment_table):
    """The text report: header, one aligned line per key, totals, then stubs to paste."""
    text = render_text(coverage("segment", EXAMPLE, segment_table))
    lines = text.splitlines()
    assert lines[0] == f"Coverage of {EXAMPLE} by {SEGMENT_TABLE}"
    assert re.fullmatch(r"count  outcome    key +detail", lines[2])
    assert re.search(r"^    1  mapped     Product Viewed +product_detail_page_view$", text, re.M)
    assert re.search(r"^    1  skipped    identify +identity call, not an interaction$", text, re.M)
    assert re.search(r"^    1  uncovered  page /about +no rule for page path '/about'$", text, re.M)
    assert "16 events: 11 mapped, 2 skipped on purpose, 3 not covered; 0 malformed rows" in text
    _, stubs = text.split("Not covered — paste into segment.yaml under rules:\n\n")
    assert stubs.splitlines()[:2] == [
        "  - events: [Cart Viewed]",
        "    type: custom          # or a Miso type: product_detail_page_view, add_to_cart, ...;"
        " or `skip: <reason>`",
    ]
    assert "  - pages: ['^/about$']" in stubs
    # The stub section itself is valid YAML: a list of three rules.
    assert yaml.safe_load("rules:\n" + stubs)["rules"] == [
        {"events": ["Cart Viewed"], "type": "custom"},
        {"events": ["Newsletter Subscribed"], "type": "custom"},
        {"pages": ["^/about$"], "type": "custom"},
    ]


def test_render_text_when_everything_is_covered(segment_table, tmp_path):
    """No stub section when every key is covered."""
    path = jsonl(tmp_path / "ok.jsonl", [message("Product Viewed"), message("identify")])
    text = render_text(coverage("segment", path, segment_table))
    assert "Not covered" not in text
    assert "Every event is covered by segment.yaml." in text


def test_render_json(segment_table):
    """`--format json`: rows, totals, stubs (with their YAML) and malformed rows, as JSON."""
    data = orjson.loads(orjson.dumps(render_json(coverage("segment", EXAMPLE, segment_table))))
    assert data["source"] == "segment"
    assert data["table"] == str(SEGMENT_TABLE)
    assert data["totals"] == {
        "events": 16,
        "mapped": 11,
        "skipped": 2,
        "uncovered": 3,
        "malformed": 0,
    }
    assert {"key": "identify", "count": 1, "outcome": "skipped", "detail": IDENTITY} in data["rows"]
    assert len(data["rows"]) == 16
    assert data["stubs"][2] == {
        "kind": "page",
        "match": "/about",
        "keys": ["page /about"],
        "count": 1,
        "yaml": rule_stub("page", "/about"),
    }
    assert [s["match"] for s in data["stubs"]] == ["Cart Viewed", "Newsletter Subscribed", "/about"]
    assert data["malformed"] == []


# --------------------------------------------------------------------------- stub round trips


def test_segment_stubs_pasted_into_the_table_cover_every_key(segment_table, tmp_path):
    """Every stub pasted under `rules:` of a copy of segment.yaml loads, and its key is then
    mapped to custom while the rest is unchanged."""
    before = coverage("segment", EXAMPLE, segment_table)
    table = load_mapping(paste(SEGMENT_TABLE, before, tmp_path / "segment.yaml"))
    after = coverage("segment", EXAMPLE, table)
    assert after.stubs == []
    assert after.totals.uncovered == 0
    rows = by_key(after)
    for key in ("Cart Viewed", "Newsletter Subscribed", "page /about"):
        assert rows[key] == Row(key, 1, "mapped", "custom")
    unchanged = {r for r in before.rows if r.outcome != "uncovered"}
    assert unchanged <= set(after.rows)


def test_mixpanel_stubs_pasted_into_the_table_cover_every_key(mixpanel_table, tmp_path):
    """Same round trip for a generated Mixpanel export and mixpanel.yaml."""
    export = write_export(tmp_path / "export.jsonl", 500)
    before = coverage("mixpanel", export.path, mixpanel_table)
    assert before.totals.uncovered > 0
    table = load_mapping(paste(MIXPANEL_TABLE, before, tmp_path / "mixpanel.yaml"))
    after = coverage("mixpanel", export.path, table)
    assert after.totals.uncovered == 0
    assert after.totals.mapped == before.totals.mapped + before.totals.uncovered
    rows = by_key(after)
    assert rows["Signed Up"][2:] == ("mapped", "custom")
    assert rows["page /pricing"][2:] == ("mapped", "custom")


TRICKY_NAMES = [
    "Checkout: Step 1",
    "#hashtag clicked",
    "Viewed # of items",
    "$special",
    "[Bracketed]",
    "{braced}",
    "a, b",
    "It's here",
    'Said "hi"',
    "yes",
    "No",
    "null",
    "~",
    "123",
    "1e3",
    "0x1F",
    "- leading dash",
    "? question",
    "@mention",
    "`backtick`",
    "%percent",
    "*star",
    "&anchor",
    "!tag",
    "|pipe",
    ">folded",
    "back\\slash",
    "tab\there",
    "new\nline",
    "Café crème",
    "emoji 🎉",
    "bell\x07",
    "nel\x85next",
    "ls\u2028ps\u2029",
    "bom\ufeff",
    "a: b # c",
    "trailing colon:",
]
TRICKY_PATHS = [
    "/about",
    "/a.b",
    "/search(1)",
    "/c/[slug]",
    "/price/$9.99+tax",
    "/a|b",
    "/x*y",
    "/it's",
    "/über/straße",
    "/with space",
    "/back\\slash",
    "/caret^",
    "/braces{2}",
]


def test_tricky_names_and_paths_round_trip(segment_table, tmp_path):
    """Names with YAML syntax (`:`, `#`, quotes, `$`, `[`, booleans, numbers, control
    characters) and paths with regex metacharacters give stubs that load and match them."""
    messages = [track(name) for name in TRICKY_NAMES] + [page(p) for p in TRICKY_PATHS]
    path = jsonl(tmp_path / "tricky.jsonl", messages)
    before = coverage("segment", path, segment_table)
    assert before.totals.uncovered == len(messages)
    assert len(before.stubs) == len(messages)
    table = load_mapping(paste(SEGMENT_TABLE, before, tmp_path / "segment.yaml"))
    after = coverage("segment", path, table)
    expected = {name.strip() for name in TRICKY_NAMES} | {f"page {p}" for p in TRICKY_PATHS}
    assert set(after.rows) == {Row(key, 1, "mapped", "custom") for key in expected}


def test_spellings_of_one_name_share_one_stub(segment_table, tmp_path):
    """`Cart Viewed` and `cart_viewed` are one name to the table: one stub, naming the most
    frequent spelling (claiming both would be a load error)."""
    messages = [track("cart_viewed"), track("Cart Viewed"), track("Cart Viewed")]
    path = jsonl(tmp_path / "s.jsonl", messages)
    report = coverage("segment", path, segment_table)
    assert len(report.rows) == 2
    (stub,) = report.stubs
    assert (stub.match, stub.keys, stub.count) == ("Cart Viewed", ("Cart Viewed", "cart_viewed"), 3)
    table = load_mapping(paste(SEGMENT_TABLE, report, tmp_path / "segment.yaml"))
    assert coverage("segment", path, table).totals.mapped == 3


def test_unmatched_custom_table_gets_stubs_too(segment_table, tmp_path):
    """With `unmatched: custom`, unmatched events are still reported uncovered (sent as custom);
    a call without an event name gets a `calls:` stub, which round-trips."""
    text = SEGMENT_TABLE.read_text(encoding="utf-8").replace(
        "\nunmatched: skip\n", "\nunmatched: custom\n"
    )
    source = tmp_path / "source.yaml"
    source.write_text(text, encoding="utf-8")
    report = coverage("segment", EXAMPLE, load_mapping(source))
    rows = by_key(report)
    assert rows["Cart Viewed"] == Row("Cart Viewed", 1, "uncovered", "sent as custom (unmatched)")
    assert rows["page"] == Row("page", 1, "uncovered", "sent as custom (unmatched)")
    assert {(s.kind, s.match) for s in report.stubs} == {
        ("event", "Cart Viewed"),
        ("event", "Newsletter Subscribed"),
        ("call", "page"),
    }
    assert "  - calls: [page]\n" in render_text(report)
    after = coverage("segment", EXAMPLE, load_mapping(paste(source, report, tmp_path / "t.yaml")))
    assert by_key(after)["page"] == Row("page", 1, "mapped", "custom")
    assert by_key(after)["page /"] == Row("page /", 1, "mapped", "home_page_view")


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=30))
def test_yaml_scalar_loads_back_as_the_same_string(text):
    """Any string, quoted by yaml_scalar, loads back unchanged from a YAML flow list."""
    assert yaml.safe_load(f"key: [{yaml_scalar(text)}]") == {"key": [text]}


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=30))
def test_any_event_name_stub_loads_and_matches_it(text):
    """For any event name, its stub loads in a table and claims exactly that name."""
    name = text.strip()
    if not name:
        return
    header = "event_name: event\ncall_type: type\nrules:\n"
    table = load_mapping_text(header + rule_stub("event", name), "stub.yaml")
    found = table.explain({"type": "track", "event": name, "userId": "u1"})
    assert found == (name, "mapped", "custom", "custom")


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=30))
def test_escaped_paths_match_only_themselves(text):
    """escape_regex gives a pattern matching the path literally, and nothing longer."""
    pattern = re.compile("^" + escape_regex("/" + text) + "$")
    assert pattern.search("/" + text)
    assert not pattern.search("/" + text + "x")
