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

import logging
import os
import threading
from pathlib import Path

from adapter.mapping import MappingError, Translator, load_mapping

__all__ = ["MappingWatcher"]

log = logging.getLogger("adapter.reload")

Signature = tuple[int, int, int]


def _signature(path: Path) -> Signature | None:
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
    ) -> None:
        self.folder = folder
        self.translators = translators
        self.rejections = rejections
        self.interval = interval
        self._seen: dict[Path, Signature | None] = {
            path: _signature(path) for path in self._files()
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
            signature = _signature(path)
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
            translator = load_mapping(path)
        except MappingError as exc:
            problems = [str(p) for p in exc.problems]
            self.rejections[name] = problems
            for problem in problems:
                log.error("rejected edit of %s, the last good version stays live: %s",
                          path, problem)  # fmt: skip
            return
        self.translators[name] = translator  # one assignment: requests see old or new
        self.rejections.pop(name, None)
        log.info("reloaded %s: %d rules", path, translator.rule_count)
