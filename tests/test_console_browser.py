"""The operator console in a real browser: sign in, import a file, read the counts.

Debian's Chromium (``apt-get install chromium``; ``.ci/run`` installs it when missing),
driven by Playwright's Python client, against `miso-adapter serve` and the fake Miso.
Playwright never downloads a browser here: it launches ``/usr/bin/chromium``.

Set ``CONSOLE_SCREENSHOTS=docs`` to keep the screenshots (otherwise they go to the
test's temporary folder). The pages show where the mapping files are; so that the kept
pictures show an install location rather than this machine's folders, the service then
runs from a fresh ``/srv/miso-adapter`` (mappings copied there, its store there too),
which the test creates and removes: run it as a user who may, on a machine without one::

    CONSOLE_SCREENSHOTS=docs MISO_ADAPTER_REQUIRE_BROWSER=1 \
        .venv/bin/python -m pytest tests/test_console_browser.py -k right_counts
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests

from adapter.testing import FakeMiso
from adapter.testing.prometheus import parse
from adapter.testing.service import MISO_KEY, Service

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
#: Where the service runs from while screenshots are kept for the documentation.
INSTALL = Path("/srv/miso-adapter")
TOKEN = "console-token-4f9a"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
# Chromium as a CI container can run it: no sandbox (no user namespaces), no GPU, and
# nothing that would reach the network on its own.
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip

# The generated export: counts per kind of row, and what each must become.
VIEWS, CARTS, AUTOCAPTURE, UNMAPPED, REPEATS, MALFORMED, REFUSED = 1500, 700, 300, 200, 100, 3, 2
PADDING = "x" * 2500  # a realistic property payload: the file is ~8 MB, the upload takes a while


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium; skipped, saying how to get it, when it is not installed
    (failed instead under MISO_ADAPTER_REQUIRE_BROWSER=1, as .ci/run sets)."""
    if not os.path.exists(CHROMIUM):
        missing = "Chromium is not installed: apt-get install -y chromium (.ci/run does)"
        if os.environ.get("MISO_ADAPTER_REQUIRE_BROWSER"):
            pytest.fail(missing)
        pytest.skip(missing)
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


def export_file(path: Path) -> Path:
    """A Mixpanel raw export with known contents (see the module constants)."""
    rows: list[bytes] = []
    t0 = 1718035200

    def row(event: str, n: int, **props) -> bytes:
        properties = {"time": t0 + n, "distinct_id": f"user-{n % 97}", "$insert_id": f"{event}-{n}",
                      "mp_lib": "web", "description": PADDING, **props}  # fmt: skip
        return orjson.dumps({"event": event, "properties": properties})

    rows += [row("Product Viewed", n, product_id=f"P{n}") for n in range(VIEWS)]
    rows += [row("Add To Cart", n, sku=f"S{n}", quantity=1 + n % 3) for n in range(CARTS)]
    rows += [row("Add To Cart", CARTS + n, sku=f"REFUSE-{n}", quantity=1) for n in range(REFUSED)]
    rows += [row("$mp_click", n) for n in range(AUTOCAPTURE)]
    rows += [row("Wishlist Shared", n) for n in range(UNMAPPED)]
    rows += [row("Product Viewed", n, product_id=f"P{n}") for n in range(REPEATS)]  # again
    rows += [b'{"event": "Product Viewed", "properties": {'] * MALFORMED
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


RECEIVED = VIEWS + CARTS + REFUSED + AUTOCAPTURE + UNMAPPED + REPEATS
STORED = VIEWS + CARTS + REFUSED


@pytest.fixture
def installed() -> Iterator[dict[str, str]]:
    """The service's settings for mappings and store: with CONSOLE_SCREENSHOTS set, in a
    fresh INSTALL (removed afterwards), so the screenshots show no path of this machine;
    otherwise none (this checkout's mappings, the test's temporary folder)."""
    if not os.environ.get("CONSOLE_SCREENSHOTS"):
        yield {}
        return
    if INSTALL.exists():
        pytest.fail(f"{INSTALL} exists: the screenshots need a fresh one (move it away)")
    try:
        shutil.copytree(ROOT / "mappings", INSTALL / "mappings")
        (INSTALL / "var").mkdir()
    except OSError as exc:
        shutil.rmtree(INSTALL, ignore_errors=True)
        pytest.fail(f"cannot create {INSTALL} for the screenshots: {exc}")
    try:
        yield {
            "MAPPINGS_DIR": str(INSTALL / "mappings"),
            "ADAPTER_STORE": f"sqlite:///{INSTALL}/var/adapter.db",
        }
    finally:
        shutil.rmtree(INSTALL, ignore_errors=True)


def shot(page, name: str, tmp_path: Path) -> Path:
    """Save the page as console-NAME.png: in CONSOLE_SCREENSHOTS (docs), else tmp_path."""
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path)
    if os.environ.get("CONSOLE_SCREENSHOTS"):  # pictures for everyone: nothing of this machine
        text = page.inner_text("body")
        for local in (str(ROOT), str(tmp_path), tempfile.gettempdir() + "/"):
            assert local not in text, f"the {name} page shows {local}"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"console-{name}.png"
    page.screenshot(path=str(target), full_page=True)
    return target


def cell(page, selector: str) -> int:
    return int(page.locator(selector).inner_text().replace(",", ""))


def test_import_in_the_browser_lands_on_the_right_counts(browser, installed, tmp_path):
    """Sign in with the token, upload an export, watch the bar reach 100%, check the
    summary, /metrics and the overview; retry a dead letter from the console."""
    export = export_file(tmp_path / "mixpanel-export.jsonl")
    with FakeMiso(api_key=MISO_KEY) as miso:
        miso.reject_records(lambda r: str(r.get("product_ids", [""])[0]).startswith("REFUSE-"),
                            field="product_ids", message="Unknown product.")  # fmt: skip
        service = Service(tmp_path, miso)
        service.env.update(ADAPTER_TOKEN=TOKEN, **installed)
        service.start()
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()

            # Signed out: the console refuses, showing the sign-in form.
            response = page.goto(f"{service.url}/console/import")
            assert response.status == 401
            page.fill("#token", "not-the-token")
            page.click("#login-form button[type=submit]")
            assert "not the adapter's token" in page.inner_text("#login-message")
            page.fill("#token", TOKEN)
            page.click("#login-form button[type=submit]")
            page.wait_for_url(f"{service.url}/console/import")

            # Upload slowly enough to see the bar move (Chromium's own network throttling).
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            cdp.send("Network.emulateNetworkConditions", {
                "offline": False, "latency": 0, "downloadThroughput": -1,
                "uploadThroughput": 4 * 1024 * 1024,
            })  # fmt: skip
            page.evaluate("""() => {
                window.seenPercents = [];
                new MutationObserver(() => window.seenPercents.push(
                    document.getElementById('import-progress').value
                )).observe(document.getElementById('import-percent'),
                           {childList: true, characterData: true, subtree: true});
            }""")
            page.set_input_files("#import-file", str(export))
            page.click("#import-start")
            # (Selectors, not wait_for_function: the console's CSP forbids eval, rightly.)
            page.wait_for_selector("#import-percent:text-is('100%')", timeout=60_000)
            page.wait_for_selector("#import-summary:not([hidden])", timeout=60_000)
            seen = page.evaluate("window.seenPercents")
            assert seen[-1] == 100, seen
            assert any(0 < p < 100 for p in seen), f"the bar never showed progress: {seen}"
            assert page.inner_text("#import-percent") == "100%"

            # The summary: what was loaded, by Miso type and by reason.
            assert cell(page, "#summary-received") == RECEIVED
            assert cell(page, "#summary-accepted") == STORED
            assert cell(page, "#summary-duplicates") == REPEATS
            assert cell(page, "#summary-skipped") == AUTOCAPTURE + UNMAPPED
            assert cell(page, "#summary-malformed") == MALFORMED
            types = {
                r.locator("td").nth(0).inner_text(): cell(r, "td >> nth=1")
                for r in page.locator("#summary-types tr").all()
            }
            assert types == {"product_detail_page_view": VIEWS, "add_to_cart": CARTS + REFUSED}
            reasons = page.inner_text("#summary-reasons")
            assert "Mixpanel autocapture event" in reasons and "Wishlist Shared" in reasons
            summary_png = shot(page, "import-summary", tmp_path)

            # /metrics agrees (and needs the token).
            assert requests.get(f"{service.url}/metrics", timeout=10).status_code == 401
            samples = parse(requests.get(f"{service.url}/metrics", headers=BEARER, timeout=10).text)

            def metric(name: str, **labels: str) -> float:
                return samples.get((name, tuple(sorted(labels.items()))), 0)

            assert metric("miso_adapter_received_total", source="mixpanel") == RECEIVED + MALFORMED
            assert metric("miso_adapter_accepted_total", source="mixpanel") == STORED
            assert metric("miso_adapter_duplicates_total", source="mixpanel") == REPEATS
            assert metric("miso_adapter_records_total", source="mixpanel",
                          type="product_detail_page_view") == VIEWS  # fmt: skip
            assert metric("miso_adapter_records_total", source="mixpanel",
                          type="add_to_cart") == CARTS + REFUSED  # fmt: skip
            assert metric("miso_adapter_skipped_total", source="mixpanel",
                          reason="no rule for event") == UNMAPPED  # fmt: skip
            assert metric("miso_adapter_skipped_total", source="mixpanel",
                          reason="malformed") == MALFORMED  # fmt: skip

            # Miso gets everything but the two records it refuses; those are dead letters.
            miso.wait_for(STORED - REFUSED, timeout=60)
            page.goto(f"{service.url}/console")
            _reload_until(page, f"#dead-letters tr[data-dead] >> nth={REFUSED - 1}")
            # The forwarder adds its counts every few seconds: the chart catches up.
            sent = f"{STORED - REFUSED:,}"
            _reload_until(page, f"#throughput [data-series=forwarded]:has-text('{sent}')")
            assert f"dead lettered rejected: {REFUSED} / {REFUSED}" in page.inner_text(
                "#dead-letters"
            )
            assert "Unknown product." in page.inner_text("#dead-letters")

            # The overview: counts by source, Miso type, the uncovered name and its stub.
            row = "#sources tr[data-source=mixpanel][data-window=hour]"
            assert cell(page, f"{row} td[data-count=received]") == RECEIVED + MALFORMED
            assert cell(page, f"{row} td[data-count=stored]") == STORED
            assert cell(page, f"{row} td[data-count=duplicates]") == REPEATS
            assert cell(page, f"{row} td[data-count=uncovered]") == UNMAPPED
            views = "#types tr[data-source=mixpanel][data-type=product_detail_page_view]"
            assert cell(page, f"{views} td[data-count=day]") == VIEWS
            uncovered = page.locator("#uncovered tr[data-match='Wishlist Shared']")
            assert int(uncovered.locator("td[data-count=day]").inner_text()) == UNMAPPED
            assert "- events: [Wishlist Shared]" in uncovered.locator("pre").inner_text()
            assert cell(page, "#spool dd[data-count=dead_letters]") == REFUSED
            overview_png = shot(page, "overview", tmp_path)

            # Miso now takes them: "Retry all" resends both.
            miso.reject_records(None)
            page.click("#dead-letters button[data-retry=all]")
            page.wait_for_selector("#retry-status:has-text('put back on the spool')")
            records = miso.wait_for(STORED, timeout=30)
            refused = [r for r in records if str(r["product_ids"][0]).startswith("REFUSE-")]
            assert len(refused) == REFUSED
            page.wait_for_load_state()
            _reload_until(page, "#dead-letters p:has-text('None')")
            context.close()
        finally:
            service.stop()
    assert summary_png.stat().st_size > 10_000 and overview_png.stat().st_size > 10_000


def _reload_until(page, selector: str, attempts: int = 40) -> None:
    """Reload the page until ``selector`` shows (the forwarder works in the background)."""
    for _ in range(attempts):
        if page.locator(selector).count():
            return
        page.wait_for_timeout(500)
        page.reload()
    raise AssertionError(f"{selector} never appeared:\n{page.inner_text('main')[:2000]}")


def test_console_pages_refuse_without_the_token(browser, tmp_path):
    """Without ADAPTER_TOKEN's session or bearer, every console URL is refused."""
    with FakeMiso(api_key=MISO_KEY) as miso:
        service = Service(tmp_path, miso)
        service.env.update(ADAPTER_TOKEN=TOKEN)
        service.start()
        try:
            for path in ("/console", "/console/import", "/console/api/overview", "/metrics"):
                assert requests.get(f"{service.url}{path}", timeout=10).status_code == 401, path
            forged = {"Cookie": "miso_adapter_console=eyJjc3JmIjoieCJ9.forged.sig"}
            assert requests.get(f"{service.url}/console/api/overview", headers=forged,
                                timeout=10).status_code == 401  # fmt: skip
            assert requests.post(f"{service.url}/console/dead-letters/retry", json={"all": True},
                                 timeout=10).status_code == 401  # fmt: skip
            page = browser.new_page()
            assert page.goto(f"{service.url}/console").status == 401
            assert page.locator("#login-form").count() == 1
            assert re.search("Sign in", page.content())
            page.close()
        finally:
            service.stop()


def test_import_errors_and_a_segment_file_in_the_browser(browser, tmp_path):
    """Over the size limit the page refuses before sending; a file with no events shows the
    server's 400; a gzip Segment archive file and a Miso records file land on their summaries
    (with the invalid record named)."""
    with FakeMiso(api_key=MISO_KEY) as miso:
        service = Service(tmp_path, miso)
        service.env.update(ADAPTER_TOKEN=TOKEN, ADAPTER_MIXPANEL_MAX_MB="0.01")  # 10,485 bytes
        service.start()
        try:
            page = browser.new_page()
            page.goto(f"{service.url}/console/import")
            page.fill("#token", TOKEN)
            page.click("#login-form button[type=submit]")
            page.wait_for_url(f"{service.url}/console/import")

            big = tmp_path / "big.jsonl"
            big.write_bytes(b'{"event": "x", "properties": {}}\n' * 400)  # 13,600 bytes
            page.set_input_files("#import-file", str(big))
            page.click("#import-start")
            page.wait_for_selector("#import-error:not([hidden])")
            assert "over this adapter's limit of 10,485 bytes" in page.inner_text("#import-error")
            assert miso.records == [] and page.locator("#import-summary[hidden]").count() == 1

            junk = tmp_path / "junk.jsonl"
            junk.write_bytes(b"hello\nworld\n")
            page.set_input_files("#import-file", str(junk))
            page.click("#import-start")
            page.wait_for_selector("#import-error:has-text('Not imported (400)')")
            assert "no readable Mixpanel rows" in page.inner_text("#import-error")

            messages = tmp_path / "segment.jsonl"
            messages.write_bytes(b"\n".join(orjson.dumps({
                "type": "track", "event": "Product Viewed", "messageId": f"seg-{n}",
                "anonymousId": "anon-7", "userId": "user-7",
                "timestamp": "2024-05-01T10:00:00.000Z", "properties": {"product_id": f"S{n}"},
            }) for n in range(20)))  # fmt: skip
            page.check("input[name=source][value=segment]")
            page.set_input_files("#import-file", str(messages))
            page.click("#import-start")
            page.wait_for_selector("#import-summary:not([hidden])")
            assert page.locator("#import-error").is_hidden()
            assert cell(page, "#summary-received") == 20
            assert cell(page, "#summary-accepted") == 20
            assert "product_detail_page_view" in page.inner_text("#summary-types")
            assert len(miso.wait_for(20)) == 20

            messages.with_suffix(".gz").write_bytes(gzip.compress(messages.read_bytes()))
            page.set_input_files("#import-file", str(messages.with_suffix(".gz")))
            page.click("#import-start")
            page.wait_for_selector("#import-summary:not([hidden])")
            assert cell(page, "#summary-duplicates") == 20  # the same messages, gzip'd

            miso.reset()
            records = tmp_path / "dojo.json"
            valid = [
                {"type": "like", "user_id": f"m-{n}", "product_ids": [f"M{n}"]} for n in range(4)
            ]
            bad = {"type": "like", "user_id": "m-x", "product_ids": [7]}
            records.write_bytes(orjson.dumps({"data": [*valid[:2], bad, *valid[2:]]}))
            page.check("input[name=source][value=miso]")
            page.set_input_files("#import-file", str(records))
            page.click("#import-start")
            page.wait_for_selector("#import-summary:not([hidden])")
            assert cell(page, "#summary-accepted") == 4
            assert cell(page, "#summary-malformed") == 1
            assert "data.2" in page.inner_text("#import-summary")
            assert sorted(r["product_ids"][0] for r in miso.wait_for(4)) == ["M0", "M1", "M2", "M3"]
            page.close()
        finally:
            service.stop()
