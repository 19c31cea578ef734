"""Configuration from the environment (SPEC §3.1), as flask-smorest-style config classes."""

from __future__ import annotations

import os
from pathlib import Path

from adapter.mapping import default_mappings_dir

__all__ = ["Config", "mappings_dir"]


def mappings_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the mapping files: ``override``, else ``MAPPINGS_DIR``, else ours."""
    if override:
        return Path(override)
    env = os.environ.get("MAPPINGS_DIR")
    return Path(env) if env else default_mappings_dir()


class Config:
    """Settings read once, when the app is created; tests pass a dict instead."""

    def __init__(self) -> None:
        self.MAPPINGS_DIR = str(mappings_dir())
        self.MISO_API_URL = os.environ.get("MISO_API_URL", "https://api.askmiso.com")
        self.ADAPTER_STORE = os.environ.get("ADAPTER_STORE", "sqlite:///var/adapter.db")
