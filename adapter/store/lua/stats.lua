-- stats: the spool's numbers. Stream order is queueing order, so the oldest item is a
-- stream's first entry, or a requeued dead letter (queued again with its old created_at).
--
-- KEYS: none (every key is built from the prefix).
-- ARGV[1]: the key prefix.
-- Returns: the spool's depth (in flight, parked and cancelled included), the oldest
-- item's age (µs; '' when the spool is empty), the dead letters, the user tasks, the
-- user profiles and the anonymous profiles.
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
