"""The `users:` section of the mapping tables: a user's merged traits → one Miso UserRecord.

Every expected record is worked out by hand from mappings/README.md (§ "Users: merged traits
to Miso user records") and the `users:` sections of the shipped tables, and every record any
test here produces is checked against Miso's UserRecord schema (the vendored
adapter/data/miso-users.schema.json) with format checks on.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import textwrap
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from adapter import cli, users
from adapter.mapping import MappingError, load_mapping, load_mapping_text

ROOT = Path(__file__).resolve().parent.parent
USER = "usr_81f3k2p9"

# --------------------------------------------------------------------------- helpers


@functools.cache
def _schema() -> dict[str, Any]:
    return json.loads(files("adapter").joinpath("data/miso-users.schema.json").read_text("utf-8"))


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def assert_valid_for_miso(record: dict) -> None:
    """The record, as serialised, is accepted by Miso's POST /v1/users body schema."""
    wire = orjson.loads(orjson.dumps(record))
    problems = [e.message for e in _validator().iter_errors({"data": [wire]})]
    assert not problems, f"record rejected by Miso's schema: {problems}: {record}"
    assert not wire["user_id"].startswith("_")
    if "profile_image" in wire:
        # jsonschema checks "uri" only with an optional package: check it here.
        parts = urlsplit(wire["profile_image"])
        assert parts.scheme in ("http", "https") and parts.hostname


@functools.cache
def _table(name: str) -> users.UsersMapping:
    mapping = load_mapping(ROOT / "mappings" / f"{name}.yaml").users
    assert mapping is not None
    return mapping


def segment_user(traits: dict | None = None, **merged: Any) -> dict | None:
    """The default Segment table's record for a user's merged data, checked for Miso."""
    data = {"user_id": USER, "traits": traits or {}, **merged}
    record = _table("segment")(data)
    if record is not None:
        assert_valid_for_miso(record)
    return record


def mixpanel_user(properties: dict, user_id: Any = USER) -> dict | None:
    """The default Mixpanel table's record for a user's merged profile properties."""
    record = _table("mixpanel")({"user_id": user_id, "traits": properties})
    if record is not None:
        assert_valid_for_miso(record)
    return record


# Segment's reserved identify traits, all of them, as one user's merged traits.
ADA = {
    "name": "Ada Lovelace",
    "firstName": "Ada",
    "lastName": "Lovelace",
    "email": "ada@example.com",
    "phone": "+44 20 7946 0958",
    "age": "33",
    "gender": "female",
    "description": "Writes programs for engines",
    "address": {
        "street": "12 St James's Square",
        "city": "London",
        "state": "Greater London",
        "postalCode": "SW1Y 4JH",
        "country": "GB",
    },
    "birthday": "1990-12-10",
    "createdAt": "2024-03-05T14:07:09+01:00",
    "avatar": "https://cdn.example.com/u/ada.png",
    "company": {
        "id": "acct_17",
        "name": "Analytical Engines Ltd",
        "industry": "Computing",
        "employee_count": 12,
        "plan": "enterprise",
    },
    "plan": "pro",
    "title": "Lead Programmer",
    "username": "ada",
    "website": "https://ada.example.com",
    "id": "usr_81f3k2p9",
    "logins": 12,
}

PRIVATE = ("ada@example.com", "+44 20 7946 0958", "12 St James's Square", "1990-12-10", "SW1Y")


# --------------------------------------------------------------------------- Segment


def test_segment_identify_traits_become_the_whole_record():
    """Every reserved trait the default Segment table maps lands in its UserRecord field."""
    assert segment_user(ADA) == {
        "user_id": USER,
        "name": "Ada Lovelace",
        "age": 33,
        "gender": "female",
        "description": "Writes programs for engines",
        "city": "London",
        "state": "Greater London",
        "country": "GB",
        "created_at": "2024-03-05T13:07:09.000Z",
        "profile_image": "https://cdn.example.com/u/ada.png",
        "group_id": "acct_17",
        "custom_attributes": {
            "plan": "pro",
            "title": "Lead Programmer",
            "company_name": "Analytical Engines Ltd",
            "company_industry": "Computing",
            "company_plan": "enterprise",
        },
    }


def test_segment_never_sends_email_phone_street_or_birthday():
    """E-mail, phone, street address, postal code and birthday appear nowhere in the record."""
    wire = orjson.dumps(segment_user(ADA)).decode()
    for value in PRIVATE:
        assert value not in wire
    for key in ("email", "phone", "street", "birthday", "postalCode", "username", "website"):
        assert f'"{key}"' not in wire


def test_segment_custom_attributes_are_only_the_listed_traits():
    """Unlisted traits (logins, username, employee_count) are not custom attributes."""
    record = segment_user(
        {"plan": "pro", "logins": 12, "username": "ada", "company": ADA["company"]}
    )
    assert record["custom_attributes"] == {
        "plan": "pro",
        "company_name": "Analytical Engines Ltd",
        "company_industry": "Computing",
        "company_plan": "enterprise",
    }


@pytest.mark.parametrize(
    ("traits", "name"),
    [
        ({"name": "Ada Lovelace", "firstName": "Augusta", "lastName": "King"}, "Ada Lovelace"),
        ({"firstName": "Ada", "lastName": "Lovelace"}, "Ada Lovelace"),
        ({"name": "  ", "firstName": "Ada", "lastName": "Lovelace"}, "Ada Lovelace"),
        ({"firstName": "Ada"}, "Ada"),
        ({"lastName": "Lovelace"}, "Lovelace"),
        ({"firstName": " Ada ", "lastName": None}, "Ada"),
        ({}, None),
    ],
    ids=["name-wins", "first-last", "blank-name", "first-only", "last-only", "null-last", "none"],
)
def test_segment_name_falls_back_to_first_and_last_name(traits, name):
    """name is the name trait, else firstName and lastName joined by a space, else absent."""
    assert segment_user(traits).get("name") == name


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        ("33", 33),
        (33, 33),
        (33.0, 33),
        (" 41 ", 41),
        ("33.0", 33),
        (0, 0),
        ("33.5", None),
        (33.5, None),
        ("thirty", None),
        (True, None),
        (-1, None),
        (1990, None),
        ("", None),
        ([33], None),
    ],
)
def test_segment_age_is_a_whole_number(age, expected):
    """age is an integer from a whole number or numeric text; anything else is left out."""
    assert segment_user({"age": age}).get("age") == expected


@pytest.mark.parametrize(
    ("created", "expected"),
    [
        ("2024-03-05T14:07:09+01:00", "2024-03-05T13:07:09.000Z"),
        ("2024-03-05T14:07:09.123456Z", "2024-03-05T14:07:09.123Z"),
        ("2024-03-05T14:07:09", "2024-03-05T14:07:09.000Z"),
        ("2024-03-05", "2024-03-05"),
        (1709647629, "2024-03-05T14:07:09.000Z"),
        (1709647629123, "2024-03-05T14:07:09.123Z"),
        ("2024-02-30", None),
        ("last tuesday", None),
        ("", None),
        (None, None),
    ],
)
def test_segment_created_at_is_an_iso_date_time_or_date(created, expected):
    """createdAt becomes a UTC date-time with milliseconds; a bare date stays a date."""
    assert segment_user({"createdAt": created}).get("created_at") == expected


@pytest.mark.parametrize(
    ("avatar", "expected"),
    [
        ("https://cdn.example.com/u/ada.png", "https://cdn.example.com/u/ada.png"),
        (" http://cdn.example.com/a.png?s=64 ", "http://cdn.example.com/a.png?s=64"),
        ("/u/ada.png", None),
        ("cdn.example.com/u/ada.png", None),
        ("data:image/png;base64,iVBORw0KGgo=", None),
        ("https://cdn.example.com/u/ada smith.png", None),
        ("https://", None),
        ("https://cdn.example.com:99999/a.png", None),
        (42, None),
    ],
)
def test_segment_avatar_must_be_an_http_url(avatar, expected):
    """avatar becomes profile_image only as an absolute http(s) URL."""
    assert segment_user({"avatar": avatar}).get("profile_image") == expected


def test_segment_company_id_is_the_group_id_without_a_group_call():
    """Without group data, group_id is the company trait's id (numbers become text)."""
    assert segment_user({"company": {"id": "acct_17"}})["group_id"] == "acct_17"
    assert segment_user({"company": {"id": 17}})["group_id"] == "17"
    assert "group_id" not in segment_user({"company": {"name": "Acme"}})


def test_segment_group_call_wins_over_company_id():
    """The latest group call's groupId is the group_id, whatever the company trait says."""
    record = segment_user({"company": {"id": "acct_17"}}, group={"groupId": "acct_99"})
    assert record["group_id"] == "acct_99"
    record = segment_user({"company": {"id": "acct_17"}}, group={"groupId": None})
    assert record["group_id"] == "acct_17"


def test_segment_address_fields_read_the_address_trait():
    """city, state and country come from address; a non-object address is no address."""
    record = segment_user({"address": {"city": "Paris", "state": "IDF", "country": "FR"}})
    assert (record["city"], record["state"], record["country"]) == ("Paris", "IDF", "FR")
    assert segment_user({"address": "12 rue de Rivoli, Paris"}) == {"user_id": USER}


def test_without_traits_the_record_is_the_bare_user():
    """A user with no mapped traits is sent as just its id: the whole record, now empty."""
    assert segment_user({}) == {"user_id": USER}
    assert _table("segment")({"user_id": USER}) == {"user_id": USER}


@pytest.mark.parametrize(
    "merged",
    [
        {"traits": {"name": "Ada"}},
        {"user_id": None, "traits": {"name": "Ada"}},
        {"user_id": "anonymous", "traits": {"name": "Ada"}},
        {"user_id": "", "traits": {"name": "Ada"}},
        {"user_id": "_internal", "traits": {"name": "Ada"}},
        {"user_id": "u" * 513, "traits": {"name": "Ada"}},
        "usr_81f3k2p9",
        None,
    ],
    ids=["missing", "null", "placeholder", "empty", "underscore", "too-long", "not-a-dict", "none"],
)
def test_no_usable_user_id_means_no_record(merged):
    """Without a user_id Miso accepts (no placeholder, no leading '_', at most 512), None."""
    assert _table("segment")(merged) is None


def test_numeric_user_id_becomes_text():
    """A numeric user id is sent as its decimal text, as for interactions."""
    assert _table("segment")({"user_id": 1234, "traits": {}}) == {"user_id": "1234"}


# --------------------------------------------------------------------------- Mixpanel


MIXPANEL_PROFILE = {
    "$name": "Ada Lovelace",
    "$first_name": "Ada",
    "$last_name": "Lovelace",
    "$email": "ada@example.com",
    "$phone": "+44 20 7946 0958",
    "$city": "London",
    "$region": "England",
    "$country_code": "GB",
    "$timezone": "Europe/London",
    "$created": "2024-03-05T14:07:09",
    "$avatar": "https://cdn.example.com/u/ada.png",
    "$last_seen": "2024-04-01T08:00:00",
    "plan": "pro",
}


def test_mixpanel_profile_properties_become_the_whole_record():
    """The default Mixpanel table maps the reserved profile properties, and nothing else."""
    assert mixpanel_user(MIXPANEL_PROFILE) == {
        "user_id": USER,
        "name": "Ada Lovelace",
        "city": "London",
        "state": "England",
        "country": "GB",
        "created_at": "2024-03-05T14:07:09.000Z",
        "profile_image": "https://cdn.example.com/u/ada.png",
    }


def test_mixpanel_name_falls_back_to_first_and_last_name():
    """Without $name, the name is $first_name and $last_name joined by a space."""
    assert mixpanel_user({"$first_name": "Ada", "$last_name": "Lovelace"}) == {
        "user_id": USER,
        "name": "Ada Lovelace",
    }
    assert mixpanel_user({"$first_name": "Ada"})["name"] == "Ada"


def test_mixpanel_never_sends_email_or_phone():
    """$email and $phone (and unlisted properties) appear nowhere in the record."""
    record = mixpanel_user(MIXPANEL_PROFILE)
    wire = orjson.dumps(record).decode()
    assert "ada@example.com" not in wire and "7946" not in wire
    assert "custom_attributes" not in record and '"pro"' not in wire


def test_mixpanel_without_user_id_is_no_record():
    """A profile without a usable distinct id (placeholder) gives no record."""
    assert mixpanel_user(MIXPANEL_PROFILE, user_id="undefined") is None


# --------------------------------------------------------------------------- the format

HEAD = """\
version: 1
event_name: event
rules:
  - events: [Liked]
    type: like
users:
"""


def table_text(body: str, head: str = HEAD) -> str:
    """A minimal table whose users section is ``body``."""
    return head + textwrap.indent(textwrap.dedent(body), "  ")


def load_users(body: str) -> users.UsersMapping:
    """The compiled users section of a minimal table ending with ``body``."""
    mapping = load_mapping_text(table_text(body), "shop.yaml").users
    assert mapping is not None
    return mapping


def build(mapping: users.UsersMapping, merged: dict) -> dict | None:
    """The mapping's record for ``merged``, checked for Miso."""
    record = mapping(merged)
    if record is not None:
        assert_valid_for_miso(record)
    return record


def test_tables_without_a_users_section_have_no_users_mapping():
    """translator.users is None when the table has no users section."""
    assert load_mapping_text(HEAD.removesuffix("users:\n"), "shop.yaml").users is None


def test_join_separator_and_defaults():
    """A join uses its `with` text; {from, default} falls back to a converted default."""
    mapping = load_users(
        """\
        name: {join: [traits.last, traits.first], with: ", "}
        country: {from: traits.country, default: US}
        age: {from: [traits.age, traits.profile.age], default: "40"}
        """
    )
    merged = {"user_id": "u1", "traits": {"first": "Ada", "last": "Lovelace"}}
    assert build(mapping, merged) == {
        "user_id": "u1",
        "name": "Lovelace, Ada",
        "country": "US",
        "age": 40,
    }
    merged = {"user_id": "u1", "traits": {"country": "GB", "profile": {"age": 36}}}
    assert build(mapping, merged) == {"user_id": "u1", "country": "GB", "age": 36}


def test_user_id_can_be_mapped_from_another_path():
    """user_id defaults to the merged data's user_id, and may read another path."""
    mapping = load_users("user_id: [traits.id, user_id]\nname: traits.name\n")
    assert build(mapping, {"user_id": "u1", "traits": {"id": "crm-9"}}) == {"user_id": "crm-9"}
    assert build(mapping, {"user_id": "u1", "traits": {"name": "Ada"}}) == {
        "user_id": "u1",
        "name": "Ada",
    }


def test_explicit_custom_attributes_may_send_a_private_trait():
    """E-mail reaches Miso only when a table names it under custom_attributes, by name."""
    mapping = load_users("custom_attributes:\n  - email: traits.email\n")
    merged = {"user_id": "u1", "traits": {"email": "ada@example.com", "phone": "1"}}
    assert build(mapping, merged) == {
        "user_id": "u1",
        "custom_attributes": {"email": "ada@example.com"},
    }


def test_custom_attribute_names_and_values():
    """A path is named by its last key; NAME: spec by NAME; unsendable values are left out."""
    mapping = load_users(
        """\
        custom_attributes:
          - traits.plan
          - traits.tags
          - traits.scores
          - traits['Favourite Genre']
          - traits.orders[]
          - traits.beta
          - traits.company
          - traits.mixed
          - seats: {from: traits.company.seats, default: 1}
          - source: {value: segment}
        """
    )
    traits = {
        "plan": "pro",
        "tags": ["drama", "romance"],
        "scores": [1, 2.5],
        "Favourite Genre": "jazz",
        "orders": [{"id": "o1", "total": 30, "gift": False, "note": None}, {"id": "o2"}],
        "beta": False,
        "company": {"name": "Acme"},
        "mixed": ["a", 1],
    }
    assert build(mapping, {"user_id": "u1", "traits": traits}) == {
        "user_id": "u1",
        "custom_attributes": {
            "plan": "pro",
            "tags": ["drama", "romance"],
            "scores": [1, 2.5],
            "Favourite Genre": "jazz",
            "orders": [{"id": "o1", "total": 30, "gift": False}, {"id": "o2"}],
            "beta": False,
            "seats": 1,
            "source": "segment",
        },
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("pro", "pro"),
        ("  pro ", "pro"),
        ("", None),
        (0, 0),
        (2.5, 2.5),
        (float("nan"), None),
        (True, True),
        (None, None),
        ([], None),
        (["a", "", "b"], ["a", "b"]),
        ([1, 2], [1, 2]),
        ([1, True], None),
        (["a", 1], None),
        ([["a"]], None),
        ({"a": 1}, None),
        ([{"a": 1, "b": "x", "c": True}], [{"a": 1, "b": "x", "c": True}]),
        ([{"a": {"nested": 1}}], None),
        ([{"a": None}], None),
    ],
)
def test_attribute_values_are_those_miso_accepts(value, expected):
    """to_attribute_value keeps what UserRecord's custom_attributes accept, else None."""
    got = users.to_attribute_value(value)
    assert got == expected
    if got is not None:
        assert_valid_for_miso({"user_id": "u1", "custom_attributes": {"k": got}})


def test_user_fields_are_exactly_userrecords_properties():
    """The section maps exactly UserRecord's properties, each with its conversion."""
    properties = set(_schema()["$defs"]["UserRecord"]["properties"])
    assert {*users.USER_FIELDS, users.ATTRIBUTE_FIELD} == properties


def test_format_checker_covers_user_record_formats():
    """jsonschema really checks date-time and date, so validity of created_at means something."""
    assert {"date-time", "date"} <= set(Draft202012Validator.FORMAT_CHECKER.checkers)
    bad = {"user_id": "u1", "created_at": "yesterday"}
    assert not _validator().is_valid({"data": [bad]})


# --------------------------------------------------------------------------- errors


def problems(body: str, head: str = HEAD) -> list[str]:
    """The rendered problems of a table ending with ``body`` that must fail to load."""
    with pytest.raises(MappingError) as caught:
        load_mapping_text(table_text(body, head), "shop.yaml")
    return [str(p) for p in caught.value.problems]


ERRORS = [
    (
        "unknown-field",
        "name: traits.name\nemail: traits.email\n",
        "shop.yaml:8: users.email: 'email' is not a field of Miso's UserRecord (it has: user_id, "
        "name, age, gender, description, city, state, country, created_at, updated_at, "
        "profile_image, group_id, custom_attributes); to send another trait, list it under "
        "custom_attributes",
    ),
    (
        "path-outside-the-merged-data",
        "name: name\n",
        "shop.yaml:7: users.name: bad path 'name': a user's merged data holds user_id, traits, "
        "group (did you mean 'traits.name'?)",
    ),
    (
        "malformed-path-in-fallbacks",
        "name:\n  - traits.name\n  - traits..full\n",
        "shop.yaml:9: users.name[1]: bad path 'traits..full': empty key at position 8",
    ),
    (
        "event-root-has-no-meaning",
        "name: $event\n",
        "shop.yaml:7: users.name: bad path '$event': $event means nothing here; paths read the "
        "user's merged data: user_id, traits, group",
    ),
    (
        "bad-path-in-join",
        "name:\n  - traits.name\n  - join: [traits.first, 'traits.last[']\n",
        "shop.yaml:9: users.name[1].join[1]: bad path 'traits.last[': "
        "unexpected '[' at position 12",
    ),
    (
        "number-instead-of-path",
        "age: 33\n",
        "shop.yaml:7: users.age: 33 is not a path; for a constant write {value: 33}",
    ),
    (
        "constant-that-does-not-convert",
        "age: {value: old}\n",
        "shop.yaml:7: users.age: constant 'old' is not a valid value here",
    ),
    (
        "default-that-does-not-convert",
        "profile_image: {from: traits.avatar, default: /img/anon.png}\n",
        "shop.yaml:7: users.profile_image: default '/img/anon.png' is not a valid value here",
    ),
    (
        "join-without-a-list",
        "name: {join: traits.first}\n",
        "shop.yaml:7: users.name: join takes a list of paths: {join: [traits.a, traits.b]}",
    ),
    (
        "attributes-not-a-list",
        "custom_attributes: 5\n",
        "shop.yaml:7: users.custom_attributes: 5 is not a list; expected a list of paths "
        "(traits.plan) and NAME: value spec entries",
    ),
    (
        "attribute-named-twice",
        "custom_attributes:\n  - traits.plan\n  - traits.company.plan\n",
        "shop.yaml:9: users.custom_attributes[1]: custom attribute 'plan' is already set at "
        "line 8; name this one: `- OTHER_NAME: traits.company.plan`",
    ),
    (
        "attribute-with-bad-spec",
        "custom_attributes:\n  - traits.plan\n  - seats: 12\n",
        "shop.yaml:9: users.custom_attributes[1].seats: 12 is not a path; for a constant write "
        "{value: 12}",
    ),
    (
        "constant-user-id",
        "user_id: {value: everyone}\n",
        "shop.yaml:7: users.user_id: a user's id must come from the user's data, not a constant",
    ),
    (
        "section-is-a-list",
        "- traits.name\n",
        "shop.yaml:6: users: the users section is a mapping of UserRecord field: value spec",
    ),
    (
        "empty-section",
        "",
        "shop.yaml:6: users: empty section; map at least one UserRecord field, or remove it",
    ),
]


@pytest.mark.parametrize(("body", "expected"), [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_broken_users_section_names_file_line_and_key(body, expected):
    """Each mistake in a users section is one located problem, worded for the table's author."""
    assert problems(body) == [expected]


@pytest.mark.parametrize(
    ("rule_mistake", "users_mistake"),
    [
        ("    colour: red\n", "email: traits.email\n"),  # both caught by the file's schema
        ("    type: liek\n", "age: {value: old}\n"),  # both caught when compiling
    ],
    ids=["schema", "compile"],
)
def test_users_problems_are_reported_with_the_rest_of_the_table(rule_mistake, users_mistake):
    """One load reports a users mistake together with a rule's mistake, in line order."""
    head = HEAD.replace("    type: like\n", rule_mistake)
    found = problems(users_mistake, head)
    assert [p.split(":", 2)[1] for p in found] == ["5", "7"]
    assert found[0].startswith("shop.yaml:5: rules[0].") and "shop.yaml:7: users." in found[1]


# --------------------------------------------------------------------------- shipped tables


def test_mappings_check_passes_on_the_shipped_tables():
    """`miso-adapter mappings check` still accepts both shipped tables with their users section."""
    done = subprocess.run(
        [sys.executable, "-m", "adapter.cli", "mappings", "check"],
        capture_output=True,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert "segment.yaml" in out and "mixpanel.yaml" in out


def test_mappings_check_names_a_broken_users_line(tmp_path, capsys):
    """A broken users edit makes `mappings check` exit 1 naming the file, line and key."""
    folder = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", folder)
    table = folder / "segment.yaml"
    text = table.read_text()
    table.write_text(text.replace("  gender: traits.gender\n", "  phone: traits.phone\n"))
    line = text.splitlines().index("  gender: traits.gender") + 1
    assert cli.main(["mappings", "check", "--dir", str(folder)]) == 1
    err = capsys.readouterr().err
    assert f"{table}:{line}: users.phone: 'phone' is not a field of Miso's UserRecord" in err


@pytest.mark.parametrize("name", ["segment", "mixpanel"])
def test_shipped_tables_map_no_private_trait(name):
    """The default tables name no e-mail, phone, street or birthday path anywhere in users."""
    text = (ROOT / "mappings" / f"{name}.yaml").read_text()
    section = text.split("\nusers:\n", 1)[1].split("\nrules:\n", 1)[0]
    paths = re.findall(r"traits\.[\w.$]+", section)
    assert paths
    for path in paths:
        assert not re.search(r"email|phone|street|birthday", path, re.I), path


def test_readme_users_example_compiles_and_does_what_it_says():
    """The users example in mappings/README.md is a valid section with the documented result."""
    doc = (ROOT / "mappings" / "README.md").read_text()
    section = doc.split("## Users: merged traits to Miso user records", 1)[1]
    example = re.search(r"```yaml\n(users:\n.+?)```", section, re.S).group(1)
    merged = json.loads(re.search(r"```json\n(.+?)```", section, re.S).group(1))
    mapping = load_mapping_text(HEAD.removesuffix("users:\n") + example, "README").users
    assert build(mapping, merged) == {
        "user_id": "usr_81f3k2p9",
        "name": "Ada Lovelace",
        "city": "London",
        "group_id": "acct_17",
    }
    merged["traits"] |= {"plan": "pro", "company": {"plan": "enterprise"}}
    assert build(mapping, merged)["custom_attributes"] == {
        "plan": "pro",
        "company_plan": "enterprise",
    }


def test_readme_users_error_example_is_the_real_message():
    """The error shown in the README's users section is worded exactly as the loader words it."""
    doc = (ROOT / "mappings" / "README.md").read_text()
    shown = re.search(r"error: \S+:\d+: (users\.email: .+)", doc).group(1)
    found = problems("name: traits.name\nemail: traits.email\n")
    assert found[0].split(": ", 1)[1] == shown


# --------------------------------------------------------------------------- any input

_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["33", "2024-03-05", "2024-03-05T14:07:09Z", "https://x.example/a.png"]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_TRAIT_KEYS = st.sampled_from(
    [
        "name", "firstName", "lastName", "age", "gender", "description", "address", "createdAt",
        "avatar", "company", "plan", "title", "$name", "$first_name", "$last_name", "$city",
        "$region", "$country_code", "$created", "$avatar",
    ]
)  # fmt: skip
_MERGED = st.fixed_dictionaries(
    {"user_id": st.one_of(st.text(min_size=1, max_size=10), st.integers(), st.none())},
    optional={
        "traits": st.dictionaries(_TRAIT_KEYS, _JSON, max_size=8),
        "group": st.dictionaries(st.just("groupId"), _JSON),
    },
)


@settings(max_examples=300, deadline=None)
@given(_MERGED)
def test_any_merged_data_gives_a_record_miso_accepts_or_none(merged):
    """Whatever the merged traits hold, both shipped tables give a valid UserRecord or None."""
    for name in ("segment", "mixpanel"):
        record = _table(name)(merged)
        if record is not None:
            assert_valid_for_miso(record)
