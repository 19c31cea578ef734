-- links_overview: how many anonymous ids are linked, and the newest links. A deletion
-- takes its links out of links:recent; each link is checked anyway, so a stray entry
-- never shows a link that is gone.
--
-- KEYS: none (every key is built from the prefix).
-- ARGV[1]: the key prefix.
-- ARGV[2]: how many links at most.
-- Returns: the number of linked anonymous ids, then (anonymous id, user id, linked_at
-- (µs)) of the newest links, newest first, as a flat table.
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
