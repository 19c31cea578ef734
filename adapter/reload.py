"""Hot reload of mapping tables in a running service.

Each gunicorn worker watches ``MAPPINGS_DIR`` from a daemon thread: every few seconds
it stats each ``*.yaml`` *by path* (editors save by writing a new file and renaming it
over the old one, so watching an inode would miss the edit). A changed file is
validated and compiled; a good one replaces the live translator in one assignment
(requests see the old table or the new one, never a mix); a bad one is logged with
file, line and key, the last good table stays live, and ``/readyz`` shows the rejected
edit until the file is fixed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from adapter import metrics
from adapter.mapping import MappingError, Translator, load_mapping, load_mapping_text
from adapter.store import Store, StoreError
from adapter.store import current as store_current

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["MappingWatcher", "file_signature", "init_app", "rejections", "tables"]

log = logging.getLogger("adapter.reload")

Signature = tuple[int, int, int]
_SHARED = "mapping:"  # store status holding the last accepted text of a table


def file_signature(path: Path) -> Signature | None:
    """What tells an edit of a file apart (modified time, size, inode), None when it is
    missing: by path, since editors save by renaming a new file over the old one."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class MappingWatcher:
    """Keeps ``translators`` in step with the files of ``folder``; see the module doc."""

    def __init__(
        self,
        folder: Path,
        translators: dict[str, Translator],
        rejections: dict[str, list[str]],
        interval: float = 2.0,
        store: Store | None = None,
    ) -> None:
        self.folder = folder
        self.store = store
        self.translators = translators
        self.rejections = rejections
        self.interval = interval
        self._seen: dict[Path, Signature | None] = {
            path: file_signature(path) for path in self._files()
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The tables this worker started with are the current "last good" ones.
        for path in self._files():
            if path.stem in translators:
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    self._publish(path.stem, path.read_text(encoding="utf-8"))

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("*.yaml"))

    def start(self) -> None:
        """Watch in a daemon thread (one per worker process)."""
        self._thread = threading.Thread(target=self._run, name="mapping-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # the watcher must never die; the next round retries
                log.exception("mapping watcher failed; retrying")

    def check(self) -> list[str]:
        """Look once; reload what changed. Returns the names reloaded (or rejected)."""
        changed = []
        for path in set(self._files()) | set(self._seen):
            signature = file_signature(path)
            if signature == self._seen.get(path):
                continue
            self._seen[path] = signature
            changed.append(path.stem)
            if signature is None:
                log.warning("%s was removed; serving its last good version", path)
                continue
            self._reload(path)
        return changed

    def _reload(self, path: Path) -> None:
        name = path.stem
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            text, problems = None, [f"{path}:1: -: cannot read the file: {exc}"]
        if text is not None:
            try:
                translator = load_mapping_text(text, str(path))
            except MappingError as exc:
                problems = [str(p) for p in exc.problems]
            else:
                self.translators[name] = translator  # one assignment: old or new, never a mix
                self.rejections.pop(name, None)
                self._publish(name, text)
                metrics.count_reload(name, "ok")
                log.info(
                    "reloaded %s: %d rules",
                    path,
                    translator.rule_count,
                    extra={"event": "reload", "path": str(path), "rules": translator.rule_count},
                )
                return
        self.rejections[name] = problems
        metrics.count_reload(name, "rejected")
        for problem in problems:
            log.error(
                "rejected edit of %s, the last good version stays live: %s",
                path,
                problem,
                extra={"event": "reload_rejected", "path": str(path)},
            )
        self._adopt_shared(name, path)

    def _publish(self, name: str, text: str) -> None:
        """Share an accepted version, so every worker's "last good" is the same one."""
        if self.store is not None:
            try:
                self.store.set_status(f"{_SHARED}{name}", {"text": text})
            except StoreError as exc:
                log.warning("could not share the accepted %s: %s", name, exc)

    def _adopt_shared(self, name: str, path: Path) -> None:
        """After refusing an edit, serve the last version any worker accepted.

        A worker that missed a good edit (two saves within one interval) would otherwise
        keep an older table than its siblings.
        """
        if self.store is None:
            return
        try:
            shared = self.store.get_status(f"{_SHARED}{name}")
        except StoreError:
            return
        if shared is None:
            return
        try:
            self.translators[name] = load_mapping_text(shared["text"], str(path))
        except MappingError:  # pragma: no cover - it compiled when it was shared
            return


_TABLES = "miso-adapter.translators"
_REJECTED = "miso-adapter.mapping-rejections"


def init_app(app: Flask) -> None:
    """Compile every table of ``MAPPINGS_DIR`` and, unless ``MAPPINGS_RELOAD_SECONDS`` is 0,
    watch the folder (:class:`MappingWatcher`)."""
    folder = Path(app.config["MAPPINGS_DIR"])
    translators = {path.stem: load_mapping(path) for path in sorted(folder.glob("*.yaml"))}
    rejections: dict[str, list[str]] = {}
    app.extensions[_TABLES] = translators
    app.extensions[_REJECTED] = rejections
    if app.config["MAPPINGS_RELOAD_SECONDS"] > 0:
        MappingWatcher(folder, translators, rejections, app.config["MAPPINGS_RELOAD_SECONDS"],
                       store=store_current(app)).start()  # fmt: skip


def tables(app: Flask | None = None) -> dict[str, Translator]:
    """The live tables of ``app`` by name (``segment``, ``mixpanel``)."""
    if app is None:
        from flask import current_app as app
    return app.extensions[_TABLES]


def rejections(app: Flask | None = None) -> dict[str, list[str]]:
    """Refused edits by table name: each one's problems (file:line: key: what)."""
    if app is None:
        from flask import current_app as app
    return app.extensions[_REJECTED]
