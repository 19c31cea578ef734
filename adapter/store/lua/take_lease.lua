-- take_lease: hold a named lease, a key that expires by itself: taken when free or
-- expired, renewed when the owner holds it already. Runs alone, without the prelude: it
-- touches one key, given as KEYS[1].
--
-- KEYS[1]: the lease's key.
-- ARGV[1]: the owner.
-- ARGV[2]: the lease's length (ms).
-- Returns: 1 when the owner holds it now, 0 when another owner does.
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
