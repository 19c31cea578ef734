"""Mapping tests: example events and the exact Miso records a mapping table must make of them.

A mapping folder may hold ``tests/*.yaml`` case files next to its tables. Each file names
the table under test and lists cases: an input event, the records expected from it, and
optionally the skip reason, identity links and deletions expected::

    table: segment                  # <mappings dir>/segment.yaml
    cases:
      - name: Product Viewed becomes a product detail view
        input: {type: track, event: Product Viewed, userId: u1, properties: {product_id: p1}}
        records:                    # exact; default []
          - {type: product_detail_page_view, user_id: u1, product_ids: [p1]}
        skipped: null               # optional: the exact reason, or null for "not skipped"
        links: [{anonymous: a1, user: u1}]   # optional, in the order produced
        deletions: [u1]             # optional
        profiles:                   # optional: the profile changes (a `profiles:` section)
          - {user: u1, anonymous: a1, set: {traits: {name: Ada}}}

``input`` is read as its source reads it (:mod:`adapter.sources`): a Segment message (or
envelope), or — for a Mixpanel table (named ``mixpanel``, or whose ``source`` is
``mixpanel``) — an export row, normalised by a fresh Mixpanel source built with the case's
``options`` (``time_offset`` or ``timezone``); an input the source refuses counts as
skipped with its reason.

    report = run_mapping_tests(Path("mappings"))
    print(render(report))           # FAIL lines with diffs, then "N passed, M failed"
    sys.exit(0 if report.ok else 1)

Case files are validated like mapping files: a malformed one is a problem naming the file,
the line and the key, never a traceback.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from marshmallow import RAISE, Schema, ValidationError, validate, validates, validates_schema
from marshmallow import fields as mf

from adapter._yaml import Located, YamlError, flatten_errors, load_located, show_path
from adapter.mapping import MappingError, Problem, Translation, Translator, load_mapping
from adapter.sources import make_source
from adapter.sources.jsonvalues import ReadError

__all__ = ["Failure", "TestReport", "render", "run_mapping_tests"]

KeyPath = tuple[str | int, ...]

#: What a case may check, in the order differences are shown.
CHECKED = ("records", "skipped", "links", "deletions", "profiles")


# --------------------------------------------------------------------------- results


@dataclass
class Failure:
    """A case whose translation differs from what its file expects (or could not run).

    ``mismatches`` maps each checked key that differs (records, skipped, links, deletions,
    profiles) to ``(expected, actual)``; ``problems`` says why the case could not run at all (its
    table is missing or broken).
    """

    file: str
    line: int
    name: str
    mismatches: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


@dataclass
class TestReport:
    """The outcome of a mapping-tests run: passed cases, failures, and broken case files."""

    __test__ = False  # a result type, not a pytest test class

    passed: int = 0
    failed: list[Failure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every case passed and every case file was valid."""
        return not self.failed and not self.problems


# --------------------------------------------------------------------------- case-file schema


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class _LinkSchema(_Strict):
    anonymous = mf.String(required=True)
    user = mf.String(required=True)


class _OptionsSchema(_Strict):
    time_offset = mf.Float(allow_nan=False, validate=validate.Range(min=-24, max=24))
    timezone = mf.String()

    @validates("timezone")
    def _known_zone(self, value: str, **kwargs: Any) -> None:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValidationError(
                f"unknown timezone '{value}'; expected an IANA name like America/Los_Angeles"
            ) from None

    @validates_schema
    def _one_correction(self, data: dict, **kwargs: Any) -> None:
        if "time_offset" in data and "timezone" in data:
            raise ValidationError("give time_offset or timezone, not both")


class _ProfileSchema(_Strict):
    user = mf.String(allow_none=True, load_default=None)
    anonymous = mf.String(allow_none=True, load_default=None)
    set = mf.Dict(keys=mf.String(), values=mf.Dict(keys=mf.String()), required=True)


class _CaseSchema(_Strict):
    name = mf.String(required=True, validate=validate.Length(min=1))
    input = mf.Dict(keys=mf.String(), required=True)
    options = mf.Nested(_OptionsSchema)
    records = mf.List(mf.Dict(keys=mf.String()), load_default=list)
    skipped = mf.String(allow_none=True, validate=validate.Length(min=1))
    links = mf.List(mf.Nested(_LinkSchema))
    deletions = mf.List(mf.String())
    profiles = mf.List(mf.Nested(_ProfileSchema))


class _CaseFileSchema(_Strict):
    table = mf.String(
        required=True,
        validate=validate.Regexp(
            r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
            error="expected a table name like 'segment' (the file <mappings dir>/NAME.yaml)",
        ),
    )
    cases = mf.List(
        mf.Nested(_CaseSchema),
        required=True,
        validate=validate.Length(min=1, error="a case file needs at least one case"),
    )


# --------------------------------------------------------------------------- running


def run_mapping_tests(folder: Path) -> TestReport:
    """Run every case of ``folder/tests/*.yaml`` (sorted) against the tables of ``folder``.

    Each table is loaded once. A malformed case file is reported in ``problems``; a case
    whose table is missing or broken fails with the table's own problems.
    """
    folder = Path(folder)
    report = TestReport()
    files = sorted(p for p in (folder / "tests").glob("*.yaml") if p.is_file())
    if not files:
        report.problems.append(f"no mapping tests in {folder / 'tests'}")
        return report
    tables: dict[str, Translator | MappingError] = {}
    for path in files:
        _run_file(path, folder, tables, report)
    return report


def _run_file(
    path: Path, folder: Path, tables: dict[str, Translator | MappingError], report: TestReport
) -> None:
    filename = str(path)
    loaded = _load_case_file(path, filename)
    if isinstance(loaded, list):
        report.problems.extend(loaded)
        return
    data, located = loaded
    name = data["table"]
    if name not in tables:
        try:
            tables[name] = load_mapping(folder / f"{name}.yaml")
        except MappingError as exc:
            tables[name] = exc
    table = tables[name]
    is_mixpanel = name == "mixpanel" or (
        isinstance(table, Translator) and table.source == "mixpanel"
    )
    for index, case in enumerate(data["cases"]):
        line = located.line_of(("cases", index))
        if isinstance(table, MappingError):
            problems = [str(p) for p in table.problems]
            report.failed.append(Failure(filename, line, case["name"], problems=problems))
            continue
        if "options" in case and not is_mixpanel:
            path_ = ("cases", index, "options")
            report.problems.append(
                str(
                    Problem(
                        filename,
                        located.line_of(path_),
                        show_path(path_),
                        "options are Normalizer options, for Mixpanel tables only "
                        f"(table '{name}' is not one)",
                    )
                )
            )
            continue
        failure = _run_case(case, table, is_mixpanel, filename, line)
        if failure is None:
            report.passed += 1
        else:
            report.failed.append(failure)


def _load_case_file(path: Path, filename: str) -> tuple[dict, Located] | list[str]:
    """Validated case-file data and its line table, or the file's problems as text."""
    try:
        located = load_located(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return [str(Problem(filename, 1, "-", f"cannot read the file: {exc}"))]
    except YamlError as exc:
        return [str(Problem(filename, exc.line, exc.key, exc.message))]
    if not isinstance(located.data, dict):
        message = "a mapping-tests file is a YAML mapping with 'table' and 'cases'"
        return [str(Problem(filename, 1, "-", message))]
    try:
        data = _CaseFileSchema().load(located.data)
        errors: list[tuple[KeyPath, str]] = []
    except ValidationError as exc:
        errors = list(flatten_errors(exc.normalized_messages()))
    seen = {key for key, _ in errors}
    errors += [
        (key, f"YAML reads this unquoted value as a date ({value}), not as text: quote it")
        for key, value in _dates(located.data)
        if key not in seen
    ]
    problems = [
        Problem(filename, located.line_of(key), show_path(key), _friendly(key, message))
        for key, message in errors
    ]
    if problems:
        return [str(p) for p in sorted(problems, key=lambda p: p.line)]
    return data, located


_KEYS = {
    0: "table, cases",
    2: "name, input, options, records, skipped, links, deletions, profiles",
}


def _friendly(path: KeyPath, message: str) -> str:
    if message == "Unknown field.":
        if len(path) == 4 and path[2] == "links":
            return "unknown key; a link takes anonymous, user"
        if len(path) == 4 and path[2] == "options":
            return "unknown key; options take time_offset or timezone"
        known = _KEYS.get(len(path) - 1)
        return f"unknown key; expected one of: {known}" if known else "unknown key"
    return {
        "Missing data for required field.": "required key is missing",
        "Not a valid mapping type.": "expected a mapping ({key: value, ...})",
        "Not a valid list.": "expected a list",
        "Not a valid string.": "expected text (quote numbers and dates meant as text)",
    }.get(message, message)


def _dates(value: Any, path: KeyPath = ()) -> Iterable[tuple[KeyPath, Any]]:
    """Values YAML turned into dates (unquoted ``2024-03-05T14:07:09Z``): never JSON."""
    if isinstance(value, dt.date):
        yield path, value.isoformat()
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield from _dates(inner, (*path, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _dates(inner, (*path, index))


def _run_case(
    case: dict, table: Translator, is_mixpanel: bool, filename: str, line: int
) -> Failure | None:
    """Translate one case's input and compare what it checks; None when it passes."""
    try:
        result = _translate(case, table, is_mixpanel)
    except Exception as exc:  # a crash is this case's failure, not the run's
        problem = f"translating the input raised {type(exc).__name__}: {exc}"
        return Failure(filename, line, case["name"], problems=[problem])
    actual = {
        "records": result.records,
        "skipped": result.skipped,
        "links": [{"anonymous": x.anonymous_id, "user": x.user_id} for x in result.links],
        "deletions": list(result.deletions),
        "profiles": [
            {"user": x.user_id, "anonymous": x.anonymous_id, "set": x.changes}
            for x in result.profiles
        ],
    }
    mismatches = {
        key: (case[key], actual[key])
        for key in CHECKED
        if key in case and not _same(case[key], actual[key])
    }
    return Failure(filename, line, case["name"], mismatches) if mismatches else None


def _translate(case: dict, table: Translator, is_mixpanel: bool) -> Translation:
    source = make_source("mixpanel" if is_mixpanel else "segment", **case.get("options", {}))
    items = list(source.items("input", case["input"]))
    source.end_chunk()
    out = Translation([], [], [], None)
    for item in items:
        if isinstance(item.event, ReadError | str):
            out.skipped = item.event if isinstance(item.event, str) else item.event.message
            continue
        result = table.translate(item.event)
        out.records += result.records
        out.links += result.links
        out.deletions += result.deletions
        out.profiles += result.profiles
        out.skipped = result.skipped if out.skipped is None else out.skipped
    return out


def _same(expected: Any, actual: Any) -> bool:
    """Equal as JSON values: 5 and 5.0 are the same number, but true is not 1."""
    return _canonical(expected) == _canonical(actual)


def _canonical(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if isinstance(value, dict):
        return ("object", {str(k): _canonical(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return ("array", [_canonical(v) for v in value])
    return ("other", repr(value))


# --------------------------------------------------------------------------- rendering


def render(report: TestReport) -> str:
    """Human output: file problems, a FAIL header and diffs per failure, ``N passed, M failed``."""
    lines = [f"error: {problem}" for problem in report.problems]
    shown: set[tuple[str, ...]] = set()
    for failure in report.failed:
        lines.append(f"FAIL {failure.file}:{failure.line} {failure.name}")
        problems = tuple(failure.problems)
        if problems in shown:  # a broken table fails all its cases: say why once
            lines.append(f"  (the same {len(problems)} problem(s) as above)")
        else:
            shown.add(problems)
            lines.extend(f"  {problem}" for problem in problems)
        for key in CHECKED:
            if key in failure.mismatches:
                expected, actual = failure.mismatches[key]
                lines.append(f"  {key}:")
                lines.extend(f"    {row}" for row in _diff(expected, actual))
    lines.append(f"{report.passed} passed, {len(report.failed)} failed")
    return "\n".join(lines)


def _diff(expected: Any, actual: Any) -> list[str]:
    """A unified diff of the two values as pretty JSON, with the whole value as context."""
    want = _pretty(expected).splitlines()
    got = _pretty(actual).splitlines()
    context = max(len(want), len(got))
    return list(difflib.unified_diff(want, got, "expected", "actual", lineterm="", n=context))


def _pretty(value: Any) -> str:
    return json.dumps(_plain(value), indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _plain(value: Any) -> Any:
    """5.0 shown as 5, like YAML's 5: equal numbers never show up as a difference."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
