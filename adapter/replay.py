"""The replay engine: files of any source into Miso, with checkpoints, progress and a dry run.

``replay(source, paths, ...)`` reads files (directories recursed, in name order) through
the source (:mod:`adapter.sources`), and stores their events in chunks, each chunk in ONE
transaction together with the file's checkpoint (how many values are done), so
``resume=True`` continues exactly where the last committed chunk ended, and the store's
dedup keys make a second run, or an overlapping input, send nothing twice. A forwarder
sends as the replay reads — from the command line a ``miso-adapter forward`` child
process (:class:`adapter.supervise.Child`), so reading and sending use a core each; when
Miso is slow or refusing (429, 5xx), the spool grows to a bound and reading waits: the
replay slows down instead of dropping anything.

A dry run (``dry_run=True``) takes the same path into a :class:`~adapter.preview.Preview`
store, and writes out exactly the records a replay would send now.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from adapter.activity import Activity
from adapter.forwarder import Forwarder, refusal
from adapter.identity import Link
from adapter.ingest import CHUNK, SHOWN_ERRORS, SMALL_CHUNK, Intake, chunks, ingest_chunks
from adapter.mapping import Translator
from adapter.preview import Preview
from adapter.sources import Source
from adapter.sources.inputs import UNREADABLE, Input, InputFailed, open_path
from adapter.store import Incoming, Store, anonymous_in
from adapter.supervise import Child, forwarder_command

__all__ = [
    "ForwarderThread",
    "Preview",
    "ReplaySummary",
    "checkpoint_name",
    "forwarder_child",
    "input_files",
    "replay",
]

log = logging.getLogger("adapter.replay")

MAX_SPOOL = 50_000  # records waiting for Miso before reading pauses (backpressure)
REREADS = 5  # times a whole input cut off midway is read, in all, before the run stops


@dataclass
class ReplaySummary(Intake):
    """What a replay did, for the final report."""

    files: int = 0  # inputs read (files, or ranges of days of an export API)
    kind: str = "file(s)"  # what they are, for the summary
    not_read: list[str] = field(default_factory=list)  # files passed over, with why
    resumed_inputs: int = 0  # whole inputs a checkpoint marked complete: not read again
    failed: str = ""  # why reading stopped early (an input refused or cut off for good)
    records_out: int = 0  # dry run: records written
    delivered_wait: str = ""  # how the wait for delivery ended
    delivered: bool | None = None  # True: everything the replay stored reached Miso
    start_stats: dict[str, Any] | None = None  # the store before the replay
    end_stats: dict[str, Any] | None = None  # and after it

    def lines(self, *, dry_run: bool) -> list[str]:
        """The human summary printed at the end."""
        r = self.result
        out = [
            f"read {self.rows:,} rows from {self.files} {self.kind}; {self.malformed:,} malformed"
        ]
        if self.not_read:
            out.append(f"files not read: {len(self.not_read):,}")
        if self.resumed_rows:
            out.append(f"resumed: {self.resumed_rows:,} rows already done were skipped")
        if self.resumed_inputs:
            out.append(f"resumed: {self.resumed_inputs:,} inputs already complete were skipped")
        if self.failed:
            out.append(f"STOPPED: {self.failed}")
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
        if r.profiles:
            stored = "seen (dry run: nothing stored)" if dry_run else "stored"
            out.append(f"user profile changes {stored}: {r.profiles:,}")
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


class ReplayInput(Protocol):
    """What a replay reads: a file, or a range of days of Mixpanel's Export API."""

    #: Shown in messages and the progress bar.
    name: str
    #: The status name of its checkpoint.
    checkpoint: str
    #: Raw bytes, for the progress bar (0: unknown; progress then counts inputs).
    size: int
    #: True: a checkpoint marks it complete (read again whole until then, and again from
    #: the start when cut off); False: a checkpoint counts the values done (a file).
    whole: bool

    def open(self) -> Input:
        """Open it to read (a download starts here)."""


@dataclass
class FileInput:
    """A file to replay; resumed after the values its checkpoint counts."""

    path: Path
    whole: bool = False

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoint(self) -> str:
        return checkpoint_name(self.path)

    @property
    def size(self) -> int:
        return _size(self.path)

    def open(self) -> Input:
        return open_path(self.path)


def input_files(paths: Sequence[Path], skipped: list[str]) -> list[Path]:
    """The files to read: files as given, directories recursed (files in name order).

    A file found in a directory that holds no JSON (its first byte, once decompressed,
    is not ``{`` or ``[``: a manifest, a README) is not read; ``skipped`` says why.
    """
    out: list[Path] = []
    for path in paths:
        if not path.is_dir():
            out.append(path)
            continue
        for found in sorted(p for p in path.rglob("*") if p.is_file()):
            why = _not_json(found)
            if why is None:
                out.append(found)
            else:
                skipped.append(f"{found}: not read: {why}")
    return out


def _not_json(path: Path) -> str | None:
    """Why a file is no input of JSON values, or None."""
    try:
        with open_path(path) as opened:
            head = opened.stream.peek(256).lstrip(b" \t\r\n")  # type: ignore[attr-defined]
    except (OSError, *UNREADABLE) as exc:
        return f"cannot be read ({exc})"
    if not head:
        return "empty"
    if head[:1] not in (b"{", b"["):
        return "not JSON"
    return None


class Progress:
    """A tqdm bar on a terminal (bytes of all inputs, events, events/s, ETA); plain lines else."""

    interval = 10.0  # seconds between plain progress lines (logs, CI)

    def __init__(
        self, total: int, label: str, stream: IO[str] = sys.stderr, *, unit: str = "B"
    ) -> None:
        self.interactive = stream.isatty()
        self.stream = stream
        self.total = total
        self.unit = unit
        self.label = label
        self.started = time.monotonic()
        self.last_line = self.started
        self._bar = None
        if self.interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=unit, unit_scale=unit == "B", desc=label,
                             file=stream, dynamic_ncols=True)  # fmt: skip

    def update(self, position: int, events: int) -> None:
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
            amount = (f"{self.total / 1e6:,.1f} MB" if self.unit == "B"
                      else f"{self.total:,} {self.unit}s")  # fmt: skip
            line = (
                f"{self.label}: {events:,} events ({rate:,.0f}/s), {done:.0%} of {amount}, "
                f"ETA {eta:,.0f}s"
            )
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class ForwarderThread:
    """Sends while the replay reads: a forwarder in a thread of this process (tests)."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=forwarder.run, args=(self._stop,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def check(self) -> None:
        """Nothing to supervise: the forwarder's loop survives store and network trouble."""

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def forwarder_child() -> Child:
    """A ``miso-adapter forward`` child for a replay: sending runs on the other core."""
    return Child("forwarder", forwarder_command(), {**os.environ, "ADAPTER_LOG_LEVEL": "WARNING"})


Sender = ForwarderThread | Child


def replay(
    source: Source,
    inputs: Sequence[Path | ReplayInput],
    *,
    translator: Translator,
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
    """Replay ``inputs`` (paths of files or folders, or other inputs such as days of an
    export API) into ``store``; or, with ``dry_run``, write to ``output`` the records a
    replay would send now (``store``, when given, is only read: its dedup keys and links).

    ``forwarder`` sends while the replay reads: a :class:`Forwarder` (run in a thread),
    a :class:`ForwarderThread` or a :class:`~adapter.supervise.Child`; None stores only.
    An input that cannot be read to its end even when read again, or that its server
    refuses, ends the reading: ``summary.failed`` says why, and what was stored is still
    delivered.
    """
    summary = ReplaySummary()
    paths = [p for p in inputs if isinstance(p, Path)]
    files = input_files(paths, summary.not_read)
    for line in summary.not_read:
        print(line, file=errors)
    todo: list[ReplayInput] = [FileInput(p) for p in files]
    todo += [i for i in inputs if not isinstance(i, Path)]
    if not files and todo:
        summary.kind = "request(s)"
    writer = None if dry_run else store
    if store is not None:
        source.use_anonymous_lookup(anonymous_in(store))
    preview = Preview(output, store) if dry_run else None
    learn = (
        _learner(writer, source.name, dedup_ttl) if writer else preview.learn if preview else None
    )
    source.prepare(files, learn)
    activity = None
    if writer is not None:
        summary.start_stats = writer.stats()
        activity = Activity(writer).manual()  # the console shows replays beside webhooks
    sender = None
    if forwarder is not None and writer is not None:
        sender = ForwarderThread(forwarder) if isinstance(forwarder, Forwarder) else forwarder
        sender.start()
    by_bytes = all(i.size for i in todo)
    label = todo[0].name if len(todo) == 1 else f"{len(todo)} inputs"
    progress = Progress(sum(i.size for i in todo) if by_bytes else len(todo), label,
                        unit="B" if by_bytes else "input")  # fmt: skip
    run = _Run(source, translator, writer, preview, dedup_ttl, errors, max_spool, sender,
               activity, progress, summary)  # fmt: skip
    try:
        done = 0
        for item in todo:
            summary.files += 1
            try:
                run.read(item, resume, done if by_bytes else 0)
            except InputFailed as exc:
                summary.failed = exc.message
                print(f"error: {summary.failed}", file=errors)
                break
            done += item.size if by_bytes else 1
            if not by_bytes:
                progress.update(done, summary.result.received)
        if summary.malformed > SHOWN_ERRORS:
            print(f"... {summary.malformed - SHOWN_ERRORS:,} more", file=errors)
        if sender is not None and writer is not None:
            summary.delivered, summary.delivered_wait = _wait_for_delivery(
                writer, sender, wait_for_delivery
            )
    finally:
        progress.close()
        if sender is not None:
            sender.shutdown()
        if activity is not None:
            activity.flush()
    if preview is not None:
        summary.records_out = preview.records
    if writer is not None:
        summary.end_stats = writer.stats()
    return summary


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _learner(store: Store, source: str, dedup_ttl: float) -> Any:
    def learn(links: list[Link]) -> None:
        store.accept([Incoming(None, links=links, source=source)], dedup_ttl)

    return learn


@dataclass
class _Run:
    """One replay's reading of its files, one at a time."""

    source: Source
    translator: Translator
    store: Store | None
    preview: Preview | None
    dedup_ttl: float
    errors: IO[str]
    max_spool: int
    sender: Sender | None
    activity: Activity | None
    progress: Progress
    summary: ReplaySummary

    def report(self, where: str, message: str) -> None:
        if self.summary.malformed <= SHOWN_ERRORS:
            print(f"{where}: error: {message}", file=self.errors)

    def read(self, item: ReplayInput, resume: bool, done_bytes: int) -> None:
        """Read one input; a whole one is read again from the start when cut off."""
        if not item.whole:
            skip = 0
            if self.store is not None and resume:
                saved = self.store.get_status(item.checkpoint)
                skip = int(saved["rows"]) if saved else 0
            self._read_once(item, skip, done_bytes)
            return
        if self.store is not None and resume:
            saved = self.store.get_status(item.checkpoint) or {}
            if saved.get("complete"):
                self.summary.resumed_inputs += 1
                return
        for attempt in range(1, REREADS + 1):
            try:
                self._read_once(item, 0, done_bytes)
                break
            except InputFailed as exc:
                if not exc.retry or attempt == REREADS:
                    raise
                delay = min(60.0, 2.0**attempt)
                print(f"{exc.message}: reading {item.name} again in {delay:.0f} s (what was "
                      "stored from it is now a duplicate)", file=self.errors)  # fmt: skip
                time.sleep(delay)
        if self.store is not None:
            self.store.set_status(item.checkpoint, {"complete": True, "at": time.time()})

    def _read_once(self, item: ReplayInput, skip: int, done_bytes: int) -> None:
        summary = self.summary
        noted = summary.malformed
        try:
            opened = item.open()
        except OSError as exc:
            summary.bad(item.name, f"cannot be read: {exc.strerror or exc}")
            self.report(item.name, f"cannot be read: {exc.strerror or exc}")
            return
        except UNREADABLE as exc:
            summary.bad(item.name, f"cannot be read: {exc}")
            self.report(item.name, f"cannot be read: {exc}")
            return

        def after(part: Any, consumed: int, position: int) -> None:
            nonlocal noted
            if self.activity is not None:
                self.activity.ingest(self.source.name, part, malformed=summary.malformed - noted)
                noted = summary.malformed
                self.activity.flush_if_due()
            if self.store is not None:
                _wait_for_room(self.store, self.max_spool, self.sender)
            if self.progress.unit == "B":
                self.progress.update(done_bytes + position, summary.result.received)

        def status(consumed: int, _: int) -> tuple[str, dict[str, Any]] | None:
            if self.preview is not None or item.whole:
                return None
            return item.checkpoint, {"file": item.name, "rows": consumed}

        with opened:
            # A dry run commits nothing: smaller chunks hold fewer events in memory.
            size = SMALL_CHUNK if self.preview is not None else CHUNK
            parts = chunks(self.source, opened, summary, skip=skip, report=self.report,
                           size=size)  # fmt: skip
            target = self.preview if self.preview is not None else self.store
            try:
                ingest_chunks(target, self.translator, parts, source=self.source.name,  # type: ignore[arg-type]
                              dedup_ttl=self.dedup_ttl, result=summary.result, status=status,
                              after=after)  # fmt: skip
            except UNREADABLE as exc:
                # A gzip file cut short: what was read before is stored and checkpointed.
                summary.bad(item.name, f"cannot be read to the end: {exc}")
                self.report(item.name, f"cannot be read to the end: {exc}")


def _wait_for_room(store: Store, max_spool: int, sender: Sender | None) -> None:
    """Backpressure: while Miso is slower than the files, let the spool drain first."""
    if sender is None:
        return
    while store.stats()["spool"] >= max_spool:
        if refusal(store) is not None:
            return  # Miso refuses the key: keep storing; nothing is lost, it waits
        sender.check()
        time.sleep(0.2)


def _wait_for_delivery(store: Store, sender: Sender, limit: float) -> tuple[bool, str]:
    """Wait until what the replay stored is delivered, Miso refuses the key, or time is up;
    (delivered, how the wait ended).

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
        # Miso's Users API tasks (checked a moment after each upload) belong to what the
        # replay sent: a task that fails is a dead letter, not a delivery.
        quiet = stats["oldest_age"] < since_finished - 0.05 and not stats.get("user_tasks")
        if stats["spool"] == 0 or quiet:
            return True, "delivered: everything accepted has reached Miso"
        status = refusal(store)
        if status is not None:
            return False, (
                f"NOT delivered: {stats['spool']:,} records wait in the spool: {status['reason']}."
                " Fix the key and run `miso-adapter forward` (or `serve`) to send them."
            )
        if time.monotonic() > deadline:
            return False, (
                f"still sending: {stats['spool']:,} records wait in the spool; a running "
                "`miso-adapter forward` (or `serve`) will send them"
            )
        time.sleep(0.2)
