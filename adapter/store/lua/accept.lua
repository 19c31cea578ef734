-- accept: one batch of incoming messages, all or nothing. Dedup first; then per new
-- item: its records queued, its links stored, anonymous profiles joined to their
-- user's, its profile changes merged (a user upload queued per changed user), its
-- deletions carried out (the users' queued items, dead letters, profiles and links
-- dropped) and its deletion notice queued. Last, a status is published.
--
-- KEYS: none (every key is built from the prefix).
-- ARGV[1]: the key prefix.
-- ARGV[2]: the dedup window (ms; 0: no new key is set, a live one is still a duplicate).
-- ARGV[3]: the name of a status to publish ('' for none).
-- ARGV[4]: its JSON value ('' clears it).
-- ARGV[5]: how long a queued user upload waits (µs).
-- ARGV[6...]: the pre-scan of a batch with deletions (RedisStore._prescan), '-' for
--   none; else the record stream's mark, the upload stream's mark, the dead letters'
--   mark, then five counted lists (a count, then that many values): the user ids, their
--   anonymous ids, record candidates, upload candidates, dead-letter candidates.
-- Then per item:
--   '-' or '+<dedup key>';
--   its source;
--   n, then n record bodies;
--   m, then m (anonymous id, user id) pairs;
--   d, then d user ids to delete, then the deletion notice's body when d > 0;
--   p, then p profile changes, each: '-' or '+<user id>', '-' or '+<anonymous id>', its
--   time (µs), f, then f (field, JSON value) pairs of the profile hash ('' as the value
--   removes its field).
-- Returns: a string of one character per item, '1' for a duplicate, '0' for a new one.
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
