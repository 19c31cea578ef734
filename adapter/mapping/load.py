"""Reading a mapping table: a file or text, parsed, validated and compiled."""

from __future__ import annotations

import sys
from pathlib import Path

from marshmallow import ValidationError

from adapter._yaml import YamlError, load_located, show_path
from adapter.mapping.compiler import _compile
from adapter.mapping.schema import MappingError, Problem, _flatten, _MappingFileSchema
from adapter.mapping.translator import Translator


def default_mappings_dir() -> Path:
    """The default ``MAPPINGS_DIR``: the project's ``mappings/`` (a checkout or editable
    install), else the copy a regular install puts under ``<prefix>/share/miso-adapter``."""
    checkout = Path(__file__).resolve().parents[2] / "mappings"
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
