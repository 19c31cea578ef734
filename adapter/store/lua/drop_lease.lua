-- drop_lease: give up a named lease if the owner holds it. Runs alone, without the
-- prelude: it touches one key, given as KEYS[1].
--
-- KEYS[1]: the lease's key.
-- ARGV[1]: the owner.
-- Returns: 1.
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
