"""Activity tallies for the operator console: noting, flushing to the store, reading back.

Unit level on a real SQLite store; time is injected (``clock=`` when noting, ``now=`` when
reading) so minutes land exactly where each test wants them.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from adapter import activity
from adapter.activity import Activity, overview
from adapter.forwarder import Forwarder, ForwarderSettings
from adapter.ingest import IngestResult, ingest
from adapter.mapping import load_mapping_text
from adapter.miso import MisoClient
from adapter.store import Incoming, StoreError, open_store
from adapter.testing import FakeMiso

ROOT = Path(__file__).resolve().parent.parent
SEGMENT_YAML = (ROOT / "mappings" / "segment.yaml").read_text(encoding="utf-8")
FAST = ForwarderSettings(backoff_base=0.01, backoff_cap=0.05, pause_interval=0.2, lease=5)


@pytest.fixture
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path}/a.db")
    yield s
    s.close()


@pytest.fixture
def now() -> float:
    """A fixed instant in the middle of the current minute (the store keeps 25 h back from
    the real clock, so test minutes stay near it)."""
    return int(time.time() // 60) * 60 + 30.0


def tallies(store, since: int = 0) -> dict[tuple[int, str, str, str], int]:
    """Every tally the store holds: (minute, metric, source, key) → n."""
    return {tuple(row[:4]): row[4] for row in store.activity(since)}


def uncovered_key(kind: str, match: str) -> str:
    return orjson.dumps([kind, match]).decode()


def a_result(**counts) -> IngestResult:
    result = IngestResult()
    for name, value in counts.items():
        setattr(result, name, Counter(value) if isinstance(value, dict) else value)
    return result


class FlakyStore:
    """A store whose add_activity raises StoreError ``failures`` times, then delegates."""

    def __init__(self, store, failures: int = 1) -> None:
        self.store = store
        self.failures = failures
        self.calls = 0

    def add_activity(self, rows):
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise StoreError("database is locked")
        return self.store.add_activity(rows)


# --------------------------------------------------------------------------- noting


def test_ingest_maps_a_result_to_tallies(store, now):
    """An IngestResult becomes tallies: received + malformed, stored by type, reasons
    bucketed, links and profile changes as counts."""
    act = Activity(store, clock=lambda: now).manual()
    result = a_result(
        received=7,
        accepted=3,
        duplicates=1,
        links=2,
        profiles=4,
        types={"add_to_cart": 2, "product_detail_page_view": 1},
        skipped={"no rule for event 'X'": 2, "no rule for event 'Y'": 1, "identity call": 1},
        uncovered={("event", "X"): 2, ("event", "Y"): 1, ("page", "/p"): 1},
    )
    act.ingest("segment", result, malformed=2)
    assert act.flush() is True
    m = int(now // 60)
    assert tallies(store) == {
        (m, "received", "segment", ""): 9,
        (m, "stored", "segment", "add_to_cart"): 2,
        (m, "stored", "segment", "product_detail_page_view"): 1,
        (m, "duplicates", "segment", ""): 1,
        (m, "skipped", "segment", "no rule for event"): 3,
        (m, "skipped", "segment", "identity call"): 1,
        (m, "malformed", "segment", ""): 2,
        (m, "links", "segment", ""): 2,
        (m, "profiles", "segment", ""): 4,
        (m, "uncovered", "segment", '["event","X"]'): 2,
        (m, "uncovered", "segment", '["event","Y"]'): 1,
        (m, "uncovered", "segment", '["page","/p"]'): 1,
    }


def test_counts_add_over_flushes_and_minutes(store, now):
    """A second flush adds to the same minute's tallies; a later minute gets its own."""
    clock = [now]
    act = Activity(store, clock=lambda: clock[0]).manual()
    result = a_result(received=2, types={"like": 2})
    act.ingest("mixpanel", result)
    act.flush()
    act.ingest("mixpanel", result)
    act.delivery("forwarded", "record", 4)
    act.delivery("retried", "record", 0)  # nothing: no tally
    act.flush()
    clock[0] = now + 60
    act.ingest("mixpanel", a_result(received=1))
    act.flush()
    m = int(now // 60)
    assert tallies(store) == {
        (m, "received", "mixpanel", ""): 4,
        (m, "stored", "mixpanel", "like"): 4,
        (m, "forwarded", "", "record"): 4,
        (m + 1, "received", "mixpanel", ""): 1,
    }


def test_an_empty_result_writes_nothing(store, now):
    """A request that did nothing leaves no tally (flush still succeeds)."""
    act = Activity(store, clock=lambda: now).manual()
    act.ingest("segment", IngestResult())
    assert act.flush() is True
    assert store.activity(0) == []


def test_uncovered_names_beyond_the_cap_go_under_the_empty_key(store, now, monkeypatch):
    """Names past MAX_UNCOVERED per flush count under "": one "other" row, no stub."""
    monkeypatch.setattr(activity, "MAX_UNCOVERED", 3)
    act = Activity(store, clock=lambda: now).manual()
    names = [f"Event {n}" for n in range(5)]
    act.ingest("segment", a_result(received=5, uncovered={("event", n): 1 for n in names}))
    # A name already kept still counts under its own key, even past the cap.
    act.ingest("segment", a_result(received=1, uncovered={("event", "Event 0"): 1}))
    act.flush()
    m = int(now // 60)
    kept = {k[3]: n for k, n in tallies(store).items() if k[1] == "uncovered"}
    assert kept == {uncovered_key("event", n): 1 for n in names[1:3]} | {
        uncovered_key("event", "Event 0"): 2,
        "": 2,
    }
    # After a flush the cap starts over.
    act.ingest("segment", a_result(received=1, uncovered={("event", "Event 9"): 1}))
    act.flush()
    assert tallies(store)[m, "uncovered", "segment", uncovered_key("event", "Event 9")] == 1
    rows = overview(store, now=now)["uncovered"]
    assert rows[-1] == {
        "source": "segment", "kind": "other", "match": "", "spellings": [],
        "hour": 2, "day": 2, "last_seen_minutes_ago": 0, "stub": "",
    }  # fmt: skip
    assert [r["kind"] for r in rows].count("other") == 1
    assert all(r["stub"] for r in rows if r["kind"] != "other")


def test_flush_keeps_tallies_when_the_store_fails(store, now):
    """A StoreError keeps the tallies (False); the next flush writes them, once."""
    flaky = FlakyStore(store, failures=1)
    act = Activity(flaky, clock=lambda: now).manual()  # type: ignore[arg-type]
    act.ingest("segment", a_result(received=3, types={"like": 3}))
    assert act.flush() is False
    assert store.activity(0) == []
    act.ingest("segment", a_result(received=1, types={"like": 1}))
    assert act.flush() is True
    assert act.flush() is True  # nothing pending: nothing written twice
    m = int(now // 60)
    assert tallies(store) == {
        (m, "received", "segment", ""): 4,
        (m, "stored", "segment", "like"): 4,
    }
    assert flaky.calls == 2


def test_the_uncovered_cap_holds_across_a_failed_flush(store, now, monkeypatch):
    """Names kept by a failed flush still count toward MAX_UNCOVERED until written."""
    monkeypatch.setattr(activity, "MAX_UNCOVERED", 2)
    flaky = FlakyStore(store, failures=1)
    act = Activity(flaky, clock=lambda: now).manual()  # type: ignore[arg-type]
    act.ingest("segment", a_result(received=2, uncovered={("event", "A"): 1, ("event", "B"): 1}))
    assert act.flush() is False
    act.ingest("segment", a_result(received=2, uncovered={("event", "C"): 1, ("event", "D"): 1}))
    assert act.flush() is True
    kept = {k[3]: n for k, n in tallies(store).items() if k[1] == "uncovered"}
    assert kept == {uncovered_key("event", "A"): 1, uncovered_key("event", "B"): 1, "": 2}


def test_manual_never_starts_a_thread(store, now, monkeypatch):
    """manual() never starts a thread; otherwise the first note starts one, once."""
    started = []

    class FakeThread:
        def __init__(self, *, target, args, name, daemon):
            started.append(name)

        def start(self):
            pass

    monkeypatch.setattr(activity.threading, "Thread", FakeThread)
    monkeypatch.setattr(activity.atexit, "register", lambda fn, *args: None)
    manual = Activity(store, clock=lambda: now).manual()
    for _ in range(3):
        manual.ingest("segment", a_result(received=1))
        manual.delivery("forwarded", "record", 1)
    assert started == []
    automatic = Activity(store, clock=lambda: now)
    assert started == []  # nothing noted yet
    for _ in range(3):
        automatic.ingest("segment", a_result(received=1))
        automatic.delivery("forwarded", "record", 1)
    assert started == ["activity-flush"]


def test_a_dropped_activity_stops_its_thread(store):
    """The flushing thread holds its Activity weakly: dropping the Activity ends the thread
    (an app made per test must not leave a thread behind)."""
    before = set(threading.enumerate())
    act = Activity(store, interval=0.05)
    act.ingest("segment", a_result(received=1))
    threads = [t for t in set(threading.enumerate()) - before if t.name == "activity-flush"]
    assert threads, "the first note starts a flushing thread"
    time.sleep(0.2)  # it flushes while the Activity lives
    assert sum(n for *_, n in store.activity(0)) == 1
    del act
    gc.collect()
    for thread in threads:
        thread.join(timeout=2)
    assert not any(t.is_alive() for t in threads)


def test_flush_if_due_respects_the_interval(store, now):
    """flush_if_due writes only once ``interval`` has passed since the last flush."""
    act = Activity(store, interval=3600, clock=lambda: now).manual()
    act.ingest("segment", a_result(received=1))
    act.flush_if_due()
    assert store.activity(0) == []
    act.interval = 0
    act.flush_if_due()
    assert tallies(store) == {(int(now // 60), "received", "segment", ""): 1}


# --------------------------------------------------------------------------- reading


def test_series_puts_counts_at_their_minute(store, now):
    """The series is 60 points per metric, oldest first, the current minute last."""
    m = int(now // 60)
    store.add_activity([
        (m, "received", "segment", "", 5),
        (m, "received", "mixpanel", "", 1),
        (m - 30, "received", "segment", "", 3),
        (m - 59, "received", "segment", "", 2),
        (m - 60, "received", "segment", "", 100),
        (m - 1, "stored", "segment", "like", 4),
        (m - 2, "forwarded", "", "record", 6),
        (m - 3, "dead_lettered", "", "rejected", 1),
        (m - 4, "skipped", "segment", "no rule for event", 7),
        (m - 5, "links", "segment", "", 9),
    ])  # fmt: skip
    series = overview(store, now=now)["series"]
    assert set(series) == {"start_minute", "received", "stored", "forwarded",
                           "dead_lettered", "skipped"}  # fmt: skip
    assert series["start_minute"] == m - 59
    assert all(len(series[k]) == 60 for k in series if k != "start_minute")
    expected = [0] * 60
    expected[59], expected[29], expected[0] = 6, 3, 2
    assert series["received"] == expected
    assert series["stored"][58] == 4 and sum(series["stored"]) == 4
    assert series["forwarded"][57] == 6 and sum(series["forwarded"]) == 6
    assert series["dead_lettered"][56] == 1 and sum(series["dead_lettered"]) == 1
    assert series["skipped"][55] == 7 and sum(series["skipped"]) == 7


def test_a_tally_from_a_clock_ahead_counts_as_now(store, now):
    """A tally from a host whose clock runs ahead counts in the current minute."""
    m = int(now // 60)
    store.add_activity([
        (m + 1, "received", "segment", "", 4),
        (m + 1, "uncovered", "segment", uncovered_key("event", "Early Bird"), 4),
    ])  # fmt: skip
    data = overview(store, now=now)
    assert data["series"]["received"][59] == 4
    assert data["sources"]["segment"]["hour"]["received"] == 4
    assert data["uncovered"][0]["last_seen_minutes_ago"] == 0


def test_hour_and_day_windows(store, now):
    """The hour is the last 60 minutes, the day the last 1440; older tallies count nowhere."""
    m = int(now // 60)
    store.add_activity([
        (m, "received", "segment", "", 1),
        (m - 59, "received", "segment", "", 2),
        (m - 60, "received", "segment", "", 4),
        (m - 120, "received", "segment", "", 8),
        (m - 1439, "received", "segment", "", 16),
        (m - 1440, "received", "segment", "", 32),
        (m - 1490, "received", "segment", "", 64),
    ])  # fmt: skip
    windows = overview(store, now=now)["sources"]["segment"]
    assert windows == {"hour": {"received": 3}, "day": {"received": 31}}


def test_tables_sum_per_key(store, now):
    """sources, types, skipped and delivery sum per key in each window, most frequent first."""
    m = int(now // 60)
    store.add_activity([
        (m, "received", "segment", "", 10),
        (m - 90, "received", "segment", "", 5),
        (m, "stored", "segment", "like", 3),
        (m - 1, "stored", "segment", "like", 2),
        (m - 200, "stored", "segment", "like", 4),
        (m, "stored", "mixpanel", "like", 1),
        (m, "stored", "segment", "add_to_cart", 6),
        (m, "duplicates", "segment", "", 1),
        (m, "skipped", "segment", "no rule for event", 2),
        (m - 300, "skipped", "segment", "no rule for event", 1),
        (m, "skipped", "mixpanel", "Mixpanel autocapture event", 3),
        (m, "forwarded", "", "record", 9),
        (m - 100, "forwarded", "", "record", 1),
        (m, "forwarded", "", "delete", 1),
        (m, "retried", "", "record", 2),
        (m - 61, "dead_lettered", "", "rejected", 1),
    ])  # fmt: skip
    data = overview(store, now=now)
    assert data["minute"] == m
    assert data["sources"] == {
        "mixpanel": {"hour": {"skipped": 3, "stored": 1}, "day": {"skipped": 3, "stored": 1}},
        "segment": {
            "hour": {"duplicates": 1, "received": 10, "skipped": 2, "stored": 11},
            "day": {"duplicates": 1, "received": 15, "skipped": 3, "stored": 15},
        },
    }
    assert data["types"] == [
        {"source": "segment", "type": "like", "hour": 5, "day": 9},
        {"source": "segment", "type": "add_to_cart", "hour": 6, "day": 6},
        {"source": "mixpanel", "type": "like", "hour": 1, "day": 1},
    ]
    assert data["skipped"] == [
        {"source": "mixpanel", "reason": "Mixpanel autocapture event", "hour": 3, "day": 3},
        {"source": "segment", "reason": "no rule for event", "hour": 2, "day": 3},
    ]
    assert data["delivery"] == [
        {"metric": "forwarded", "key": "record", "hour": 9, "day": 10},
        {"metric": "retried", "key": "record", "hour": 2, "day": 2},
        {"metric": "forwarded", "key": "delete", "hour": 1, "day": 1},
        {"metric": "dead_lettered", "key": "rejected", "hour": 0, "day": 1},
    ]


def test_profiles_sum_changes_uploads_and_refusals(store, now):
    """Profile changes (per source and in all), users uploaded and users refused (by why)
    sum per window; user tallies leave the delivery table and the series as they were."""
    m = int(now // 60)
    store.add_activity([
        (m, "profiles", "segment", "", 5),
        (m - 90, "profiles", "segment", "", 2),
        (m - 1, "profiles", "mixpanel", "", 3),
        (m, "users_uploaded", "", "", 6),
        (m - 200, "users_uploaded", "", "", 4),
        (m, "users_refused", "", "rejected", 1),
        (m - 300, "users_refused", "", "rejected", 2),
        (m - 2, "users_refused", "", "gave_up", 1),
        (m, "forwarded", "", "user", 7),
        (m, "dead_lettered", "", "rejected", 1),
        (m - 1500, "users_uploaded", "", "", 100),  # older than a day: nowhere
    ])  # fmt: skip
    data = overview(store, now=now)
    assert data["profiles"] == {
        "changes": {"hour": 8, "day": 10},
        "uploaded": {"hour": 6, "day": 10},
        "refused": {"hour": 2, "day": 4},
        "refused_by": [
            {"reason": "rejected", "hour": 1, "day": 3},
            {"reason": "gave_up", "hour": 1, "day": 1},
        ],
    }
    assert data["sources"] == {
        "mixpanel": {"hour": {"profiles": 3}, "day": {"profiles": 3}},
        "segment": {"hour": {"profiles": 5}, "day": {"profiles": 7}},
    }
    assert data["delivery"] == [
        {"metric": "forwarded", "key": "user", "hour": 7, "day": 7},
        {"metric": "dead_lettered", "key": "rejected", "hour": 1, "day": 1},
    ]
    assert sum(data["series"]["forwarded"]) == 7


def test_an_empty_store_reads_as_nothing(store, now):
    """No tallies: a flat series and empty tables, not an error."""
    data = overview(store, now=now)
    assert data["series"]["received"] == [0] * 60
    assert (data["sources"], data["types"], data["skipped"], data["uncovered"],
            data["delivery"]) == ({}, [], [], [], [])  # fmt: skip
    nothing = {"hour": 0, "day": 0}
    assert data["profiles"] == {"changes": nothing, "uploaded": nothing, "refused": nothing,
                                "refused_by": []}  # fmt: skip


def test_uncovered_groups_spellings_of_one_name(store, now):
    """Spellings of one event name are one row, stubbed by the most frequent."""
    m = int(now // 60)
    store.add_activity([
        (m - 200, "uncovered", "segment", uncovered_key("event", "Cart Viewed"), 1),
        (m - 1, "uncovered", "segment", uncovered_key("event", "Cart Viewed"), 5),
        (m - 10, "uncovered", "segment", uncovered_key("event", "cart_viewed"), 2),
        (m - 120, "uncovered", "segment", uncovered_key("event", "CART-VIEWED"), 1),
        (m - 5, "uncovered", "segment", uncovered_key("page", "/pricing"), 3),
        (m - 7, "uncovered", "segment", uncovered_key("call", "screen"), 1),
        (m - 3, "uncovered", "mixpanel", uncovered_key("event", "cart viewed"), 4),
        (m - 1500 + 60, "uncovered", "segment", uncovered_key("event", "Too Old"), 1),
    ])  # fmt: skip
    rows = overview(store, now=now)["uncovered"]
    by = {(r["source"], r["kind"], r["match"]): r for r in rows}
    assert set(by) == {
        ("segment", "event", "Cart Viewed"),
        ("segment", "page", "/pricing"),
        ("segment", "call", "screen"),
        ("mixpanel", "event", "cart viewed"),
    }
    cart = by["segment", "event", "Cart Viewed"]
    assert cart["spellings"] == ["Cart Viewed", "cart_viewed", "CART-VIEWED"]
    assert (cart["hour"], cart["day"], cart["last_seen_minutes_ago"]) == (7, 9, 1)
    assert "events: [Cart Viewed]" in cart["stub"]
    page = by["segment", "page", "/pricing"]
    assert (page["hour"], page["day"], page["last_seen_minutes_ago"]) == (3, 3, 5)
    assert "pages: ['^/pricing$']" in page["stub"]
    assert by["segment", "call", "screen"]["stub"].startswith("  - calls: [screen]\n")
    assert by["mixpanel", "event", "cart viewed"]["last_seen_minutes_ago"] == 3
    assert rows[0]["match"] == "Cart Viewed"  # most frequent first


def test_page_paths_differing_in_case_are_separate_rows(store, now):
    """Page paths match case-sensitively, so "/Sale" and "/sale" are two rows."""
    m = int(now // 60)
    store.add_activity([
        (m, "uncovered", "segment", uncovered_key("page", "/Sale"), 2),
        (m, "uncovered", "segment", uncovered_key("page", "/sale"), 1),
    ])  # fmt: skip
    rows = overview(store, now=now)["uncovered"]
    assert [(r["match"], r["day"], r["spellings"]) for r in rows] == [
        ("/Sale", 2, ["/Sale"]),
        ("/sale", 1, ["/sale"]),
    ]
    translator = load_mapping_text(with_rules(rows[0]["stub"]), "segment.yaml")
    page = {"type": "page", "userId": "u1", "properties": {"path": "/sale"}}
    assert translator.translate(page).uncovered == ("page", "/sale")


def with_rules(*stubs: str) -> str:
    """The default Segment table with ``stubs`` pasted under ``rules:``."""
    assert "\nrules:\n" in SEGMENT_YAML
    return SEGMENT_YAML.replace("\nrules:\n", "\nrules:\n" + "".join(stubs), 1)


@pytest.mark.parametrize(
    "name",
    ["Cart Viewed", "Checkout: Step 1", "yes", "#hashtag", "$mp_thing", "it's 100%",
     "<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "Ünïcödé \u2013 ok"],
)  # fmt: skip
def test_an_event_stub_compiles_and_covers_the_name(store, now, segment_translator, name):
    """An event's stub pasted under rules: compiles and covers that event."""
    m = int(now // 60)
    store.add_activity([(m, "uncovered", "segment", uncovered_key("event", name), 1)])
    [row] = overview(store, now=now)["uncovered"]
    event = {"type": "track", "event": name, "userId": "u1"}
    assert segment_translator.translate(event).uncovered == ("event", name)
    translator = load_mapping_text(with_rules(row["stub"]), "segment.yaml")
    translation = translator.translate(event)
    assert translation.uncovered is None
    assert [r["type"] for r in translation.records] == ["custom"]


def test_page_and_call_stubs_compile_and_cover(store, now):
    """A page path's and a call's stubs compile together and cover what they were made for."""
    m = int(now // 60)
    store.add_activity([
        (m, "uncovered", "segment", uncovered_key("page", "/how-to/(a+b)"), 2),
        (m, "uncovered", "segment", uncovered_key("call", "screen"), 1),
    ])  # fmt: skip
    rows = overview(store, now=now)["uncovered"]
    translator = load_mapping_text(with_rules(*(r["stub"] for r in rows)), "segment.yaml")
    page = {"type": "page", "userId": "u1", "properties": {"path": "/how-to/(a+b)"}}
    screen = {"type": "screen", "userId": "u1"}
    assert translator.translate(page).uncovered is None
    assert translator.translate(screen).uncovered is None
    other_page = {"type": "page", "userId": "u1", "properties": {"path": "/how-to/aab"}}
    assert translator.translate(other_page).uncovered == ("page", "/how-to/aab")


# --------------------------------------------------------------------------- ingest


def segment_ingest(store, translator, events, result=None) -> IngestResult:
    return ingest(store, translator, events, source="segment", dedup_ttl=3600, result=result)


def test_ingest_counts_an_unmapped_event_as_uncovered(store, segment_translator):
    """The default table skips an unmapped track event and reports (event, name)."""
    event = {"type": "track", "event": "Coupon Applied", "userId": "u1", "messageId": "c1"}
    result = segment_ingest(store, segment_translator, [("segment:c1", event)])
    assert result.uncovered == {("event", "Coupon Applied"): 1}
    assert result.skipped == {"no rule for event 'Coupon Applied'": 1}
    mapped = {"type": "track", "event": "Product Viewed", "userId": "u1",
              "properties": {"product_id": "p1"}}  # fmt: skip
    assert segment_ingest(store, segment_translator, [(None, mapped)]).uncovered == {}


def test_ingest_counts_an_unmapped_page_path_as_uncovered(store, segment_translator):
    """A page call whose path no `pages` rule matches is uncovered as (page, path)."""
    page = {"type": "page", "userId": "u1", "properties": {"path": "/pricing"}}
    home = {"type": "page", "userId": "u1", "properties": {"path": "/"}}
    result = segment_ingest(store, segment_translator, [(None, page), (None, home)])
    assert result.uncovered == {("page", "/pricing"): 1}
    assert result.types == {"home_page_view": 1}


def test_profile_changes_are_tallied_once(store, segment_translator, now):
    """Identify traits and group calls are tallied as profile changes of their source; a
    redelivery, or an identify without traits, adds none."""
    act = Activity(store, clock=lambda: now).manual()
    events = [
        ("segment:i1", {"type": "identify", "userId": "u1", "messageId": "i1",
                        "traits": {"name": "Ann"}}),
        ("segment:g1", {"type": "group", "userId": "u1", "groupId": "g1", "messageId": "g1"}),
        ("segment:i2", {"type": "identify", "userId": "u2", "anonymousId": "a2",
                        "messageId": "i2"}),
    ]  # fmt: skip
    result = segment_ingest(store, segment_translator, events)
    assert (result.profiles, result.links) == (2, 1)
    act.ingest("segment", result)
    act.ingest("segment", segment_ingest(store, segment_translator, events[:1]))
    act.flush()
    m = int(now // 60)
    assert tallies(store)[m, "profiles", "segment", ""] == 2
    assert overview(store, now=now)["profiles"]["changes"] == {"hour": 2, "day": 2}


def test_unmatched_custom_stores_and_counts_uncovered(store):
    """unmatched: custom stores and counts uncovered; a redelivery only once."""
    assert "\nunmatched: skip" in SEGMENT_YAML
    translator = load_mapping_text(
        SEGMENT_YAML.replace("\nunmatched: skip", "\nunmatched: custom", 1), "segment.yaml"
    )
    event = {"type": "track", "event": "Coupon Applied", "userId": "u1", "messageId": "c1"}
    result = segment_ingest(store, translator, [("segment:c1", event)])
    assert (result.accepted, result.types, result.uncovered) == (
        1,
        {"custom": 1},
        {("event", "Coupon Applied"): 1},
    )
    segment_ingest(store, translator, [("segment:c1", event)], result=result)
    assert (result.received, result.accepted, result.duplicates) == (2, 1, 1)
    assert result.uncovered == {("event", "Coupon Applied"): 1}
    [claimed] = store.claim("record", 10, 1 << 20, 30, "t")
    assert orjson.loads(claimed.body)["custom_action_name"] == "Coupon Applied"


# --------------------------------------------------------------------------- forwarder


def test_forwarder_records_delivery_tallies(store):
    """drain() leaves forwarded/record and dead_lettered/rejected tallies."""
    records = [{"type": "like", "user_id": f"u{n}", "product_ids": [f"p{n}"]} for n in range(4)]
    store.accept([Incoming(None, [orjson.dumps(r) for r in records])], 3600)
    with FakeMiso(api_key="good-key") as miso:
        miso.reject_records(lambda r: r["user_id"] == "u2", field="product_ids")
        fwd = Forwarder(store, MisoClient(miso.url, "good-key", timeout=(2, 5)), FAST)
        fwd.drain()
        assert len(miso.records) == 3
    got = Counter()
    for _, metric, source, key, n in store.activity(0):
        got[metric, source, key] += n
    assert got == {("forwarded", "", "record"): 3, ("dead_lettered", "", "rejected"): 1}


def test_the_other_names_row_is_last_seen_at_its_newest_minute(store, now):
    """Overflow counts from several minutes make one "other" row per source, last seen at
    the newest of them, with no stub."""
    m = int(now // 60)
    store.add_activity([
        (m - 5, "uncovered", "segment", "", 2),
        (m - 1, "uncovered", "segment", "", 3),
    ])  # fmt: skip
    (row,) = overview(store, now=now)["uncovered"]
    assert (row["kind"], row["day"], row["last_seen_minutes_ago"], row["stub"]) == (
        "other",
        5,
        1,
        "",
    )
