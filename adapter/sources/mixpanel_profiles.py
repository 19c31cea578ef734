"""Mixpanel people profiles: the profiles Mixpanel's Engage API and people export give.

A file holds JSON Lines of profiles (``{"$distinct_id": ..., "$properties": {...}}``),
a JSON array of them, or Engage query pages (``{"page": 0, "page_size": 1000,
"session_id": ..., "status": "ok", "total": N, "results": [profile, ...]}``), one page as
one document or one page per line; plain or gzip (:mod:`adapter.sources.inputs` and
:mod:`~adapter.sources.jsonvalues` read them).

Each profile becomes one ``$profile`` event for the Mixpanel table::

    {"event": "$profile", "user_id": <$distinct_id>, "time": <$last_seen, epoch seconds>,
     "properties": <$properties>}

whose ``profiles:`` entry merges the properties into the person's traits, uploaded to
Miso's Users API through the table's ``users:`` section. ``$distinct_id`` is the
``anonymous_id`` instead when it starts with ``$device:`` (the prefix dropped, as for
events) or the store links it as an anonymous id; ``time`` is left out when the profile
has no ``$last_seen``. The dedup key is the person and a hash of the properties: the same
profile read twice is a duplicate, a changed one is applied.

An unusable value (not an object, no ``$distinct_id``, no ``$properties`` object, a page
whose ``results`` is no array, a page Mixpanel answered with an error) is reported with
its place (``people.jsonl:12``, ``page.json, results.3``). A row of an events export is
not a profile at all: it is counted as such, and a body made only of such rows is the
wrong file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, ClassVar

import orjson

from adapter import values
from adapter.sources import OUTSIDE, BaseSource, Item, ReadError, Window
from adapter.sources.segment import json_type

__all__ = ["NOT_A_PROFILE", "PROFILE_EVENT", "MixpanelProfilesSource", "dedup_key"]

#: The event name a profile is given for the Mixpanel table.
PROFILE_EVENT = "$profile"
#: The skip reason (a prefix) of a value that is no people profile: an events export row.
NOT_A_PROFILE = "not a Mixpanel people profile"
_EVENT_ROW = (
    f"{NOT_A_PROFILE}: a Mixpanel event row (an events export: "
    "`miso-adapter replay mixpanel` reads those)"
)
_DEVICE_PREFIX = "$device:"
_MAX_ID = 512  # Miso's longest user_id / anonymous_id
_PAGE_KEYS = ("results", "status", "session_id", "page_size")


def dedup_key(distinct_id: str, properties: dict) -> str:
    """``mixpanel-profile:<distinct_id>:<hash of the properties>``: a profile read again
    unchanged is a duplicate; any change of its properties makes a new key.

    TypeError or ValueError when the properties cannot be written as JSON.
    """
    digest = hashlib.blake2b(
        orjson.dumps(properties, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS),
        digest_size=8,
    ).hexdigest()
    return f"mixpanel-profile:{distinct_id}:{digest}"


def _bad_id(raw: Any) -> str:
    """Why a ``$distinct_id`` is no id."""
    if not isinstance(raw, str | int | float) or isinstance(raw, bool):
        return f"'$distinct_id' must be a string, got {json_type(raw)}"
    text = str(raw).strip()
    if not text:
        return "'$distinct_id' is empty"
    if len(text) > _MAX_ID:
        return f"'$distinct_id' is longer than {_MAX_ID} characters"
    return f"'$distinct_id' is a placeholder ({text!r}), not an id"


class MixpanelProfilesSource(BaseSource):
    """People profiles of Mixpanel's Engage API or people export, one ``$profile`` event
    each for the Mixpanel table."""

    name: ClassVar[str] = "mixpanel-profiles"
    table: ClassVar[str | None] = "mixpanel"
    describes: ClassVar[str] = "Mixpanel people profiles (Engage API pages or people export)"
    foreign: ClassVar[str] = NOT_A_PROFILE
    expected: ClassVar[str] = (
        'Mixpanel people profiles: {"$distinct_id": ..., "$properties": {...}} per line, '
        'a JSON array of them, or Engage pages {"results": [...]}'
    )
    unit: ClassVar[str] = "Mixpanel people profiles"

    def __init__(self, *, window: Window | None = None) -> None:
        self.window = window or Window()
        self._known_anonymous: Callable[[list[str]], Iterable[str]] | None = None
        # Events whose $distinct_id may be an anonymous id the store knows: decided once
        # per chunk, in one look-up (end_chunk).
        self._undecided: list[dict] = []

    def items(self, where: str, value: Any) -> list[Item]:
        """The profiles of one value: a profile, or an Engage page of them."""
        if isinstance(value, dict) and "$distinct_id" not in value:
            if any(key in value for key in _PAGE_KEYS):
                return self._page(where, value)
            if "event" in value or "event_name" in value:
                return [Item(where, None, _EVENT_ROW)]
        return [self._profile(where, value)]

    def _page(self, where: str, page: dict) -> list[Item]:
        status = page.get("status", "ok")
        if status != "ok":
            said = page.get("error")
            reason = f": {said}" if said not in (None, "") else " (and no 'error' saying why)"
            return [Item(where, None, ReadError(f"Mixpanel answered status {status!r}{reason}"))]
        if "results" not in page:
            return [Item(where, None, ReadError("an Engage page without 'results'"))]
        results = page["results"]
        if not isinstance(results, list):
            return [
                Item(
                    where,
                    None,
                    ReadError(f"'results' must be an array of profiles, got {json_type(results)}"),
                )
            ]
        return [
            self._profile(f"{where}, results.{index}", profile)
            for index, profile in enumerate(results)
        ]

    def _profile(self, where: str, profile: Any) -> Item:
        if not isinstance(profile, dict):
            return Item(
                where,
                None,
                ReadError(
                    "expected a people profile (a JSON object with '$distinct_id' and "
                    f"'$properties'), got {json_type(profile)}"
                ),
            )
        if "$distinct_id" not in profile:
            return Item(where, None, ReadError("a people profile needs a '$distinct_id'"))
        raw = profile["$distinct_id"]
        distinct = values.to_id(raw, max_length=_MAX_ID)
        device = None
        if distinct is not None and distinct.startswith(_DEVICE_PREFIX):
            device = values.to_id(distinct[len(_DEVICE_PREFIX) :])
            if device is None:
                return Item(where, None, ReadError("'$distinct_id' has no id after '$device:'"))
        if distinct is None:
            return Item(where, None, ReadError(_bad_id(raw)))
        if "$properties" not in profile:
            return Item(where, None, ReadError("a people profile needs '$properties'"))
        properties = profile["$properties"]
        if not isinstance(properties, dict):
            return Item(
                where,
                None,
                ReadError(f"'$properties' must be an object, got {json_type(properties)}"),
            )
        epoch = _epoch(properties.get("$last_seen"))
        if self.window and not self.window.holds(epoch if epoch is not None else -1.0):
            return Item(where, None, OUTSIDE)
        try:
            key = dedup_key(distinct, properties)
        except (TypeError, ValueError, RecursionError) as exc:
            return Item(where, None, ReadError(f"'$properties' cannot be read as JSON: {exc}"))
        event: dict[str, Any] = {"event": PROFILE_EVENT}
        if device is not None:
            event["anonymous_id"] = device
        else:
            event["user_id"] = distinct
            if self._known_anonymous is not None:
                self._undecided.append(event)
        if epoch is not None:
            event["time"] = epoch
        event["properties"] = properties
        return Item(where, key, event)

    def end_chunk(self) -> None:
        """Ids the store links as anonymous are the anonymous side: one look-up a chunk."""
        undecided, self._undecided = self._undecided, []
        if not undecided or self._known_anonymous is None:
            return
        anonymous = set(self._known_anonymous(sorted({e["user_id"] for e in undecided})))
        for event in undecided:
            if event["user_id"] in anonymous:
                event["anonymous_id"] = event.pop("user_id")

    def use_anonymous_lookup(self, known: Callable[[list[str]], Iterable[str]]) -> None:
        if self._known_anonymous is None:
            self._known_anonymous = known

    def not_of_this_source(self, skipped: Mapping[str, int], received: int) -> str | None:
        foreign = sum(n for reason, n in skipped.items() if reason.startswith(NOT_A_PROFILE))
        if foreign != received:
            return None
        return (
            "no Mixpanel people profiles in the body, only event rows: this is an events "
            "export (the mixpanel source reads it); profiles are "
            '{"$distinct_id": ..., "$properties": {...}}'
        )


def _epoch(raw: Any) -> float | None:
    """Epoch seconds of ``$last_seen`` (ISO text, UTC when it names no offset), or None."""
    stamp = values.to_timestamp(raw) if raw is not None else None
    if stamp is None:
        return None
    epoch = datetime.fromisoformat(stamp).timestamp()
    return epoch if epoch > 0 else None
