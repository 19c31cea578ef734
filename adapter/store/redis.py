"""The shared store: the :class:`adapter.store.Store` interface on one Redis (docs/deployment.md).

``ADAPTER_STORE=redis://[:password@]host:port/db[?prefix=NAME:&timeout=SECONDS]``
(``rediss://`` for TLS). Every process of every adapter host opens its own connection
pool; the Redis server makes them one store. Each operation that writes is ONE Lua
script of ``adapter/store/lua`` (or one command), so it is atomic for every other
client, however many processes and threads: a script runs alone, and its effects are
all kept or, when it fails before its first write (a replica's READONLY, maxmemory's
OOM), none are. Redis failures of any kind are raised as StoreError naming host:port,
never the password.
Needs Redis >= 6.2, standalone or a primary (not Redis Cluster: a script touches keys
it builds from the prefix), and ``maxmemory-policy noeviction``: an evicting Redis
would drop queued records or dedup keys.

Key layout (``P`` = the prefix, ``miso-adapter:`` by default)::

    P spool:<kind>        stream of the items of a kind (store.KINDS: records to POST,
                          deletion notices, user uploads, user tasks to check), each read
                          in one consumer group "forwarders", a consumer per forwarder
    P leased:<kind>       zset  item -> lease expiry (µs): what is in flight, and until when
    P ready:<kind>        zset  item -> ready time (µs): items back from a retry delay, a
                                release, read beyond a claim's byte budget, or read before
                                the delay they were queued with ran out ("parked")
    P state               hash  item -> "attempts|first attempt (µs)|last error"
    P cancelled           set   in-flight records and uploads of a deleted user (never retried)
    P requeued            zset  item -> created_at (µs) for dead letters put back (stats)
    P dead                stream of dead letters (kind, body, source, reason, attempts, ...)
    P seq                 counter of item ids
    P dedup:<key>         string, SET NX PX <window>: alive = duplicate
    P link                hash  anonymous id -> user id
    P user:<user id>      zset  anonymous id -> linked_at (µs), most recent = highest
    P links:recent        zset  anonymous id -> linked_at (µs): the 100 newest links
    P profile:<id>        hash  JSON [table, part, key] -> JSON value: a user's profile, or
                                an anonymous id's no link names yet; JSON [table] -> {}
                                keeps a table whose keys all went (it is still uploaded)
    P profiles:updated    hash  id -> updated_at (µs), one per stored profile
    P profiles:anonymous  set   ids whose profile is anonymous (kept aside, never uploaded)
    P profiles:queued     set   users with a queued upload that has not read their profile
    P profiles:deleted    hash  user -> deletion time (µs): older profile changes are ignored
    P status              hash  name -> JSON (shared status, e.g. Miso refused the key)
    P activity:<minute>   hash  JSON [metric, source, key] -> count (HINCRBY), expiring
                                ACTIVITY_KEEP_MINUTES after its minute

Ids: every spool item and dead letter gets a number from ``P seq``; its stream entry
id is ``0-<n>`` and ``Claimed.id`` / ``DeadLetter.id`` is ``n``. Ids are unique across
kinds (so ``ack(ids)`` needs no kind) and never reused: a missing counter starts at
the server clock in µs (or above the last queued id), so even after Redis lost its
data, new ids are above any id a forwarder may still hold, and ``dead-letters retry``
takes ids of 16 digits. A retried item keeps its id.

An item is in exactly one of these states: *new* (in its stream, not yet read by the
group), *leased* (pending in the group under the claiming forwarder, and in
``leased:<kind>``), *parked* (in its stream, acknowledged to the group, and in
``ready:<kind>``), *cancelled* (leased, and in ``cancelled``). The body is written once
(``XADD`` at accept) and never copied until the item is acknowledged (``XACK`` +
``XDEL``) or moved to the dead letters. An item queued with a delay (``enqueue``)
carries its ready time as ``q``; a claim that reads it earlier parks it until then.

Profiles are merged key by key in the accept script: the values are JSON made here,
never decoded in Lua (its cjson keeps 14 digits of a number), so a change is an HSET
or HDEL of a field, and an anonymous profile joins its user's with HSETNX (the user's
own values win).

A deletion notice drops the user's queued records and uploads wherever they are in the
streams (deletions are rare; accepting records stays O(items)). Scanning a million records
inside the accept script would stop Redis for seconds, so a read-only pre-scan pages
through the streams first (2,000 entries a call) and the script checks only its
candidates again, plus the entries added after it; only if the user gained an
anonymous id in between does the script scan everything itself.

Leases are judged by the claim's own ``lease`` (a zset of expiry times), not by the
group's idle time: an expired lease is taken over with ``XCLAIM``, as ``XAUTOCLAIM``
would, but a claim with a 30 s lease still finds the items of one made with a 50 ms
lease, exactly when that lease ends, without scanning the pending list.

Durability is Redis's: with ``appendonly yes`` and ``appendfsync everysec``, a crash of
the Redis host loses up to about a second of acknowledged writes; ``always`` loses
none and is slower; with no persistence a Redis restart loses everything (see
docs/deployment.md). Script effects reach the AOF and replicas as one MULTI/EXEC, so
what survives is always a consistent prefix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson

from adapter.identity import ProfileChange
from adapter.store.redis_db import DEFAULT_PREFIX, GROUP
from adapter.store.redis_links import RedisLinks
from adapter.store.redis_spool import RedisSpool
from adapter.store.redis_status import RedisStatus
from adapter.store.roles import UPLOAD_DELAY, Incoming

__all__ = ["DEFAULT_PREFIX", "GROUP", "RedisStore"]

# Entries one pre-scan call reads: ~10 ms of Redis's time, then other clients' turn.
_FIND_PAGE = 2000
# What a deletion's pre-scan pages through, by the name the find script takes: the streams whose
# entries may name a user (records, uploads) and the dead letters.
_SCANNED = {"record": "spool:record", "user": "spool:user", "dead": "dead"}


def _counted(values: Sequence[Any]) -> list[Any]:
    return [len(values), *values]


def _profile_change(change: ProfileChange) -> list[Any]:
    """A profile change as the accept script takes it: its ids, its time (µs), then the
    fields of the profile hash it sets (to a JSON value) or removes (''). The table's own
    field comes first: the table stays in the profile when all its keys are removed."""
    fields: list[bytes] = [orjson.dumps([change.table]), b"{}"]
    for part, values in change.changes.items():
        for key, value in values.items():
            fields.append(orjson.dumps([change.table, part, key]))
            fields.append(b"" if value is None else orjson.dumps(value))
    return [
        "-" if change.user_id is None else f"+{change.user_id}",
        "-" if change.anonymous_id is None else f"+{change.anonymous_id}",
        round(change.at * 1_000_000),
        len(fields) // 2,
        *fields,
    ]


class RedisStore(RedisSpool, RedisLinks, RedisStatus):
    """The :class:`adapter.store.Store` interface on a Redis shared by many hosts.

    Accepting is here (with its deletion pre-scan); the other roles come from
    :class:`~adapter.store.redis_spool.RedisSpool`,
    :class:`~adapter.store.redis_links.RedisLinks` and
    :class:`~adapter.store.redis_status.RedisStatus`.
    """

    #: Seconds a queued user upload waits (store.UPLOAD_DELAY); tests set 0.
    upload_delay = UPLOAD_DELAY

    def accept(
        self,
        batch: Sequence[Incoming],
        dedup_ttl: float,
        status: tuple[str, dict[str, Any]] | None = None,
    ) -> list[bool]:
        """Dedup, enqueue, link, forget and publish ``status`` in one script: all or nothing."""
        if not batch and status is None:
            return []
        name, value = status if status is not None else ("", None)
        args: list[Any] = [
            max(0, math.ceil(dedup_ttl * 1000)),
            name,
            orjson.dumps(value) if status is not None and value is not None else b"",
            max(0, round(self.upload_delay * 1_000_000)),
        ]
        deleted = {user for item in batch for user in item.deletions}
        args.extend(self._prescan(batch, deleted) if deleted else ["-"])
        for item in batch:
            args.append(b"-" if item.dedup_key is None else b"+" + item.dedup_key.encode())
            args.append(item.source)
            args.append(len(item.records))
            args.extend(item.records)
            args.append(len(item.links))
            for link in item.links:
                args.extend((link.anonymous_id, link.user_id))
            args.append(len(item.deletions))
            if item.deletions:
                args.extend(item.deletions)
                args.append(orjson.dumps({"user_ids": item.deletions}))
            # A change naming neither id has no profile to go to.
            changes = [c for c in item.profiles if (c.user_id, c.anonymous_id) != (None, None)]
            args.append(len(changes))
            for change in changes:
                args.extend(_profile_change(change))
        flags = self._run("accept records", "accept", args)
        return [flag == ord("1") for flag in flags]

    def _prescan(self, batch: Sequence[Incoming], users: set[str]) -> list[Any]:
        """Before a deletion: the entries that may be the users' records, found page by page.

        The accept script then checks only these again, and what was added after the
        marks, instead of scanning every queued record while Redis serves nobody else.
        """
        with self._redis("look up the records of deleted users"):
            pipe = self._client.pipeline(transaction=False)
            for user in sorted(users):
                pipe.zrange(self._key(f"user:{user}"), 0, -1)
            for key in _SCANNED.values():
                pipe.xrevrange(self._key(key), count=1)
            replies = pipe.execute()
        linked, tops = replies[: len(users)], replies[len(users) :]
        anonymous = {a.decode() for ids in linked for a in ids}
        # Links of this batch are stored before its deletions are carried out.
        anonymous |= {link.anonymous_id for i in batch for link in i.links if link.user_id in users}
        marks = [entries[0][0].decode() if entries else "0-0" for entries in tops]
        found = [
            self._find(which, mark, sorted(users), sorted(anonymous))
            for which, mark in zip(_SCANNED, marks, strict=True)
        ]
        return [
            *marks,
            *_counted(sorted(users)),
            *_counted(sorted(anonymous)),
            *(part for each in found for part in _counted(each)),
        ]

    def _find(self, which: str, stop: str, users: list[str], anonymous: list[str]) -> list[str]:
        after, found = "-", []
        while after != "":
            page = self._run(
                "look up the records of deleted users",
                "find",
                [which, after, stop, _FIND_PAGE, len(users), *users, *anonymous],
            )
            after = page[0].decode()
            found += [sid.decode() for sid in page[1:]]
        return found
