"""YAML loading that remembers where every key came from.

Mapping files are edited by hand, so every error must name the file, the line and
the key. PyYAML's constructors throw line information away; we compose the node
tree ourselves, build plain Python data from it, and keep a side table
``key path → line``. Duplicate keys are an error (PyYAML silently keeps the last,
which would make an edit vanish without a word).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml

__all__ = ["Located", "YamlError", "flatten_errors", "load_located", "show_path"]

KeyPath = tuple[str | int, ...]


class YamlError(Exception):
    """The text is not valid YAML (or repeats a key); carries a 1-based line."""

    def __init__(self, line: int, key: str, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.key = key
        self.message = message


class Located:
    """Parsed YAML data plus the line of every key path in it."""

    def __init__(self, data: Any, lines: dict[KeyPath, int]) -> None:
        self.data = data
        self._lines = lines

    def line_of(self, path: KeyPath) -> int:
        """The line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return self._lines.get((), 1)


def load_located(text: str) -> Located:
    """Parse ``text`` as one YAML document, tracking the line of every key."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or str(exc)
        if exc.context:
            # The context mark is where the unclosed construct began: often the real culprit.
            started = exc.context_mark
            if started is not None and mark is not None and started.line != mark.line:
                problem = f"{exc.context} (started at line {started.line + 1}), {problem}"
            else:
                problem = f"{exc.context}, {problem}"
        raise YamlError(line, "-", f"YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:  # pragma: no cover - non-marked errors are rare
        raise YamlError(1, "-", f"YAML error: {exc}") from None
    lines: dict[KeyPath, int] = {}
    if node is None:
        return Located(None, {(): 1})
    constructor = yaml.SafeLoader("")
    data = _build(node, (), lines, constructor)
    return Located(data, lines)


def _build(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int], constructor: Any) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        # Resolves YAML merge keys (<<: *anchor) the way PyYAML itself would.
        constructor.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise YamlError(
                    key_node.start_mark.line + 1, show_path(path), "a key must be a plain scalar"
                )
            # Keys are names in our format; YAML reads `yes`/`1` as bool/int, keep the text.
            if not isinstance(key, str):
                key = key_node.value
            if key in out:
                raise YamlError(
                    key_node.start_mark.line + 1,
                    show_path((*path, key)),
                    f"duplicate key '{key}' (first at line {lines[(*path, key)]})",
                )
            lines[(*path, key)] = key_node.start_mark.line + 1
            out[key] = _build(value_node, (*path, key), lines, constructor)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(item, (*path, index), lines, constructor)
            for index, item in enumerate(node.value)
        ]
    return constructor.construct_object(node, deep=True)


def show_path(path: KeyPath) -> str:
    """Render a key path the way users read it: ``rules[3].fields.product_ids``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "-"


def flatten_errors(messages: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, str]]:
    """marshmallow's nested error dict → (key path, message) pairs, for located reports."""
    if isinstance(messages, dict):
        for key, inner in messages.items():
            if key == "_schema":
                yield from flatten_errors(inner, path)
            elif key == "value" and path and isinstance(inner, list | dict):
                yield from flatten_errors(inner, path)  # Dict value errors: {key: {"value": ...}}
            else:
                yield from flatten_errors(inner, (*path, key))
    elif isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict | list):
                yield from flatten_errors(message, path)
            else:
                yield path, str(message)
    else:
        yield path, str(messages)
