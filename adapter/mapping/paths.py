"""Paths into an event: their syntax, fast readers for them, and event-name matching keys.

A path walks into the event: ``properties.products[].product_id``, ``context['a.b']``,
``items[0].sku``. Roots ``$event`` (the matched event name) and ``$match.NAME`` (a named
capture of the page rule that matched) read from the match instead of the event.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

#: Reads one path: (event, env) → the raw value found there, or None.
Getter = Callable[[Any, dict], Any]

_SEPARATORS = re.compile(r"[\s_\-]+")


def normalize_name(name: str) -> str:
    """Event-name matching key: case-insensitive, and `_`, `-`, runs of spaces all alike."""
    return _SEPARATORS.sub(" ", name).strip().casefold()


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
