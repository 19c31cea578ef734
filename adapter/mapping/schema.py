"""The marshmallow schema of a mapping file, and its errors in the words of the format.

Validation only: a value spec becomes a :class:`_ValueSpec` (paths checked, nothing
compiled yet); each error becomes a :class:`Problem` located by line and key path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, validate, validates_schema
from marshmallow import fields as mf

from adapter._yaml import KeyPath, flatten_errors
from adapter.mapping.paths import _parse_path

# "Not given" in a value spec: None is a value a file may give.
_NOTHING = object()


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
    """The `users:` section's schema; adapter.users builds on this package, so it is
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
