"""Sources: every way events reach the adapter, read the same way.

A source turns the JSON values of an input into :class:`Item`\\ s — ``(where, dedup key,
event)`` — for :func:`adapter.ingest.ingest` to translate and store; an item's event is
a reason string when the value is no event of the source (counted as skipped), or a
:class:`ReadError` when it is unusable input (reported with its location).

* :mod:`~adapter.sources.inputs` opens a file, stdin or an upload body (gzip and the
  byte order mark recognised once, by content);
* :mod:`~adapter.sources.jsonvalues` reads JSON Lines, a JSON array or one document,
  in constant memory, every value located;
* one module per source: :mod:`~adapter.sources.segment` (Segment messages),
  :mod:`~adapter.sources.mixpanel` (Mixpanel export rows), :mod:`~adapter.sources.miso`
  (records already in Miso's shape).

A new source is one module with a class following :class:`Source`, named in
:data:`REGISTRY`: replay, translate, the upload routes and the console take it from there.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

from adapter.identity import Link
from adapter.sources.jsonvalues import ReadError

__all__ = [
    "OUTSIDE",
    "REGISTRY",
    "Item",
    "ReadError",
    "Source",
    "Window",
    "learn_first",
    "make_source",
    "source_class",
    "translator_for",
]

#: Source name → the module and class that read it. Order: how they are offered.
REGISTRY: dict[str, tuple[str, str]] = {
    "segment": ("adapter.sources.segment", "SegmentSource"),
    "mixpanel": ("adapter.sources.mixpanel", "MixpanelSource"),
    "mixpanel-profiles": ("adapter.sources.mixpanel_profiles", "MixpanelProfilesSource"),
    "miso": ("adapter.sources.miso", "MisoSource"),
}


class Item(NamedTuple):
    """One event of a source: where it is, its dedup key (None: cannot dedup), and the
    event, or why it is none (a reason: skipped; a ReadError: bad input, reported)."""

    where: str
    key: str | None
    event: dict | str | ReadError


@dataclass(frozen=True)
class Window:
    """``--since``/``--until`` on an event's own time: ``[since, until)`` in epoch seconds.

    Parsed here for every entry point: a date (``2024-03-31``; as ``until``, the whole day
    is included) or an ISO time (UTC when it names no offset).
    """

    since: float | None = None
    until: float | None = None

    @classmethod
    def parse(cls, since: str | None, until: str | None) -> Window:
        """The window of two texts (either may be None); ValueError saying which is bad."""
        return cls(
            _instant(since, "since", end_of_day=False), _instant(until, "until", end_of_day=True)
        )

    def __bool__(self) -> bool:
        return self.since is not None or self.until is not None

    def holds(self, epoch: float) -> bool:
        return (self.since is None or epoch >= self.since) and (
            self.until is None or epoch < self.until
        )


#: The skip reason of an event outside the window.
OUTSIDE = "outside --since/--until"


def _instant(text: str | None, what: str, *, end_of_day: bool) -> float | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what}: not a date or ISO time: {text!r} (e.g. 2024-03-31)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if end_of_day and len(text) == 10:  # a bare date: the whole day is included
        moment += timedelta(days=1)
    return moment.timestamp()


class Source(Protocol):
    """What every source implements (see the three in this package)."""

    #: The name users give (``replay NAME``, ``?source=NAME``).
    name: ClassVar[str]
    #: The mapping table its events are translated with (``NAME.yaml``); None when its
    #: events are Miso records already, translated by :meth:`translator`.
    table: ClassVar[str | None]
    #: Options its constructor takes besides ``window`` (e.g. Mixpanel's time zone).
    options: ClassVar[tuple[str, ...]]
    #: What one input value is, for help texts (``Segment messages``).
    describes: ClassVar[str]
    #: The skip reason (a prefix) of a value that is not of this source at all (not a
    #: Segment message, not a Mixpanel event), as opposed to an event skipped on purpose.
    foreign: ClassVar[str]
    #: What an upload of it should hold, and its unit, for error messages.
    expected: ClassVar[str]
    unit: ClassVar[str]

    #: For a source whose every value is exactly one event, never unusable input:
    #: ``value -> (dedup key, event or skip reason)``, which readers call instead of
    #: :meth:`items` (no location is formatted, no Item built: the hot path). Else None.
    one_event: Callable[[Any], tuple[str | None, dict | str]] | None

    def items(self, where: str, value: Any) -> Iterable[Item]:
        """The items of one JSON value read at ``where``."""

    def end_chunk(self) -> None:
        """Called before the items read so far are translated (a chunk is complete)."""

    def prepare(self, paths: Sequence[Path], learn: Callable[[list[Link]], None] | None) -> None:
        """A pass over the inputs before they are read (e.g. identity rows first);
        ``learn`` stores links (None: a dry run, nothing is stored)."""

    def use_anonymous_lookup(self, known: Callable[[list[str]], Iterable[str]]) -> None:
        """Which ids the store knows as anonymous, for sources that need to know."""

    def translator(self) -> Any:
        """The translator of a source without a mapping table (``table`` None)."""

    def not_of_this_source(self, skipped: Mapping[str, int], received: int) -> str | None:
        """Why an input none of whose ``received`` values was of this source (given the
        skip reasons) is the wrong input; None when some were."""


def source_class(name: str) -> type[Source]:
    """The class of a registered source; ValueError naming the known ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown source {name!r}: use {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name]
    return getattr(importlib.import_module(module), cls)


def learn_first(
    paths: Sequence[Path],
    links_of: Callable[[Any, str], Iterable[Link]],
    learn: Callable[[list[Link]], None] | None,
) -> None:
    """A source's pass over its files before they are read: ``links_of(stream, name)``
    gives the links of one file (a quick scan), handed to ``learn`` a thousand at a time.

    A visitor's anonymous rows come before the sign-in that links them: with its link
    learned first, every record the replay sends goes out with both ids.
    """
    from adapter.sources.inputs import UNREADABLE, open_path

    for path in paths:
        links: list[Link] = []
        try:
            with open_path(path) as opened:
                for link in links_of(opened.stream, opened.name):
                    links.append(link)
                    if len(links) >= 1000 and learn is not None:
                        learn(links)
                        links = []
        except (OSError, *UNREADABLE):
            pass  # a damaged file is reported, located, by the full read that follows
        if links and learn is not None:
            learn(links)


def translator_for(source: Source, load: Callable[[str], Any]) -> Any:
    """The translator of ``source``: its own when its events are records already, else
    ``load(table)`` (the mapping table it names)."""
    own = source.translator()
    return own if own is not None else load(source.table)  # type: ignore[arg-type]


def make_source(name: str, *, window: Window | None = None, **options: Any) -> Source:
    """A source ready to read, with its window and its own options (None values ignored).

    ValueError for an unknown source, an option it does not take, or a bad option value.
    """
    cls = source_class(name)
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(cls.options))
    if unknown:
        raise ValueError(f"{name} takes no option {', '.join(unknown)}")
    return cls(window=window or Window(), **given)


class BaseSource:
    """Defaults for the optional parts of :class:`Source`."""

    options: ClassVar[tuple[str, ...]] = ()
    foreign: ClassVar[str] = "\0"  # none: every value is of the source, or unusable input
    one_event: Callable[[Any], tuple[str | None, dict | str]] | None = None

    def end_chunk(self) -> None:
        return None

    def prepare(self, paths: Sequence[Path], learn: Callable[[list[Link]], None] | None) -> None:
        return None

    def use_anonymous_lookup(self, known: Callable[[list[str]], Iterable[str]]) -> None:
        return None

    def translator(self) -> Any:
        return None

    def not_of_this_source(self, skipped: Mapping[str, int], received: int) -> str | None:
        return None
