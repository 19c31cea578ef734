"""Broken mapping files: every problem is reported with file, line and key, never a traceback."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from adapter import cli
from adapter.mapping import MappingError, load_mapping, load_mapping_text

ROOT = Path(__file__).resolve().parent.parent

GOOD_HEAD = """\
version: 1
event_name: event
common:
  user_id: userId
rules:
"""


def problems(text: str) -> list[str]:
    """The rendered problems of a mapping text that must fail to load."""
    with pytest.raises(MappingError) as caught:
        load_mapping_text(textwrap.dedent(text), "bad.yaml")
    return [str(p) for p in caught.value.problems]


# (case id, file text, one expected problem line exactly as printed)
CASES = [
    (
        "unknown-miso-type",
        GOOD_HEAD + "  - events: [Purchase]\n    type: purchase\n",
        "bad.yaml:7: rules[0].type: unknown Miso type 'purchase'; expected one of: "
        "product_detail_page_view, search, add_to_cart, remove_from_cart, checkout, refund, "
        "subscribe, unsubscribe, add_to_collection, remove_from_collection, read, watch, listen, "
        "like, dislike, share, rate, bookmark, complete, feedback, impression, "
        "viewable_impression, click, submit, home_page_view, category_page_view, "
        "promo_page_view, product_image_view, custom",
    ),
    (
        "field-not-allowed-on-type",
        GOOD_HEAD + "  - events: [Searched]\n    type: search\n    fields:\n"
        "      product_ids: properties.ids\n",
        "bad.yaml:9: rules[0].fields.product_ids: 'product_ids' is not allowed on this Miso "
        "type; it allows: anonymous_id, context, miso_id, search, timestamp, user_id",
    ),
    (
        "yaml-syntax-error",
        GOOD_HEAD + "  - events: [Like\n    type: like\n",
        "bad.yaml:7: -: YAML syntax error: while parsing a flow sequence (started at line 6), "
        "expected ',' or ']', but got ':'",
    ),
    (
        "duplicate-key",
        GOOD_HEAD + "  - events: [Like]\n    type: like\n    type: dislike\n",
        "bad.yaml:8: rules[0].type: duplicate key 'type' (first at line 7)",
    ),
    (
        "misspelt-key",
        GOOD_HEAD + "  - events: [Like]\n    type: like\n    feilds: {}\n",
        "bad.yaml:8: rules[0].feilds: unknown key",
    ),
    (
        "missing-rules",
        "version: 1\nevent_name: event\n",
        "bad.yaml:1: rules: required key is missing",
    ),
    (
        "type-and-skip",
        GOOD_HEAD + "  - events: [Like]\n    type: like\n    skip: not wanted\n",
        "bad.yaml:6: rules[0]: a rule needs exactly one of 'type' (the Miso type to emit) "
        "or 'skip' (a reason)",
    ),
    (
        "no-matcher",
        GOOD_HEAD + "  - type: like\n",
        "bad.yaml:6: rules[0]: a rule needs 'events', 'event_patterns', 'calls' or 'pages' "
        "to match on",
    ),
    (
        "event-claimed-twice",
        GOOD_HEAD + "  - events: [Like]\n    type: like\n  - events: [Dislike, like]\n"
        "    type: dislike\n",
        "bad.yaml:8: rules[1].events[1]: 'like' is already matched by the rule at line 6; "
        "an event may be claimed by one rule only",
    ),
    (
        "bad-regex",
        "version: 1\nevent_name: event\ncall_type: type\npage_views:\n  calls: [page]\n"
        "  path: properties.path\nrules:\n  - pages: ['^/(?P<id[^/]+)']\n    type: click\n",
        "bad.yaml:8: rules[0].pages[0]: bad regular expression: "
        "missing >, unterminated name at position 6",
    ),
    (
        "capture-not-in-pattern",
        "version: 1\nevent_name: event\ncall_type: type\npage_views:\n  calls: [page]\n"
        "  path: properties.path\nrules:\n  - pages: ['^/p/(?P<pid>[^/]+)']\n    type: click\n"
        "    fields:\n      product_ids: $match.product_id\n",
        "bad.yaml:11: rules[0].fields.product_ids: no page pattern of this rule captures "
        "(?P<product_id>…)",
    ),
    (
        "match-outside-page-rule",
        GOOD_HEAD + "  - events: [Like]\n    type: like\n    fields:\n"
        "      product_ids: $match.id\n",
        "bad.yaml:9: rules[0].fields.product_ids: $match.NAME only works in a rule with "
        "`pages:` patterns",
    ),
    (
        "unknown-item-list",
        GOOD_HEAD + "  - events: [Like]\n    type: like\n    items: prods\n",
        "bad.yaml:8: rules[0].items: no item list named 'prods' (none are defined)",
    ),
    (
        "bad-constant",
        GOOD_HEAD + "  - events: [Rated]\n    type: rate\n    fields:\n"
        "      rating: {value: excellent}\n",
        "bad.yaml:9: rules[0].fields.rating: constant 'excellent' is not a valid value here",
    ),
    (
        "bare-number-is-not-a-path",
        GOOD_HEAD + "  - events: [Rated]\n    type: rate\n    fields:\n      rating: 5\n",
        "bad.yaml:9: rules[0].fields.rating: 5 is not a path; for a constant write {value: 5}",
    ),
    (
        "bad-path",
        GOOD_HEAD + "  - events: [Like]\n    type: like\n    fields:\n"
        "      product_ids: properties..id\n",
        "bad.yaml:9: rules[0].fields.product_ids: bad path 'properties..id': "
        "empty key at position 12",
    ),
    (
        "unknown-context-field",
        "version: 1\nevent_name: event\ncommon:\n  user_id: userId\n"
        "  context.browser: context.userAgent\nrules: []\n",
        "bad.yaml:5: common.context.browser: 'context.browser' is not a Miso context field; "
        "known: context.campaign.name, context.campaign.source, context.campaign.medium, "
        "context.campaign.term, context.campaign.content, context.truncated_ip, "
        "context.locale, context.region, context.page.url, context.page.referrer, "
        "context.page.title, context.user_agent, context.custom_context.KEY",
    ),
    (
        "type-specific-field-in-common",
        "version: 1\nevent_name: event\ncommon:\n  user_id: userId\n"
        "  product_ids: properties.product_id\nrules: []\n",
        "bad.yaml:5: common.product_ids: common fields apply to every type, so only "
        "anonymous_id, context, miso_id, timestamp, user_id (and context.*) may be set here",
    ),
    (
        "items-on-type-without-products",
        "version: 1\nevent_name: event\nitems:\n  p: {from: properties, product_ids: sku}\n"
        "rules:\n  - events: [Home]\n    type: home_page_view\n    items: p\n",
        "bad.yaml:8: rules[0].items: 'home_page_view' does not allow product_ids, "
        "so it takes no items",
    ),
    (
        "wrong-version",
        "version: 2\nevent_name: event\nrules: []\n",
        "bad.yaml:1: version: only version 1 exists",
    ),
    (
        "not-a-mapping",
        "- just\n- a list\n",
        "bad.yaml:1: -: a mapping file is a YAML mapping with at least 'rules'",
    ),
    (
        "empty-file",
        "",
        "bad.yaml:1: -: a mapping file is a YAML mapping with at least 'rules'",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_problem_names_file_line_and_key(text, expected):
    """Each kind of mistake is reported as `file:line: key: message`."""
    assert expected in problems(text)


def test_every_problem_is_reported_at_once():
    """Several mistakes in one file are all listed, in line order, not just the first."""
    text = GOOD_HEAD + (
        "  - events: [A]\n    type: purchase\n"
        "  - events: [B]\n    type: search\n    fields:\n      revenue: properties.total\n"
    )
    found = problems(text)
    assert [p.split(":")[1] for p in found] == ["7", "11"]


def test_error_shows_in_loaded_file_name(tmp_path):
    """Loading from disk reports the path the user gave."""
    path = tmp_path / "segment.yaml"
    path.write_text(GOOD_HEAD + "  - events: [X]\n    type: nope\n")
    with pytest.raises(MappingError) as caught:
        load_mapping(path)
    assert str(caught.value).startswith(f"{path}:7: rules[0].type: unknown Miso type 'nope'")


def test_unreadable_file(tmp_path):
    """A file that cannot be decoded is a reported problem, not a crash."""
    path = tmp_path / "segment.yaml"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(MappingError, match="cannot read the file"):
        load_mapping(path)


class TestCheckCommand:
    @pytest.fixture
    def folder(self, tmp_path):
        """A copy of the shipped mapping folder to break."""
        target = tmp_path / "mappings"
        shutil.copytree(ROOT / "mappings", target, ignore=shutil.ignore_patterns("*.md"))
        return target

    def test_shipped_mappings_pass(self, capsys):
        """The default tables are valid: exit 0 and an ok line per file."""
        assert cli.main(["mappings", "check"]) == 0
        out = capsys.readouterr().out
        assert "ok: " in out and "segment.yaml: 18 rules" in out

    @pytest.mark.parametrize(
        ("edit", "expected"),
        [
            (
                ("type: search", "type: serach"),
                "segment.yaml:{line}: rules[0].type: unknown Miso type 'serach'",
            ),
            (
                (
                    "      category: properties.category",
                    "      category: properties.category\n      product_ids: properties.sku",
                ),
                "segment.yaml:{next}: rules[1].fields.product_ids: 'product_ids' is not allowed",
            ),
            (
                ("unmatched: skip", "unmatched: [skip"),
                "-: YAML syntax error: while parsing a flow sequence (started at line {line})",
            ),
        ],
        ids=["unknown-type", "field-not-allowed", "yaml-syntax"],
    )
    def test_broken_file_exits_1_with_location(self, folder, capsys, edit, expected):
        """A broken edit makes `mappings check` exit 1 naming file, line and key."""
        path = folder / "segment.yaml"
        text = path.read_text()
        assert edit[0] in text
        path.write_text(text.replace(edit[0], edit[1], 1))
        line = text[: text.index(edit[0])].count("\n") + 1
        assert cli.main(["mappings", "check", "--dir", str(folder)]) == 1
        captured = capsys.readouterr()
        assert expected.format(line=line, next=line + 1) in captured.err
        assert captured.err.startswith(f"error: {path}:")
        assert "Traceback" not in captured.err + captured.out

    def test_empty_folder_is_an_error(self, tmp_path, capsys):
        """A folder without mapping files fails the check rather than passing vacuously."""
        assert cli.main(["mappings", "check", "--dir", str(tmp_path)]) == 1
        assert "no mapping files" in capsys.readouterr().err

    def test_mappings_dir_environment_variable(self, folder, monkeypatch, capsys):
        """Without --dir, MAPPINGS_DIR picks the folder."""
        (folder / "segment.yaml").write_text("rules: 3\n")
        monkeypatch.setenv("MAPPINGS_DIR", str(folder))
        assert cli.main(["mappings", "check"]) == 1
        assert "event_name: required key is missing" in capsys.readouterr().err
