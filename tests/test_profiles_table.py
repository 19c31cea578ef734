"""The `profiles:` section of a mapping table: which messages change a person's profile,
and what they set; checked at load time with file:line errors like the rest of a table."""

from __future__ import annotations

import textwrap

import pytest

from adapter.identity import ProfileChange, merge_profile
from adapter.mapping import MappingError, default_mappings_dir, load_mapping, load_mapping_text

HEAD = """\
version: 1
source: shop
event_name: event
call_type: type
common:
  user_id: userId
  anonymous_id: anonymousId
  timestamp: timestamp
rules:
  - calls: [identify]
    skip: identity call, not an interaction
profiles:
"""


def table(body: str) -> str:
    return HEAD + textwrap.indent(textwrap.dedent(body), "  ")


def changes(body: str, message: dict) -> list[ProfileChange]:
    return load_mapping_text(table(body), "shop.yaml").translate(message).profiles


IDENTIFY = {
    "type": "identify",
    "userId": "u1",
    "anonymousId": "a1",
    "timestamp": "2024-05-01T10:00:00Z",
    "traits": {"name": "Ada", "plan": None},
}


def test_an_entry_merges_an_object_and_sets_one_key():
    """`set: {traits: PATH}` gives the whole object (nulls kept, to remove keys) and
    `PART.KEY: PATH` one key; the change carries both ids, the time and the table."""
    [change] = changes(
        "- calls: [identify]\n  set: {traits: traits, group.groupId: traits.name}\n", IDENTIFY
    )
    assert change == ProfileChange(
        "u1",
        "a1",
        {"traits": {"name": "Ada", "plan": None}, "group": {"groupId": "Ada"}},
        1714557600.0,
        "shop",
    )


def test_messages_no_entry_matches_change_nothing():
    """A track call, or an identify without traits, changes no profile."""
    body = "- calls: [identify]\n  set: {traits: traits}\n"
    assert changes(body, {"type": "track", "event": "x", "userId": "u1"}) == []
    assert changes(body, {"type": "identify", "userId": "u1"}) == []
    assert changes(body, {"type": "identify", "traits": {"a": 1}}) == []  # nobody's


def test_events_match_by_normalised_name_and_ids_can_be_named():
    """`events:` match names as rules do; `user:` reads the id from another path."""
    body = "- events: [Profile Updated]\n  user: properties.uid\n  set: {traits: properties}\n"
    [change] = changes(body, {"event": "profile_updated", "properties": {"uid": "u9", "x": 1}})
    assert (change.user_id, change.changes) == ("u9", {"traits": {"uid": "u9", "x": 1}})


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            "- calls: [identify]\n  set: {address: traits.address}\n",
            "shop.yaml:14: profiles[0].set.address: 'address' is not a part of a profile: set "
            "traits, group (an object, merged key by key) or one key of them (traits.plan)",
        ),
        (
            "- set: {traits: traits}\n",
            "shop.yaml:13: profiles[0]: a profiles entry needs 'events' or 'calls' to match on",
        ),
        (
            "- calls: [identify]\n",
            "shop.yaml:13: profiles[0].set: required key is missing",
        ),
    ],
    ids=["unknown-part", "no-matcher", "no-set"],
)
def test_a_bad_entry_is_a_located_error(body, error):
    """A bad entry fails the load, naming file, line and key."""
    with pytest.raises(MappingError) as caught:
        load_mapping_text(table(body), "shop.yaml")
    assert error in [str(p) for p in caught.value.problems]


def test_merging_later_wins_null_removes_nested_objects_replace():
    """merge_profile: a later value wins, None removes the key, a nested object is one
    value, and a part left empty is dropped."""
    profile = {"traits": {"name": "Ada", "address": {"city": "Paris", "zip": "75001"}}}
    merge_profile(profile, {"traits": {"address": {"city": "Lyon"}, "age": 3}})
    assert profile == {"traits": {"name": "Ada", "address": {"city": "Lyon"}, "age": 3}}
    merge_profile(profile, {"traits": {"name": None, "address": None, "age": None}})
    assert profile == {}


def test_the_default_tables_profile_identify_group_and_people_profiles():
    """segment.yaml: identify merges traits and group sets the groupId; mixpanel.yaml: a
    $profile event merges its properties."""
    segment = load_mapping(default_mappings_dir() / "segment.yaml")
    [group] = segment.translate({"type": "group", "userId": "u1", "groupId": "g1"}).profiles
    assert group.changes == {"group": {"groupId": "g1"}}
    mixpanel = load_mapping(default_mappings_dir() / "mixpanel.yaml")
    event = {"event": "$profile", "user_id": "u1", "properties": {"$city": "Oslo"}}
    [profile] = mixpanel.translate(event).profiles
    assert (profile.changes, profile.table) == ({"traits": {"$city": "Oslo"}}, "mixpanel")
