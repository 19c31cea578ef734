"""Mapping tests (adapter/mapping_tests.py) and the cases shipped in mappings/tests/.

The shipped cases must pass and exercise every rule of both default tables; a broken
rule must show up as a readable diff; broken case files and missing tables must be
reported with file, line and key, never as a traceback.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from adapter.mapping import Explanation, load_mapping, normalize_name
from adapter.mapping_tests import Failure, TestReport, render, run_mapping_tests
from adapter.sources.mixpanel import Normalizer

ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "mappings"
SUMMARY = re.compile(r"^\d+ passed, \d+ failed$")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A private copy of the shipped mappings/ folder, tables and tests, to break at will."""
    copy = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, copy)
    return copy


def edit(path: Path, old: str, new: str) -> None:
    """Replace one exact occurrence of ``old`` in a file (fails loudly if it is not there)."""
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path}"
    path.write_text(text.replace(old, new))


def write_cases(folder: Path, name: str, text: str) -> Path:
    path = folder / "tests" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def only_file(folder: Path, name: str, text: str) -> Path:
    """Make ``name`` the only case file of ``folder``."""
    shutil.rmtree(folder / "tests", ignore_errors=True)
    return write_cases(folder, name, text)


# --------------------------------------------------------------------------- shipped cases


def shipped_cases() -> dict[str, list[dict]]:
    """Every shipped case, by table name."""
    out: dict[str, list[dict]] = {}
    for path in sorted((MAPPINGS / "tests").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        out.setdefault(data["table"], []).extend(data["cases"])
    return out


def rule_of(rules: list[dict], seen: Explanation) -> int | str:
    """The index of the rule an explanation names (or "unmatched"), checked against it."""
    if seen.outcome == "uncovered":
        return "unmatched"
    if seen.key.startswith("page "):
        path = seen.key[len("page ") :]
        index = next(
            i for i, r in enumerate(rules) if any(re.search(p, path) for p in r.get("pages", []))
        )
    else:
        name = normalize_name(seen.key)
        by_name = [
            i for i, r in enumerate(rules) if name in map(normalize_name, r.get("events", []))
        ]
        by_pattern = [
            i
            for i, r in enumerate(rules)
            if any(re.search(p, seen.key, re.IGNORECASE) for p in r.get("event_patterns", []))
        ]
        by_call = [
            i
            for i, r in enumerate(rules)
            if seen.key.casefold() in map(str.casefold, r.get("calls", []))
        ]
        index = (by_name or by_pattern or by_call)[0]
    rule = rules[index]
    if seen.outcome == "mapped":
        assert rule.get("type") == seen.type, (rule, seen)
    else:
        assert rule.get("skip") == seen.detail, (rule, seen)
    return index


@pytest.mark.parametrize("table", ["segment", "mixpanel"])
def test_shipped_cases_exercise_every_rule(table):
    """Every rule of a default table, and its unmatched and no-id outcomes, has a shipped case."""
    translator = load_mapping(MAPPINGS / f"{table}.yaml")
    rules = yaml.safe_load((MAPPINGS / f"{table}.yaml").read_text())["rules"]
    cases = shipped_cases()[table]
    covered: set[int | str] = set()
    for case in cases:
        event = case["input"]
        if table == "mixpanel":
            key, event = Normalizer(**case.get("options", {}))(event)
            if key is None:
                covered.add("refused by the normalizer")
                continue
        covered.add(rule_of(rules, translator.explain(event)))
    missing = set(range(len(rules))) - covered
    assert not missing, [rules[i] for i in sorted(missing)]
    assert "unmatched" in covered
    assert any(c.get("skipped") == "no user_id or anonymous_id" for c in cases)
    assert len(cases) >= len(rules) == translator.rule_count


def test_shipped_cases_pass():
    """The shipped mappings/ folder passes: no failures, no problems, one pass per case."""
    report = run_mapping_tests(MAPPINGS)
    assert report.problems == []
    assert report.failed == [], render(report)
    cases = sum(len(c) for c in shipped_cases().values())
    assert report.passed == cases
    assert report.ok
    assert render(report) == f"{cases} passed, 0 failed"


# --------------------------------------------------------------------------- broken tables


def test_changed_rule_type_fails_with_a_diff(folder):
    """A rule emitting another type fails its case with a diff showing both types."""
    edit(folder / "segment.yaml", "    type: share\n", "    type: like\n")
    report = run_mapping_tests(folder)
    assert not report.ok
    [failure] = report.failed
    assert failure.name == "Cart Shared becomes a share of every product in the cart"
    assert set(failure.mismatches) == {"records"}
    text = render(report)
    lines = text.splitlines()
    assert '    -    "type": "share",' in lines
    assert '    +    "type": "like",' in lines
    assert lines[-1] == f"{report.passed} passed, 1 failed"


def test_changed_field_path_fails_with_a_diff(folder):
    """Reading revenue from total first fails the checkout case, showing 25 against 27.5."""
    edit(
        folder / "segment.yaml",
        "revenue: [properties.revenue, properties.total]",
        "revenue: [properties.total, properties.revenue]",
    )
    report = run_mapping_tests(folder)
    [failure] = report.failed
    assert failure.mismatches["records"][0][0]["revenue"] == 25.0
    assert failure.mismatches["records"][1][0]["revenue"] == 27.5
    lines = render(report).splitlines()
    assert "    --- expected" in lines and "    +++ actual" in lines
    assert '    -    "revenue": 25,' in lines
    assert '    +    "revenue": 27.5,' in lines


def test_mixpanel_fallback_order_is_checked(folder):
    """Preferring sku over product_id in mixpanel.yaml fails the case where both are sent."""
    edit(
        folder / "mixpanel.yaml",
        "product_ids: [product_id, sku, item_id, product]",
        "product_ids: [sku, product_id, item_id, product]",
    )
    report = run_mapping_tests(folder)
    assert [f.file.endswith("mixpanel-ecommerce.yaml") for f in report.failed] == [True]
    assert '    +      "MWS-42-GRY"' in render(report).splitlines()


def test_invalid_table_fails_its_cases_with_its_own_problems(folder):
    """A table that no longer loads fails every case of it, with the table's file:line: key."""
    edit(folder / "segment.yaml", "    type: search\n", "    type: like\n")
    report = run_mapping_tests(folder)
    segment_cases = len(shipped_cases()["segment"])
    assert len(report.failed) == segment_cases
    assert report.passed == len(shipped_cases()["mixpanel"])
    problem = report.failed[0].problems[0]
    assert re.match(
        r".*segment\.yaml:\d+: rules\[0\]\.fields\.search\.keywords: 'search' is not", problem
    )
    text = render(report)
    assert text.count(problem) == 1  # said once, not once per case
    assert "(the same 2 problem(s) as above)" in text


def test_missing_table_is_a_failure_naming_it(folder):
    """A case file whose table does not exist fails its cases, naming the missing file."""
    only_file(
        folder,
        "shopify.yaml",
        "table: shopify\ncases:\n  - name: order\n    input: {event: Order Paid}\n",
    )
    report = run_mapping_tests(folder)
    [failure] = report.failed
    assert (failure.name, failure.line) == ("order", 3)
    assert len(failure.problems) == 1
    assert "shopify.yaml" in failure.problems[0]
    assert "cannot read the file" in failure.problems[0]
    assert render(report).splitlines()[-1] == "0 passed, 1 failed"


# --------------------------------------------------------------------------- case files


def test_malformed_case_file_names_file_line_and_key(folder):
    """A malformed case file is a problem with file:line and key; other files still run."""
    bad = write_cases(
        folder,
        "zz-bad.yaml",
        """\
table: segment
cases:
  - name: no input
    records: []
  - name: typo
    input: {type: track, event: Product Viewed, userId: u1}
    expect: []
  - name: bad link
    input: {type: identify, userId: u1, anonymousId: a1}
    links: [{anonymous: a1}]
  - name: unquoted date
    input: {type: track, event: Product Viewed, userId: u1, timestamp: 2024-03-05T14:07:09Z}
""",
    )
    report = run_mapping_tests(folder)
    assert report.failed == []
    assert report.passed == sum(len(c) for c in shipped_cases().values())
    assert not report.ok
    assert report.problems == [
        f"{bad}:3: cases[0].input: required key is missing",
        f"{bad}:7: cases[1].expect: unknown key; expected one of: "
        "name, input, options, records, skipped, links, deletions, profiles",
        f"{bad}:10: cases[2].links[0].user: required key is missing",
        f"{bad}:12: cases[3].input.timestamp: YAML reads this unquoted value as a date "
        "(2024-03-05T14:07:09+00:00), not as text: quote it",
    ]
    assert f"error: {report.problems[0]}" in render(report).splitlines()


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        pytest.param(
            "table: segment\ncases:\n  - name: x\n    input: {type: track\n",
            r":5: -: YAML syntax error: .*started at line 4",
            id="yaml-syntax",
        ),
        pytest.param(
            "- just\n- a list\n",
            r":1: -: a mapping-tests file is a YAML mapping",
            id="not-a-mapping",
        ),
        pytest.param(
            "cases: [{name: x, input: {}}]\n", r":1: table: required key is missing", id="no-table"
        ),
        pytest.param(
            "table: segment\ncases: []\n",
            r":2: cases: a case file needs at least one case",
            id="no-cases",
        ),
        pytest.param(
            "table: ../segment\ncases:\n  - {name: x, input: {}}\n",
            r":1: table: expected a table name",
            id="table-path",
        ),
        pytest.param(
            "table: segment\ncases:\n  - {name: x, input: {}, deletions: [12345]}\n",
            r":3: cases\[0\]\.deletions\[0\]: expected text",
            id="number-for-text",
        ),
        pytest.param(
            "table: segment\ncases:\n  - name: x\n    input: {type: track}\n"
            "    options: {timezone: America/Los_Angeles}\n",
            r":5: cases\[0\]\.options: options are Normalizer options, for Mixpanel tables only",
            id="options-on-segment",
        ),
        pytest.param(
            "table: mixpanel\ncases:\n  - name: x\n    input: {event: E}\n"
            "    options: {timezone: Mars/Olympus}\n",
            r":5: cases\[0\]\.options\.timezone: unknown timezone 'Mars/Olympus'",
            id="unknown-timezone",
        ),
        pytest.param(
            "table: mixpanel\ncases:\n  - name: x\n    input: {event: E}\n"
            "    options: {timezone: UTC, time_offset: 1}\n",
            r":5: cases\[0\]\.options: give time_offset or timezone, not both",
            id="offset-and-timezone",
        ),
    ],
)
def test_case_file_problems(folder, text, wanted):
    """Each kind of malformed case file is one located problem, never a traceback."""
    path = only_file(folder, "broken.yaml", text)
    report = run_mapping_tests(folder)
    assert (report.passed, report.failed) == (0, [])
    [problem] = report.problems
    assert problem.startswith(str(path))
    assert re.search(wanted, problem), problem


def test_empty_folder_is_a_problem(tmp_path):
    """A folder without tests/*.yaml is a problem, not a silent success."""
    report = run_mapping_tests(tmp_path)
    assert report.problems == [f"no mapping tests in {tmp_path / 'tests'}"]
    assert not report.ok
    assert render(report).splitlines() == [
        f"error: no mapping tests in {tmp_path / 'tests'}",
        "0 passed, 0 failed",
    ]


# --------------------------------------------------------------------------- what a case checks


def test_unlisted_keys_are_not_checked_but_records_default_to_none(folder):
    """Without `records`, a case expects none; links, skipped and deletions only when given."""
    only_file(
        folder,
        "keys.yaml",
        """\
table: segment
cases:
  - name: identify, nothing but records checked
    input: {type: identify, userId: u1, anonymousId: a1}
  - name: a record is made, so the default [] fails
    input: {type: track, event: Product Clicked, userId: u1, properties: {product_id: p1}}
  - name: skipped null means must not be skipped
    input: {type: track, event: Signed Up, userId: u1}
    skipped: null
""",
    )
    report = run_mapping_tests(folder)
    assert report.passed == 1
    first, second = report.failed
    assert first.mismatches == {
        "records": ([], [{"type": "click", "user_id": "u1", "product_ids": ["p1"]}])
    }
    assert second.mismatches == {"skipped": (None, "no rule for event 'Signed Up'")}
    text = render(report)
    assert "-null\n    +\"no rule for event 'Signed Up'\"" in text


def test_mixpanel_refused_row_is_skipped_with_the_normalizer_reason(folder):
    """A Mixpanel row the Normalizer refuses counts as skipped with its reason and no records."""
    only_file(
        folder,
        "refused.yaml",
        """\
table: mixpanel
cases:
  - name: not an event
    input: {properties: {time: 1718031512}}
    skipped: 'not a Mixpanel event: no event name'
    links: []
    deletions: []
""",
    )
    report = run_mapping_tests(folder)
    assert (report.passed, report.failed, report.problems) == (1, [], [])


def test_each_table_is_loaded_once(folder, monkeypatch):
    """The runner compiles each referenced table once, however many case files use it."""
    import adapter.mapping_tests as runner

    loaded: list[Path] = []
    real = runner.load_mapping

    def counting(path):
        loaded.append(Path(path))
        return real(path)

    monkeypatch.setattr(runner, "load_mapping", counting)
    assert run_mapping_tests(folder).ok
    assert sorted(p.name for p in loaded) == ["mixpanel.yaml", "segment.yaml"]


# --------------------------------------------------------------------------- render


def test_render_shape():
    """render: problems as error lines, FAIL file:line name headers, then `N passed, M failed`."""
    report = TestReport(
        passed=3,
        failed=[
            Failure("mappings/tests/a.yaml", 12, "Product Viewed", {"deletions": (["u1"], [])}),
            Failure("mappings/tests/b.yaml", 4, "Order", problems=["mappings/x.yaml:1: -: gone"]),
        ],
        problems=["mappings/tests/c.yaml:2: table: required key is missing"],
    )
    assert render(report).splitlines() == [
        "error: mappings/tests/c.yaml:2: table: required key is missing",
        "FAIL mappings/tests/a.yaml:12 Product Viewed",
        "  deletions:",
        "    --- expected",
        "    +++ actual",
        "    @@ -1,3 +1 @@",
        "    -[",
        '    -  "u1"',
        "    -]",
        "    +[]",
        "FAIL mappings/tests/b.yaml:4 Order",
        "  mappings/x.yaml:1: -: gone",
        "3 passed, 2 failed",
    ]
    assert SUMMARY.match(render(TestReport()).splitlines()[-1])
    assert not report.ok and TestReport(passed=1).ok


def test_a_changed_profile_entry_fails_the_identify_case(folder):
    """A table whose identify no longer merges traits fails the case that expects the
    profile change, naming `profiles` as what differs."""
    edit(folder / "segment.yaml", "    set: {traits: traits}", "    set: {traits: context.traits}")
    report = run_mapping_tests(folder)
    [failure] = report.failed
    assert failure.name.startswith("identify gives no record")
    assert set(failure.mismatches) == {"profiles"}
    expected, actual = failure.mismatches["profiles"]
    assert expected[0]["set"]["traits"]["firstName"] == "Peter" and actual == []
