"""Identity links between anonymous and signed-in ids (README.md § Identity).

Miso joins a visitor's anonymous history to their account only when one record
carries both ``anonymous_id`` and ``user_id``. Translators report every link a
source event reveals (Segment ``identify``/``alias``, any event carrying both ids,
Mixpanel ``$identify``/``$create_alias``/``$merge``) as :class:`Link` values.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

__all__ = ["Link", "ProfileChange", "Resolve", "complete_ids", "merge_profile"]


class Link(NamedTuple):
    """An anonymous id known to belong to a user id."""

    anonymous_id: str
    user_id: str


class ProfileChange(NamedTuple):
    """What one message changes in a person's profile (a ``profiles:`` entry of a table).

    ``changes`` maps a part of the profile (``traits``, ``group``) to the keys it sets; a
    ``None`` value removes that key. The change belongs to ``user_id`` when the message
    has one, else to ``anonymous_id`` (kept aside until a link names its user). ``at`` is
    the message's time (epoch seconds), so a change older than a deletion is ignored.
    ``table`` names the mapping table whose ``users:`` section reads this part of the
    profile (``segment``, ``mixpanel``): each table's part is merged on its own.
    """

    user_id: str | None
    anonymous_id: str | None
    changes: Mapping[str, Mapping[str, Any]]
    at: float
    table: str = "segment"


def merge_profile(
    profile: dict[str, dict[str, Any]], changes: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Apply ``changes`` to ``profile`` (changed in place, and returned): a later value
    wins, ``None`` removes the key, and a part left empty is dropped.

    Keys merge at the top of each part only: a new ``address`` object replaces the old
    one whole, as a nested object is one trait.
    """
    for part, values in changes.items():
        target = profile.setdefault(part, {})
        for key, value in values.items():
            if value is None:
                target.pop(key, None)
            else:
                target[key] = value
        if not target:
            del profile[part]
    return profile


#: Known links: (anonymous ids, user ids) -> (anonymous -> its user, user -> its most
#: recently linked anonymous id), as :meth:`adapter.store.Store.resolve` answers.
Resolve = Callable[[Sequence[str], Sequence[str]], tuple[dict[str, str], dict[str, str]]]


def complete_ids(records: Sequence[dict], resolve: Resolve) -> list[int]:
    """Give records both ids where a link is known; the indexes of the records changed.

    An anonymous-only record gets its user; a user-only record gets the user's most
    recently linked anonymous id, unless its "user" is itself a known anonymous id (a
    device's row read before its sign-in), which then becomes the anonymous id beside its
    user. A record carrying both is left as it is; one with neither too.
    """
    anonymous = [r["anonymous_id"] for r in records if "user_id" not in r and "anonymous_id" in r]
    users = [r["user_id"] for r in records if "anonymous_id" not in r and "user_id" in r]
    if not anonymous and not users:
        return []
    user_of, anonymous_of = resolve(anonymous + users, users)
    changed = []
    for index, record in enumerate(records):
        if "user_id" not in record and record.get("anonymous_id") in user_of:
            record["user_id"] = user_of[record["anonymous_id"]]
        elif "anonymous_id" not in record and record.get("user_id") in user_of:
            record["anonymous_id"] = record["user_id"]
            record["user_id"] = user_of[record["anonymous_id"]]
        elif "anonymous_id" not in record and record.get("user_id") in anonymous_of:
            record["anonymous_id"] = anonymous_of[record["user_id"]]
        else:
            continue
        changed.append(index)
    return changed
