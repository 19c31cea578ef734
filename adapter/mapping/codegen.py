"""Value specs to Python: the conversion each Miso field takes, resolvers, and the one
generated function per rule that builds a record's fields."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from types import MappingProxyType
from typing import Any

from adapter import records, values
from adapter.mapping.paths import _compile_getter, _parse_path
from adapter.mapping.schema import _NOTHING, _ValueSpec

#: A compiled value spec: (event, env) → the converted value, or None.
Resolver = Callable[[Any, dict], Any]


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
