"""The ``users:`` section of a mapping table: a user's merged traits → one Miso UserRecord.

Miso's Users API (``POST /v1/users``) replaces a user's whole record on every upload, so
the adapter keeps each user's traits merged (a later message's trait wins, an explicit
``null`` removes it) and, at upload time, maps the merged data to one whole record. This
module is that mapping: the ``users:`` section of ``segment.yaml`` / ``mixpanel.yaml``
says, for each UserRecord field, which path(s) feed it, with fallbacks (format in
``mappings/README.md`` § "Users: merged traits to Miso user records"). It is validated
with the rest of its table (errors name file, line and key) and compiled once;
:class:`UsersMapping` is then a plain function of the merged data.

The merged data of one user, which every path of the section reads::

    {
        "user_id": "usr_81f3k2p9",        # the user's id; without one there is no record
        "traits": {...},                  # the user's merged traits, as the source names them
        "group": {"groupId": "acct_17"},  # optional: the latest group call (Segment)
    }

For Segment, ``traits`` are the merged ``identify`` traits (``name``, ``firstName``,
``address.city``, ``company.id`` ...) and ``group`` holds the ``groupId`` of the user's
latest ``group`` call. For Mixpanel, ``traits`` are the merged profile properties
(``$name``, ``$city``, ``$region`` ...) and there is no ``group``. Paths therefore start
with ``user_id``, ``traits`` or ``group``.

    translator = load_mapping(Path("mappings/segment.yaml"))
    record = translator.users({"user_id": "u1", "traits": {"name": "Ada"}})
    # → {"user_id": "u1", "name": "Ada"}; None when the data has no usable user_id

As for interactions, the conversion is chosen by the UserRecord field (``adapter.user_values``),
never by the file (``age`` is always an integer, ``created_at`` always an ISO date-time or
date, ``profile_image`` always an http(s) URL), and a field UserRecord does not have is a load
error, so every record a mapping produces has the shape Miso's schema requires.
E-mail, phone, street address and birthday have no UserRecord field: they are sent only
when a table names them under ``custom_attributes``, which the default tables do not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, validates_schema
from marshmallow import fields as mf

from adapter import values
from adapter.mapping.paths import _compile_getter, _parse_path
from adapter.user_values import (
    ATTRIBUTE_FIELD,
    USER_FIELDS,
    to_age,
    to_attribute_value,
    to_profile_image,
    to_user_date,
    to_user_id,
)

__all__ = [
    "ATTRIBUTE_FIELD",
    "PATH_ROOTS",
    "USER_FIELDS",
    "Join",
    "UserSpec",
    "UsersMapping",
    "UsersSchema",
    "UsersTables",
    "compile_users",
    "parse_spec",
    "to_age",
    "to_attribute_value",
    "to_profile_image",
    "to_user_date",
    "to_user_id",
]

log = logging.getLogger("adapter.users")

KeyPath = tuple[str | int, ...]
Reader = Callable[[Mapping[str, Any]], Any]

_NOTHING = object()

#: The first key of every path: what the merged data of a user holds (module docstring).
PATH_ROOTS = ("user_id", "traits", "group")

_ALL_FIELDS = (*USER_FIELDS, ATTRIBUTE_FIELD)


# --------------------------------------------------------------------------- file schema


@dataclass(frozen=True)
class Join:
    """``{join: [path, ...], with: " "}``: the present parts, as text, joined by ``with``."""

    paths: tuple[str, ...]
    separator: str = " "


@dataclass(frozen=True)
class UserSpec:
    """A parsed value spec of the ``users:`` section: fallback sources (paths or joins), or
    a constant, plus an optional default."""

    sources: tuple[str | Join, ...]
    value: Any = _NOTHING
    default: Any = _NOTHING


_HINT = (
    "expected a path, a list of paths and joins, {join: [paths], with: TEXT}, "
    "{from: …, default: …} or {value: …}"
)


def _check_path(text: Any) -> str:
    """A path readable in a user's merged data, else ValidationError saying why."""
    try:
        root, steps = _parse_path(text)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    if root != "event":
        raise ValidationError(
            f"bad path '{text}': {root} means nothing here; paths read the user's merged "
            f"data: {', '.join(PATH_ROOTS)}"
        )
    kind, first = steps[0]
    if kind != "key" or first not in PATH_ROOTS:
        raise ValidationError(
            f"bad path '{text}': a user's merged data holds {', '.join(PATH_ROOTS)} "
            f"(did you mean 'traits.{text}'?)"
        )
    return text


def _join(raw: dict) -> Join:
    unknown = set(raw) - {"join", "with"}
    if unknown:
        raise ValidationError(
            f"unknown key(s) {', '.join(sorted(map(str, unknown)))} in a join; "
            "expected {join: [paths], with: TEXT}"
        )
    parts = raw["join"]
    if not isinstance(parts, list) or not parts:
        raise ValidationError("join takes a list of paths: {join: [traits.a, traits.b]}")
    errors = {}
    for index, part in enumerate(parts):
        try:
            _check_path(part)
        except ValidationError as exc:
            errors[index] = exc.messages
    if errors:
        raise ValidationError({"join": errors})
    separator = raw.get("with", " ")
    if not isinstance(separator, str):
        raise ValidationError({"with": [f"{separator!r} is not text; quote it"]})
    return Join(tuple(parts), separator)


def _source(item: Any) -> str | Join:
    """One fallback: a path or a join."""
    if isinstance(item, dict) and "join" in item:
        return _join(item)
    if isinstance(item, str):
        return _check_path(item)
    raise ValidationError(f"{item!r} is not a path or a join; {_HINT}")


def _sources(items: list[Any]) -> tuple[str | Join, ...]:
    """Fallbacks, in order; errors keyed by list position."""
    if not items:
        raise ValidationError("an empty list of paths")
    out: list[str | Join] = []
    errors: dict[int, Any] = {}
    for index, item in enumerate(items):
        try:
            out.append(_source(item))
        except ValidationError as exc:
            errors[index] = exc.messages
    if errors:
        raise ValidationError(errors)
    return tuple(out)


def parse_spec(value: Any) -> UserSpec:
    """Parse one value spec of the ``users:`` section; raise ValidationError with a reason."""
    if isinstance(value, str):
        return UserSpec((_check_path(value),))
    if isinstance(value, list):
        return UserSpec(_sources(value))
    if isinstance(value, dict):
        if "join" in value:
            return UserSpec((_join(value),))
        unknown = set(value) - {"from", "default", "value"}
        if unknown:
            raise ValidationError(f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; {_HINT}")
        if ("from" in value) == ("value" in value):
            raise ValidationError(f"give exactly one of 'from' or 'value'; {_HINT}")
        if "value" in value:
            if "default" in value:
                raise ValidationError("'default' goes with 'from', not with 'value'")
            return UserSpec((), value=value["value"])
        source = value["from"]
        try:
            sources = _sources(source) if isinstance(source, list) else (_source(source),)
        except ValidationError as exc:
            raise ValidationError({"from": exc.messages}) from None
        return UserSpec(sources, default=value.get("default", _NOTHING))
    if value is None:
        raise ValidationError(f"empty value; {_HINT}")
    raise ValidationError(f"{value!r} is not a path; for a constant write {{value: {value!r}}}")


class _UserSpecField(mf.Field):
    """One UserRecord field's value spec (see :func:`parse_spec`)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> UserSpec:
        return parse_spec(value)


def _attribute_name(path: str) -> str:
    """The name a bare path gives its custom attribute: its last key."""
    _, steps = _parse_path(path)
    return next(arg for kind, arg in reversed(steps) if kind == "key")


class _AttributesField(mf.Field):
    """``custom_attributes``: a list of paths (named by their last key) and ``NAME: spec``."""

    _HINT = "expected a list of paths (traits.plan) and NAME: value spec entries"

    def _deserialize(
        self, value: Any, attr: Any, data: Any, **kwargs: Any
    ) -> list[tuple[str, UserSpec]]:
        if isinstance(value, str | dict):
            value = [value]  # one entry: a list of one
        if not isinstance(value, list) or not value:
            raise ValidationError(f"{value!r} is not a list; {self._HINT}")
        out: list[tuple[str, UserSpec]] = []
        errors: dict[int, Any] = {}
        for index, item in enumerate(value):
            try:
                if isinstance(item, str):
                    out.append((_attribute_name(_check_path(item)), UserSpec((item,))))
                elif isinstance(item, dict) and len(item) == 1:
                    ((name, spec),) = item.items()
                    try:
                        out.append((str(name), parse_spec(spec)))
                    except ValidationError as exc:
                        raise ValidationError({name: exc.messages}) from None
                else:
                    raise ValidationError(
                        f"{item!r} is neither a path nor one NAME: value spec; {self._HINT}"
                    )
            except ValidationError as exc:
                errors[index] = exc.messages
        if errors:
            raise ValidationError(errors)
        return out


class _UsersBase(Schema):
    """What every ``users:`` section schema shares; its fields come from USER_FIELDS."""

    class Meta:
        unknown = EXCLUDE  # reported by _known_fields, in this format's words

    error_messages = {  # noqa: RUF012 - marshmallow's own class attribute
        "type": "the users section is a mapping of UserRecord field: value spec",
    }

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _known_fields(self, data: dict, original: Any, **kwargs: Any) -> None:
        if not isinstance(original, dict):
            return
        unknown = {
            str(key): [
                f"'{key}' is not a field of Miso's UserRecord (it has: "
                + ", ".join(_ALL_FIELDS)
                + "); to send another trait, list it under custom_attributes"
            ]
            for key in original
            if key not in self.fields
        }
        if unknown:
            raise ValidationError(unknown)


#: The ``users:`` section: ``UserRecord field: value spec`` for each field of USER_FIELDS,
#: and ``custom_attributes``.
UsersSchema = _UsersBase.from_dict(
    {**{name: _UserSpecField() for name in USER_FIELDS}, ATTRIBUTE_FIELD: _AttributesField()},
    name="UsersSchema",
)


# --------------------------------------------------------------------------- compiling


def _reader(source: str | Join, convert: Callable[[Any], Any]) -> Reader:
    """Read and convert one fallback source from a user's merged data."""
    if isinstance(source, Join):
        getters = [_compile_getter(p) for p in source.paths]
        separator = source.separator

        def read_join(data: Mapping[str, Any]) -> Any:
            parts = [values.to_string(g(data, {})) for g in getters]
            present = [p for p in parts if p is not None]
            return convert(separator.join(present)) if present else None

        return read_join
    getter = _compile_getter(source)

    def read_path(data: Mapping[str, Any]) -> Any:
        raw = getter(data, {})
        return None if raw is None else convert(raw)

    return read_path


def _resolver(spec: UserSpec, convert: Callable[[Any], Any]) -> Reader:
    """First source whose value converts, else the default; raise ValueError on a bad
    constant or default."""
    if spec.value is not _NOTHING:
        constant = convert(spec.value)
        if constant is None:
            raise ValueError(f"constant {spec.value!r} is not a valid value here")
        return lambda data: constant
    default = None
    if spec.default is not _NOTHING:
        default = convert(spec.default)
        if default is None:
            raise ValueError(f"default {spec.default!r} is not a valid value here")
    readers = [_reader(source, convert) for source in spec.sources]

    def resolve(data: Mapping[str, Any]) -> Any:
        for read in readers:
            got = read(data)
            if got is not None:
                return got
        return default

    return resolve


class UsersMapping:
    """A compiled ``users:`` section: call it with a user's merged data (module docstring)
    to get the whole UserRecord to upload, or None when the data has no usable user_id."""

    def __init__(
        self,
        user_id: Reader,
        fields: list[tuple[str, Reader]],
        attributes: list[tuple[str, Reader]],
    ) -> None:
        self._user_id = user_id
        self._fields = fields
        self._attributes = attributes

    def __repr__(self) -> str:
        return f"<UsersMapping fields={list(self.fields)} custom_attributes={self.attributes}>"

    @property
    def fields(self) -> tuple[str, ...]:
        """The UserRecord fields the section maps (user_id always), in file order."""
        named = [name for name, _ in self._fields]
        return ("user_id", *named, *([ATTRIBUTE_FIELD] if self._attributes else []))

    @property
    def attributes(self) -> tuple[str, ...]:
        """The names of the custom attributes the section maps."""
        return tuple(name for name, _ in self._attributes)

    def __call__(self, merged: Mapping[str, Any]) -> dict[str, Any] | None:
        if not isinstance(merged, Mapping):
            return None
        user_id = self._user_id(merged)
        if user_id is None:
            return None
        record: dict[str, Any] = {"user_id": user_id}
        for name, resolve in self._fields:
            got = resolve(merged)
            if got is not None:
                record[name] = got
        attributes = {}
        for name, resolve in self._attributes:
            got = resolve(merged)
            if got is not None:
                attributes[name] = got
        if attributes:
            record[ATTRIBUTE_FIELD] = attributes
        return record


def compile_users(
    section: dict[str, Any],
    problem: Callable[[KeyPath, str], None],
    line_of: Callable[[KeyPath], int],
    at: KeyPath = ("users",),
) -> UsersMapping | None:
    """Compile a ``users:`` section validated by :class:`UsersSchema`; report each problem
    through ``problem(key path, message)`` and return None if there was any."""
    failed = False

    def compiled(spec: UserSpec, field: str, path: KeyPath) -> Reader | None:
        nonlocal failed
        try:
            return _resolver(spec, USER_FIELDS.get(field, to_attribute_value))
        except ValueError as exc:
            problem(path, str(exc))
            failed = True
            return None

    user_spec = section.get("user_id", UserSpec(("user_id",)))
    if user_spec.value is not _NOTHING:
        problem((*at, "user_id"), "a user's id must come from the user's data, not a constant")
        failed = True
    user_id = compiled(user_spec, "user_id", (*at, "user_id"))
    fields = []
    for name in USER_FIELDS:
        if name == "user_id" or name not in section:
            continue
        resolve = compiled(section[name], name, (*at, name))
        if resolve is not None:
            fields.append((name, resolve))
    attributes = []
    first: dict[str, KeyPath] = {}
    for index, (name, spec) in enumerate(section.get(ATTRIBUTE_FIELD, [])):
        path: KeyPath = (*at, ATTRIBUTE_FIELD, index)
        if not name.strip():
            problem(path, "a custom attribute needs a non-empty name")
            failed = True
            continue
        if name in first:
            problem(
                path,
                f"custom attribute '{name}' is already set at line {line_of(first[name])}; "
                f"name this one: `- OTHER_NAME: {_describe(spec)}`",
            )
            failed = True
            continue
        first[name] = path
        resolve = compiled(spec, ATTRIBUTE_FIELD, path)
        if resolve is not None:
            attributes.append((name, resolve))
    if failed or user_id is None:
        return None
    return UsersMapping(user_id, fields, attributes)


def _describe(spec: UserSpec) -> str:
    if len(spec.sources) == 1 and isinstance(spec.sources[0], str):
        return spec.sources[0]
    return "…"


# --------------------------------------------------------------------------- at upload time


class UsersTables:
    """The ``users:`` sections of the tables in a mapping folder, for the forwarder.

    Each source's table (``<source>.yaml``) is loaded when first needed and again when
    its file changes, so an edit reaches the next upload; an edit that does not load is
    logged and the last good table stays in use.
    """

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        # source -> (its file's signature when loaded, its compiled users: section)
        self._tables: dict[str, tuple[Any, UsersMapping | None]] = {}

    def __repr__(self) -> str:
        return f"<UsersTables {self.folder}>"

    def __call__(self, source: str) -> UsersMapping | None:
        """The compiled ``users:`` section of ``source``'s table; None when it has none."""
        from adapter.mapping import MappingError, load_mapping
        from adapter.reload import file_signature

        path = self.folder / f"{source}.yaml"
        signature = file_signature(path)
        known = self._tables.get(source)
        if known is not None and known[0] == signature:
            return known[1]
        mapping = known[1] if known is not None else None
        if signature is not None:
            try:
                mapping = load_mapping(path).users
            except (MappingError, OSError, UnicodeDecodeError) as exc:
                log.error("%s: not used for user records, the last good table stays: %s",
                          path, exc, extra={"event": "mapping_rejected"})  # fmt: skip
        self._tables[source] = (signature, mapping)
        return mapping

    def record(self, user_id: str, profile: Mapping[str, Mapping[str, Any]]) -> dict | None:
        """The whole UserRecord of a user from their stored profile (``{source: {part:
        {...}}}``): each source's data through its table's ``users:`` section; when two
        sources profile one user, both records are combined (sources in name order, a
        later one's fields win). None when no table makes a record of it."""
        record: dict[str, Any] | None = None
        for source in sorted(profile):
            mapping = self(source)
            if mapping is None:
                continue
            got = mapping({**profile[source], "user_id": user_id})
            if got is None:
                continue
            if record is None:
                record = got
                continue
            attributes = {**record.get(ATTRIBUTE_FIELD, {}), **got.get(ATTRIBUTE_FIELD, {})}
            record.update(got)
            if attributes:
                record[ATTRIBUTE_FIELD] = attributes
        return record
