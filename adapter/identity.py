"""Identity links between anonymous and signed-in ids (README.md § Identity).

Miso joins a visitor's anonymous history to their account only when one record
carries both ``anonymous_id`` and ``user_id``. Translators report every link a
source event reveals (Segment ``identify``/``alias``, any event carrying both ids,
Mixpanel ``$identify``/``$create_alias``/``$merge``) as :class:`Link` values.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Link"]


class Link(NamedTuple):
    """An anonymous id known to belong to a user id."""

    anonymous_id: str
    user_id: str
