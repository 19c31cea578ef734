-- enqueue: new items of a kind, ready after a delay (a claim parks them until then).
--
-- KEYS: none (every key is built from the prefix).
-- ARGV[1]: the key prefix.
-- ARGV[2]: the kind (one of KINDS).
-- ARGV[3]: their source.
-- ARGV[4]: the delay (µs).
-- ARGV[5...]: the bodies.
-- Returns: the first item's number; the others follow it.
local kind, source, delay = ARGV[2], ARGV[3], tonumber(ARGV[4])
local now = now_us()
local first = next_ids(#ARGV - 4)
local created, due = n2s(now), n2s(now + delay)
for i = 5, #ARGV do
  local id = '0-' .. n2s(first + i - 5)
  if delay > 0 then
    redis.call('XADD', stream(kind), id, 'b', ARGV[i], 's', source, 'c', created, 'q', due)
  else
    redis.call('XADD', stream(kind), id, 'b', ARGV[i], 's', source, 'c', created)
  end
end
return first
