"""Mapping tables: load, validate and compile a YAML file into a translator.

A mapping file (format in ``mappings/README.md``) says which source events become
which Miso interaction type and where each Miso field's value comes from. It is
data: validated once with marshmallow (errors name file, line and key), then
compiled, so translating an event never looks at YAML again. Each value spec becomes a
resolver (a small Python function); the fields of each rule (its own, then the page-view
and common ones) become one generated Python function, written as source and ``exec``-ed
at load, that builds the record's fields in a single call, with plain key reads inlined.
Item lists, links and deletions stay resolvers.

    translator = load_mapping(Path("mappings/segment.yaml"))
    result = translator.translate(message)   # → Translation(records, links, deletions, skipped)
    user = translator.users(merged)          # `users:` section (adapter.users) → a UserRecord

Conversions are chosen by the *target* field (``rating`` is always a number, a
``timestamp`` always UTC with milliseconds, ``context.truncated_ip`` always a
truncated IPv4), and a field the target type does not allow is a load error, so
every record a translator emits has the shape Miso's schema requires.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from marshmallow import RAISE, Schema, ValidationError, validate, validates_schema
from marshmallow import fields as mf

from adapter import records, values
from adapter._yaml import Located, YamlError, flatten_errors, load_located, show_path
from adapter.identity import Link, ProfileChange

if TYPE_CHECKING:
    from adapter.users import UsersMapping

__all__ = [
    "Explanation",
    "MappingError",
    "Problem",
    "Translation",
    "Translator",
    "default_mappings_dir",
    "load_mapping",
    "load_mapping_text",
    "normalize_name",
]

KeyPath = tuple[str | int, ...]
Getter = Callable[[Any, dict], Any]
Resolver = Callable[[Any, dict], Any]

_NOTHING = object()
#: Distinct raw event names a translator remembers the matching of.
_NAME_CACHE_MAX = 100_000


# --------------------------------------------------------------------------- results


class Translation:
    """What one source event became: Miso records, identity links, deletions, or why nothing."""

    __slots__ = ("deletions", "links", "profiles", "records", "skipped", "uncovered")

    def __init__(
        self,
        records: list[dict],
        links: list[Link],
        deletions: list[str],
        skipped: str | None,
        uncovered: tuple[str, str] | None = None,
        profiles: list[ProfileChange] | None = None,
    ) -> None:
        self.records = records
        self.links = links
        self.deletions = deletions
        self.skipped = skipped
        # Profile changes (the table's `profiles:` entries): uploaded to Miso's Users API.
        self.profiles = profiles if profiles is not None else []
        # No rule of the table claimed the event (skipped, or sent by `unmatched: custom`):
        # (kind, what a rule must match), kind "event", "page" or "call"; for the console's
        # live list of uncovered names and their rule stubs.
        self.uncovered = uncovered

    def __repr__(self) -> str:
        return (
            f"Translation(records={self.records!r}, links={self.links!r}, "
            f"deletions={self.deletions!r}, skipped={self.skipped!r}, "
            f"uncovered={self.uncovered!r}, profiles={self.profiles!r})"
        )


class Explanation(NamedTuple):
    """How a table treats an event: see :meth:`Translator.explain`."""

    key: str
    outcome: str  # "mapped", "skipped" or "uncovered"
    detail: str
    type: str | None


@dataclass(frozen=True)
class Problem:
    """One error in a mapping file, located by line and key path."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key}: {self.message}"


class MappingError(Exception):
    """A mapping file could not be loaded; ``problems`` lists every error found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(map(str, problems)))
        self.problems = problems


# --------------------------------------------------------------------------- names


_SEPARATORS = re.compile(r"[\s_\-]+")


def normalize_name(name: str) -> str:
    """Event-name matching key: case-insensitive, and `_`, `-`, runs of spaces all alike."""
    return _SEPARATORS.sub(" ", name).strip().casefold()


# --------------------------------------------------------------------------- paths

# A path walks into the event: `properties.products[].product_id`, `context['a.b']`,
# `items[0].sku`. Roots `$event` (the matched event name) and `$match.NAME` (a named
# capture of the page rule that matched) read from the match instead of the event.
_PATH_TOKEN = re.compile(
    r"""
    (?P<key>[^.\[\]'"]+)            # plain key
    | \[(?P<index>-?\d+)\]          # list index
    | (?P<each>\[\])                # projection over a list
    | \[(?P<q>['"])(?P<quoted>.+?)(?P=q)\]   # quoted key, may contain dots
    | (?P<dot>\.)
    """,
    re.VERBOSE,
)


def _parse_path(text: str) -> tuple[str, list[tuple[str, Any]]]:
    """Split a path into (root, steps); raise ValueError with a readable reason."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a path must be a non-empty string")
    steps: list[tuple[str, Any]] = []
    pos, need_key = 0, True
    while pos < len(text):
        match = _PATH_TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"bad path '{text}': unexpected '{text[pos]}' at position {pos + 1}")
        if match.group("dot"):
            if need_key:
                raise ValueError(f"bad path '{text}': empty key at position {pos + 1}")
            need_key = True
        elif match.group("key") is not None:
            if not need_key:
                raise ValueError(f"bad path '{text}': missing '.' at position {pos + 1}")
            steps.append(("key", match.group("key")))
            need_key = False
        elif match.group("quoted") is not None:
            steps.append(("key", match.group("quoted")))
            need_key = False
        elif match.group("index") is not None:
            if not steps:
                raise ValueError(f"bad path '{text}': an index needs a key before it")
            steps.append(("index", int(match.group("index"))))
            need_key = False
        else:
            if not steps:
                raise ValueError(f"bad path '{text}': '[]' needs a key before it")
            steps.append(("each", None))
            need_key = False
        pos = match.end()
    if need_key:
        raise ValueError(f"bad path '{text}': ends with '.'")
    root = "event"
    if steps[0] == ("key", "$event"):
        root, steps = "$event", steps[1:]
        if steps:
            raise ValueError(f"bad path '{text}': $event has no fields")
    elif steps[0] == ("key", "$match"):
        if len(steps) != 2 or steps[1][0] != "key":
            raise ValueError(f"bad path '{text}': use $match.NAME for a named capture")
        root, steps = "$match", steps[1:]
    return root, steps


def _walk(value: Any, steps: list[tuple[str, Any]]) -> Any:
    """Follow ``steps`` from ``value``; a projection yields a flat list."""
    for position, (kind, arg) in enumerate(steps):
        if kind == "key":
            if not isinstance(value, dict):
                return None
            value = value.get(arg)
        elif kind == "index":
            if not isinstance(value, list) or not -len(value) <= arg < len(value):
                return None
            value = value[arg]
        else:
            if isinstance(value, dict):
                value = [value]  # one object where a list was expected: a list of one
            if not isinstance(value, list):
                return None
            rest = steps[position + 1 :]
            out: list[Any] = []
            for item in value:
                got = _walk(item, rest) if rest else item
                if isinstance(got, list) and any(k == "each" for k, _ in rest):
                    out.extend(got)
                elif got is not None:
                    out.append(got)
            return out
        if value is None:
            return None
    return value


def _compile_getter(text: str) -> Getter:
    """A fast reader for one path; plain key chains get specialised closures."""
    root, steps = _parse_path(text)
    if root == "$event":
        return lambda event, env: env.get("$event")
    if root == "$match":
        name = steps[0][1]
        return lambda event, env: env.get("$match", {}).get(name)
    if all(kind == "key" for kind, _ in steps):
        keys = [arg for _, arg in steps]
        if len(keys) == 1:
            (k1,) = keys
            return lambda event, env: event.get(k1)
        if len(keys) == 2:
            k1, k2 = keys

            def get2(event: dict, env: dict) -> Any:
                inner = event.get(k1)
                return inner.get(k2) if isinstance(inner, dict) else None

            return get2
        if len(keys) == 3:
            k1, k2, k3 = keys

            def get3(event: dict, env: dict) -> Any:
                inner = event.get(k1)
                if isinstance(inner, dict):
                    inner = inner.get(k2)
                    if isinstance(inner, dict):
                        return inner.get(k3)
                return None

            return get3
    return lambda event, env: _walk(event, steps)


# --------------------------------------------------------------------------- file schema


class _ValueSpec:
    """A parsed value spec: fallback paths, or a constant, plus an optional default."""

    __slots__ = ("default", "paths", "value")

    def __init__(self, paths: tuple[str, ...], value: Any = _NOTHING, default: Any = _NOTHING):
        self.paths = paths
        self.value = value
        self.default = default


class _ValueSpecField(mf.Field):
    """`path`, `[path, path…]`, `{from: path-or-list, default: X}` or `{value: X}`."""

    _HINT = "expected a path, a list of paths, {from: …, default: …} or {value: …}"

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> _ValueSpec:
        if isinstance(value, str):
            return _ValueSpec(self._paths([value]))
        if isinstance(value, list):
            return _ValueSpec(self._paths(value))
        if isinstance(value, dict):
            unknown = set(value) - {"from", "default", "value"}
            if unknown:
                raise ValidationError(
                    f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; {self._HINT}"
                )
            if ("from" in value) == ("value" in value):
                raise ValidationError(f"give exactly one of 'from' or 'value'; {self._HINT}")
            if "value" in value:
                if "default" in value:
                    raise ValidationError("'default' goes with 'from', not with 'value'")
                return _ValueSpec((), value=value["value"])
            source = value["from"]
            paths = self._paths(source if isinstance(source, list) else [source])
            return _ValueSpec(paths, default=value.get("default", _NOTHING))
        if value is None:
            raise ValidationError(f"empty value; {self._HINT}")
        raise ValidationError(f"{value!r} is not a path; for a constant write {{value: {value!r}}}")

    @staticmethod
    def _paths(items: list[Any]) -> tuple[str, ...]:
        if not items:
            raise ValidationError("an empty list of paths")
        for item in items:
            try:
                _parse_path(item)
            except ValueError as exc:
                raise ValidationError(str(exc)) from None
        return tuple(items)


class _NameList(mf.Field):
    """One name or a list of names (event names, call types)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> list[str]:
        items = value if isinstance(value, list) else [value]
        names = []
        for item in items:
            if isinstance(item, int | float) and not isinstance(item, bool):
                item = str(item)
            if not isinstance(item, str) or not item.strip():
                raise ValidationError(f"{item!r} is not a name")
            names.append(item)
        if not names:
            raise ValidationError("an empty list")
        return names


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class _LinkSchema(_Strict):
    user = _ValueSpecField(required=True)
    anonymous = _ValueSpecField(required=True)


class _RuleSchema(_Strict):
    name = mf.String()
    events = _NameList()
    event_patterns = _NameList()
    calls = _NameList()
    pages = _NameList()
    type = mf.String()
    skip = mf.String(validate=validate.Length(min=1))
    fields = mf.Dict(keys=mf.String(), values=_ValueSpecField())
    items = mf.String()
    links = mf.List(mf.Nested(_LinkSchema))
    delete = _ValueSpecField()

    @validates_schema
    def _one_action(self, data: dict, **kwargs: Any) -> None:
        if ("type" in data) == ("skip" in data):
            raise ValidationError(
                "a rule needs exactly one of 'type' (the Miso type to emit) or 'skip' (a reason)"
            )
        if "skip" in data and ("fields" in data or "items" in data):
            raise ValidationError("a 'skip' rule emits no record, so it takes no fields or items")


class _PageViewsSchema(_Strict):
    events = _NameList()
    calls = _NameList()
    path = _ValueSpecField(required=True)
    fields = mf.Dict(keys=mf.String(), values=_ValueSpecField())


class _ProfileSchema(_Strict):
    """One `profiles:` entry: which messages change a person's profile, and how."""

    events = _NameList()
    calls = _NameList()
    set = mf.Dict(keys=mf.String(), values=_ValueSpecField(), required=True)
    user = _ValueSpecField()
    anonymous = _ValueSpecField()

    @validates_schema
    def _matches(self, data: dict, **kwargs: Any) -> None:
        if "events" not in data and "calls" not in data:
            raise ValidationError("a profiles entry needs 'events' or 'calls' to match on")


def _users_schema() -> Schema:
    """The `users:` section's schema; adapter.users builds on this module, so it is
    imported when a table is loaded rather than when this module is."""
    from adapter.users import UsersSchema

    return UsersSchema()


class _MappingFileSchema(_Strict):
    version = mf.Integer(validate=validate.Equal(1, error="only version 1 exists"))
    source = mf.String()
    description = mf.String()
    event_name = _ValueSpecField(required=True)
    call_type = _ValueSpecField()
    unmatched = mf.Raw()
    common = mf.Dict(keys=mf.String(), values=_ValueSpecField())
    links = mf.List(mf.Nested(_LinkSchema))
    page_views = mf.Nested(_PageViewsSchema)
    items = mf.Dict(keys=mf.String(), values=mf.Dict())
    rules = mf.List(mf.Nested(_RuleSchema), required=True)
    profiles = mf.List(mf.Nested(_ProfileSchema))
    users = mf.Nested(
        _users_schema,
        error_messages={"null": "empty section; map at least one UserRecord field, or remove it"},
    )


# --------------------------------------------------------------------------- targets

_COMMON_TARGETS = frozenset({"user_id", "anonymous_id", "timestamp", "miso_id", "context"})
_ITEM_FIELDS = ("product_ids", "product_group_ids", "quantities")
_BOUNDED_ID = partial(values.to_id, max_length=records.MAX_LENGTHS["product_ids"])


def _converter(target: tuple[str, ...]) -> Callable[[Any], Any]:
    """The conversion for a Miso field, chosen by the field itself (never by the file)."""
    top = target[0]
    if top == "context":
        sub = ".".join(target[1:])
        if target[1:2] == ("custom_context",) and len(target) == 3:
            return values.to_custom_value
        kind = records.CONTEXT_FIELDS.get(sub)
        if kind is None or kind == "custom_context":
            raise ValueError(
                f"'{'.'.join(target)}' is not a Miso context field; known: "
                + ", ".join(f"context.{k}" for k in records.CONTEXT_FIELDS if k != "custom_context")
                + ", context.custom_context.KEY"
            )
        return values.truncate_ipv4 if kind == "ipv4" else values.to_string
    if top == "search":
        if target[1:] == ("keywords",):
            return values.to_text
        if target[1:] == ("filters",):
            return values.to_filters
        raise ValueError("search takes 'search.keywords' and 'search.filters'")
    if len(target) != 1:
        raise ValueError(f"'{top}' has no sub-fields")
    kind = records.FIELD_KINDS.get(top)
    if kind is None or kind == "type":
        raise ValueError(f"'{top}' is not a Miso field you can set")
    if top in ("user_id", "anonymous_id"):
        return partial(values.to_id, max_length=records.MAX_LENGTHS[top])
    if top == "rating":
        return values.to_rating
    if top == "duration":
        return values.to_positive_number
    simple: dict[str, Callable[[Any], Any]] = {
        "timestamp": values.to_timestamp,
        "uuid": values.to_uuid,
        "number": values.to_number,
        "number_list": values.to_number_list,
        "string_list": partial(values.to_string_list, max_length=512),
    }
    if kind in simple:
        return simple[kind]
    limit = records.MAX_LENGTHS.get(top)
    return values.to_string if limit is None else partial(values.to_id, max_length=limit)


# --------------------------------------------------------------------------- compiled rules


@dataclass
class _Items:
    """A compiled item list: where the items are, and per-item id/quantity readers."""

    sources: list[Getter]
    key: str
    per_item: dict[str, tuple[list[Getter], Callable[[Any], Any], Any]]


_NO_PROFILES: list[Any] = []  # shared, never changed: the entries of most events

#: The parts of a person's profile a `profiles:` entry may set (what `users:` paths read).
PROFILE_PARTS = ("traits", "group")


@dataclass
class _Profile:
    """A compiled `profiles:` entry: the person a message is about, and what it sets:
    ``(part, key, reader)``, key None for a whole object merged key by key."""

    user: Resolver | None
    anonymous: Resolver | None
    sets: list[tuple[str, str | None, Resolver]]


def _object(value: Any) -> dict | None:
    return value if isinstance(value, dict) else None


def _as_is(value: Any) -> Any:
    return value


@dataclass
class _Rule:
    """A compiled rule: what to emit and how to read each field."""

    label: str
    type: str | None
    skip: str | None
    fields: Callable[[Any, dict], dict | None] | None = None
    items: _Items | None = None
    item_fields: tuple[str, ...] = ()
    links: list[tuple[Resolver, Resolver]] = field(default_factory=list)
    delete: Resolver | None = None
    required: tuple[str, ...] = ()
    patterns: list[re.Pattern[str]] = field(default_factory=list)


def _resolver(spec: _ValueSpec, convert: Callable[[Any], Any]) -> Resolver:
    """Compile a value spec: first path whose value converts wins, else the default."""
    if spec.value is not _NOTHING:
        constant = convert(spec.value)
        if constant is None:
            raise ValueError(f"constant {spec.value!r} is not a valid value here")
        return lambda event, env: constant
    default = None
    if spec.default is not _NOTHING:
        default = convert(spec.default)
        if default is None:
            raise ValueError(f"default {spec.default!r} is not a valid value here")
    if len(spec.paths) == 1:
        keys = _key_chain(spec.paths[0])
        if keys is not None and 1 <= len(keys) <= 3:
            return _chain_resolver(keys, convert, default)
    getters = [_compile_getter(p) for p in spec.paths]
    if len(getters) == 1:
        (getter,) = getters

        def resolve_one(event: Any, env: dict) -> Any:
            raw = getter(event, env)
            if raw is None:
                return default
            got = convert(raw)
            return default if got is None else got

        return resolve_one

    def resolve_first(event: Any, env: dict) -> Any:
        for getter in getters:
            raw = getter(event, env)
            if raw is not None:
                got = convert(raw)
                if got is not None:
                    return got
        return default

    return resolve_first


# Objects whose presence requires a key (Miso: context.page needs url). Without it
# the whole object is left out rather than failing the record.
_REQUIRED_KEYS = {("context", "page"): "url"}


def _key_chain(text: str) -> list[str] | None:
    """The keys of a path made only of plain keys from the event root, else None."""
    root, steps = _parse_path(text)
    if root != "event" or any(kind != "key" for kind, _ in steps):
        return None
    return [arg for _, arg in steps]


def _chain_resolver(keys: list[str], convert: Callable[[Any], Any], default: Any) -> Resolver:
    """A resolver for `a`, `a.b` or `a.b.c` with the walk inlined: the hot-path common case."""
    resolver = _chain_resolver_for(keys, convert, default)
    # Object builders read the tag to fetch a shared prefix (context.campaign) once.
    resolver.chain = (tuple(keys), convert, default)  # type: ignore[attr-defined]
    return resolver


def _chain_resolver_for(keys: list[str], convert: Callable[[Any], Any], default: Any) -> Resolver:
    if len(keys) == 1:
        (k1,) = keys

        def resolve1(event: dict, env: dict) -> Any:
            raw = event.get(k1)
            if raw is not None:
                got = convert(raw)
                if got is not None:
                    return got
            return default

        return resolve1
    if len(keys) == 2:
        k1, k2 = keys

        def resolve2(event: dict, env: dict) -> Any:
            inner = event.get(k1)
            if isinstance(inner, dict):
                raw = inner.get(k2)
                if raw is not None:
                    got = convert(raw)
                    if got is not None:
                        return got
            return default

        return resolve2
    k1, k2, k3 = keys

    def resolve3(event: dict, env: dict) -> Any:
        inner = event.get(k1)
        if isinstance(inner, dict):
            inner = inner.get(k2)
            if isinstance(inner, dict):
                raw = inner.get(k3)
                if raw is not None:
                    got = convert(raw)
                    if got is not None:
                        return got
        return default

    return resolve3


def _object_builder(
    setters: list[tuple[tuple[str, ...], Resolver]], at: tuple[str, ...] = ()
) -> Callable[[Any, dict], dict | None]:
    """Compile targets like ``context.page.url`` into ONE generated function, once.

    The whole object tree of a rule becomes straight-line Python: each source object
    (``properties``) is walked once per event, each plain key read is inlined, and only
    reads that need more (fallbacks, wildcards, ``$match``) call their resolver. Nested
    objects are left out when empty, so no record ever carries ``{}``. This is the
    translator's hot path: generated code does in one call what nested closures would
    do in a dozen (see bench/ and docs/performance.md).
    """
    return _BuilderSource(setters, at).compile()


class _BuilderSource:
    """Python source for an object builder; constants are passed in, never inlined."""

    def __init__(self, setters: list[tuple[tuple[str, ...], Resolver]], at: tuple[str, ...]):
        self.setters = setters
        self.at = at
        self.lines: list[str] = []
        self.constants: dict[str, Any] = {"_EMPTY": _EMPTY}
        self.sources: dict[tuple[str, ...], str] = {(): "event"}
        self.objects = 0

    def compile(self) -> Callable[[Any, dict], dict | None]:
        self._object(self.setters, self.at, "out")
        body = "\n".join(f"    {line}" for line in self.lines)
        text = f"def build(event, env):\n{body}\n    return out or None\n"
        namespace = dict(self.constants)
        exec(compile(text, f"<mapping builder {'.'.join(self.at) or 'record'}>", "exec"),
             namespace)  # fmt: skip
        build = namespace["build"]
        build.source = text  # type: ignore[attr-defined]  # for debugging and tests
        return build

    def _const(self, value: Any) -> str:
        name = f"c{len(self.constants)}"
        self.constants[name] = value
        return name

    def _source(self, prefix: tuple[str, ...], indent: str) -> str:
        """The variable holding the object at ``prefix`` (or an empty one), walked once."""
        if prefix in self.sources:
            return self.sources[prefix]
        parent = self._source(prefix[:-1], indent)
        name = f"s{len(self.sources)}"
        self.sources[prefix] = name
        self.lines.append(f"{indent}{name} = {parent}.get({prefix[-1]!r})")
        self.lines.append(f"{indent}if not isinstance({name}, dict):")
        self.lines.append(f"{indent}    {name} = _EMPTY")
        return name

    def _object(
        self, setters: list[tuple[tuple[str, ...], Resolver]], at: tuple[str, ...], var: str
    ) -> None:
        leaves: list[tuple[str, Resolver]] = []
        groups: dict[str, list[tuple[tuple[str, ...], Resolver]]] = {}
        for target, resolve in setters:
            if len(target) == 1:
                leaves.append((target[0], resolve))
            else:
                groups.setdefault(target[0], []).append((target[1:], resolve))
        shared, leaves = _share_prefixes(leaves)
        add = self.lines.append
        add(f"{var} = {{}}")
        # Keys in a fixed order: shared reads, other leaves, nested objects.
        for prefix, reads in shared:
            for key, last, convert in reads:
                self._read(var, key, (*prefix, last), convert, None)
        for key, resolve in leaves:
            chain = getattr(resolve, "chain", None)
            if chain is not None:
                self._read(var, key, *chain)
                continue
            add(f"v = {self._const(resolve)}(event, env)")
            add("if v is not None:")
            add(f"    {var}[{key!r}] = v")
        for key, sub in groups.items():
            self.objects += 1
            child = f"o{self.objects}"
            self._object(sub, (*at, key), child)
            required = _REQUIRED_KEYS.get((*at, key))
            test = child if required is None else f"{required!r} in {child}"
            add(f"if {test}:")
            add(f"    {var}[{key!r}] = {child}")

    def _read(self, var: str, key: str, keys: tuple[str, ...], convert: Any, default: Any) -> None:
        """``var[key] = convert(<keys>)``, or ``default``, or nothing, inlined."""
        source = self._source(tuple(keys[:-1]), "")
        add = self.lines.append
        add(f"v = {source}.get({keys[-1]!r})")
        add("if v is not None:")
        add(f"    v = {self._const(convert)}(v)")
        if default is None:
            add("    if v is not None:")
            add(f"        {var}[{key!r}] = v")
        else:
            add(f"{var}[{key!r}] = {self._const(default)} if v is None else v")


# Read through when a source object is missing: .get on it finds nothing.
_EMPTY: Mapping[str, Any] = MappingProxyType({})


def _share_prefixes(
    leaves: list[tuple[str, Resolver]],
) -> tuple[list[tuple[tuple[str, ...], list[tuple[str, str, Any]]]], list[tuple[str, Resolver]]]:
    """Group leaves that read sibling keys of one source object (``context.campaign.*``).

    Such a group walks to the shared object once instead of once per key. Only plain
    key-chain reads without a default qualify; everything else stays a leaf.
    """
    by_prefix: dict[tuple[str, ...], list[tuple[str, str, Any]]] = {}
    for key, resolve in leaves:
        chain = getattr(resolve, "chain", None)
        if chain is not None and len(chain[0]) >= 2 and chain[2] is None:
            by_prefix.setdefault(chain[0][:-1], []).append((key, chain[0][-1], chain[1]))
    shared = [(prefix, reads) for prefix, reads in by_prefix.items() if len(reads) >= 2]
    grouped = {key for _, reads in shared for key, _, _ in reads}
    return shared, [(key, resolve) for key, resolve in leaves if key not in grouped]


class _Compiler:
    """Turns validated file data into compiled rules, collecting located problems."""

    def __init__(self, located: Located, filename: str) -> None:
        self.located = located
        self.filename = filename
        self.problems: list[Problem] = []
        # Named captures `$match.NAME` may read: those of the page rule being compiled,
        # None outside page rules.
        self.captures: set[str] | None = None

    def problem(self, path: KeyPath, message: str) -> None:
        self.problems.append(
            Problem(self.filename, self.located.line_of(path), show_path(path), message)
        )

    def resolver(self, spec: _ValueSpec, target: str, path: KeyPath) -> Resolver | None:
        try:
            parts = self.target(target)
            resolver = _resolver(spec, _converter(parts))
        except ValueError as exc:
            self.problem(path, str(exc))
            return None
        if any(p.startswith("$match") for p in spec.paths) and self.captures is None:
            self.problem(path, "$match.NAME only works in a rule with `pages:` patterns")
        elif self.captures is not None:
            for name in self.match_names_used(spec):
                if name not in self.captures:
                    self.problem(path, f"no page pattern of this rule captures (?P<{name}>…)")
        return resolver

    @staticmethod
    def match_names_used(spec: _ValueSpec) -> list[str]:
        return [p.split(".", 1)[1] for p in spec.paths if p.startswith("$match.")]

    @staticmethod
    def target(text: str) -> tuple[str, ...]:
        parts = tuple(text.split("."))
        if not all(parts):
            raise ValueError(f"bad field name '{text}'")
        return parts

    def setters(
        self, specs: dict[str, _ValueSpec], path: KeyPath, allowed: frozenset[str] | None
    ) -> dict[tuple[str, ...], Resolver]:
        out: dict[tuple[str, ...], Resolver] = {}
        for name, spec in specs.items():
            top = name.split(".", 1)[0]
            if allowed is not None and top not in allowed:
                self.problem(
                    (*path, name),
                    f"'{top}' is not allowed on this Miso type; it allows: "
                    + ", ".join(sorted(allowed - {"type"})),
                )
                continue
            resolver = self.resolver(spec, name, (*path, name))
            if resolver is not None:
                out[self.target(name)] = resolver
        return out

    def links(self, raw: list[dict], path: KeyPath) -> list[tuple[Resolver, Resolver]]:
        out = []
        for index, link in enumerate(raw):
            user = self.resolver(link["user"], "user_id", (*path, index, "user"))
            anon = self.resolver(link["anonymous"], "anonymous_id", (*path, index, "anonymous"))
            if user and anon:
                out.append((user, anon))
        return out

    def profiles(
        self, raw: list[dict], common: dict[tuple[str, ...], Resolver]
    ) -> tuple[dict[str, list[_Profile]], dict[str, list[_Profile]]]:
        """Compile the `profiles:` entries: (call type → entries, event name → entries)."""
        calls: dict[str, list[_Profile]] = {}
        events: dict[str, list[_Profile]] = {}
        for index, entry in enumerate(raw):
            path: KeyPath = ("profiles", index)
            user = common.get(("user_id",))
            if "user" in entry:
                user = self.resolver(entry["user"], "user_id", (*path, "user"))
            anonymous = common.get(("anonymous_id",))
            if "anonymous" in entry:
                anonymous = self.resolver(entry["anonymous"], "anonymous_id", (*path, "anonymous"))
            if user is None and anonymous is None:
                self.problem(path, "say whose profile it is: 'user' (or common user_id)")
                continue
            sets = []
            for target, spec in entry["set"].items():
                part, _, key = target.partition(".")
                if part not in PROFILE_PARTS or (key == "" and "." in target):
                    self.problem(
                        (*path, "set", target),
                        f"'{target}' is not a part of a profile: set "
                        + ", ".join(PROFILE_PARTS)
                        + " (an object, merged key by key) or one key of them (traits.plan)",
                    )
                    continue
                try:
                    read = _resolver(spec, _object if not key else _as_is)
                except ValueError as exc:
                    self.problem((*path, "set", target), str(exc))
                    continue
                sets.append((part, key or None, read))
            compiled = _Profile(user, anonymous, sets)
            for call in entry.get("calls", []):
                calls.setdefault(call.casefold(), []).append(compiled)
            for name in entry.get("events", []):
                events.setdefault(normalize_name(name), []).append(compiled)
        return calls, events

    def items(self, name: str, raw: Any, path: KeyPath) -> _Items | None:
        if not isinstance(raw, dict):
            self.problem(path, "an item list is a mapping with 'from' and per-item fields")
            return None
        unknown = set(raw) - {"from", *_ITEM_FIELDS}
        for key in sorted(unknown):
            self.problem(
                (*path, key),
                f"unknown key; an item list takes 'from' and {', '.join(_ITEM_FIELDS)}",
            )
        try:
            source = _ValueSpecField().deserialize(raw.get("from"))
        except ValidationError as exc:
            self.problem((*path, "from"), "; ".join(exc.messages))
            return None
        key = next((f for f in ("product_ids", "product_group_ids") if f in raw), None)
        if key is None:
            self.problem(path, "an item list needs 'product_ids' or 'product_group_ids'")
            return None
        per_item = {}
        for item_field in _ITEM_FIELDS:
            if item_field not in raw:
                continue
            try:
                spec = _ValueSpecField().deserialize(raw[item_field])
            except ValidationError as exc:
                self.problem((*path, item_field), "; ".join(exc.messages))
                continue
            convert = values.to_positive_number if item_field == "quantities" else _BOUNDED_ID
            default = None
            if spec.default is not _NOTHING:
                default = convert(spec.default)
                if default is None:
                    self.problem((*path, item_field), f"default {spec.default!r} is not valid")
            try:
                getters = [_compile_getter(p) for p in spec.paths]
            except ValueError as exc:  # pragma: no cover - paths were validated above
                self.problem((*path, item_field), str(exc))
                continue
            per_item[item_field] = (getters, convert, default)
        try:
            sources = [_compile_getter(p) for p in source.paths]
        except ValueError as exc:  # pragma: no cover
            self.problem((*path, "from"), str(exc))
            return None
        if not sources:
            self.problem((*path, "from"), "an item list needs 'from' paths")
            return None
        return _Items(sources, key, per_item)

    def rule(
        self,
        raw: dict,
        path: KeyPath,
        common: dict[tuple[str, ...], Resolver],
        extra: dict[tuple[str, ...], Resolver],
        item_lists: dict[str, _Items],
        label: str,
    ) -> _Rule | None:
        """Compile one rule; page rules expose their named captures while compiling."""
        try:
            return self._rule(raw, path, common, extra, item_lists, label)
        finally:
            self.captures = None

    def _rule(
        self,
        raw: dict,
        path: KeyPath,
        common: dict[tuple[str, ...], Resolver],
        extra: dict[tuple[str, ...], Resolver],
        item_lists: dict[str, _Items],
        label: str,
    ) -> _Rule | None:
        patterns: list[re.Pattern[str]] = []
        for index, pattern in enumerate(raw.get("pages", [])):
            try:
                patterns.append(re.compile(pattern))
            except re.error as exc:
                self.problem((*path, "pages", index), f"bad regular expression: {exc}")
        self.captures = {n for p in patterns for n in p.groupindex} if patterns else None
        if "skip" in raw:
            rule = _Rule(label=label, type=None, skip=raw["skip"])
        else:
            miso_type = raw["type"]
            if miso_type not in records.INTERACTION_TYPES:
                self.problem(
                    (*path, "type"),
                    f"unknown Miso type '{miso_type}'; expected one of: "
                    + ", ".join(records.INTERACTION_TYPES),
                )
                return None
            allowed = records.ALLOWED_FIELDS[miso_type]
            own = self.setters(raw.get("fields", {}), (*path, "fields"), allowed)
            specs = dict(raw.get("fields", {}))
            if miso_type == "custom" and "custom_action_name" not in specs:
                own[("custom_action_name",)] = _resolver(_ValueSpec(("$event",)), values.to_string)
            # Precedence: the rule's own fields, then page-view fields, then common ones.
            merged = {**common, **{t: r for t, r in extra.items() if t[0] in allowed}, **own}
            rule = _Rule(
                label=label,
                type=miso_type,
                skip=None,
                fields=_object_builder(list(merged.items())),
                required=("custom_action_name",) if miso_type == "custom" else (),
            )
            if "items" in raw:
                items = item_lists.get(raw["items"])
                if items is None:
                    known = ", ".join(sorted(item_lists)) or "none are defined"
                    self.problem((*path, "items"), f"no item list named '{raw['items']}' ({known})")
                else:
                    usable = tuple(f for f in items.per_item if f in allowed)
                    clash = [f for f in usable if (f,) in own]
                    if items.key not in allowed:
                        self.problem(
                            (*path, "items"),
                            f"'{miso_type}' does not allow {items.key}, so it takes no items",
                        )
                    elif clash:
                        self.problem(
                            (*path, "items"),
                            f"{', '.join(clash)} set both by 'items' and by 'fields'",
                        )
                    else:
                        rule.items, rule.item_fields = items, usable
        rule.patterns = patterns
        if "links" in raw:
            rule.links = self.links(raw["links"], (*path, "links"))
        if "delete" in raw:
            rule.delete = self.resolver(raw["delete"], "user_id", (*path, "delete"))
        return rule


# --------------------------------------------------------------------------- translator


class Translator:
    """A compiled mapping table: ``translate(event)`` is all the hot path does."""

    def __init__(
        self,
        *,
        path: str,
        source: str,
        event_name: Resolver,
        call_type: Resolver | None,
        page_calls: frozenset[str],
        page_events: frozenset[str],
        page_path: Resolver | None,
        page_rules: list[tuple[re.Pattern[str], _Rule]],
        call_rules: dict[str, _Rule],
        event_rules: dict[str, _Rule],
        name_patterns: list[tuple[re.Pattern[str], _Rule]],
        unmatched: _Rule | None,
        links: list[tuple[Resolver, Resolver]],
        users: UsersMapping | None = None,
        profile_calls: dict[str, list[_Profile]] | None = None,
        profile_events: dict[str, list[_Profile]] | None = None,
        timestamp: Resolver | None = None,
    ) -> None:
        self.path = path
        self.source = source
        self._event_name = event_name
        self._call_type = call_type
        self._page_calls = page_calls
        self._page_events = page_events
        self._page_path = page_path
        self._page_rules = page_rules
        self._call_rules = call_rules
        self._event_rules = event_rules
        self._name_patterns = name_patterns
        self._unmatched = unmatched
        self._links = links
        # The compiled `users:` section (adapter.users): a user's merged traits → the
        # UserRecord to upload; None when the table has no such section.
        self.users = users
        self._profile_calls = profile_calls or {}
        self._profile_events = profile_events or {}
        self._timestamp = timestamp
        # Raw event name → rule (or None); event names repeat endlessly, normalising once
        # per distinct spelling keeps matching at one dict lookup.
        self._name_cache: dict[str, tuple[bool, _Rule | None, list[_Profile]]] = {}

    def __repr__(self) -> str:
        return f"<Translator {self.source} from {self.path}: {self.rule_count} rules>"

    @property
    def rule_count(self) -> int:
        """How many distinct rules the table holds."""
        rules = {id(r) for r in self._event_rules.values()}
        rules |= {id(r) for r in self._call_rules.values()}
        rules |= {id(r) for _, r in self._page_rules}
        rules |= {id(r) for _, r in self._name_patterns}
        return len(rules)

    @property
    def event_names(self) -> list[str]:
        """The normalised event names the table maps."""
        return sorted(self._event_rules)

    def _lookup(self, name: str) -> tuple[bool, _Rule | None, list[_Profile]]:
        """(is a page-view event, its event rule, its `profiles:` entries) for a raw event
        name, cached."""
        try:
            return self._name_cache[name]
        except KeyError:
            key = normalize_name(name)
            is_page = key in self._page_events
            rule = self._event_rules.get(key)
            if rule is None and not is_page:
                # Exact names first; patterns ("^\$mp_") catch what no name claims. A page
                # view is matched by its path instead, so an unmapped path says which one.
                rule = next((r for p, r in self._name_patterns if p.search(name)), None)
            found = (is_page, rule, self._profile_events.get(key, _NO_PROFILES))
            if len(self._name_cache) < _NAME_CACHE_MAX:  # bounded: hostile input has endless names
                self._name_cache[name] = found
            return found

    def explain(self, event: dict) -> Explanation:
        """Which rule an event meets, without building anything (for coverage reports).

        ``key`` is what was matched: the event name, ``page <path>`` for a page view, or
        the call type. ``outcome`` is ``mapped`` (``detail`` = the Miso type), ``skipped``
        (a skip rule: ``detail`` = its reason) or ``uncovered`` (``detail`` = why).
        """
        env: dict[str, Any] = {}
        rule, name, call, page, _ = self._match(event, env)
        if page is not _NOTHING and page is not None and (rule is None or rule.patterns):
            key = f"page {page}"
        else:
            key = name if name is not None else call or ""
        if rule is None:
            return Explanation(key, "uncovered", _unmatched_reason(name, call, page), None)
        if rule is self._unmatched:
            return Explanation(key, "uncovered", f"sent as {rule.type} (unmatched)", rule.type)
        if rule.skip is not None:
            return Explanation(key, "skipped", rule.skip, None)
        return Explanation(key, "mapped", rule.type or "", rule.type)

    def _match(
        self, event: dict, env: dict
    ) -> tuple[_Rule | None, str | None, str | None, Any, list[_Profile]]:
        """(rule, event name, call type, page path or _NOTHING, `profiles:` entries) for an
        event."""
        name = self._event_name(event, env)
        call = self._call_type(event, env) if self._call_type is not None else None
        call_key = call.casefold() if call is not None else None
        env["$event"] = name if name is not None else call
        rule: _Rule | None = None
        page: Any = _NOTHING  # the page path, once looked at
        is_page_event, named_rule, profiles = (
            self._lookup(name) if name is not None else (False, None, _NO_PROFILES)
        )
        if call_key is not None and self._profile_calls:
            profiles = profiles + self._profile_calls.get(call_key, _NO_PROFILES)
        if self._page_path is not None and (is_page_event or call_key in self._page_calls):
            page = self._page_path(event, env)
            if page is not None:
                for pattern, candidate in self._page_rules:
                    match = pattern.search(page)
                    if match is not None:
                        env["$match"] = match.groupdict()
                        rule = candidate
                        break
        if rule is None:
            rule = named_rule
        if rule is None and call_key is not None:
            rule = self._call_rules.get(call_key)
        if rule is None and (name is not None or call is not None):
            rule = self._unmatched
        return rule, name, call, page, profiles

    def translate(self, event: dict) -> Translation:
        """Translate one source event (a JSON object) into Miso records, links, deletions
        and profile changes."""
        env: dict[str, Any] = {}
        rule, name, call, page, profiles = self._match(event, env)
        translation = self._translate(event, env, rule, name, call, page)
        if profiles:
            translation.profiles = self._profiles(event, env, profiles)
        return translation

    def _translate(
        self,
        event: dict,
        env: dict,
        rule: _Rule | None,
        name: str | None,
        call: str | None,
        page: Any,
    ) -> Translation:
        links = self._learn(self._links, event, env)
        if rule is None:
            uncovered = _uncovered_target(name, call, page)
            return Translation([], links, [], _unmatched_reason(name, call, page), uncovered)
        if rule.links:
            links += [x for x in self._learn(rule.links, event, env) if x not in links]
        deletions = []
        if rule.delete is not None:
            user = rule.delete(event, env)
            if user is not None:
                deletions.append(user)
        if rule.skip is not None:
            return Translation([], links, deletions, rule.skip)
        record = self._build(rule, event, env)
        if "user_id" not in record and "anonymous_id" not in record:
            return Translation([], links, deletions, "no user_id or anonymous_id")
        for required in rule.required:
            if required not in record:
                return Translation([], links, deletions, f"no value for {required}")
        if rule is self._unmatched:
            return Translation(
                [record], links, deletions, None, _uncovered_target(name, call, page)
            )
        return Translation([record], links, deletions, None)

    def _profiles(self, event: dict, env: dict, entries: list[_Profile]) -> list[ProfileChange]:
        """The profile changes the matching `profiles:` entries read from this message."""
        out = []
        for entry in entries:
            user = entry.user(event, env) if entry.user is not None else None
            anonymous = entry.anonymous(event, env) if entry.anonymous is not None else None
            if user is None and anonymous is None:
                continue
            changes: dict[str, dict[str, Any]] = {}
            for part, key, read in entry.sets:
                got = read(event, env)
                if got is None:
                    continue
                if key is None:
                    changes.setdefault(part, {}).update(got)
                else:
                    changes.setdefault(part, {})[key] = got
            if changes:
                at = self._when(event, env)
                out.append(ProfileChange(user, anonymous, changes, at, self.source))
        return out

    def _when(self, event: dict, env: dict) -> float:
        """A message's time in epoch seconds (now when it has none)."""
        stamp = self._timestamp(event, env) if self._timestamp is not None else None
        if stamp is not None:
            try:
                return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            except ValueError:
                pass
        return time.time()

    @staticmethod
    def _learn(specs: list[tuple[Resolver, Resolver]], event: dict, env: dict) -> list[Link]:
        out = []
        for user_of, anon_of in specs:
            user = user_of(event, env)
            if user is None:
                continue
            anon = anon_of(event, env)
            if anon is not None and anon != user:
                out.append(Link(anonymous_id=anon, user_id=user))
        return out

    @staticmethod
    def _build(rule: _Rule, event: dict, env: dict) -> dict:
        record: dict[str, Any] = {"type": rule.type}
        built = rule.fields(event, env) if rule.fields is not None else None
        if built is not None:
            record.update(built)
        if rule.items is not None:
            _add_items(record, rule.items, rule.item_fields, event, env)
        return record


def _uncovered_target(name: str | None, call: str | None, page: Any) -> tuple[str, str] | None:
    """(kind, match) a rule would need to claim an event no rule claimed, as in
    :func:`_unmatched_reason`: its page path, else its event name, else its call type."""
    if page is not _NOTHING and page:
        return "page", page
    if name is not None:
        return "event", name
    if call is not None:
        return "call", call
    return None


def _unmatched_reason(name: str | None, call: str | None, page: Any) -> str:
    """Why no rule applied, naming what was looked for (built only when needed)."""
    if page is not _NOTHING:
        return f"no rule for page path {page!r}" if page else "page view without a path"
    if name is not None:
        return f"no rule for event {name!r}"
    if call is not None:
        return f"no rule for call {call!r}"
    return "no event name or call type"


def _add_items(record: dict, items: _Items, wanted: tuple[str, ...], event: Any, env: dict) -> None:
    """Fill parallel lists (ids, quantities) from the first item source that has ids."""
    key_getters, key_convert, _ = items.per_item[items.key]
    for source in items.sources:
        found = source(event, env)
        if isinstance(found, dict):
            found = [found]
        if not isinstance(found, list):
            continue
        rows: list[tuple[str, Any]] = []
        for item in found:
            if isinstance(item, dict):
                key = _first(key_getters, key_convert, item, env)
            else:
                key = key_convert(item)  # a bare id in a list of ids
                item = {}
            if key is not None:
                rows.append((key, item))
        if not rows:
            continue
        record[items.key] = [key for key, _ in rows]
        for name in wanted:
            if name == items.key:
                continue
            getters, convert, default = items.per_item[name]
            column = [_first(getters, convert, item, env) for _, item in rows]
            if name == "quantities":
                # Parallel to product_ids: every position needs a value.
                if default is None and None in column:
                    continue
                record[name] = [default if q is None else q for q in column]
            else:
                present = [v for v in column if v is not None]
                if present:
                    record[name] = present
        return


def _first(getters: list[Getter], convert: Callable[[Any], Any], item: Any, env: dict) -> Any:
    for getter in getters:
        raw = getter(item, env)
        if raw is not None:
            got = convert(raw)
            if got is not None:
                return got
    return None


# --------------------------------------------------------------------------- loading


def default_mappings_dir() -> Path:
    """The default ``MAPPINGS_DIR``: the project's ``mappings/`` (a checkout or editable
    install), else the copy a regular install puts under ``<prefix>/share/miso-adapter``."""
    checkout = Path(__file__).resolve().parent.parent / "mappings"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "miso-adapter" / "mappings"


def load_mapping(path: Path | str) -> Translator:
    """Load, validate and compile one mapping file; raise MappingError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError([Problem(str(path), 1, "-", f"cannot read the file: {exc}")]) from None
    return load_mapping_text(text, str(path))


def load_mapping_text(text: str, filename: str = "<mapping>") -> Translator:
    """Load, validate and compile mapping text; ``filename`` is used in error messages."""
    try:
        located = load_located(text)
    except YamlError as exc:
        raise MappingError([Problem(filename, exc.line, exc.key, exc.message)]) from None
    if not isinstance(located.data, dict):
        raise MappingError(
            [Problem(filename, 1, "-", "a mapping file is a YAML mapping with at least 'rules'")]
        )
    try:
        data = _MappingFileSchema().load(located.data)
    except ValidationError as exc:
        problems = [
            Problem(filename, located.line_of(path), show_path(path), message)
            for path, message in _flatten(exc.normalized_messages())
        ]
        raise MappingError(sorted(problems, key=lambda p: p.line)) from None
    return _compile(data, located, filename)


def _flatten(messages: Any, path: KeyPath = ()) -> Iterable[tuple[KeyPath, str]]:
    """Located marshmallow errors, in the words of this format."""
    for key, message in flatten_errors(messages, path):
        yield key, _friendly(message)


def _friendly(message: str) -> str:
    if message == "Unknown field.":
        return "unknown key"
    if message == "Missing data for required field.":
        return "required key is missing"
    return message


def _compile(data: dict, located: Located, filename: str) -> Translator:
    compiler = _Compiler(located, filename)
    common = compiler.setters(data.get("common", {}), ("common",), None)
    for target in common:
        if target[0] not in _COMMON_TARGETS:
            compiler.problem(
                ("common", ".".join(target)),
                "common fields apply to every type, so only "
                + ", ".join(sorted(_COMMON_TARGETS))
                + " (and context.*) may be set here",
            )
    event_name = _resolver(data["event_name"], values.to_string)
    call_type = None
    if "call_type" in data:
        call_type = _resolver(data["call_type"], values.to_string)

    page_views = data.get("page_views")
    page_calls: frozenset[str] = frozenset()
    page_events: frozenset[str] = frozenset()
    page_path = None
    page_fields: dict[tuple[str, ...], Resolver] = {}
    if page_views is not None:
        page_calls = frozenset(c.casefold() for c in page_views.get("calls", []))
        page_events = frozenset(normalize_name(e) for e in page_views.get("events", []))
        try:
            page_path = _resolver(page_views["path"], values.to_url_path)
        except ValueError as exc:  # pragma: no cover - path specs hold no constants
            compiler.problem(("page_views", "path"), str(exc))
        page_fields = compiler.setters(page_views.get("fields", {}), ("page_views", "fields"), None)
        if not page_calls and not page_events:
            compiler.problem(("page_views",), "say which events are page views: calls or events")

    item_lists: dict[str, _Items] = {}
    for name, raw in data.get("items", {}).items():
        compiled = compiler.items(name, raw, ("items", name))
        if compiled is not None:
            item_lists[name] = compiled

    page_rules: list[tuple[re.Pattern[str], _Rule]] = []
    name_patterns: list[tuple[re.Pattern[str], _Rule]] = []
    call_rules: dict[str, _Rule] = {}
    event_rules: dict[str, _Rule] = {}
    claimed: dict[tuple[str, str], int] = {}
    for index, raw in enumerate(data["rules"]):
        path: KeyPath = ("rules", index)
        matchers = [k for k in ("events", "event_patterns", "calls", "pages") if k in raw]
        if not matchers:
            compiler.problem(
                path, "a rule needs 'events', 'event_patterns', 'calls' or 'pages' to match on"
            )
            continue
        label = raw.get("name") or _label(raw)
        is_page_rule = "pages" in raw
        extra = page_fields if is_page_rule else {}
        rule = compiler.rule(raw, path, common, extra, item_lists, label)
        if rule is None:
            continue
        if is_page_rule and page_path is None:
            compiler.problem((*path, "pages"), "page rules need a top-level 'page_views' section")
        for kind, table, norm in (
            ("events", event_rules, normalize_name),
            ("calls", call_rules, str.casefold),
        ):
            for position, name in enumerate(raw.get(kind, [])):
                key = norm(name)
                first = claimed.get((kind, key))
                if first is not None:
                    compiler.problem(
                        (*path, kind, position),
                        f"'{name}' is already matched by the rule at line {first}; "
                        "an event may be claimed by one rule only",
                    )
                    continue
                claimed[(kind, key)] = located.line_of((*path, kind, position))
                table[key] = rule
        page_rules.extend((pattern, rule) for pattern in rule.patterns)
        for position, text in enumerate(raw.get("event_patterns", [])):
            try:
                name_patterns.append((re.compile(text, re.IGNORECASE), rule))
            except re.error as exc:
                compiler.problem(
                    (*path, "event_patterns", position), f"bad regular expression: {exc}"
                )

    unmatched = _compile_unmatched(data.get("unmatched", "skip"), compiler, common, item_lists)
    links = compiler.links(data.get("links", []), ("links",))
    profile_calls, profile_events = compiler.profiles(data.get("profiles", []), common)
    users = None
    if "users" in data:
        from adapter.users import compile_users

        users = compile_users(data["users"], compiler.problem, located.line_of)
    if compiler.problems:
        raise MappingError(sorted(compiler.problems, key=lambda p: p.line))
    return Translator(
        path=filename,
        source=data.get("source", Path(filename).stem),
        event_name=event_name,  # type: ignore[arg-type]
        call_type=call_type,
        page_calls=page_calls,
        page_events=page_events,
        page_path=page_path,
        page_rules=page_rules,
        call_rules=call_rules,
        event_rules=event_rules,
        name_patterns=name_patterns,
        unmatched=unmatched,
        links=links,
        users=users,
        profile_calls=profile_calls,
        profile_events=profile_events,
        timestamp=common.get(("timestamp",)),
    )


def _compile_unmatched(
    raw: Any,
    compiler: _Compiler,
    common: dict[tuple[str, ...], Resolver],
    item_lists: dict[str, _Items],
) -> _Rule | None:
    """`unmatched: skip` (default), `unmatched: custom`, or a rule body without matchers."""
    if raw == "skip":
        return None
    if raw == "custom":
        raw = {"type": "custom"}
    if not isinstance(raw, dict):
        compiler.problem(("unmatched",), "expected 'skip', 'custom', or a rule body")
        return None
    try:
        # The `unmatched:` rule is a rule body without matchers.
        body = _RuleSchema(exclude=("events", "event_patterns", "calls", "pages")).load(raw)
    except ValidationError as exc:
        for path, message in _flatten(exc.normalized_messages(), ("unmatched",)):
            compiler.problem(path, message)
        return None
    return compiler.rule(body, ("unmatched",), common, {}, item_lists, "unmatched")


def _label(raw: dict) -> str:
    for key in ("events", "event_patterns", "calls", "pages"):
        if raw.get(key):
            return str(raw[key][0])
    return "rule"  # pragma: no cover - every rule has a matcher
