-- upkeep: forget the consumers (forwarders) that hold nothing and were idle that long.
--
-- KEYS: none (every key is built from the prefix).
-- ARGV[1]: the key prefix.
-- ARGV[2]: the idle time (ms).
-- Returns: how many consumers were removed.
local idle = tonumber(ARGV[2])
ensure_groups()
local removed = 0
for _, kind in ipairs(KINDS) do
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream(kind), G)) do
    if field(c, 'pending') == 0 and field(c, 'idle') >= idle then
      redis.call('XGROUP', 'DELCONSUMER', stream(kind), G, field(c, 'name'))
      removed = removed + 1
    end
  end
end
return removed
