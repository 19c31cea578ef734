"""Identity links between anonymous and signed-in ids (README.md § Identity).

Miso joins a visitor's anonymous history to their account only when one record
carries both ``anonymous_id`` and ``user_id``. Translators report every link a
source event reveals (Segment ``identify``/``alias``, any event carrying both ids,
Mixpanel ``$identify``/``$create_alias``/``$merge``) as :class:`Link` values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

__all__ = ["Link", "Resolve", "complete_ids"]


class Link(NamedTuple):
    """An anonymous id known to belong to a user id."""

    anonymous_id: str
    user_id: str


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
