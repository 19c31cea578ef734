"""The operator console (/console) through Flask's test client: access, sessions and CSRF,
security headers and escaping, the overview's numbers, dead-letter retry, import, mappings.

The same console in a real browser is in test_console_browser.py.
"""

from __future__ import annotations

import gzip
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar

import orjson
import pytest
import yaml
from itsdangerous.timed import TimestampSigner

from adapter import console, create_app
from adapter.ingest import SMALL_CHUNK as CHUNK
from adapter.sources import REGISTRY
from adapter.store import Incoming

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "console-token-5d2b"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
COOKIE = console.COOKIE

VIEW = {
    "type": "track",
    "event": "Product Viewed",
    "messageId": "m-1",
    "userId": "u1",
    "timestamp": "2024-05-01T10:00:00.000Z",
    "properties": {"product_id": "p1"},
}
MIXPANEL_ROWS = [
    {"event": "Product Viewed", "properties": {"time": 1718035220, "distinct_id": "u1",
                                               "$insert_id": "i1", "product_id": "P1"}},
    {"event": "$mp_click", "properties": {"time": 1718035221, "distinct_id": "u1"}},
    {"event": "Add To Cart", "properties": {"time": 1718035222, "distinct_id": "u1",
                                            "$insert_id": "i2", "sku": "S2", "quantity": 2}},
]  # fmt: skip


def make_app(tmp_path: Path, name: str = "c", **config):
    """An app with the console on (ADAPTER_TOKEN set); activity flushed by the tests."""
    app = create_app({
        "TESTING": True,
        "ADAPTER_STORE": f"sqlite:///{tmp_path}/{name}.db",
        "ADAPTER_TOKEN": TOKEN,
        "MAPPINGS_RELOAD_SECONDS": 0,
        **config,
    })  # fmt: skip
    app.extensions["miso-adapter.activity"].manual()  # no flushing thread per test app
    return app


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


@pytest.fixture
def client(app):
    return app.test_client()


def store_of(app):
    return app.extensions["miso-adapter.store"]


def flush(app) -> None:
    """Write this app's activity tallies now (the server does it every few seconds)."""
    assert app.extensions["miso-adapter.activity"].flush()


def sign_in(client, token: str = TOKEN, next_: str | None = "/console", **kwargs):
    data = {"token": token} if next_ is None else {"token": token, "next": next_}
    return client.post("/console/login", data=data, **kwargs)


def csrf_of(client) -> str:
    """The CSRF token of the signed-in session, as the page gives it to its script."""
    page = client.get("/console")
    assert page.status_code == 200, page.data
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.get_data(as_text=True))
    assert found, "no CSRF token in the page"
    return found.group(1)


@pytest.fixture
def signed_in(client):
    """The client with a browser session: (client, its CSRF token)."""
    assert sign_in(client).status_code == 303
    return client, csrf_of(client)


def post_segment(client, body):
    response = client.post("/segment", data=orjson.dumps(body), content_type="application/json")
    assert response.status_code == 200, response.data
    return response.json


def jsonl(rows) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def set_cookie_headers(response) -> list[str]:
    return response.headers.getlist("Set-Cookie")


def dead_letter(app, n: int = 3, reason: str = "Miso refused it (422): product_ids is invalid."):
    """``n`` records moved to the dead letters, reasons numbered; returns their ids."""
    store = store_of(app)
    records = [orjson.dumps({"type": "like", "user_id": f"u{i}", "product_ids": [f"p{i}"]})
               for i in range(n)]  # fmt: skip
    store.accept([Incoming(None, records, source="segment")], 3600)
    claimed = store.claim("record", 100, 1 << 20, 30, "test")
    store.dead_letter([(c.id, f"{reason} #{i}") for i, c in enumerate(claimed)])
    return [d.id for d in store.dead_letters()]


class SourceRows(HTMLParser):
    """The counts of ``#sources tr[data-source][data-window] td[data-count]`` cells."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[str, str], dict[str, int]] = {}
        self._row: tuple[str, str] | None = None
        self._cell: str | None = None
        self._text = ""
        self._in_sources = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._in_sources = a.get("id") == "sources"
        elif self._in_sources and tag == "tr" and "data-window" in a:
            self._row = (a["data-source"], a["data-window"])
            self.rows[self._row] = {}
        elif self._row and tag == "td" and "data-count" in a:
            self._cell, self._text = a["data-count"], ""

    def handle_data(self, data):
        if self._cell:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "td" and self._cell and self._row:
            self.rows[self._row][self._cell] = int(self._text.strip().replace(",", ""))
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "section":
            self._in_sources = False


def source_rows(html: str) -> dict[tuple[str, str], dict[str, int]]:
    parser = SourceRows()
    parser.feed(html)
    return parser.rows


# --------------------------------------------------------------------------- access


class TestAccess:
    def test_off_without_a_token(self, tmp_path):
        """Without ADAPTER_TOKEN: the page 403 says to set it, the API 401, no sign-in."""
        app = make_app(tmp_path, ADAPTER_TOKEN=None)
        client = app.test_client()
        page = client.get("/console")
        assert page.status_code == 403
        assert page.mimetype == "text/html"
        text = page.get_data(as_text=True)
        assert "set ADAPTER_TOKEN" in text
        assert 'id="login-form"' not in text
        api = client.get("/console/api/overview")
        assert api.status_code == 401
        assert api.json["status"] == 401 and "ADAPTER_TOKEN is not set" in api.json["error"]
        assert client.get("/console/api/overview", headers=BEARER).status_code == 403
        login = sign_in(client, token="")
        assert login.status_code == 403 and not set_cookie_headers(login)
        assert client.post("/console/dead-letters/retry", json={"all": True}).status_code == 401

    def test_no_credentials(self, client):
        """No credentials: pages 401 with the sign-in form, the API and actions 401 JSON."""
        for path, wanted in (("/console", "/console"), ("/console/import", "/console/import"),
                             ("/console?id=a1", "/console?id=a1")):  # fmt: skip
            page = client.get(path)
            assert page.status_code == 401
            assert page.mimetype == "text/html"
            text = page.get_data(as_text=True)
            assert 'id="login-form"' in text
            assert f'<input type="hidden" name="next" value="{wanted}">' in text
        api = client.get("/console/api/overview")
        assert (api.status_code, api.json) == (401, {
            "error": "sign in to the console, or send Authorization: Bearer <token>",
            "status": 401,
        })  # fmt: skip
        assert client.post("/console/dead-letters/retry", json={"all": True}).status_code == 401
        assert client.post("/console/import?source=segment", data=b"{}").status_code == 401

    @pytest.mark.parametrize(
        "header", ["Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer "]
    )
    def test_wrong_bearer_is_401(self, client, header):
        """A wrong or non-Bearer credential is refused, on the API and on pages."""
        for path in ("/console/api/overview", "/console"):
            response = client.get(path, headers={"Authorization": header})
            assert response.status_code == 401
            assert response.json["error"] == "missing or invalid bearer token"

    def test_right_bearer(self, client):
        """The bearer token opens the API (JSON) and the pages, without a cookie."""
        api = client.get("/console/api/overview", headers=BEARER)
        assert api.status_code == 200 and api.mimetype == "application/json"
        assert {"activity", "dead_letters", "links", "mappings", "spool"} <= set(api.json)
        page = client.get("/console", headers=BEARER)
        assert page.status_code == 200 and page.mimetype == "text/html"
        assert not set_cookie_headers(page)

    def test_sign_in_with_a_wrong_token(self, client):
        """A wrong token: 401, the form saying so, and no cookie."""
        response = sign_in(client, token="not-it")
        assert response.status_code == 401
        assert "That is not the adapter&#39;s token." in response.get_data(as_text=True)
        assert not set_cookie_headers(response)
        assert client.get_cookie(COOKIE, path="/console") is None
        assert client.get("/console/api/overview").status_code == 401

    def test_sign_in_sets_a_strict_session_cookie(self, client):
        """Sign-in: 303 to next, cookie HttpOnly, Strict, /console, Max-Age."""
        response = sign_in(client, next_="/console/import")
        assert response.status_code == 303
        assert response.headers["Location"] == "/console/import"
        [cookie] = set_cookie_headers(response)
        attributes = [part.strip() for part in cookie.split(";")]
        assert attributes[0].startswith(f"{COOKIE}=") and len(attributes[0]) > len(COOKIE) + 20
        assert {"HttpOnly", "SameSite=Strict", "Path=/console",
                f"Max-Age={console.SESSION_SECONDS}"} <= set(attributes)  # fmt: skip
        assert "Secure" not in attributes
        assert TOKEN not in cookie
        assert client.get("/console/api/overview").status_code == 200
        assert client.get("/console/import").status_code == 200
        secure = sign_in(client, base_url="https://localhost")
        assert "Secure" in [p.strip() for p in set_cookie_headers(secure)[0].split(";")]

    @pytest.mark.parametrize(
        "target",
        ["https://evil.example/", "//evil.example", "/metrics", "javascript:alert(1)",
         "/\\evil.example", "http://localhost/console", "", None, "/consolex",
         "/console/../metrics", "/console/%2e%2E/metrics", "/console\\..\\metrics",
         "/console\r\nSet-Cookie: a=b", "/console\t/x"],
    )  # fmt: skip
    def test_next_off_the_console_goes_to_the_console(self, client, target):
        """A next leading off the console (or unsafe in a header) becomes /console."""
        response = sign_in(client, next_=target)
        assert response.status_code == 303
        assert response.headers["Location"] == "/console"

    @pytest.mark.parametrize(
        "target", ["/console/import", "/console?id=a1", "/console/", "/console/import?x=1"]
    )
    def test_next_within_the_console_is_kept(self, client, target):
        """A console page as ``next`` is where signing in leads."""
        assert sign_in(client, next_=target).headers["Location"] == target

    def test_cookie_signed_for_another_token_is_refused(self, tmp_path, client):
        """A session of an app with another token (or before the token changed) is refused."""
        other = make_app(tmp_path, "other", ADAPTER_TOKEN="another-token-9")
        other_client = other.test_client()
        assert sign_in(other_client, token="another-token-9").status_code == 303
        foreign = other_client.get_cookie(COOKIE, path="/console").value
        assert other_client.get("/console/api/overview").status_code == 200
        client.set_cookie(COOKIE, foreign, path="/console")
        assert client.get("/console/api/overview").status_code == 401
        page = client.get("/console")
        assert page.status_code == 401 and 'id="login-form"' in page.get_data(as_text=True)

    def test_tampered_cookie_is_refused(self, client):
        """A session cookie whose payload was changed is refused."""
        assert sign_in(client).status_code == 303
        value = client.get_cookie(COOKIE, path="/console").value
        payload, rest = value.split(".", 1)
        tampered = ("f" if payload[0] != "f" else "e") + payload[1:] + "." + rest
        client.set_cookie(COOKIE, tampered, path="/console")
        assert client.get("/console/api/overview").status_code == 401
        client.set_cookie(COOKIE, "garbage", path="/console")
        assert client.get("/console/api/overview").status_code == 401
        client.set_cookie(COOKIE, value, path="/console")
        assert client.get("/console/api/overview").status_code == 200

    def test_expired_cookie_is_refused(self, client, monkeypatch):
        """A session older than SESSION_SECONDS is refused; one just younger is accepted."""
        assert sign_in(client).status_code == 303
        signed_at = TimestampSigner.get_timestamp(None)  # type: ignore[arg-type]
        later = [console.SESSION_SECONDS - 60]
        monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: signed_at + later[0])
        assert client.get("/console/api/overview").status_code == 200
        later[0] = console.SESSION_SECONDS + 60
        assert client.get("/console/api/overview").status_code == 401
        assert client.get("/console").status_code == 401

    def test_writes_with_a_cookie_need_the_csrf_token(self, app, signed_in):
        """Cookie writes without the page's CSRF token are 403 and change nothing."""
        client, csrf = signed_in
        [dead] = dead_letter(app, 1)
        other = app.test_client()
        assert sign_in(other).status_code == 303
        others = csrf_of(other)
        assert others != csrf
        for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": others},
                        {"X-CSRF-Token": ""}):  # fmt: skip
            response = client.post("/console/dead-letters/retry", json={"ids": [dead]},
                                   headers=headers)  # fmt: skip
            assert response.status_code == 403
            assert "X-CSRF-Token" in response.json["error"]
            upload = client.post("/console/import?source=segment", data=jsonl([VIEW]),
                                 content_type="application/x-ndjson", headers=headers)  # fmt: skip
            assert upload.status_code == 403
        assert [d.id for d in store_of(app).dead_letters()] == [dead]
        assert store_of(app).stats()["spool"] == 0
        ok = client.post("/console/dead-letters/retry", json={"ids": [dead]},
                         headers={"X-CSRF-Token": csrf})  # fmt: skip
        assert (ok.status_code, ok.json) == (200, {"requeued": 1})
        assert store_of(app).dead_letters() == []

    def test_bearer_writes_need_no_csrf(self, app, client):
        """A script with the bearer token (no cookie, so no CSRF risk) can retry."""
        [dead] = dead_letter(app, 1)
        response = client.post("/console/dead-letters/retry", json={"ids": [dead]}, headers=BEARER)
        assert (response.status_code, response.json) == (200, {"requeued": 1})

    def test_logout_clears_the_cookie(self, signed_in):
        """Signing out expires the cookie; the console is closed again."""
        client, _ = signed_in
        response = client.post("/console/logout")
        assert response.status_code == 303
        assert response.headers["Location"] == "/console/login"
        [cookie] = set_cookie_headers(response)
        attributes = [part.strip() for part in cookie.split(";")]
        assert attributes[0] == f"{COOKIE}="
        assert "Path=/console" in attributes
        assert "Max-Age=0" in attributes or any("1970" in a for a in attributes)
        assert client.get_cookie(COOKIE, path="/console") is None
        assert client.get("/console/api/overview").status_code == 401


# --------------------------------------------------------------------------- headers, escaping


class TestPageSafety:
    @pytest.mark.parametrize(
        ("path", "auth", "status"),
        [("/console", True, 200), ("/console/import", True, 200), ("/console/login", False, 200),
         ("/console", False, 401), ("/console/api/overview", True, 200),
         ("/console/api/overview", False, 401)],
    )  # fmt: skip
    def test_security_headers(self, client, path, auth, status):
        """Console answers: a CSP without inline or eval'd script, never framed, never cached."""
        response = client.get(path, headers=BEARER if auth else {})
        assert response.status_code == status
        csp = response.headers["Content-Security-Policy"]
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
        assert "script-src 'self'" in csp and "default-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Content-Type-Options"] == "nosniff"

    def test_pages_hold_nothing_the_csp_would_block(self, app, client):
        """Pages hold no inline script, style or handler; their assets are served."""
        dead_letter(app, 1)
        post_segment(client, {**VIEW, "event": "Unmapped Thing", "messageId": "u-1"})
        flush(app)
        for path in ("/console", "/console/import", "/console/login"):
            html = client.get(path, headers=BEARER).get_data(as_text=True)
            assert not re.search(r"<script(?![^>]*\bsrc=)", html), path
            assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html, re.IGNORECASE), path
            assets = re.findall(r'(?:src|href)="(/console/static/[^"]+)"', html)
            assert len(assets) == 2, path
            for asset in assets:
                with client.get(asset) as response:  # a file: closed when read
                    assert response.status_code == 200, asset
                    assert response.mimetype in ("text/javascript", "text/css"), asset

    @pytest.mark.parametrize(
        ("name", "escaped"),
        [("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;"),
         ('"><img src=x onerror=alert(1)>', "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;")],
    )  # fmt: skip
    def test_hostile_event_names_are_escaped(self, app, client, name, escaped):
        """An event name, dead letter or looked-up id carrying markup shows as text only."""
        post_segment(client, {**VIEW, "event": name, "messageId": "x-1"})
        flush(app)
        store = store_of(app)
        store.accept([Incoming(None, [orjson.dumps({"type": "like", "user_id": name})])], 3600)
        [item] = store.claim("record", 10, 1 << 20, 30, "t")
        store.dead_letter([(item.id, f"Miso refused it (422): {name}")])
        api = client.get("/console/api/overview", headers=BEARER).json
        assert api["activity"]["uncovered"][0]["match"] == name
        response = client.get("/console", headers=BEARER, query_string={"id": name})
        html = response.get_data(as_text=True)
        raw_markup = name[name.index("<") :]
        assert raw_markup not in html
        assert html.count(escaped) >= 5  # uncovered row, its stub, dead letter x2, lookup
        assert "<img" not in html and "<script>" not in html


# --------------------------------------------------------------------------- overview


class TestOverview:
    SEGMENT: ClassVar[list] = [
        VIEW,
        [{**VIEW, "messageId": "m-2", "event": "Coupon Applied"},
         {**VIEW, "messageId": "m-3", "event": "coupon_applied"}],
        {"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "i-1"},
        VIEW,  # a redelivery: a duplicate
        {"type": "page", "userId": "u1", "messageId": "p-1", "properties": {"path": "/pricing"}},
        {**VIEW, "messageId": "m-4", "event": "Product Added",
         "properties": {"product_id": "p2"}},
    ]  # fmt: skip

    @pytest.fixture
    def traffic(self, app, client):
        """The Segment messages above and a Mixpanel export (4 rows and a broken line)."""
        for body in self.SEGMENT:
            post_segment(client, body)
        rows = [
            *MIXPANEL_ROWS,
            {"event": "Wishlist Shared", "properties": {"time": 1718035223, "distinct_id": "u1"}},
        ]
        body = jsonl(rows[:2]) + b"{broken\n" + jsonl(rows[2:])
        response = client.post("/mixpanel", data=body, content_type="application/x-ndjson",
                               headers=BEARER)  # fmt: skip
        assert response.status_code == 200 and response.json["malformed"] == 1
        flush(app)
        return app

    def test_counts_are_exact(self, traffic, client):
        """The API's sources, types and uncovered count exactly what was posted."""
        activity = client.get("/console/api/overview", headers=BEARER).json["activity"]
        segment = {"received": 7, "stored": 2, "duplicates": 1, "skipped": 4, "uncovered": 3,
                   "links": 1}  # fmt: skip
        mixpanel = {"received": 5, "stored": 2, "skipped": 2, "uncovered": 1, "malformed": 1}
        assert activity["sources"] == {
            "mixpanel": {"hour": mixpanel, "day": mixpanel},
            "segment": {"hour": segment, "day": segment},
        }
        assert sorted((t["source"], t["type"], t["hour"], t["day"]) for t in activity["types"]) == [
            ("mixpanel", "add_to_cart", 1, 1),
            ("mixpanel", "product_detail_page_view", 1, 1),
            ("segment", "add_to_cart", 1, 1),
            ("segment", "product_detail_page_view", 1, 1),
        ]
        uncovered = [(u["source"], u["kind"], u["match"], u["spellings"], u["day"])
                     for u in activity["uncovered"]]  # fmt: skip
        assert uncovered == [
            ("segment", "event", "Coupon Applied", ["Coupon Applied", "coupon_applied"], 2),
            ("mixpanel", "event", "Wishlist Shared", ["Wishlist Shared"], 1),
            ("segment", "page", "/pricing", ["/pricing"], 1),
        ]
        assert sum(activity["series"]["received"]) == 12
        assert activity["series"]["received"][-1] + activity["series"]["received"][-2] == 12

    def test_the_page_shows_the_same_numbers(self, traffic, client):
        """The page's #sources table has the API's counts in its data-count cells."""
        api = client.get("/console/api/overview", headers=BEARER).json["activity"]["sources"]
        rows = source_rows(client.get("/console", headers=BEARER).get_data(as_text=True))
        metrics = ["received", "stored", "duplicates", "skipped", "uncovered", "malformed",
                   "links", "profiles"]  # fmt: skip
        assert set(rows) == {(s, w) for s in ("segment", "mixpanel") for w in ("hour", "day")}
        for (source, window), cells in rows.items():
            assert cells == {m: api[source][window].get(m, 0) for m in metrics}
        assert rows["segment", "hour"]["received"] == 7
        assert rows["mixpanel", "day"]["malformed"] == 1

    def test_identity_links_and_lookup(self, traffic, client):
        """Links total and newest show; a lookup shows an id's user or anonymous ids."""
        links = client.get("/console/api/overview", headers=BEARER).json["links"]
        assert links["total"] == 1
        assert [(r["anonymous_id"], r["user_id"]) for r in links["recent"]] == [("a1", "u1")]
        assert links["recent"][0]["linked_at"].endswith(" UTC")
        html = client.get("/console", headers=BEARER, query_string={"id": "a1"}).get_data(
            as_text=True
        )
        assert '<b data-count="links_total">1</b>' in html
        assert "<td><code>a1</code></td><td><code>u1</code></td>" in html
        assert "is anonymous, linked to user <code>u1</code>" in html
        user = client.get("/console?id=u1", headers=BEARER).get_data(as_text=True)
        assert "User <code>u1</code> has 1 anonymous id(s): <code>a1</code>." in user
        nobody = client.get("/console?id=ghost", headers=BEARER).get_data(as_text=True)
        assert "No link known for <code>ghost</code>." in nobody

    def test_uncovered_rows_offer_stubs(self, traffic, client):
        """Each uncovered name shows with its rule stub to paste."""
        html = client.get("/console", headers=BEARER).get_data(as_text=True)
        assert "  - events: [Coupon Applied]\n    type: custom" in html
        assert "also coupon_applied" in html
        assert "  - pages: [&#39;^/pricing$&#39;]" in html


class TestProfiles:
    MESSAGES: ClassVar[list] = [
        {"type": "identify", "userId": "u1", "messageId": "i-1", "traits": {"name": "Ann"}},
        {"type": "group", "userId": "u1", "groupId": "g1", "messageId": "g-1"},
        {"type": "identify", "userId": "u2", "messageId": "i-2", "traits": {"plan": "pro"}},
        {"type": "identify", "anonymousId": "a9", "messageId": "i-3", "traits": {"age": 30}},
    ]

    @pytest.fixture
    def profiles(self, app, client):
        """Four profile changes (three users', one anonymous), and what the forwarder
        notes: two users uploaded, one refused."""
        post_segment(client, self.MESSAGES)
        post_segment(client, self.MESSAGES[0])  # a redelivery: no change
        noted = app.extensions["miso-adapter.activity"]
        noted.delivery("users_uploaded", "", 2)
        noted.delivery("users_refused", "rejected", 1)
        noted.delivery("dead_lettered", "rejected", 1)
        flush(app)
        return app

    def test_the_api_counts_stored_changes_uploads_and_refusals(self, profiles, client):
        """The overview's profiles: stored now (users, anonymous), and per window the
        changes stored, users uploaded and refused (by why); changes per source too."""
        data = client.get("/console/api/overview", headers=BEARER).json
        assert data["profiles"] == {
            "stored": 2,
            "anonymous": 1,
            "changes": {"hour": 4, "day": 4},
            "uploaded": {"hour": 2, "day": 2},
            "refused": {"hour": 1, "day": 1},
            "refused_by": [{"reason": "rejected", "hour": 1, "day": 1}],
        }
        assert data["activity"]["sources"]["segment"]["day"]["profiles"] == 4
        assert data["activity"]["delivery"] == [
            {"metric": "dead_lettered", "key": "rejected", "hour": 1, "day": 1}
        ]

    def test_the_page_shows_the_same_numbers(self, profiles, client):
        """The #profiles card shows the stored counts, each window's counts and why
        uploads were refused; the #sources table has the changes per source."""
        html = client.get("/console", headers=BEARER).get_data(as_text=True)
        card = re.search(r'<section class="card" id="profiles">.*?</section>', html, re.S)
        assert card, "no profiles card"
        text = card.group(0)
        assert '<dd data-count="profiles">2</dd>' in text
        assert '<dd data-count="anonymous_profiles">1</dd>' in text
        cells = dict(re.findall(
            r'<tr data-profiles="(\w+)">.*?data-count="day">([\d,]+)</td></tr>', text, re.S
        ))  # fmt: skip
        assert cells == {"changes": "4", "uploaded": "2", "refused": "1"}
        assert '<span class="pill">rejected: 1 / 1</span>' in text
        assert source_rows(html)["segment", "day"]["profiles"] == 4

    def test_an_empty_store_shows_zeros(self, client):
        """With no profile yet the card shows zeros and no refusals line."""
        data = client.get("/console/api/overview", headers=BEARER).json["profiles"]
        assert (data["stored"], data["anonymous"], data["changes"], data["refused_by"]) == (
            0, 0, {"hour": 0, "day": 0}, [])  # fmt: skip
        html = client.get("/console", headers=BEARER).get_data(as_text=True)
        assert '<dd data-count="profiles">0</dd>' in html
        assert "Refused, by why" not in html

    def test_an_import_counts_profile_changes(self, app, client):
        """An imported file's profile changes are in its answer, its summary and the
        overview (an import flushes its tallies)."""
        response = client.post("/console/import?source=segment", data=jsonl(self.MESSAGES),
                               content_type="application/x-ndjson", headers=BEARER)  # fmt: skip
        assert response.status_code == 200, response.data
        assert (response.json["profiles"], response.json["accepted"]) == (4, 0)
        page = client.get("/console/import", headers=BEARER).get_data(as_text=True)
        assert 'id="summary-profiles"' in page
        data = client.get("/console/api/overview", headers=BEARER).json["profiles"]
        assert (data["stored"], data["anonymous"], data["changes"]["hour"]) == (2, 1, 4)


# --------------------------------------------------------------------------- dead letters


class TestDeadLetters:
    def test_listed_with_their_reason(self, app, client):
        """The overview lists dead letters with Miso's reason, type and record."""
        ids = dead_letter(app, 2)
        data = client.get("/console/api/overview", headers=BEARER).json
        assert [(d["id"], d["reason"], d["type"], d["source"]) for d in data["dead_letters"]] == [
            (ids[0], "Miso refused it (422): product_ids is invalid. #0", "like", "segment"),
            (ids[1], "Miso refused it (422): product_ids is invalid. #1", "like", "segment"),
        ]
        assert data["spool"]["dead_letters"] == 2
        html = client.get("/console", headers=BEARER).get_data(as_text=True)
        assert f'<tr data-dead="{ids[1]}">' in html
        assert "product_ids is invalid. #1" in html

    def test_retry_one_then_all(self, app, client):
        """{"ids": [id]} requeues just that one; {"all": true} the rest."""
        ids = dead_letter(app, 3)

        def retry(body):
            return client.post("/console/dead-letters/retry", json=body, headers=BEARER)

        assert retry({"ids": [ids[1]]}).json == {"requeued": 1}
        store = store_of(app)
        assert [d.id for d in store.dead_letters()] == [ids[0], ids[2]]
        assert store.stats()["spool"] == 1
        assert retry({"all": True}).json == {"requeued": 2}
        assert store.dead_letters() == []
        assert store.stats()["spool"] == 3

    @pytest.mark.parametrize(
        ("body", "message"),
        [(b"not json", "expected a JSON object"),
         (b"[1]", "expected a JSON object"),
         (b"{}", "'ids' must be a non-empty array"),
         (b'{"ids": []}', "'ids' must be a non-empty array"),
         (b'{"ids": ["1"]}', "'ids' must be a non-empty array"),
         (b'{"ids": [true]}', "'ids' must be a non-empty array"),
         (b'{"ids": [1.5]}', "'ids' must be a non-empty array"),
         (b'{"ids": 1}', "'ids' must be a non-empty array"),
         (b'{"all": "yes"}', "'ids' must be a non-empty array"),
         (b'{"all": false}', "'ids' must be a non-empty array")],
        ids=["not-json", "array", "empty", "ids-empty", "ids-strings", "ids-booleans",
             "ids-floats", "ids-number", "all-string", "all-false"],
    )  # fmt: skip
    def test_bad_bodies_are_400(self, app, client, body, message):
        """Bodies that do not say what to retry are 400 with a clear message; nothing moves."""
        ids = dead_letter(app, 2)
        response = client.post("/console/dead-letters/retry", data=body,
                               content_type="application/json", headers=BEARER)  # fmt: skip
        assert response.status_code == 400
        assert message in response.json["error"]
        assert [d.id for d in store_of(app).dead_letters()] == ids


# --------------------------------------------------------------------------- import


class TestImport:
    def test_the_form_offers_every_registered_source(self, signed_in):
        """The import form lists each source of the registry, Mixpanel people profiles too."""
        client, _ = signed_in
        page = client.get("/console/import").get_data(as_text=True)
        offered = re.findall(r'name="source" value="([^"]+)"', page)
        assert offered == list(REGISTRY)
        assert "Mixpanel people profiles" in page

    def test_gzip_without_content_encoding_is_recognised(self, app, signed_in):
        """A .gz export without Content-Encoding is sniffed, stored and answered."""
        client, csrf = signed_in
        response = client.post(
            "/console/import?source=mixpanel", data=gzip.compress(jsonl(MIXPANEL_ROWS)),
            content_type="application/x-ndjson", headers={"X-CSRF-Token": csrf},
        )  # fmt: skip
        assert response.status_code == 200, response.data
        answer = response.json
        assert answer["source"] == "mixpanel"
        assert (answer["received"], answer["accepted"], answer["malformed"]) == (3, 2, 0)
        assert answer["types"] == {"product_detail_page_view": 1, "add_to_cart": 1}
        assert answer["skipped"] == {"Mixpanel autocapture event": 1}
        assert store_of(app).stats()["spool"] == 2
        sources = client.get("/console/api/overview").json["activity"]["sources"]
        assert sources["mixpanel"]["hour"]["stored"] == 2  # no flush needed: imports flush

    def test_segment_json_lines_and_a_second_upload(self, app, client):
        """Segment messages as JSON Lines are stored; the same file again is all duplicates."""
        body = jsonl([
            VIEW,
            {**VIEW, "messageId": "m-2", "event": "Product Added"},
            {**VIEW, "messageId": "m-3", "event": "Coupon Applied"},
        ])  # fmt: skip

        def upload():
            return client.post("/console/import?source=segment", data=body,
                               content_type="application/x-ndjson", headers=BEARER)  # fmt: skip

        first = upload()
        assert first.status_code == 200, first.data
        assert first.json["source"] == "segment"
        assert (first.json["received"], first.json["accepted"], first.json["duplicates"]) == (
            3, 2, 0)  # fmt: skip
        assert first.json["types"] == {"product_detail_page_view": 1, "add_to_cart": 1}
        assert first.json["skipped"] == {"no rule for event 'Coupon Applied'": 1}
        again = upload().json
        assert (again["accepted"], again["duplicates"], again["types"]) == (0, 2, {})
        assert store_of(app).stats()["spool"] == 2

    @pytest.mark.parametrize(
        ("query", "body", "message"),
        [("source=segment", b"", "empty body: expected Segment messages"),
         ("source=segment", b"\n  \n", "empty body: expected Segment messages"),
         ("source=segment", b"{broken\n{also broken\n", "no readable Segment messages: "),
         ("source=segment", b"[1, 2]", "no Segment messages in the body"),
         ("source=mixpanel", b"nope\n", "no readable Mixpanel rows: "),
         ("source=shopify", jsonl([VIEW]),
          "unknown source 'shopify': use segment, mixpanel, mixpanel-profiles, miso")],
        ids=["empty", "blank", "all-malformed", "not-messages", "mixpanel-malformed",
             "unknown-source"],
    )  # fmt: skip
    def test_unusable_uploads_are_400(self, app, client, query, body, message):
        """An empty, unreadable or unknown-source upload is a 400 saying why; nothing stored."""
        response = client.post(f"/console/import?{query}", data=body,
                               content_type="application/x-ndjson", headers=BEARER)  # fmt: skip
        assert response.status_code == 400
        assert response.json["error"].startswith(message), response.json
        assert store_of(app).stats()["spool"] == 0

    def test_malformed_lines_are_named(self, client):
        """Broken lines are named: in the 400 of an unreadable file, or in errors."""
        body = jsonl([VIEW]).replace(b"{", b"", 1) + b"{broken\n"
        response = client.post("/console/import?source=segment", data=body,
                               content_type="application/x-ndjson", headers=BEARER)  # fmt: skip
        assert response.status_code == 400
        assert "line 1 column" in response.json["error"]
        partly = client.post("/console/import?source=segment", data=jsonl([VIEW]) + b"{broken\n",
                             content_type="application/x-ndjson", headers=BEARER)  # fmt: skip
        assert partly.status_code == 200
        assert (partly.json["accepted"], partly.json["malformed"]) == (1, 1)
        assert partly.json["errors"][0].startswith("body:2: invalid JSON")

    def test_import_page(self, signed_in):
        """The import page offers both sources and a file input, with the session's CSRF."""
        client, csrf = signed_in
        html = client.get("/console/import").get_data(as_text=True)
        assert 'value="mixpanel"' in html and 'value="segment"' in html
        assert 'id="import-file"' in html
        assert f'<meta name="csrf-token" content="{csrf}">' in html


# --------------------------------------------------------------------------- mappings


def test_mapping_status_shows_rejected_edits(tmp_path):
    """A refused edit shows as "rejected edit" with its problem; tables list rules."""
    folder = tmp_path / "maps"
    folder.mkdir()
    for name in ("segment", "mixpanel"):
        shutil.copy(ROOT / "mappings" / f"{name}.yaml", folder / f"{name}.yaml")
    app = make_app(tmp_path, MAPPINGS_DIR=str(folder))
    rejections = app.extensions["miso-adapter.mapping-rejections"]
    rejections["segment"] = ["segment.yaml:3: rules: bad"]
    rejections["shopify"] = ["shopify.yaml:1: -: cannot read the file"]
    client = app.test_client()
    html = client.get("/console", headers=BEARER).get_data(as_text=True)
    segment_row = re.search(r'<tr data-table="segment">.*?</tr>', html, re.S)
    assert segment_row and "rejected edit" in segment_row.group(0)
    assert "<code>segment.yaml:3: rules: bad</code>" in html
    mixpanel_row = re.search(r'<tr data-table="mixpanel">.*?</tr>', html, re.S)
    assert mixpanel_row and ">live<" in mixpanel_row.group(0)
    tables = client.get("/console/api/overview", headers=BEARER).json["mappings"]

    def rules_in(name: str) -> int:
        return len(yaml.safe_load((folder / f"{name}.yaml").read_text())["rules"])

    assert [(t["name"], t["status"], t["rules"], t["problems"]) for t in tables] == [
        ("mixpanel", "live", rules_in("mixpanel"), []),
        ("segment", "rejected edit", rules_in("segment"), ["segment.yaml:3: rules: bad"]),
        ("shopify", "rejected edit", 0, ["shopify.yaml:1: -: cannot read the file"]),
    ]
    assert tables[1]["path"] == str(folder / "segment.yaml")
    assert tables[1]["file_modified"].endswith(" UTC") and tables[2]["file_modified"] == ""


# --------------------------------------------------------------------------- several hosts


def test_two_hosts_on_one_redis_store_show_one_picture(tmp_path, redis_client):
    """Two apps (hosts) sharing a Redis store: each one's console shows both hosts' counts."""
    prefix = f"test-console-{tmp_path.name[-12:]}:"
    url = f"redis://127.0.0.1:6379/0?prefix={prefix}"
    hosts = [make_app(tmp_path, name=f"h{n}", ADAPTER_STORE=url) for n in (1, 2)]
    try:
        for n, host in enumerate(hosts):
            message = {**VIEW, "messageId": f"m-host-{n}", "event": f"Host {n} Only"}
            assert host.test_client().post("/segment", json=message).status_code == 200
            assert (
                host.test_client()
                .post("/segment", json={**VIEW, "messageId": f"v{n}"})
                .json["accepted"]
                == 1
            )
            flush(host)
        for host in hosts:
            data = host.test_client().get("/console/api/overview", headers=BEARER).json
            assert data["activity"]["sources"]["segment"]["hour"]["received"] == 4
            assert data["activity"]["sources"]["segment"]["hour"]["stored"] == 2
            names = {row["match"] for row in data["activity"]["uncovered"]}
            assert names == {"Host 0 Only", "Host 1 Only"}
    finally:
        for host in hosts:
            store_of(host).close()
        for key in redis_client.scan_iter(match=f"{prefix}*", count=1000):
            redis_client.delete(key)


def test_a_store_that_cannot_be_read_is_a_503_page_or_json(app, client, monkeypatch):
    """With the store down, the overview page answers a 503 page saying so, and the
    JSON route the service's JSON error; neither is a 500."""
    from adapter.store import StoreError

    def down(*args, **kwargs):
        raise StoreError("database is locked")

    monkeypatch.setattr(store_of(app), "stats", down)
    page = client.get("/console", headers=BEARER)
    assert page.status_code == 503 and page.mimetype == "text/html"
    assert "cannot read the store right now: database is locked" in page.get_data(as_text=True)
    api = client.get("/console/api/overview", headers=BEARER)
    assert api.status_code == 503
    assert api.json == {"error": "cannot read the store right now: database is locked",
                        "status": 503}  # fmt: skip
    monkeypatch.setattr(store_of(app), "requeue_dead", down)
    retry = client.post("/console/dead-letters/retry", json={"all": True}, headers=BEARER)
    assert retry.status_code == 503
    assert retry.json["error"] == "cannot write the store right now: database is locked"


class TestImportProgress:
    """The import publishes how far it has stored the file, for the progress bar."""

    def test_each_chunk_publishes_bytes_and_rows_stored_then_it_is_removed(
        self, app, client, monkeypatch
    ):
        """Every stored chunk carries the body bytes and rows read so far, in its own
        transaction; the finished upload leaves no progress behind (404)."""
        store = store_of(app)
        published = []
        accept = store.accept

        def spy(batch, dedup_ttl, status=None):
            if status is not None:
                published.append(status)
            return accept(batch, dedup_ttl, status)

        monkeypatch.setattr(store, "accept", spy)
        rows = [
            {"event": "Product Viewed", "properties": {"time": 1718035220 + n, "distinct_id": "u",
             "$insert_id": f"p-{n}", "product_id": f"P{n}"}}
            for n in range(CHUNK * 5 // 2)
        ]  # fmt: skip
        body = b"".join(orjson.dumps(r) + b"\n" for r in rows)
        headers = {**BEARER, "Content-Type": "application/x-ndjson"}
        url = "/console/import?source=mixpanel&id=upload-0001"
        response = client.post(url, data=body, headers=headers)
        assert response.status_code == 200 and response.json["accepted"] == len(rows)
        assert [name for name, _ in published] == ["console.import.upload-0001"] * 3
        reads = [value["read"] for _, value in published]
        assert [value["rows"] for _, value in published] == [CHUNK, 2 * CHUNK, len(rows)]
        assert reads == sorted(reads) and 0 < reads[0] < len(body) and reads[-1] == len(body)
        gone = client.get("/console/import/progress?id=upload-0001", headers=BEARER)
        assert gone.status_code == 404

    def test_progress_is_read_from_the_store(self, app, client):
        """GET /console/import/progress answers what the upload published (any worker)."""
        store_of(app).set_status("console.import.abcdefgh", {"read": 10, "rows": 3})
        response = client.get("/console/import/progress?id=abcdefgh", headers=BEARER)
        assert response.status_code == 200 and response.json == {"read": 10, "rows": 3}
        assert client.get("/console/import/progress?id=abcdefgh").status_code == 401

    @pytest.mark.parametrize("upload_id", ["", "short", "has space!", "../../etc", "x" * 65])
    def test_a_bad_id_is_refused(self, client, upload_id):
        """An id that is not 8-64 letters, digits, '-' or '_' is a 400, on both routes."""
        got = client.get(f"/console/import/progress?id={upload_id}", headers=BEARER)
        assert got.status_code == 400 and "'id' must be" in got.json["error"]
        post = client.post(f"/console/import?source=segment&id={upload_id}", data=b"{}",
                           headers=BEARER)  # fmt: skip
        assert post.status_code == 400 and "'id' must be" in post.json["error"]
