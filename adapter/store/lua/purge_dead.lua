-- purge_dead: delete every dead letter. UNLINK: a large stream is freed in the
-- background, not while Redis serves nobody.
--
-- KEYS: none (every key is built from the prefix).
-- ARGV[1]: the key prefix.
-- Returns: how many dead letters there were.
local n = redis.call('XLEN', DEAD)
redis.call('UNLINK', DEAD)
return n
