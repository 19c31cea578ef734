"""Mapping coverage: which events of a real input file a table maps, skips, or misses.

    report = coverage("segment", Path("events.jsonl"), load_mapping("mappings/segment.yaml"))
    print(render_text(report))

The input is streamed (constant memory, except one counter per distinct key) and every
event is classified with :meth:`~adapter.mapping.Translator.explain`, which builds no
record. A key is the event name, ``page <path>`` for a page view, or the call type
(``identify``, ``alias``, ...) of a Segment message without an event name.

For every key the table does not cover, the report carries a ready-to-paste rule stub,
valid in the mapping format (``mappings/README.md``): pasted under ``rules:`` as is, the
table loads and the key becomes ``mapped`` to ``custom``; change ``type`` (or write
``skip: <reason>``) to taste.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from adapter import values
from adapter.mapping import Explanation, Translator, normalize_name
from adapter.sources import Source, make_source
from adapter.sources.inputs import open_path
from adapter.sources.jsonvalues import ReadError, read_values
from adapter.sources.segment import NOT_SEGMENT

__all__ = [
    "NO_NAME",
    "OTHER_KEYS",
    "SOURCES",
    "CoverageReport",
    "Row",
    "Stub",
    "Totals",
    "coverage",
    "escape_regex",
    "render_json",
    "render_text",
    "rule_stub",
    "yaml_scalar",
]

SOURCES = ("segment", "mixpanel")
NO_NAME = "(no event name)"  # key of a Mixpanel row dropped before mapping for lack of a name
OTHER_KEYS = "(other keys)"  # where keys beyond ``max_keys`` distinct ones are counted
MALFORMED_EXAMPLES = 20  # malformed rows kept, with their location, for the report

_PAGE_PREFIX = "page "
_EVENT_HINT = "# or a Miso type: product_detail_page_view, add_to_cart, ...; or `skip: <reason>`"
_PAGE_HINT = "# or home_page_view, category_page_view, promo_page_view, ...; or `skip: <reason>`"


# --------------------------------------------------------------------------- results


class Row(NamedTuple):
    """How many events of one key met one outcome (``detail``: Miso type, reason, or why)."""

    key: str
    count: int
    outcome: str  # "mapped", "skipped" or "uncovered"
    detail: str


class Stub(NamedTuple):
    """A rule to paste under ``rules:`` for an uncovered key (or spellings of one name)."""

    kind: str  # "event", "page" or "call"
    match: str  # the event name, page path or call type the rule matches
    keys: tuple[str, ...]  # the report keys it covers (spellings of one event name)
    count: int  # uncovered events it covers
    yaml: str  # the rule, indented for a table's `rules:` list, ending with a newline


@dataclass(frozen=True)
class Totals:
    """Event counts; ``events`` = mapped + skipped + uncovered (malformed rows excluded)."""

    events: int = 0
    mapped: int = 0
    skipped: int = 0  # skipped on purpose: a skip rule, or dropped before mapping (Mixpanel)
    uncovered: int = 0
    malformed: int = 0  # unreadable lines, non-object Segment messages


@dataclass(frozen=True)
class CoverageReport:
    """What :func:`coverage` found in one input file."""

    source: str
    file: str
    table: str  # the mapping file's path
    rows: list[Row]  # by count descending, then key
    totals: Totals
    stubs: list[Stub]  # one per uncovered name, path or call; by count descending
    malformed: list[tuple[str, str]]  # the first MALFORMED_EXAMPLES: (where, error)

    @property
    def table_name(self) -> str:
        """The mapping file's name (``segment.yaml``), as said in "paste into ..."."""
        return Path(self.table).name


# --------------------------------------------------------------------------- counting


class _Counts:
    """Per-(key, outcome, detail) counters, bounded to ``max_keys`` distinct entries."""

    def __init__(self, max_keys: int) -> None:
        self.max_keys = max_keys
        self.counter: Counter[tuple[str, str, str]] = Counter()
        self.kinds: dict[tuple[str, str, str], tuple[str, str]] = {}  # uncovered: (kind, match)
        self.malformed = 0
        self.examples: list[tuple[str, str]] = []

    def add(
        self,
        entry: tuple[str, str, str],
        stub_of: Callable[[], tuple[str, str] | None] | None = None,
    ) -> None:
        """Count one event; ``stub_of`` says what a rule must match, asked once per entry."""
        if entry not in self.counter and len(self.counter) >= self.max_keys:
            entry = (OTHER_KEYS, entry[1], f"beyond the first {self.max_keys:,} distinct keys")
        elif entry[1] == "uncovered" and entry not in self.kinds and stub_of is not None:
            target = stub_of()
            if target is not None:
                self.kinds[entry] = target
        self.counter[entry] += 1

    def bad(self, where: str, message: str) -> None:
        """Count one malformed row, keeping the first few with their location."""
        self.malformed += 1
        if len(self.examples) < MALFORMED_EXAMPLES:
            self.examples.append((where, message))


def coverage(
    source: str | Source,
    path: Path,
    translator: Translator,
    *,
    max_keys: int = 10_000,
) -> CoverageReport:
    """Stream ``path`` (``-``: stdin; plain or gzip) and count how ``translator`` treats
    every event, by key.

    ``source`` is ``segment`` (one message, a JSON array, a ``{"batch": [...]}``, or JSON
    Lines of those) or ``mixpanel`` (a raw export or Data Pipelines file, each row
    normalised as a replay does; a row it drops, e.g. without a valid time, counts as
    skipped with its reason), or a source built with its options. At most ``max_keys``
    distinct (key, outcome, detail) rows are kept: further ones are counted under
    ``(other keys)``, so memory stays bounded on hostile input.
    """
    if isinstance(source, str):
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}; expected one of: {', '.join(SOURCES)}")
        source = make_source(source)
    path = Path(path)
    counts = _Counts(max_keys)
    with open_path(path) as opened:
        for where, value in read_values(opened.stream, opened.name):
            if isinstance(value, ReadError):
                counts.bad(where, value.message)
                continue
            for item in source.items(where, value):
                event = item.event
                if isinstance(event, ReadError):
                    counts.bad(item.where, event.message)
                elif isinstance(event, str) and event.startswith(NOT_SEGMENT):
                    counts.bad(item.where, event.partition(": ")[2] or event)
                elif isinstance(event, str):  # dropped before mapping: the reason
                    counts.add((_row_name(value), "skipped", event))
                else:
                    found = translator.explain(event)
                    counts.add(_entry(found), lambda f=found, e=event: _stub_target(f, e))
    return _report(source.name, path, translator, counts)


def _entry(found: Explanation) -> tuple[str, str, str]:
    return (found.key or NO_NAME, found.outcome, found.detail)


def _stub_target(found: Explanation, message: dict) -> tuple[str, str] | None:
    # A message is matched by its call type only when it has no event name (identify,
    # page, ...): the key is then the call type.
    is_call = values.to_string(message.get("event")) is None and found.key == values.to_string(
        message.get("type")
    )
    return _target(found, is_call=is_call)


def _target(found: Explanation, *, is_call: bool) -> tuple[str, str] | None:
    """(kind, what a rule must match) for an uncovered explanation, or None (no stub)."""
    if not found.key:
        return None  # neither an event name nor a call type: no rule can match it
    if found.detail.startswith("no rule for page path ") and found.key.startswith(_PAGE_PREFIX):
        return "page", found.key[len(_PAGE_PREFIX) :]
    if found.detail.startswith("no rule for call "):
        return "call", found.key
    if found.detail.startswith("no rule for event "):
        return "event", found.key
    return ("call" if is_call else "event"), found.key


def _row_name(row: Any) -> str:
    """The event name of a raw Mixpanel row (raw export or Data Pipelines), if any."""
    if not isinstance(row, dict):
        return NO_NAME
    name = values.to_string(row.get("event") if "event" in row else row.get("event_name"))
    return name or NO_NAME


# --------------------------------------------------------------------------- report


def _report(source: str, path: Path, translator: Translator, counts: _Counts) -> CoverageReport:
    rows = sorted(
        (
            Row(key, count, outcome, detail)
            for (key, outcome, detail), count in counts.counter.items()
        ),
        key=lambda r: (-r.count, r.key.casefold(), r.key, r.outcome, r.detail),
    )
    by_outcome: Counter[str] = Counter()
    for row in rows:
        by_outcome[row.outcome] += row.count
    totals = Totals(
        events=sum(by_outcome.values()),
        mapped=by_outcome["mapped"],
        skipped=by_outcome["skipped"],
        uncovered=by_outcome["uncovered"],
        malformed=counts.malformed,
    )
    return CoverageReport(
        source=source,
        file=str(path),
        table=str(translator.path),
        rows=rows,
        totals=totals,
        stubs=_stubs(counts),
        malformed=list(counts.examples),
    )


def _stubs(counts: _Counts) -> list[Stub]:
    """One stub per uncovered event name (its spellings together), page path or call.

    Spellings of one name (``Cart Viewed``, ``cart_viewed``) match the same rule, and a
    table may claim a name only once, so they share one stub naming the most frequent.
    """
    groups: dict[tuple[str, str], Counter[tuple[str, str]]] = {}
    for entry, (kind, match) in counts.kinds.items():
        if kind == "event":
            group = (kind, normalize_name(match))
        elif kind == "call":
            group = (kind, match.casefold())
        else:
            group = (kind, match)
        groups.setdefault(group, Counter())[(entry[0], match)] += counts.counter[entry]
    stubs = []
    for (kind, _), spellings in groups.items():
        ranked = sorted(spellings.items(), key=lambda item: (-item[1], item[0]))
        (_, match), _ = ranked[0]
        keys = tuple(dict.fromkeys(key for (key, _), _ in ranked))
        count = sum(spellings.values())
        stubs.append(Stub(kind, match, keys, count, rule_stub(kind, match)))
    stubs.sort(key=lambda s: (-s.count, s.keys[0].casefold(), s.keys[0]))
    return stubs


def rule_stub(kind: str, match: str) -> str:
    """A ``custom`` rule for an event name, a page path or a call type, as YAML lines
    indented for a table's ``rules:`` list (names quoted as YAML needs)."""
    if kind == "page":
        matcher = f"pages: [{yaml_scalar('^' + escape_regex(match) + '$')}]"
        hint = _PAGE_HINT
    elif kind in ("event", "call"):
        matcher = f"{kind}s: [{yaml_scalar(match)}]"
        hint = _EVENT_HINT
    else:
        raise ValueError(f"unknown stub kind {kind!r}; expected event, page or call")
    return f"  - {matcher}\n    type: custom          {hint}\n"


_REGEX_SPECIAL = re.compile(r"[\\.^$*+?{}\[\]|()]")


def escape_regex(text: str) -> str:
    """``text`` as a regular expression matching it literally: like :func:`re.escape`, but
    only regex metacharacters are escaped, so ``/how-to`` stays readable."""
    return _REGEX_SPECIAL.sub(r"\\\g<0>", text)


# --------------------------------------------------------------------------- YAML quoting

_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9 _./-]*")
# Characters a YAML 1.1 reader takes as they are inside quotes: no control characters,
# no line breaks (NEL, LS, PS would be folded) and no byte-order mark.
_UNSAFE = re.compile(
    "[^\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)


def yaml_scalar(text: str) -> str:
    """``text`` as a YAML scalar that loads back as exactly this string, in flow context.

    Plain when that is unambiguous (``Cart Viewed``); single-quoted when it holds YAML
    syntax (``'Checkout: Step 1'``, ``'#tag'``, ``'$mp_x'``, ``'yes'``, ``'123'``);
    double-quoted with escapes when it holds control characters or line breaks.
    """
    if _PLAIN.fullmatch(text) and not text.endswith(" "):
        try:
            if yaml.safe_load(f"[{text}]") == [text]:
                return text
        except yaml.YAMLError:  # pragma: no cover - the pattern admits no YAML syntax
            pass
    if not _UNSAFE.search(text):
        return "'" + text.replace("'", "''") + "'"
    return '"' + _UNSAFE.sub(_escape, text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"  # pragma: no cover - astral characters are all printable


# --------------------------------------------------------------------------- rendering


def _show(text: str) -> str:
    """A key or detail on one line of the table, control characters made visible."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def render_text(report: CoverageReport) -> str:
    """The report as a table (count, outcome, key, detail), totals, and the stubs to paste."""
    t = report.totals
    lines = [f"Coverage of {report.file} by {report.table}", ""]
    keys = [_show(r.key) for r in report.rows]
    count_width = max([5, *(len(f"{r.count:,}") for r in report.rows)])
    key_width = min(max([3, *map(len, keys)]), 48)
    lines.append(f"{'count':>{count_width}}  {'outcome':<9}  {'key':<{key_width}}  detail")
    for row, key in zip(report.rows, keys, strict=True):
        count = f"{row.count:>{count_width},}"
        lines.append(f"{count}  {row.outcome:<9}  {key:<{key_width}}  {_show(row.detail)}")
    lines += [
        "",
        f"{t.events:,} events: {t.mapped:,} mapped, {t.skipped:,} skipped on purpose, "
        f"{t.uncovered:,} not covered; {t.malformed:,} malformed rows",
    ]
    if report.malformed:
        lines.append("")
        lines += [f"malformed: {where}: {_show(error)}" for where, error in report.malformed]
        if t.malformed > len(report.malformed):
            lines.append(f"... {t.malformed - len(report.malformed):,} more malformed rows")
    if report.stubs:
        lines += ["", f"Not covered — paste into {report.table_name} under rules:", ""]
        for stub in report.stubs:
            lines.append(stub.yaml.rstrip("\n"))
            lines.append("")
        lines.pop()
    elif t.events:
        lines += ["", f"Every event is covered by {report.table_name}."]
    return "\n".join(lines) + "\n"


def render_json(report: CoverageReport) -> dict[str, Any]:
    """The report as JSON-ready data (``--format json``): rows, totals, stubs, malformed."""
    t = report.totals
    return {
        "source": report.source,
        "file": report.file,
        "table": report.table,
        "rows": [r._asdict() for r in report.rows],
        "totals": {
            "events": t.events,
            "mapped": t.mapped,
            "skipped": t.skipped,
            "uncovered": t.uncovered,
            "malformed": t.malformed,
        },
        "stubs": [{**s._asdict(), "keys": list(s.keys)} for s in report.stubs],
        "malformed": [{"where": where, "error": error} for where, error in report.malformed],
    }
