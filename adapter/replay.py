"""Replaying Mixpanel exports into Miso: stream, normalise, translate, store, forward.

Files are read row by row (constant memory); rows are normalised and translated, then
stored in chunks, each chunk in ONE transaction together with the file's checkpoint
(how many rows are done), so ``--resume`` continues exactly where the last committed
chunk ended, and the store's dedup keys make a second run, or an overlapping export,
send nothing twice. A forwarder sends as the replay reads — from the command line a
``miso-adapter forward`` child process, so reading and sending use a core each (a
thread would share one interpreter lock); when Miso is slow or refusing (429, 5xx),
the spool grows to a bound and reading waits: the replay slows down instead of
dropping anything.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from adapter.activity import Activity
from adapter.forwarder import MISO_STATUS, Forwarder
from adapter.identity import Link
from adapter.ingest import IngestResult, ingest
from adapter.mapping import Translator
from adapter.mixpanel import Normalizer, identity_rows, iter_rows, open_export
from adapter.reader import ReadError
from adapter.store import Incoming, Store, anonymous_in

__all__ = ["ForwarderProcess", "ForwarderThread", "ReplaySummary", "chunks", "replay_files"]

log = logging.getLogger("adapter.replay")

CHUNK = 1000  # rows per transaction: one fsync per thousand events
MAX_SPOOL = 50_000  # records waiting for Miso before reading pauses (backpressure)
SHOWN_ERRORS = 20  # malformed rows printed one by one; the rest only counted


@dataclass
class ReplaySummary:
    """What a replay did, for the final report."""

    files: int = 0
    rows: int = 0
    resumed_rows: int = 0  # rows skipped because a checkpoint said they were done
    malformed: int = 0
    result: IngestResult = field(default_factory=IngestResult)
    records_out: int = 0  # dry run: records written
    delivered_wait: str = ""  # how the wait for delivery ended
    start_stats: dict[str, Any] | None = None  # the store before the replay
    end_stats: dict[str, Any] | None = None  # and after it

    def lines(self, *, dry_run: bool) -> list[str]:
        """The human summary printed at the end."""
        r = self.result
        out = [f"read {self.rows:,} rows from {self.files} file(s); {self.malformed:,} malformed"]
        if self.resumed_rows:
            out.append(f"resumed: {self.resumed_rows:,} rows already done were skipped")
        if dry_run:
            out.append(
                f"records written: {self.records_out:,}   duplicates: {r.duplicates:,} "
                "(dry run: nothing stored or sent)"
            )
        else:
            out.append(f"records accepted: {r.accepted:,}   duplicates: {r.duplicates:,}")
            if self.start_stats is not None and self.end_stats is not None:
                # What this run added to the spool and the dead letters, and so what it sent.
                dead = self.end_stats["dead_letters"] - self.start_stats["dead_letters"]
                waiting = max(0, self.end_stats["spool"] - self.start_stats["spool"])
                sent = max(0, r.accepted - dead - waiting)
                out.append(
                    f"sent to Miso: {sent:,}   dead letters: {dead:,}   still waiting: {waiting:,}"
                )
            if self.delivered_wait:
                out.append(self.delivered_wait)
        out.append(f"identity links learned: {r.links:,}")
        skipped = sum(r.skipped.values())
        out.append(f"skipped: {skipped:,}")
        for reason, count in r.skipped.most_common():
            out.append(f"  {count:>10,}  {reason}")
        return out


def checkpoint_name(path: Path) -> str:
    """The status name of a file's checkpoint: the same file (path, size, mtime) only."""
    stat = path.stat()
    identity = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return "replay:" + hashlib.sha1(identity.encode()).hexdigest()[:16]


class Progress:
    """A tqdm bar on a terminal (bytes of the file, events, events/s, ETA); plain lines else."""

    interval = 10.0  # seconds between plain progress lines (logs, CI)

    def __init__(self, total_bytes: int, label: str, stream: IO[str] = sys.stderr) -> None:
        self.interactive = stream.isatty()
        self.stream = stream
        self.total = total_bytes
        self.label = label
        self.started = time.monotonic()
        self.last_line = self.started
        self.events = 0
        self._bar = None
        if self.interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=label,
                             file=stream, dynamic_ncols=True)  # fmt: skip

    def update(self, position: int, events: int) -> None:
        self.events = events
        rate = events / max(time.monotonic() - self.started, 1e-9)
        if self._bar is not None:
            self._bar.n = position
            self._bar.set_postfix_str(f"{events:,} events, {rate:,.0f}/s", refresh=True)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval:
            self.last_line = now
            done = position / self.total if self.total else 0
            eta = (now - self.started) * (1 - done) / done if done else 0
            line = (
                f"{self.label}: {events:,} events ({rate:,.0f}/s), {done:.0%} of "
                f"{self.total / 1e6:,.1f} MB, ETA {eta:,.0f}s"
            )
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _rows(path: Path) -> Iterator[tuple[str, Any, int]]:
    """(where, row, raw bytes read so far) for every row of one export file."""
    stream, raw = open_export(path)
    position = 0
    try:
        for count, (where, row) in enumerate(iter_rows(stream, str(path))):
            # tell() is a system call: asking once per row took a third of a dry run.
            if not count & 255:
                position = raw.tell()
            yield where, row, position
    finally:
        stream.close()
        raw.close()


class ForwarderThread:
    """Sends while the replay reads: a forwarder in a thread of this process."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=forwarder.run, args=(self._stop,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def check(self) -> None:
        """Nothing to supervise: the forwarder's loop survives store and network trouble."""

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


class ForwarderProcess:
    """Sends while the replay reads: a ``miso-adapter forward`` child on its own core.

    It dies with the replay (even on ``kill -9``, on Linux), and is restarted if it
    exits early; what it had leased comes back to the next forwarder after the lease.
    """

    def __init__(self, command: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.command = command or [sys.executable, "-m", "adapter.cli", "forward"]
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        from adapter.serve import spawn

        self.process = spawn(self.command, env=self.env)

    def check(self) -> None:
        """Restart the forwarder if it has exited."""
        if self.process is not None and self.process.poll() is not None:
            log.error("the forwarder exited with %s; restarting it", self.process.returncode)
            self.start()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


Sender = ForwarderThread | ForwarderProcess


def replay_files(
    paths: list[Path],
    *,
    translator: Translator,
    normalizer: Normalizer,
    store: Store | None,
    dedup_ttl: float,
    resume: bool = False,
    dry_run: bool = False,
    output: IO[bytes] | None = None,
    forwarder: Forwarder | Sender | None = None,
    errors: IO[str] = sys.stderr,
    wait_for_delivery: float = 3600.0,
    max_spool: int = MAX_SPOOL,
) -> ReplaySummary:
    """Replay export files into ``store``; or, with ``dry_run``, write to ``output`` the
    records a replay would send now (``store``, when given, is only read: its dedup keys
    and identity links).

    ``forwarder`` sends while the replay reads: a :class:`Forwarder` (run in a thread),
    a :class:`ForwarderThread` or a :class:`ForwarderProcess`; None stores only. Unless
    the normalizer has its own, the store says which ids are anonymous.
    """
    summary = ReplaySummary()
    if store is not None and normalizer.known_anonymous is None:
        normalizer.known_anonymous = anonymous_in(store)
    preview = Preview(output, store) if dry_run else None
    writer = None if dry_run else store
    activity = None
    if writer is not None:
        summary.start_stats = writer.stats()
        activity = Activity(writer).manual()  # the console shows replays beside webhooks
    sender = None
    if forwarder is not None and writer is not None:
        sender = ForwarderThread(forwarder) if isinstance(forwarder, Forwarder) else forwarder
        sender.start()
    try:
        _learn_identity(paths, normalizer, writer, dedup_ttl)
        for path in paths:
            summary.files += 1
            _replay_one(path, summary, translator, normalizer, writer, preview, dedup_ttl,
                        resume, errors, max_spool, sender, activity)  # fmt: skip
        if sender is not None and writer is not None:
            summary.delivered_wait = _wait_for_delivery(writer, sender, wait_for_delivery)
    finally:
        if sender is not None:
            sender.stop()
        if activity is not None:
            activity.flush()
    if writer is not None:
        summary.end_stats = writer.stats()
    return summary


class Preview:
    """A dry run's store: it deduplicates as the store would, and writes records out.

    Given to :func:`~adapter.ingest.ingest` in place of the store, so a dry run takes the
    very path a replay takes. Dedup keys are remembered within the run as 64-bit hashes
    (about 60 bytes per distinct event) and, when ``store`` is given, looked up among its
    live keys, read-only: what is written is what a replay would send now.
    """

    def __init__(self, output: IO[bytes] | None, store: Store | None = None) -> None:
        self.output = output
        self.store = store
        self.records = 0
        self._seen: set[int] = set()

    def accept(
        self,
        batch: Sequence[Incoming],
        dedup_ttl: float,
        status: tuple[str, dict[str, Any]] | None = None,
    ) -> list[bool]:
        """Which items are duplicates; the others' records are written, not stored."""
        live: set[str] = set()
        if self.store is not None:
            fresh = [
                i.dedup_key for i in batch if i.dedup_key and hash(i.dedup_key) not in self._seen
            ]
            live = self.store.seen(fresh) if fresh else set()
        duplicates: list[bool] = []
        lines: list[bytes] = []
        for item in batch:
            if item.dedup_key is not None:
                digest = hash(item.dedup_key)
                if digest in self._seen or item.dedup_key in live:
                    duplicates.append(True)
                    continue
                self._seen.add(digest)
            duplicates.append(False)
            lines.extend(item.records)
        self.records += len(lines)
        if self.output is not None and lines:
            lines.append(b"")
            self.output.write(b"\n".join(lines))  # one write per chunk, not per record
        return duplicates


def _learn_identity(
    paths: list[Path], normalizer: Normalizer, store: Store | None, dedup_ttl: float
) -> None:
    """Learn the links of every identity row first, so that no row is read before its link.

    A device's rows come before its sign-in, so a single pass would take its id for a
    user's. The normalizer remembers the anonymous side; a replay also stores the links
    (a dry run writes nothing), so the store knows them beyond the normalizer's memory.
    """
    for path in paths:
        stream, raw = open_export(path)
        links: list[Link] = []
        try:
            for row in identity_rows(stream, str(path)):
                pair = normalizer.learn(row)
                if pair is not None and store is not None:
                    links.append(Link(*pair))
                    if len(links) >= CHUNK:
                        store.accept([Incoming(None, links=links, source="mixpanel")], dedup_ttl)
                        links = []
        except (OSError, EOFError, zlib.error):
            pass  # a damaged file is reported, located, by the full read that follows
        finally:
            stream.close()
            raw.close()
        if links and store is not None:
            store.accept([Incoming(None, links=links, source="mixpanel")], dedup_ttl)


def chunks(
    rows: Iterator[tuple[str, Any, int]],
    normalizer: Normalizer,
    summary: ReplaySummary,
    report: Callable[[str, str], None],
    *,
    skip: int = 0,
) -> Iterator[tuple[list[tuple[str | None, dict | str]], int, int]]:
    """Normalised rows in chunks: ``(chunk, rows consumed so far, byte position)``.

    The first ``skip`` rows are passed over (a resumed replay); malformed rows are
    counted and reported, never fatal. The last chunk may be empty.
    """
    chunk: list[tuple[str | None, dict | str]] = []
    consumed = position = 0
    for where, row, position in rows:
        consumed += 1
        if consumed <= skip:
            summary.resumed_rows += 1
            continue
        summary.rows += 1
        if isinstance(row, ReadError):
            summary.malformed += 1
            report(where, row.message)
            continue
        chunk.append(normalizer(row))
        if len(chunk) >= CHUNK:
            normalizer.settle()
            yield chunk, consumed, position
            chunk = []
    normalizer.settle()
    yield chunk, consumed, position


def _replay_one(
    path: Path,
    summary: ReplaySummary,
    translator: Translator,
    normalizer: Normalizer,
    store: Store | None,
    preview: Preview | None,
    dedup_ttl: float,
    resume: bool,
    errors: IO[str],
    max_spool: int,
    sender: Sender | None,
    activity: Activity | None,
) -> None:
    name = checkpoint_name(path)
    done = 0
    if store is not None and resume:
        saved = store.get_status(name)
        done = int(saved["rows"]) if saved else 0
    progress = Progress(path.stat().st_size, path.name)
    shown = noted = summary.malformed

    def report(where: str, message: str) -> None:
        if summary.malformed - shown <= SHOWN_ERRORS:
            print(f"{where}: error: {message}", file=errors)

    try:
        for chunk, consumed, position in chunks(
            _rows(path), normalizer, summary, report, skip=done
        ):
            if preview is not None:
                summary.result.add(ingest(preview, translator, chunk, source="mixpanel",
                                          dedup_ttl=dedup_ttl))  # fmt: skip
                summary.records_out = preview.records
            elif store is not None:
                _wait_for_room(store, max_spool, sender)
                checkpoint = (name, {"file": str(path), "rows": consumed})
                part = ingest(store, translator, chunk, source="mixpanel", dedup_ttl=dedup_ttl,
                              status=checkpoint)  # fmt: skip
                summary.result.add(part)
                if activity is not None:
                    activity.ingest("mixpanel", part, malformed=summary.malformed - noted)
                    noted = summary.malformed
                    activity.flush_if_due()
            progress.update(position, summary.result.received)
    finally:
        progress.close()
    if summary.malformed - shown > SHOWN_ERRORS:
        print(f"... {summary.malformed - shown - SHOWN_ERRORS:,} more malformed rows", file=errors)


def _refused(store: Store) -> dict[str, Any] | None:
    """The forwarder's published refusal (Miso refuses the key), if any."""
    status = store.get_status(MISO_STATUS)
    return status if status is not None and not status.get("ready", True) else None


def _wait_for_room(store: Store, max_spool: int, sender: Sender | None) -> None:
    """Backpressure: while Miso is slower than the file, let the spool drain first."""
    if sender is None:
        return
    while store.stats()["spool"] >= max_spool:
        if _refused(store) is not None:
            return  # Miso refuses the key: keep storing; nothing is lost, it waits
        sender.check()
        time.sleep(0.2)


def _wait_for_delivery(store: Store, sender: Sender, limit: float) -> str:
    """Wait until what the replay stored is delivered, Miso refuses the key, or time is up.

    Delivered means nothing queued before the replay finished storing is still waiting:
    records that webhooks (or other hosts) keep adding afterwards do not hold it up.
    """
    finished = time.monotonic()
    deadline = finished + limit
    while True:
        sender.check()
        stats = store.stats()
        # Ages, not clock times: a Redis on another host has its own clock. An oldest
        # item younger than the time since we finished was queued after we finished.
        since_finished = time.monotonic() - finished
        if stats["spool"] == 0 or stats["oldest_age"] < since_finished - 0.05:
            return "delivered: everything accepted has reached Miso"
        status = _refused(store)
        if status is not None:
            return (
                f"NOT delivered: {stats['spool']:,} records wait in the spool: {status['reason']}."
                " Fix the key and run `miso-adapter forward` (or `serve`) to send them."
            )
        if time.monotonic() > deadline:
            return (
                f"still sending: {stats['spool']:,} records wait in the spool; a running "
                "`miso-adapter forward` (or `serve`) will send them"
            )
        time.sleep(0.2)
