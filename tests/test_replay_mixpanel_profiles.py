"""`miso-adapter replay mixpanel-profiles`: Mixpanel people profiles into Miso's Users API.

The reader is tested on every shape Mixpanel gives profiles in (JSON Lines of profiles,
Engage query pages as one document or one per line, a JSON array; plain or gzip), on each
unusable value with its place, and on the ``$profile`` events it makes for the Mixpanel
table. End to end, the real command line runs in a subprocess against a fake Miso: the
profiles become Miso user records (name, city, state, country; never e-mail or phone),
each one valid for Miso's UserRecord schema, and reading them again sends nothing.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from adapter.ingest import Intake, chunks
from adapter.mapping import default_mappings_dir, load_mapping
from adapter.sources import OUTSIDE, REGISTRY, Window, make_source
from adapter.sources.inputs import open_path
from adapter.sources.mixpanel_profiles import NOT_A_PROFILE, MixpanelProfilesSource, dedup_key
from adapter.store import open_store
from adapter.testing import FakeMiso
from adapter.testing.service import clean_env

MISO_KEY = "miso-profiles-key"

ADA = {
    "$distinct_id": "u_ada",
    "$properties": {
        "$name": "Ada Lovelace",
        "$city": "London",
        "$region": "England",
        "$country_code": "GB",
        "$email": "ada@example.com",
        "$phone": "+44 20 7946 0000",
        "$created": "2023-11-02T09:15:00",
        "$last_seen": "2024-06-10T14:58:32",
        "plan": "pro",
    },
}
ALAN = {
    "$distinct_id": "u_alan",
    "$properties": {
        "$first_name": "Alan",
        "$last_name": "Turing",
        "$city": "Wilmslow",
        "$region": "Cheshire",
        "$country_code": "GB",
        "$email": "alan@example.com",
    },
}
VISITOR = {"$distinct_id": "$device:18f0c2a1b3d4e5", "$properties": {"$city": "Paris"}}
LAST_SEEN = 1718031512.0  # 2024-06-10T14:58:32Z


def page(results: Any, **fields: Any) -> dict:
    """An Engage query page, as the Engage API answers one."""
    return {"page": 0, "page_size": 1000, "session_id": "1234567890-EXAMPL",
            "status": "ok", "total": 2, "results": results, **fields}  # fmt: skip


def jsonl(values: list[Any]) -> bytes:
    return b"".join(orjson.dumps(v) + b"\n" for v in values)


def read(
    path: Path, source: MixpanelProfilesSource | None = None
) -> tuple[list[tuple[str | None, dict | str]], list[str]]:
    """The (dedup key, event or skip reason) pairs a replay ingests from ``path``, and the
    located errors it reports: the replay's own reading path."""
    source = source or MixpanelProfilesSource()
    intake = Intake()
    events: list[tuple[str | None, dict | str]] = []
    with open_path(path) as opened:
        for chunk, _, _ in chunks(source, opened, intake):
            events += chunk
    return events, intake.errors


def only_events(pairs: list[tuple[str | None, dict | str]]) -> list[dict]:
    return [event for _, event in pairs if isinstance(event, dict)]


# --------------------------------------------------------------------------- reading


def test_json_lines_of_profiles_become_profile_events(tmp_path):
    """Each line is one $profile event: the id, $last_seen as epoch seconds (absent when the
    profile has none), and the properties as Mixpanel gave them."""
    path = tmp_path / "people.jsonl"
    path.write_bytes(jsonl([ADA, ALAN]))
    pairs, errors = read(path)
    assert errors == []
    assert only_events(pairs) == [
        {"event": "$profile", "user_id": "u_ada", "time": LAST_SEEN,
         "properties": ADA["$properties"]},
        {"event": "$profile", "user_id": "u_alan", "properties": ALAN["$properties"]},
    ]  # fmt: skip
    assert [key for key, _ in pairs] == [
        dedup_key("u_ada", ADA["$properties"]),
        dedup_key("u_alan", ALAN["$properties"]),
    ]


def test_an_engage_page_document_gives_its_results(tmp_path):
    """A saved Engage answer (one document, pretty-printed over many lines) gives each of
    its results."""
    path = tmp_path / "engage.json"
    path.write_text(orjson.dumps(page([ADA, ALAN]), option=orjson.OPT_INDENT_2).decode())
    pairs, errors = read(path)
    assert errors == []
    assert [e["user_id"] for e in only_events(pairs)] == ["u_ada", "u_alan"]


def test_lines_of_engage_pages_give_every_page_s_results(tmp_path):
    """One Engage page per line (a paged download appended to a file): every result of every
    page, in order."""
    path = tmp_path / "engage.jsonl"
    path.write_bytes(jsonl([page([ADA]), page([ALAN, VISITOR], page=1)]))
    pairs, errors = read(path)
    assert errors == []
    assert [e.get("user_id", e.get("anonymous_id")) for e in only_events(pairs)] == [
        "u_ada", "u_alan", "18f0c2a1b3d4e5",
    ]  # fmt: skip


def test_a_json_array_of_profiles_is_read(tmp_path):
    """A JSON array of profiles (a people export saved whole) gives each profile."""
    path = tmp_path / "people.json"
    path.write_bytes(orjson.dumps([ADA, ALAN]))
    pairs, errors = read(path)
    assert errors == []
    assert [e["user_id"] for e in only_events(pairs)] == ["u_ada", "u_alan"]


@pytest.mark.parametrize("name", ["people.jsonl.gz", "people.jsonl"])
def test_gzip_is_recognised_by_content(tmp_path, name):
    """A gzip file is read as its content, whatever its name says."""
    path = tmp_path / name
    path.write_bytes(gzip.compress(jsonl([ADA, ALAN])))
    pairs, errors = read(path)
    assert errors == []
    assert [e["user_id"] for e in only_events(pairs)] == ["u_ada", "u_alan"]


def test_a_device_id_is_the_anonymous_id_without_its_prefix():
    """A `$device:` distinct id is the profile of an anonymous visitor: its anonymous_id is
    the device id, as the events of that device carry it."""
    [item] = MixpanelProfilesSource().items("x", VISITOR)
    assert item.event == {"event": "$profile", "anonymous_id": "18f0c2a1b3d4e5",
                          "properties": VISITOR["$properties"]}  # fmt: skip


def test_ids_the_store_knows_as_anonymous_are_the_anonymous_side():
    """An unprefixed id the store links as anonymous is the anonymous_id; the store is asked
    once per chunk, for the chunk's ids."""
    asked: list[list[str]] = []

    def store_knows(ids: list[str]) -> list[str]:
        asked.append(ids)
        return [i for i in ids if i.startswith("dev-")]

    source = MixpanelProfilesSource()
    source.use_anonymous_lookup(store_knows)
    events = [
        source.items("x", {"$distinct_id": d, "$properties": {}})[0].event
        for d in ("u_ada", "dev-7", "$device:dev-8")
    ]
    source.end_chunk()
    assert asked == [["dev-7", "u_ada"]]
    assert [(e.get("user_id"), e.get("anonymous_id")) for e in events] == [
        ("u_ada", None), (None, "dev-7"), (None, "dev-8"),
    ]  # fmt: skip
    source.end_chunk()
    assert len(asked) == 1  # nothing new read: nothing asked


def test_the_dedup_key_is_the_person_and_the_content_of_the_profile():
    """The same profile twice is one key (whatever the order of its properties); a changed
    property, or another person, is another key."""
    props = ADA["$properties"]
    same = dict(reversed(list(props.items())))
    assert dedup_key("u_ada", props) == dedup_key("u_ada", same)
    assert dedup_key("u_ada", props) != dedup_key("u_ada", {**props, "$city": "Paris"})
    assert dedup_key("u_ada", props) != dedup_key("u_alan", props)
    assert dedup_key("u_ada", props).startswith("mixpanel-profile:u_ada:")


def test_since_and_until_select_profiles_by_last_seen():
    """--since/--until keep the profiles last seen in the window; a profile never seen is
    outside a window that has a start."""
    source = MixpanelProfilesSource(window=Window.parse("2024-06-01", "2024-06-30"))
    old = {"$distinct_id": "u1", "$properties": {"$last_seen": "2024-05-31T23:59:59"}}
    never = {"$distinct_id": "u2", "$properties": {}}
    assert isinstance(source.items("x", ADA)[0].event, dict)
    assert source.items("x", old)[0].event == OUTSIDE
    assert source.items("x", never)[0].event == OUTSIDE


GOOD = ADA["$properties"]


@pytest.mark.parametrize(
    ("line", "wanted"),
    [
        ([ADA], "got array"),
        ("u_ada", "expected a people profile (a JSON object with '$distinct_id' and "
                  "'$properties'), got string"),
        ({"$properties": GOOD}, "a people profile needs a '$distinct_id'"),
        ({"$distinct_id": "", "$properties": GOOD}, "'$distinct_id' is empty"),
        ({"$distinct_id": "  ", "$properties": GOOD}, "'$distinct_id' is empty"),
        ({"$distinct_id": None, "$properties": GOOD}, "'$distinct_id' must be a string, got null"),
        ({"$distinct_id": {"id": 1}, "$properties": GOOD},
         "'$distinct_id' must be a string, got object"),
        ({"$distinct_id": "undefined", "$properties": GOOD},
         "'$distinct_id' is a placeholder ('undefined'), not an id"),
        ({"$distinct_id": "u" * 513, "$properties": GOOD},
         "'$distinct_id' is longer than 512 characters"),
        ({"$distinct_id": "$device:", "$properties": GOOD},
         "'$distinct_id' has no id after '$device:'"),
        ({"$distinct_id": "u_ada"}, "a people profile needs '$properties'"),
        ({"$distinct_id": "u_ada", "$properties": None},
         "'$properties' must be an object, got null"),
        ({"$distinct_id": "u_ada", "$properties": ["$name"]},
         "'$properties' must be an object, got array"),
        (page({"0": ADA}), "'results' must be an array of profiles, got object"),
        ({"status": "error", "error": "Invalid session_id (it may have expired)"},
         "Mixpanel answered status 'error': Invalid session_id (it may have expired)"),
        ({"status": "error"}, "Mixpanel answered status 'error' (and no 'error' saying why)"),
        ({"page": 3, "page_size": 1000, "status": "ok"}, "an Engage page without 'results'"),
    ],
    ids=["array", "string", "no id", "empty id", "blank id", "null id", "object id",
         "placeholder id", "long id", "bare device prefix", "no properties", "null properties",
         "array properties", "results not an array", "status error", "status error, no message",
         "page without results"],
)  # fmt: skip
def test_each_unusable_value_is_reported_at_its_line(tmp_path, line, wanted):
    """An unusable value is reported with file:line and what is wrong; the good profiles
    around it are read."""
    path = tmp_path / "people.jsonl"
    path.write_bytes(jsonl([ALAN, line, ALAN]))
    pairs, errors = read(path)
    assert len(errors) == 1
    assert errors[0].startswith(f"{path}:2: ")
    assert wanted in errors[0]
    assert len(only_events(pairs)) == 2


def test_a_bad_result_of_a_page_is_located_in_the_page(tmp_path):
    """A bad profile within a page is located by the page and its index in `results`."""
    path = tmp_path / "engage.jsonl"
    bad = {"$distinct_id": "u_x", "$properties": "none"}
    path.write_bytes(jsonl([page([ADA]), page([ALAN, ADA, 7, bad], page=1)]))
    pairs, errors = read(path)
    assert errors == [
        f"{path}:2, results.2: expected a people profile (a JSON object with "
        "'$distinct_id' and '$properties'), got number",
        f"{path}:2, results.3: '$properties' must be an object, got string",
    ]
    assert len(only_events(pairs)) == 3


def test_a_bad_item_of_an_array_is_located_by_its_number(tmp_path):
    """In a JSON array, a bad profile is named by its item number."""
    path = tmp_path / "people.json"
    path.write_bytes(orjson.dumps([ADA, {"$distinct_id": "u_y"}]))
    _, errors = read(path)
    assert errors == [f"{path} item 2: a people profile needs '$properties'"]


def test_an_events_export_is_recognised_as_the_wrong_file(tmp_path):
    """Rows of an events export are no profiles: each is skipped saying so, and a body made
    only of them is the wrong file, named as such; one profile among them is no such body."""
    row = {"event": "Product Viewed", "properties": {"time": 1718031512, "distinct_id": "u1"}}
    path = tmp_path / "export.jsonl"
    path.write_bytes(jsonl([row, row]))
    source = MixpanelProfilesSource()
    pairs, errors = read(path, source)
    assert errors == []
    reasons = {event for _, event in pairs}
    assert len(reasons) == 1
    [reason] = reasons
    assert isinstance(reason, str)
    assert reason.startswith(NOT_A_PROFILE)
    assert "events export" in reason
    assert "replay mixpanel" in reason
    problem = source.not_of_this_source({reason: 2}, 2)
    assert problem is not None
    assert "events export" in problem
    assert source.not_of_this_source({reason: 1}, 2) is None


def test_a_profile_is_a_profile_change_of_the_mixpanel_table_and_no_interaction():
    """Through the Mixpanel table, a profile sends no record: it changes the person's
    traits (the Mixpanel part of the profile), at the time it was last seen."""
    translator = load_mapping(default_mappings_dir() / "mixpanel.yaml")
    [item] = MixpanelProfilesSource().items("x", ADA)
    result = translator.translate(item.event)
    assert result.records == []
    assert result.skipped == "people profile, not an interaction"
    [change] = result.profiles
    assert (change.user_id, change.anonymous_id, change.table) == ("u_ada", None, "mixpanel")
    assert change.changes == {"traits": ADA["$properties"]}
    assert change.at == LAST_SEEN
    record = translator.users({"user_id": "u_ada", "traits": ADA["$properties"]})
    assert record == {"user_id": "u_ada", "name": "Ada Lovelace", "city": "London",
                      "state": "England", "country": "GB",
                      "created_at": "2023-11-02T09:15:00.000Z"}  # fmt: skip


def test_the_source_is_registered_for_the_mixpanel_table():
    """`mixpanel-profiles` is a registered source, read through the Mixpanel table."""
    assert "mixpanel-profiles" in REGISTRY
    source = make_source("mixpanel-profiles")
    assert isinstance(source, MixpanelProfilesSource)
    assert source.table == "mixpanel"
    with pytest.raises(ValueError, match="takes no option"):
        make_source("mixpanel-profiles", timezone="Europe/Paris")


# --------------------------------------------------------------------------- end to end


class Cli:
    """The miso-adapter command line against one store and the fake Miso."""

    def __init__(self, folder: Path, miso: FakeMiso) -> None:
        self.store_url = f"sqlite:///{folder}/adapter.db"  # folder is absolute: 4 slashes
        self.env = clean_env(
            MISO_API_URL=miso.url,
            MISO_API_KEY=MISO_KEY,
            ADAPTER_STORE=self.store_url,
            ADAPTER_BACKOFF_BASE="0.05",
            ADAPTER_BACKOFF_CAP="0.3",
        )

    def run(self, *args: str | Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "adapter.cli", *map(str, args)],
            env=self.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    def replay(self, path: Path) -> subprocess.CompletedProcess:
        """``replay mixpanel-profiles PATH``: it exits 0 once the users are uploaded and
        Miso's Users API tasks have ended well, leaving nothing in the spool."""
        done = self.run("replay", "mixpanel-profiles", path)
        assert done.returncode == 0, done.stderr[-4000:]
        assert "0 malformed" in done.stderr, done.stderr[-4000:]
        assert self.spool() == 0
        return done

    def spool(self) -> int:
        store = open_store(self.store_url, readonly=True)
        try:
            return store.stats()["spool"]
        finally:
            store.close()


@pytest.fixture(scope="module")
def miso():
    with FakeMiso(api_key=MISO_KEY) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _fresh_miso(miso):
    miso.reset()


@pytest.fixture(scope="module")
def user_record_errors():
    """Miso's UserRecord schema (vendored), as a function: a record's errors."""
    text = resources.files("adapter").joinpath("data/miso-users.schema.json").read_text()
    validator = Draft202012Validator(orjson.loads(text), format_checker=FormatChecker())
    return lambda record: [e.message for e in validator.iter_errors({"data": [record]})]


def test_profiles_become_miso_users_with_name_and_place_but_no_contact(
    tmp_path, miso, user_record_errors
):
    """A people export becomes one Miso user per person: the name ($name, else $first_name
    and $last_name), city, state and country; no e-mail or phone; a later profile's property
    wins; an anonymous visitor's profile waits for its user. Every stored record is a valid
    UserRecord, and reading the file again sends nothing."""
    ada_moved = {"$distinct_id": "u_ada", "$properties": {**ADA["$properties"], "$city": "Paris"}}
    path = tmp_path / "people.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl([ADA, ALAN, VISITOR, ada_moved])))
    cli = Cli(tmp_path, miso)
    cli.replay(path)
    users = miso.wait_for_users(2, timeout=30)
    assert users == {
        "u_ada": {"user_id": "u_ada", "name": "Ada Lovelace", "city": "Paris",
                  "state": "England", "country": "GB", "created_at": "2023-11-02T09:15:00.000Z"},
        "u_alan": {"user_id": "u_alan", "name": "Alan Turing", "city": "Wilmslow",
                   "state": "Cheshire", "country": "GB"},
    }  # fmt: skip
    uploaded = [record for upload in miso.user_uploads for record in upload]
    assert uploaded
    for record in uploaded:
        assert user_record_errors(record) == [], record
        assert "ada@example.com" not in orjson.dumps(record).decode()
    assert all(r.status == 200 for r in miso.requests if r.path.startswith("/v1/users"))
    assert cli.spool() == 0

    miso.reset()
    again = cli.replay(path)
    assert "duplicates: 4" in again.stderr
    assert miso.user_uploads == []


def test_a_changed_profile_is_uploaded_again_whole(tmp_path, miso):
    """A later export where a person changed is applied: Miso gets their whole record again,
    the unchanged fields kept."""
    cli = Cli(tmp_path, miso)
    first = tmp_path / "monday.jsonl"
    first.write_bytes(jsonl([ADA, ALAN]))
    cli.replay(first)
    miso.wait_for_users(2, timeout=30)
    miso.reset()
    later = tmp_path / "tuesday.json"
    moved = {**ALAN["$properties"], "$city": "Cambridge", "$region": None}
    later.write_bytes(orjson.dumps(page([ADA, {"$distinct_id": "u_alan", "$properties": moved}])))
    cli.replay(later)
    assert miso.wait_for_users(1, timeout=30) == {
        "u_alan": {"user_id": "u_alan", "name": "Alan Turing", "city": "Cambridge",
                   "country": "GB"},
    }  # fmt: skip


def test_replaying_an_events_export_says_it_is_the_wrong_file(tmp_path, miso):
    """An events export given to `replay mixpanel-profiles` sends nothing, and the summary
    says the rows are event rows for `replay mixpanel`."""
    row = {"event": "Product Viewed", "properties": {"time": 1718031512, "distinct_id": "u1",
                                                     "product_id": "sku-1"}}  # fmt: skip
    path = tmp_path / "export.jsonl"
    path.write_bytes(jsonl([row] * 3))
    done = Cli(tmp_path, miso).run("replay", "mixpanel-profiles", path)
    assert f"3  {NOT_A_PROFILE}: a Mixpanel event row" in done.stderr
    assert "replay mixpanel` reads those" in done.stderr
    assert miso.records == []
    assert miso.user_uploads == []


def test_the_replay_help_names_the_source(capsys):
    """`replay -h` offers mixpanel-profiles with what its files hold."""
    from adapter import cli

    with pytest.raises(SystemExit):
        cli.main(["replay", "-h"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "mixpanel-profiles: Mixpanel people profiles" in help_text
