-- take_profiles: the profiles of users to upload now; their queued uploads stop waiting,
-- so a change stored after this queues a new one.
--
-- KEYS: none (every key is built from the prefix).
-- ARGV[1]: the key prefix.
-- ARGV[2...]: the user ids.
-- Returns: per user with a (non-anonymous) profile, its id then its hash's (field, value)
-- pairs as one table; users without one are left out.
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
