-- claim: lease the longest-ready items of a kind to one forwarder: leases that ran out
-- and parked items now due, merged with new items of the stream in ready order, up to a
-- count and a byte budget (the first item always fits). New items read but not taken,
-- or not due yet, are parked. A deletion notice waits while a cancelled send is in flight.
--
-- KEYS: none (every key is built from the prefix).
-- ARGV[1]: the key prefix.
-- ARGV[2]: the kind (one of KINDS).
-- ARGV[3]: how many items at most.
-- ARGV[4]: the byte budget (body sizes + 1 each).
-- ARGV[5]: the lease (µs).
-- ARGV[6]: the owner (the forwarder's consumer name).
-- Returns: an empty table while a deletion notice must wait; else the lines
-- "number attempts first-attempt created" (times in µs) of the items taken, joined by
-- '\n', then their bodies in that order: two thousand-odd values instead of five
-- thousand, which the client parses a fifth faster.
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
