-- requeue: dead letters back on the spool as new items (attempts reset, created_at kept).
--
-- KEYS: none (every key is built from the prefix).
-- ARGV[1]: the key prefix.
-- ARGV[2]: 'all', or 'some' for the ids that follow.
-- ARGV[3...]: the dead letters' entry ids ('0-<number>', ascending), with 'some'.
-- Returns: how many were put back.
local now = now_us()
local entries = {}
if ARGV[2] == 'all' then
  entries = redis.call('XRANGE', DEAD, '-', '+')
else
  for i = 3, #ARGV do
    local r = redis.call('XRANGE', DEAD, ARGV[i], ARGV[i])
    if r[1] then entries[#entries + 1] = r[1] end
  end
end
if #entries == 0 then return 0 end
local nxt = next_ids(#entries)
for _, e in ipairs(entries) do
  local f = e[2]
  local id, created = '0-' .. n2s(nxt), field(f, 'c')
  nxt = nxt + 1
  redis.call('XADD', stream(field(f, 'k')), id, 'b', field(f, 'b'), 's', field(f, 's'),
             'c', created, 'q', n2s(now))
  redis.call('ZADD', REQUEUED, created, id)
  redis.call('XDEL', DEAD, e[1])
end
return #entries
