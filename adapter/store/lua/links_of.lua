-- links_of: what an id is linked to, both ways.
--
-- KEYS: none (every key is built from the prefix).
-- ARGV[1]: the key prefix.
-- ARGV[2]: the id.
-- Returns: {user id, linked_at (µs)} when the id is a linked anonymous id, else {}; then
-- the id's anonymous ids (as a user) with their linked_at, newest first, as flat pairs.
local id = ARGV[2]
local user = redis.call('HGET', LINK, id)
local as_anonymous = {}
if user then
  as_anonymous = {user, redis.call('ZSCORE', P .. 'user:' .. user, id) or '0'}
end
return {as_anonymous, redis.call('ZREVRANGE', P .. 'user:' .. id, 0, -1, 'WITHSCORES')}
