-- prelude: the helpers every script below starts with (not the leases'), defined as
-- locals. The Python side puts the KINDS table before it, generated from
-- adapter.store.KINDS: local KINDS = {'record', 'delete', 'user', 'user_task'}.
--
-- Times are integer microseconds of the Redis server's clock (one clock for every host).
-- Numbers passed to redis.call go through n2s ('%d'): Lua's default formatting keeps
-- only 14 digits.
--
-- KEYS: none (every key is built from the prefix).
-- ARGV[1]: the key prefix (every script's first argument).
-- Returns: nothing; the script that follows it returns.
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
