"""The shared store: the :class:`adapter.store.Store` interface on one Redis (docs/deployment.md).

``ADAPTER_STORE=redis://[:password@]host:port/db[?prefix=NAME:&timeout=SECONDS]``
(``rediss://`` for TLS). Every process of every adapter host opens its own connection
pool; the Redis server makes them one store. Each operation that writes is ONE Lua
script (or one command), so it is atomic for every other client, however many processes
and threads: a script runs alone, and its effects are all kept or, when it fails before
its first write (a replica's READONLY, maxmemory's OOM), none are. Redis failures of any
kind are raised as StoreError naming host:port, never the password.
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
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from adapter.identity import ProfileChange
from adapter.store import (
    ACTIVITY_KEEP_MINUTES,
    KINDS,
    UPLOAD_DELAY,
    Claimed,
    DeadLetter,
    Incoming,
    StoreError,
)

__all__ = ["DEFAULT_PREFIX", "GROUP", "RedisStore"]

DEFAULT_PREFIX = "miso-adapter:"
#: The consumer group every forwarder reads the spool streams in (hard-coded in _LUA).
GROUP = "forwarders"
_DEFAULT_TIMEOUT = 10.0  # seconds for any one command
# Entries one pre-scan call reads: ~10 ms of Redis's time, then other clients' turn.
_FIND_PAGE = 2000
# What a deletion's pre-scan pages through, by the name _FIND takes: the streams whose
# entries may name a user (records, uploads) and the dead letters.
_SCANNED = {"record": "spool:record", "user": "spool:user", "dead": "dead"}

# Helpers every script starts with. ARGV[1] is always the key prefix. Times are integer
# microseconds of the Redis server's clock (one clock for every host); numbers passed
# to redis.call are formatted with %d, since Lua's default formatting keeps 14 digits.
_LUA = r"""
local P = ARGV[1]
local G = 'forwarders'
local STATE, CANCELLED, REQUEUED = P .. 'state', P .. 'cancelled', P .. 'requeued'
local DEAD, SEQ, LINK = P .. 'dead', P .. 'seq', P .. 'link'
local RECENT = P .. 'links:recent'
local UPDATED, ANONYMOUS = P .. 'profiles:updated', P .. 'profiles:anonymous'
local QUEUED, DELETED = P .. 'profiles:queued', P .. 'profiles:deleted'
local function profile(id) return P .. 'profile:' .. id end
local function stream(kind) return P .. 'spool:' .. kind end
local function leased(kind) return P .. 'leased:' .. kind end
local function ready(kind) return P .. 'ready:' .. kind end
local function n2s(x) return string.format('%d', x) end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function num(id) return tonumber(string.sub(id, 3)) end
local function field(f, name)
  for i = 1, #f, 2 do if f[i] == name then return f[i + 1] end end
  return nil
end
-- The group starts at '0', so items added before it existed are read too.
local function ensure_groups()
  for _, kind in ipairs(KINDS) do
    redis.pcall('XGROUP', 'CREATE', stream(kind), G, '0', 'MKSTREAM')
  end
end
-- cmd head... items... tail..., in chunks: Lua's unpack() takes at most ~8000 values.
local function variadic(cmd, head, items, tail)
  local total, i = 0, 1
  while i <= #items do
    local args, j = {}, math.min(#items, i + 3999)
    for k = 1, #head do args[#args + 1] = head[k] end
    for k = i, j do args[#args + 1] = items[k] end
    if tail then for k = 1, #tail do args[#args + 1] = tail[k] end end
    local r = redis.call(cmd, unpack(args))
    if type(r) == 'number' then total = total + r end
    i = j + 1
  end
  return total
end
-- A missing counter starts at the clock (µs), or above the streams' last ids if a
-- counter was lost without them: an XADD below a stream's top would fail mid-script.
local function next_ids(n)
  if redis.call('EXISTS', SEQ) == 0 then
    local start = now_us()
    local keys = {DEAD}
    for _, kind in ipairs(KINDS) do keys[#keys + 1] = stream(kind) end
    for _, key in ipairs(keys) do
      local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
      if last and num(last[1]) > start then start = num(last[1]) end
    end
    redis.call('SET', SEQ, n2s(start))
  end
  return redis.call('INCRBY', SEQ, n) - n + 1
end
local function entry(kind, id)
  local r = redis.call('XRANGE', stream(kind), id, id)
  if r[1] then return r[1][2] end
  return nil
end
local function kind_of(id)
  for _, kind in ipairs(KINDS) do
    local f = entry(kind, id)
    if f then return kind, f end
  end
  return nil, nil
end
local function state_of(id)
  local s = redis.call('HGET', STATE, id)
  if not s then return 0, nil, '' end
  local a, f, e = string.match(s, '^(%d+)|(%d*)|(.*)$')
  if f == '' then f = nil end
  return tonumber(a), f, e
end
local function put_state(id, attempts, first, err)
  redis.call('HSET', STATE, id, n2s(attempts) .. '|' .. (first or '') .. '|' .. err)
end
-- Does a record body belong to one of ``users`` (sets: id -> true), by its user_id or
-- its anonymous_id? A body is decoded only when it contains one of the ids as plain
-- text, unless an id has characters a JSON encoder might escape (then every body is).
local function matcher(users, anonymous)
  local needles, plain = {}, true
  for u in pairs(users) do needles[#needles + 1] = u end
  for a in pairs(anonymous) do needles[#needles + 1] = a end
  for _, s in ipairs(needles) do
    if not string.find(s, '^[%w_.:@+=-]+$') then plain = false end
  end
  return function(body)
    if not body then return false end
    if plain then
      local hit = false
      for _, s in ipairs(needles) do
        if string.find(body, s, 1, true) then hit = true; break end
      end
      if not hit then return false end
    end
    local ok, rec = pcall(cjson.decode, body)
    if not ok or type(rec) ~= 'table' then return false end
    return (type(rec.user_id) == 'string' and users[rec.user_id] == true)
      or (type(rec.anonymous_id) == 'string' and anonymous[rec.anonymous_id] == true)
  end
end
-- Visit the entries of a stream after ``start`` (exclusive, '-' for all) up to ``stop``.
local function scan(key, start, stop, visit)
  if start ~= '-' then start = '(' .. start end
  while true do
    local page = redis.call('XRANGE', key, start, stop, 'COUNT', 1000)
    for _, e in ipairs(page) do visit(e[1], e[2]) end
    if #page < 1000 then return end
    start = '(' .. page[#page][1]
  end
end
-- Only records and uploads name a user; a deletion cancels those of its users in flight.
local function cancelled(kind, id)
  return (kind == 'record' or kind == 'user') and redis.call('SISMEMBER', CANCELLED, id) == 1
end
-- Gone from the spool whatever its state (the group must exist).
local function drop(kind, id)
  redis.call('XACK', stream(kind), G, id)
  redis.call('XDEL', stream(kind), id)
  redis.call('ZREM', leased(kind), id)
  redis.call('ZREM', ready(kind), id)
  redis.call('HDEL', STATE, id)
  redis.call('SREM', CANCELLED, id)
  redis.call('ZREM', REQUEUED, id)
end
"""
# The spool's kinds, for the helpers and scripts that visit every stream.
_LUA_KINDS = "local KINDS = {" + ", ".join(f"'{kind}'" for kind in KINDS) + "}\n"

# ARGV: prefix, dedup window (ms, 0 = none), status name ('' = none), status JSON ('' =
# clear), a user upload's wait (µs), then the pre-scan of a batch with deletions (see
# RedisStore._prescan), '-' for none, else: record stream mark, upload stream mark,
# dead-letter mark, u, u user ids, a, a anonymous ids, r, r record candidates, v, v upload
# candidates, d, d dead-letter candidates. Then per item: '-' or '+<dedup key>', source,
# n, n records, m, m (anonymous, user) pairs, d, d user ids [, the deletion notice's body
# when d > 0], p, p profile changes: '-' or '+<user id>', '-' or '+<anonymous id>', at
# (µs), f, f (field, JSON value) pairs of the profile hash, '' for a value that removes
# its field.
_ACCEPT = r"""
local ttl = tonumber(ARGV[2])
local upload_delay = tonumber(ARGV[5])
local i = 6
local function list()
  local n, out = tonumber(ARGV[i]), {}
  for j = 1, n do out[j] = ARGV[i + j] end
  i = i + n + 1
  return out
end
local function set(values)
  local out = {}
  for _, v in ipairs(values) do out[v] = true end
  return out
end
local pre = nil
if ARGV[i] == '-' then
  i = i + 1
else
  pre = {to = {record = ARGV[i], user = ARGV[i + 1]}, dead_to = ARGV[i + 2]}
  i = i + 3
  pre.users, pre.anonymous = set(list()), set(list())
  pre.found = {record = list(), user = list()}
  pre.dead = list()
end
local function optional(s)
  if s == '-' then return nil end
  return string.sub(s, 2)
end
local items = {}
while i <= #ARGV do
  local it = {key = ARGV[i], source = ARGV[i + 1], records = {}, links = {}, deletions = {},
              changes = {}}
  local n = tonumber(ARGV[i + 2]); i = i + 3
  for j = 1, n do it.records[j] = ARGV[i]; i = i + 1 end
  n = tonumber(ARGV[i]); i = i + 1
  for j = 1, n do it.links[j] = {ARGV[i], ARGV[i + 1]}; i = i + 2 end
  n = tonumber(ARGV[i]); i = i + 1
  for j = 1, n do it.deletions[j] = ARGV[i]; i = i + 1 end
  if n > 0 then it.notice = ARGV[i]; i = i + 1 end
  n = tonumber(ARGV[i]); i = i + 1
  for j = 1, n do
    local c = {user = optional(ARGV[i]), anonymous = optional(ARGV[i + 1]),
               at = tonumber(ARGV[i + 2]), fields = {}}
    local f = tonumber(ARGV[i + 3]); i = i + 4
    for k = 1, 2 * f do c.fields[k] = ARGV[i]; i = i + 1 end
    it.changes[j] = c
  end
  items[#items + 1] = it
end
local now = now_us()

-- Dedup first, for the whole batch: a live key is a duplicate (an expired one is gone,
-- so it is new again); a key seen earlier in this batch too.
local flags, seen, count = {}, {}, 0
for k, it in ipairs(items) do
  local dup = false
  if string.sub(it.key, 1, 1) == '+' then
    local key = P .. 'dedup:' .. string.sub(it.key, 2)
    if seen[key] then dup = true
    elseif ttl > 0 then dup = not redis.call('SET', key, '1', 'NX', 'PX', n2s(ttl))
    else dup = redis.call('EXISTS', key) == 1 end
    seen[key] = true
  end
  flags[k] = dup and '1' or '0'
  if not dup then count = count + #it.records + (it.notice and 1 or 0) end
end

-- The newest links, by anonymous id: an id linked again (every event carrying both
-- ids links them) moves up instead of crowding the others out. Trimmed once, at the end.
local linked = false
local function link(anonymous, user)
  local old = redis.call('HGET', LINK, anonymous)
  if old and old ~= user then redis.call('ZREM', P .. 'user:' .. old, anonymous) end
  redis.call('HSET', LINK, anonymous, user)
  redis.call('ZADD', P .. 'user:' .. user, n2s(now), anonymous)
  redis.call('ZADD', RECENT, n2s(now), anonymous)
  linked = true
end

-- The body of a user upload, byte for byte as orjson writes it (cjson escapes '/').
local ESCAPES = {['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                 ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t'}
local function upload_body(user)
  local quoted = string.gsub(user, '[%z\1-\31"\\]', function(c)
    return ESCAPES[c] or string.format('\\u%04x', string.byte(c))
  end)
  return '{"user_id":"' .. quoted .. '"}'
end

local created = n2s(now)
-- A profile was written: a user's gets one upload queued, unless one waits that has not
-- read it yet (take_profiles clears the mark); an anonymous one is never uploaded.
local function touched(id, anonymous, source)
  redis.call('HSET', UPDATED, id, created)
  if anonymous then
    redis.call('SADD', ANONYMOUS, id)
    return
  end
  redis.call('SREM', ANONYMOUS, id)
  if redis.call('SADD', QUEUED, id) == 1 then
    redis.call('XADD', stream('user'), '0-' .. n2s(next_ids(1)), 'b', upload_body(id),
               's', source, 'c', created, 'q', n2s(now + upload_delay))
  end
end
local function drop_profile(id)
  redis.call('DEL', profile(id))
  redis.call('HDEL', UPDATED, id)
  redis.call('SREM', ANONYMOUS, id)
  redis.call('SREM', QUEUED, id)
end

-- A link names an anonymous profile's user: its values fill the gaps of the user's.
local function join(anonymous, user, source)
  if redis.call('SISMEMBER', ANONYMOUS, anonymous) == 0 then return end
  local fields = redis.call('HGETALL', profile(anonymous))
  drop_profile(anonymous)
  for j = 1, #fields, 2 do redis.call('HSETNX', profile(user), fields[j], fields[j + 1]) end
  touched(user, false, source)
end

-- A change goes to its user, else to its anonymous id's user (links of this batch
-- count), else to the anonymous id's own profile; one no newer than a deletion of that
-- user is ignored, so a late or replayed message never brings a deleted user back.
local function change(c, source)
  local target, anonymous = c.user, false
  if not target then
    target = redis.call('HGET', LINK, c.anonymous)
    if not target then target, anonymous = c.anonymous, true end
  end
  local deleted = redis.call('HGET', DELETED, target)
  if deleted and c.at <= tonumber(deleted) then return end
  local sets, removes = {}, {}
  for j = 1, #c.fields, 2 do
    if c.fields[j + 1] == '' then
      removes[#removes + 1] = c.fields[j]
    else
      sets[#sets + 1] = c.fields[j]
      sets[#sets + 1] = c.fields[j + 1]
    end
  end
  variadic('HSET', {profile(target)}, sets)
  variadic('HDEL', {profile(target)}, removes)
  touched(target, anonymous, source)
end

-- A deletion: drop the users' queued records (and those of their anonymous ids),
-- uploads and dead letters, then their profiles and links, and remember when. The
-- pre-scan, done outside this script, found the entries up to its marks that may be
-- theirs: they are checked again here, with the entries added since. Only if the users
-- gained an anonymous id since the pre-scan are the whole streams scanned here (it
-- blocks Redis about 2.5 µs per entry).
local function forget(users)
  local targets, anonymous, complete = set(users), {}, pre ~= nil
  for _, u in ipairs(users) do
    if pre and not pre.users[u] then complete = false end
    for _, a in ipairs(redis.call('ZRANGE', P .. 'user:' .. u, 0, -1)) do
      anonymous[a] = true
      if pre and not pre.anonymous[a] then complete = false end
    end
  end
  local mine = matcher(targets, anonymous)
  local function queued(kind)
    return function(id, f)
      if mine(field(f, 'b')) and redis.call('SISMEMBER', CANCELLED, id) == 0 then
        local till = redis.call('ZSCORE', leased(kind), id)
        if till and tonumber(till) > now then
          -- Being sent right now: cannot be recalled. Cancelled, it is never retried, and
          -- the deletion notice waits until it settles (see the claim script).
          redis.call('SADD', CANCELLED, id)
        else
          drop(kind, id)
        end
      end
    end
  end
  local function dead(id, f)
    local kind = field(f, 'k')
    if (kind == 'record' or kind == 'user') and mine(field(f, 'b')) then
      redis.call('XDEL', DEAD, id)
    end
  end
  for _, kind in ipairs({'record', 'user'}) do
    if complete then
      for _, id in ipairs(pre.found[kind]) do
        local f = entry(kind, id)
        if f then queued(kind)(id, f) end
      end
      scan(stream(kind), pre.to[kind], '+', queued(kind))
    else
      scan(stream(kind), '-', '+', queued(kind))
    end
  end
  if complete then
    for _, id in ipairs(pre.dead) do
      local r = redis.call('XRANGE', DEAD, id, id)
      if r[1] then dead(id, r[1][2]) end
    end
    scan(DEAD, pre.dead_to, '+', dead)
  else
    scan(DEAD, '-', '+', dead)
  end
  for _, u in ipairs(users) do
    local key = P .. 'user:' .. u
    drop_profile(u)
    for _, a in ipairs(redis.call('ZRANGE', key, 0, -1)) do
      if redis.call('HGET', LINK, a) == u then
        drop_profile(a)
        redis.call('HDEL', LINK, a)
        redis.call('ZREM', RECENT, a)
      end
    end
    redis.call('DEL', key)
    redis.call('HSET', DELETED, u, created)
  end
end

local nxt = count > 0 and next_ids(count) or 0
for k, it in ipairs(items) do
  if flags[k] == '0' then
    for _, body in ipairs(it.records) do
      redis.call('XADD', stream('record'), '0-' .. n2s(nxt), 'b', body, 's', it.source,
                 'c', created)
      nxt = nxt + 1
    end
    for _, pair in ipairs(it.links) do link(pair[1], pair[2]) end
    for _, pair in ipairs(it.links) do join(pair[1], pair[2], it.source) end
    for _, c in ipairs(it.changes) do change(c, it.source) end
    if it.notice then
      -- Records before the notice (this batch's included) are in the stream: dropped.
      ensure_groups()
      forget(it.deletions)
      redis.call('XADD', stream('delete'), '0-' .. n2s(nxt), 'b', it.notice,
                 's', it.source, 'c', created)
      nxt = nxt + 1
    end
  end
end
if linked then redis.call('ZREMRANGEBYRANK', RECENT, 0, -101) end
if ARGV[3] ~= '' then
  if ARGV[4] == '' then redis.call('HDEL', P .. 'status', ARGV[3])
  else redis.call('HSET', P .. 'status', ARGV[3], ARGV[4]) end
end
return table.concat(flags)
"""

# ARGV: prefix, 'record' | 'user' | 'dead', after (exclusive, '-' for the start), up to,
# count, u, u user ids, anonymous ids... One page of the pre-scan: read-only, bounded, so
# Redis serves other clients between pages. Returns the last id read ('' when done), then
# the ids of the entries that may belong to the users.
_FIND = r"""
local key = ARGV[2] == 'dead' and DEAD or stream(ARGV[2])
local after, stop, count = ARGV[3], ARGV[4], tonumber(ARGV[5])
local users, anonymous, n = {}, {}, tonumber(ARGV[6])
for j = 7, 6 + n do users[ARGV[j]] = true end
for j = 7 + n, #ARGV do anonymous[ARGV[j]] = true end
local mine = matcher(users, anonymous)
if after ~= '-' then after = '(' .. after end
local page = redis.call('XRANGE', key, after, stop, 'COUNT', count)
local out = {#page < count and '' or page[#page][1]}
for _, e in ipairs(page) do
  local f = e[2]
  local kind = key == DEAD and field(f, 'k') or ARGV[2]
  if (kind == 'record' or kind == 'user') and mine(field(f, 'b')) then
    out[#out + 1] = e[1]
  end
end
return out
"""

# ARGV: prefix, kind, limit, max_bytes, lease (µs), owner. Returns "id attempts first
# created" lines (times in µs), then the bodies in that order: two thousand-odd values
# instead of five thousand, which the client parses a fifth faster.
_CLAIM = r"""
local kind, limit, budget = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local lease, owner = tonumber(ARGV[5]), ARGV[6]
local S, LEASED, READY = stream(kind), leased(kind), ready(kind)
local now = now_us()
ensure_groups()
if kind == 'delete' then
  -- Cancelled sends whose lease ran out will never settle (their sender died).
  for _, id in ipairs(redis.call('SMEMBERS', CANCELLED)) do
    local of = kind_of(id) or 'record'
    local till = redis.call('ZSCORE', leased(of), id)
    if not till or tonumber(till) <= now then drop(of, id) end
  end
  -- A deleted user's record or upload is still being sent: the deletion waits for it.
  if redis.call('SCARD', CANCELLED) > 0 then return {} end
end

-- Items seen before: leases that ran out (their forwarder died), and parked items now
-- due. Each is ready since its score; new items since they were queued.
local function candidate(id, f, at, from)
  local c = {id = id, n = num(id), from = from}
  local queued
  for i = 1, #f, 2 do
    local k = f[i]
    if k == 'b' then c.b = f[i + 1] elseif k == 'c' then c.c = f[i + 1]
    elseif k == 'q' then queued = f[i + 1] end
  end
  c.at = at or tonumber(queued or c.c)
  return c
end
local old = {}
local function collect(key, from)
  local r = redis.call('ZRANGEBYSCORE', key, '-inf', n2s(now), 'WITHSCORES', 'LIMIT', 0, limit)
  for i = 1, #r, 2 do
    local id = r[i]
    local f = entry(kind, id)
    if cancelled(kind, id) then
      drop(kind, id)  -- a deleted user's item whose sender died: never sent again
    elseif f then
      old[#old + 1] = candidate(id, f, tonumber(r[i + 1]), from)
    else
      drop(kind, id)
    end
  end
end
collect(LEASED, 'lease')
collect(READY, 'ready')
local function before(a, b)
  if a.at ~= b.at then return a.at < b.at end
  return a.n < b.n
end
table.sort(old, before)

-- New items are read only as the merge needs them (all at once when nothing older
-- waits); what was read but not taken is parked, ready since it was queued, and so is
-- an item queued with a delay that has not run out.
local fresh, fi, exhausted = {}, 1, false
local chunk = (#old == 0) and limit or math.min(limit, 100)
local taken, total, oi = {}, 0, 1
local park, acks = {}, {}
local function read_new()
  local want = math.min(chunk, limit - #taken)
  local r = redis.call('XREADGROUP', 'GROUP', G, owner, 'COUNT', want, 'STREAMS', S, '>')
  local entries = r and r[1][2] or {}
  fresh, fi = {}, 1
  for _, e in ipairs(entries) do
    local c = candidate(e[1], e[2], nil, 'new')
    if c.at > now then
      park[#park + 1] = n2s(c.at)
      park[#park + 1] = c.id
      acks[#acks + 1] = c.id
    else
      fresh[#fresh + 1] = c
    end
  end
  exhausted = #entries < want
end
while #taken < limit do
  while fi > #fresh and not exhausted do read_new() end
  local o, f = old[oi], fresh[fi]
  local c = f
  if o and (not f or before(o, f)) then c = o end
  if not c then break end
  local size = #c.b + 1
  if #taken > 0 and total + size > budget then break end  -- the first always fits
  total = total + size
  taken[#taken + 1] = c
  if c == o then oi = oi + 1 else fi = fi + 1 end
end
for k = fi, #fresh do
  park[#park + 1] = n2s(fresh[k].at)
  park[#park + 1] = fresh[k].id
  acks[#acks + 1] = fresh[k].id
end
variadic('XACK', {S, G}, acks)
variadic('ZADD', {READY}, park)

if oi > 1 then table.sort(taken, function(a, b) return a.n < b.n end) end  -- else in order
local seen, due, leases, states, meta, out = {}, {}, {}, {}, {}, {''}
local till, stamp = n2s(now + lease), n2s(now)
local first_time = '1|' .. stamp .. '|'
for _, c in ipairs(taken) do
  local attempts, first, state = 1, stamp, first_time
  if c.from ~= 'new' then
    seen[#seen + 1] = c.id
    if c.from == 'ready' then due[#due + 1] = c.id end
    local before_, first_, err = state_of(c.id)
    attempts, first = before_ + 1, first_ or stamp
    state = attempts .. '|' .. first .. '|' .. err
  end
  leases[#leases + 1] = till
  leases[#leases + 1] = c.id
  states[#states + 1] = c.id
  states[#states + 1] = state
  meta[#meta + 1] = string.sub(c.id, 3) .. ' ' .. attempts .. ' ' .. first .. ' ' .. c.c
  out[#out + 1] = c.b
end
out[1] = table.concat(meta, '\n')
-- FORCE: a parked item is not pending any more; XCLAIM makes it this owner's again.
variadic('XCLAIM', {S, G, owner, '0'}, seen, {'FORCE', 'JUSTID'})
variadic('ZREM', {READY}, due)
variadic('ZADD', {LEASED}, leases)
variadic('HSET', {STATE}, states)
return out
"""

# ARGV: prefix, item numbers (space-separated). Delivered: gone, whatever kind and state.
_ACK = r"""
ensure_groups()
local ids = {}
for n in string.gmatch(ARGV[2], '%d+') do ids[#ids + 1] = '0-' .. n end
local gone = 0
for _, kind in ipairs(KINDS) do
  variadic('XACK', {stream(kind), G}, ids)
  gone = gone + variadic('XDEL', {stream(kind)}, ids)
  variadic('ZREM', {leased(kind)}, ids)
  variadic('ZREM', {ready(kind)}, ids)
  if gone >= #ids then break end  -- all found: the other kinds' streams are left alone
end
variadic('HDEL', {STATE}, ids)
variadic('SREM', {CANCELLED}, ids)
variadic('ZREM', {REQUEUED}, ids)
return gone
"""

# ARGV: prefix, 'retry' | 'release', delay (µs), error, ids... Parked until due; a
# cancelled item (its user was deleted) is dropped instead.
_UNSENT = r"""
local mode, delay, err = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = now_us()
ensure_groups()
local due = n2s(now + delay)
for i = 5, #ARGV do
  local id = ARGV[i]
  local kind = kind_of(id)
  if cancelled(kind, id) then
    drop(kind, id)
  elseif kind then
    redis.call('XACK', stream(kind), G, id)
    redis.call('ZREM', leased(kind), id)
    redis.call('ZADD', ready(kind), due, id)
    local attempts, first, last = state_of(id)
    if mode == 'release' then attempts = math.max(attempts - 1, 0) else last = err end
    put_state(id, attempts, first, last)
  end
end
return 0
"""

# ARGV: prefix, (id, reason) pairs.
_DEAD_LETTER = r"""
local now = now_us()
ensure_groups()
local nxt = next_ids((#ARGV - 1) / 2)
for i = 2, #ARGV, 2 do
  local id, reason = ARGV[i], ARGV[i + 1]
  local kind, f = kind_of(id)
  if kind then
    -- A cancelled item's user was deleted: dropped, not kept as a dead letter.
    if not cancelled(kind, id) then
      local attempts = state_of(id)
      redis.call('XADD', DEAD, '0-' .. n2s(nxt), 'k', kind, 'b', field(f, 'b'),
                 's', field(f, 's'), 'r', reason, 'n', n2s(attempts), 'c', field(f, 'c'),
                 'd', n2s(now))
      nxt = nxt + 1
    end
    drop(kind, id)
  end
end
return 0
"""

# ARGV: prefix, 'all' | 'some', dead-letter ids (ascending)... Back on the spool as new
# items (attempts reset, created_at kept).
_REQUEUE = r"""
local now = now_us()
local entries = {}
if ARGV[2] == 'all' then
  entries = redis.call('XRANGE', DEAD, '-', '+')
else
  for i = 3, #ARGV do
    local r = redis.call('XRANGE', DEAD, ARGV[i], ARGV[i])
    if r[1] then entries[#entries + 1] = r[1] end
  end
end
if #entries == 0 then return 0 end
local nxt = next_ids(#entries)
for _, e in ipairs(entries) do
  local f = e[2]
  local id, created = '0-' .. n2s(nxt), field(f, 'c')
  nxt = nxt + 1
  redis.call('XADD', stream(field(f, 'k')), id, 'b', field(f, 'b'), 's', field(f, 's'),
             'c', created, 'q', n2s(now))
  redis.call('ZADD', REQUEUED, created, id)
  redis.call('XDEL', DEAD, e[1])
end
return #entries
"""

# ARGV: prefix, kind, source, delay (µs), bodies... New items, ready after the delay (a
# claim parks them until then); returns the first id, the others follow it.
_ENQUEUE = r"""
local kind, source, delay = ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_us()
local first = next_ids(#ARGV - 4)
local created, due = n2s(now), n2s(now + delay)
for i = 5, #ARGV do
  local id = '0-' .. n2s(first + i - 5)
  if delay > 0 then
    redis.call('XADD', stream(kind), id, 'b', ARGV[i], 's', source, 'c', created, 'q', due)
  else
    redis.call('XADD', stream(kind), id, 'b', ARGV[i], 's', source, 'c', created)
  end
end
return first
"""

# ARGV: prefix, user ids... Each user's profile ((field, value) pairs), those without one
# left out; their queued uploads stop waiting, so a later change queues a new one.
_TAKE_PROFILES = r"""
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  if redis.call('HEXISTS', UPDATED, id) == 1 and redis.call('SISMEMBER', ANONYMOUS, id) == 0 then
    redis.call('SREM', QUEUED, id)
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGETALL', profile(id))
  end
end
return out
"""

# UNLINK: a large stream is freed in the background, not while Redis serves nobody.
_PURGE_DEAD = r"""
local n = redis.call('XLEN', DEAD)
redis.call('UNLINK', DEAD)
return n
"""

# A named lease: KEYS[1] the lease key, ARGV[1] the owner, ARGV[2] its length (ms).
_TAKE_LEASE = r"""
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_DROP_LEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# Spool depth (in flight, parked and cancelled included), oldest created_at, dead letters,
# user tasks, user profiles, anonymous profiles. Stream order is queueing order, so the
# oldest is a stream's first entry, or a requeued dead letter (queued again with its old
# created_at).
_STATS = r"""
local now = now_us()
local depth, oldest = 0, nil
for _, kind in ipairs(KINDS) do
  depth = depth + redis.call('XLEN', stream(kind))
  local first = redis.call('XRANGE', stream(kind), '-', '+', 'COUNT', 1)
  if first[1] then
    local c = tonumber(field(first[1][2], 'c'))
    if not oldest or c < oldest then oldest = c end
  end
end
local r = redis.call('ZRANGE', REQUEUED, 0, 0, 'WITHSCORES')
if r[2] and (not oldest or tonumber(r[2]) < oldest) then oldest = tonumber(r[2]) end
local anonymous = redis.call('SCARD', ANONYMOUS)
return {depth, oldest and n2s(now - oldest) or '', redis.call('XLEN', DEAD),
        redis.call('XLEN', stream('user_task')), redis.call('HLEN', UPDATED) - anonymous,
        anonymous}
"""

# ARGV: prefix, id. {user, linked_at} or {}, then the id's anonymous ids, newest first.
_LINKS_OF = r"""
local id = ARGV[2]
local user = redis.call('HGET', LINK, id)
local as_anonymous = {}
if user then
  as_anonymous = {user, redis.call('ZSCORE', P .. 'user:' .. user, id) or '0'}
end
return {as_anonymous, redis.call('ZREVRANGE', P .. 'user:' .. id, 0, -1, 'WITHSCORES')}
"""

# ARGV: prefix, limit. The number of linked anonymous ids, then (anonymous id, user,
# linked_at) of the newest links, newest first. A deletion takes its links out of RECENT;
# the link is checked anyway, so a stray entry never shows a link that is gone.
_LINKS_OVERVIEW = r"""
local limit = tonumber(ARGV[2])
local out = {}
if limit >= 1 then
  local newest = redis.call('ZREVRANGE', RECENT, 0, limit - 1, 'WITHSCORES')
  for i = 1, #newest, 2 do
    local user = redis.call('HGET', LINK, newest[i])
    if user then
      out[#out + 1] = newest[i]
      out[#out + 1] = user
      out[#out + 1] = newest[i + 1]
    end
  end
end
return {redis.call('HLEN', LINK), out}
"""

# ARGV: prefix, idle (ms). Forget consumers (forwarders) idle that long holding nothing.
_UPKEEP = r"""
local idle = tonumber(ARGV[2])
ensure_groups()
local removed = 0
for _, kind in ipairs(KINDS) do
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream(kind), G)) do
    if field(c, 'pending') == 0 and field(c, 'idle') >= idle then
      redis.call('XGROUP', 'DELCONSUMER', stream(kind), G, field(c, 'name'))
      removed = removed + 1
    end
  end
end
return removed
"""


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


def _profile_data(fields: Iterable[tuple[bytes, bytes]]) -> dict[str, dict[str, Any]]:
    """A profile hash's (field, value) pairs as ``{table: {part: {key: value}}}``."""
    data: dict[str, dict[str, Any]] = {}
    for name, value in fields:
        table, *path = orjson.loads(name)
        parts = data.setdefault(table, {})
        if path:
            part, key = path
            parts.setdefault(part, {})[key] = orjson.loads(value)
    return data


def _sid(n: int) -> str:
    return f"0-{n}"


def _num(sid: bytes | str) -> int:
    return int(sid[2:])


def _seconds(us: bytes | str | float) -> float:
    return int(us) / 1_000_000


def _now_minute() -> int:
    return int(time.time() // 60)


def _activity_expiry(minute: int) -> int:
    """When a minute's tallies leave the keep (epoch seconds): as activity() stops reading it."""
    return (minute + ACTIVITY_KEEP_MINUTES + 1) * 60


class RedisStore:
    """The :class:`adapter.store.Store` interface on a Redis shared by many hosts."""

    #: Seconds after which a consumer holding nothing is forgotten by purge_expired().
    idle_consumer = 3600.0

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        *,
        password: str | None = None,
        username: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = _DEFAULT_TIMEOUT,
        tls: bool = False,
    ) -> None:
        if not prefix:
            raise StoreError("the Redis store's key prefix must not be empty")
        self.host, self.port, self.db, self.prefix, self.tls = host, port, db, prefix, tls
        self._password = password
        #: Seconds a queued user upload waits (store.UPLOAD_DELAY); tests set 0.
        self.upload_delay = UPLOAD_DELAY
        # One retry, at once, on a connection error only (a pooled connection Redis had
        # closed); never on a timeout, when the command may still run.
        self._client = redis.Redis(
            host=host,
            port=port,
            db=db,
            username=username or None,
            password=password or None,
            ssl=tls,
            socket_timeout=timeout,
            socket_connect_timeout=min(timeout, 5.0),
            socket_keepalive=True,
            health_check_interval=30,
            protocol=2,  # what every redis-py version speaks by default (8 moved to RESP3)
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )
        self._scripts = {
            name: self._client.register_script(_LUA_KINDS + _LUA + source)
            for name, source in (
                ("accept", _ACCEPT),
                ("find", _FIND),
                ("enqueue", _ENQUEUE),
                ("take_profiles", _TAKE_PROFILES),
                ("claim", _CLAIM),
                ("ack", _ACK),
                ("unsent", _UNSENT),
                ("dead_letter", _DEAD_LETTER),
                ("requeue", _REQUEUE),
                ("purge_dead", _PURGE_DEAD),
                ("stats", _STATS),
                ("links_of", _LINKS_OF),
                ("links_overview", _LINKS_OVERVIEW),
                ("upkeep", _UPKEEP),
            )
        }

        # The named leases touch one key each, given as KEYS (the scripts above take the
        # prefix and work out their keys).
        self._leases = {
            "take": self._client.register_script(_TAKE_LEASE),
            "drop": self._client.register_script(_DROP_LEASE),
        }

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """``redis://[[user]:password@]host[:port][/db][?prefix=NAME:&timeout=SECONDS]``."""
        # Errors here name the part that is wrong, never the URL: it may hold a password.
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise StoreError("ADAPTER_STORE Redis URL must start with redis:// or rediss://")
        try:
            port = parts.port or 6379
        except ValueError:
            raise StoreError("ADAPTER_STORE Redis URL has an invalid port") from None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise StoreError(
                "ADAPTER_STORE Redis URL: the database must be a number: redis://host:6379/0"
            )
        options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        unknown = set(options) - {"prefix", "timeout"}
        if unknown:
            raise StoreError(f"unknown ADAPTER_STORE option(s): {', '.join(sorted(unknown))}")
        try:
            timeout = float(options.get("timeout", _DEFAULT_TIMEOUT))
        except ValueError:
            timeout = math.nan
        if not timeout > 0 or math.isinf(timeout):
            raise StoreError("ADAPTER_STORE option timeout must be a number of seconds > 0")
        return cls(
            parts.hostname or "127.0.0.1",
            port,
            int(path or 0),
            password=unquote(parts.password) if parts.password else None,
            username=unquote(parts.username) if parts.username else None,
            prefix=options.get("prefix", DEFAULT_PREFIX),
            timeout=timeout,
            tls=parts.scheme == "rediss",
        )

    def __repr__(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"<RedisStore {scheme}://{self.host}:{self.port}/{self.db} prefix={self.prefix!r}>"

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _redis(self, what: str) -> Iterator[None]:
        """Any Redis failure as a StoreError saying what failed where, password-free."""
        try:
            yield
        except (redis.RedisError, OSError) as exc:
            raise StoreError(self._describe(what, exc)) from None

    def _describe(self, what: str, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        where = f"Redis at {self.host}:{self.port}"
        if isinstance(exc, redis.TimeoutError):
            return f"{what}: {where} did not answer in time ({text})"
        if isinstance(exc, redis.AuthenticationError):
            return f"{what}: {where} refused the credentials ({text})"
        if isinstance(exc, redis.ConnectionError):
            return f"{what}: {where} is unreachable ({text})"
        if text.startswith("READONLY"):
            return f"{what}: {where} is a read-only replica ({text})"
        if text.startswith("OOM"):
            return f"{what}: {where} is out of memory (maxmemory reached: {text})"
        if text.startswith("BUSY"):
            return f"{what}: {where} is busy running a long script ({text})"
        return f"{what}: {where} failed: {text}"

    def _run(self, what: str, script: str, args: Sequence[Any]) -> Any:
        with self._redis(what):
            return self._scripts[script](args=[self.prefix, *args])

    def _key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def close(self) -> None:
        """Close this process's connections (they reopen if the store is used again)."""
        with self._redis("close the store"):
            self._client.connection_pool.disconnect()

    # ------------------------------------------------------------------ intake

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

    # ------------------------------------------------------------------ profiles

    def take_profiles(self, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The users' merged profiles; their queued uploads stop waiting (see Store)."""
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        reply = self._run("take profiles to upload", "take_profiles", ids)
        return {
            user.decode(): _profile_data(zip(fields[::2], fields[1::2], strict=True))
            for user, fields in zip(reply[::2], reply[1::2], strict=True)
        }

    def profile_of(self, any_id: str) -> dict[str, Any] | None:
        """An id's stored profile, or None; read in one MULTI/EXEC, so consistent."""
        with self._redis("read a profile"):
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(self._key("profiles:updated"), any_id)
            pipe.sismember(self._key("profiles:anonymous"), any_id)
            pipe.hgetall(self._key(f"profile:{any_id}"))
            updated, anonymous, fields = pipe.execute()
        if updated is None:
            return None
        return {
            "data": _profile_data(fields.items()),
            "anonymous": bool(anonymous),
            "updated_at": _seconds(updated),
        }

    def enqueue(
        self, kind: str, bodies: Sequence[bytes], source: str, delay: float = 0.0
    ) -> list[int]:
        """New spool items of ``kind``, ready after ``delay`` seconds."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if not bodies:
            return []
        delay_us = max(0, round(delay * 1_000_000))
        first = self._run(f"queue {kind} items", "enqueue", [kind, source, delay_us, *bodies])
        return list(range(first, first + len(bodies)))

    # ------------------------------------------------------------------ identity

    def seen(self, keys: Sequence[str]) -> set[str]:
        """The live dedup keys among ``keys`` (an expired key is gone); reads only."""
        unique = sorted(set(keys))
        if not unique:
            return set()
        with self._redis("read dedup keys"):
            pipe = self._client.pipeline(transaction=False)
            for key in unique:
                pipe.exists(self._key(f"dedup:{key}"))
            replies = pipe.execute()
        return {key for key, live in zip(unique, replies, strict=True) if live}

    def resolve(
        self, anonymous_ids: Sequence[str], user_ids: Sequence[str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """anonymous → user, and user → the anonymous id linked most recently."""
        anonymous = sorted(set(anonymous_ids))
        users = sorted(set(user_ids))
        if not anonymous and not users:
            return {}, {}
        with self._redis("resolve identity links"):
            pipe = self._client.pipeline(transaction=False)
            if anonymous:
                pipe.hmget(self._key("link"), anonymous)
            for user in users:
                pipe.zrevrange(self._key(f"user:{user}"), 0, 0)
            replies = pipe.execute()
        user_of: dict[str, str] = {}
        if anonymous:
            found = replies.pop(0)
            user_of = {a: u.decode() for a, u in zip(anonymous, found, strict=True) if u}
        anonymous_of = {u: r[0].decode() for u, r in zip(users, replies, strict=True) if r}
        return user_of, anonymous_of

    def links_of(self, any_id: str) -> dict[str, Any]:
        """The user an id belongs to (as anonymous), and the anonymous ids of an id (as user)."""
        as_anonymous, as_user = self._run("read identity links", "links_of", [any_id])
        pairs = zip(as_user[::2], as_user[1::2], strict=True)
        return {
            "user": {"user_id": as_anonymous[0].decode(), "linked_at": _seconds(as_anonymous[1])}
            if as_anonymous
            else None,
            "anonymous": [{"anonymous_id": a.decode(), "linked_at": _seconds(t)} for a, t in pairs],
        }

    def links_overview(self, limit: int = 20) -> dict[str, Any]:
        """How many anonymous ids are linked, and the newest links (the 100 newest are kept)."""
        total, newest = self._run("read the identity links overview", "links_overview", [limit])
        return {
            "total": int(total),
            "recent": [
                {"anonymous_id": a.decode(), "user_id": u.decode(), "linked_at": _seconds(t)}
                for a, u, t in zip(newest[::3], newest[1::3], newest[2::3], strict=True)
            ],
        }

    # ------------------------------------------------------------------ forwarding

    def claim(
        self, kind: str, limit: int, max_bytes: int, lease: float, owner: str
    ) -> list[Claimed]:
        """Lease the longest-ready items; the first always fits, however large."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if limit < 1:
            return []
        reply = self._run(
            f"claim {kind} items",
            "claim",
            [kind, limit, max_bytes, max(0, round(lease * 1_000_000)), owner],
        )
        if not reply:  # deletions wait for a cancelled send
            return []
        meta, *bodies = reply
        claimed = []
        for line, body in zip(meta.splitlines(), bodies, strict=True):
            n, attempts, first, created = line.split()
            claimed.append(
                Claimed(int(n), kind, body, int(attempts), _seconds(first), _seconds(created))
            )
        return claimed

    def ack(self, ids: Sequence[int]) -> None:
        """Delivered: gone from the spool."""
        if ids:
            self._run("acknowledge delivered items", "ack", [" ".join(map(str, ids))])

    def retry_later(self, ids: Sequence[int], delay: float, error: str) -> None:
        """Back on the spool after ``delay`` seconds, remembering the last error."""
        if ids:
            delay_us = max(0, round(delay * 1_000_000))
            self._run("schedule a retry", "unsent", ["retry", delay_us, error, *map(_sid, ids)])

    def release(self, ids: Sequence[int]) -> None:
        """Unsent: ready now, and this attempt does not count."""
        if ids:
            self._run("release unsent items", "unsent", ["release", 0, "", *map(_sid, ids)])

    def dead_letter(self, items: Sequence[tuple[int, str]]) -> None:
        """Move items to the dead letters, each with its reason, in one script."""
        if items:
            args = [part for spool_id, reason in items for part in (_sid(spool_id), reason)]
            self._run("move items to the dead letters", "dead_letter", args)

    # ------------------------------------------------------------------ dead letters

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first."""
        with self._redis("read the dead letters"):
            entries = self._client.xrange(self._key("dead"), count=limit or None)
        letters = []
        for sid, fields in entries:
            f = {k.decode(): v for k, v in fields.items()}
            letters.append(
                DeadLetter(
                    id=_num(sid),
                    kind=f["k"].decode(),
                    body=f["b"],
                    source=f["s"].decode(),
                    reason=f["r"].decode(),
                    attempts=int(f["n"]),
                    created_at=_seconds(f["c"]),
                    dead_at=_seconds(f["d"]),
                )
            )
        return letters

    def requeue_dead(self, ids: Sequence[int] | None) -> int:
        """Back onto the spool as new items (attempts reset); returns how many moved."""
        if ids is not None and not ids:
            return 0
        args = ["all"] if ids is None else ["some", *map(_sid, sorted(set(ids)))]
        return int(self._run("requeue dead letters", "requeue", args))

    def purge_dead(self) -> int:
        """Delete every dead letter."""
        return int(self._run("purge the dead letters", "purge_dead", []))

    # ------------------------------------------------------------------ status, upkeep

    def set_status(self, name: str, value: dict[str, Any] | None) -> None:
        """Publish (or clear, with None) a status other processes read."""
        with self._redis(f"set status {name!r}"):
            if value is None:
                self._client.hdel(self._key("status"), name)
            else:
                self._client.hset(self._key("status"), name, orjson.dumps(value))

    def take_lease(self, name: str, owner: str, seconds: float) -> bool:
        """Hold a named lease: a key that expires by itself, taken or renewed in one script."""
        with self._redis(f"take the lease {name!r}"):
            milliseconds = max(1, math.ceil(seconds * 1000))
            key = self._key(f"lease:{name}")
            return bool(self._leases["take"](keys=[key], args=[owner, milliseconds]))

    def drop_lease(self, name: str, owner: str) -> None:
        """Give up a named lease if ``owner`` holds it."""
        with self._redis(f"drop the lease {name!r}"):
            self._leases["drop"](keys=[self._key(f"lease:{name}")], args=[owner])

    def get_status(self, name: str) -> dict[str, Any] | None:
        """A status published by any process, or None."""
        with self._redis(f"read status {name!r}"):
            value = self._client.hget(self._key("status"), name)
        return orjson.loads(value) if value is not None else None

    def stats(self) -> dict[str, Any]:
        """Spool depth (in flight and waiting for a retry included), oldest age, dead letters,
        user tasks still to check, profiles (users, anonymous)."""
        depth, age, dead, tasks, users, anonymous = self._run("read the spool's stats", "stats", [])
        return {
            "spool": int(depth),
            "oldest_age": round(_seconds(age), 3) if age else 0.0,
            "dead_letters": int(dead),
            "user_tasks": int(tasks),
            "profiles": int(users),
            "anonymous_profiles": int(anonymous),
        }

    def add_activity(self, rows: Sequence[tuple[int, str, str, str, int]]) -> None:
        """Add to the per-minute tallies in one MULTI/EXEC; each minute's hash expires."""
        oldest = _now_minute() - ACTIVITY_KEEP_MINUTES
        # Summed here first: a call often repeats a tally, and it is one HINCRBY less.
        sums: dict[tuple[int, bytes], int] = {}
        for minute, metric, source, key, n in rows:
            if minute >= oldest:
                slot = (minute, orjson.dumps([metric, source, key]))
                sums[slot] = sums.get(slot, 0) + n
        if not sums:
            return
        with self._redis("add to the activity tallies"):
            pipe = self._client.pipeline(transaction=True)
            for (minute, name), n in sums.items():
                pipe.hincrby(self._key(f"activity:{minute}"), name, n)
            for minute in {minute for minute, _ in sums}:
                pipe.expireat(self._key(f"activity:{minute}"), _activity_expiry(minute))
            pipe.execute()

    def activity(self, since_minute: int) -> list[tuple[int, str, str, str, int]]:
        """The tallies of ``since_minute`` up to this minute, within the keep."""
        now = _now_minute()
        minutes = range(max(since_minute, now - ACTIVITY_KEEP_MINUTES), now + 1)
        if not minutes:
            return []
        with self._redis("read the activity tallies"):
            pipe = self._client.pipeline(transaction=False)
            for minute in minutes:
                pipe.hgetall(self._key(f"activity:{minute}"))
            tallies = pipe.execute()
        rows = []
        for minute, fields in zip(minutes, tallies, strict=True):
            for name, n in fields.items():
                metric, source, key = orjson.loads(name)
                rows.append((minute, metric, source, key, int(n)))
        return rows

    def ping(self) -> None:
        """Write a key: proves Redis is reachable and takes writes (not a replica, not full)."""
        with self._redis("write to the store"):
            self._client.set(self._key("ping"), b"1", px=60_000)

    def purge_expired(self) -> int:
        """Dedup keys expire by themselves (their TTL): 0.

        The forwarder's hourly upkeep: also forgets the group's consumers (one per
        forwarder process ever started) that hold nothing and were idle an hour.
        """
        self._run("tidy the consumer group", "upkeep", [round(self.idle_consumer * 1000)])
        return 0
