-- unsent: items a forwarder leased but did not deliver are parked until due; a
-- cancelled item (its user was deleted) is dropped instead.
--
-- KEYS: none (every key is built from the prefix).
-- ARGV[1]: the key prefix.
-- ARGV[2]: 'retry' (the attempt counts, the error is kept) or 'release' (it does not).
-- ARGV[3]: the delay before they are ready again (µs).
-- ARGV[4]: the error to remember (retry only).
-- ARGV[5...]: the items' entry ids ('0-<number>').
-- Returns: 0.
local mode, delay, err = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = now_us()
ensure_groups()
local due = n2s(now + delay)
for i = 5, #ARGV do
  local id = ARGV[i]
  local kind = kind_of(id)
  if cancelled(kind, id) then
    drop(kind, id)
  elseif kind then
    redis.call('XACK', stream(kind), G, id)
    redis.call('ZREM', leased(kind), id)
    redis.call('ZADD', ready(kind), due, id)
    local attempts, first, last = state_of(id)
    if mode == 'release' then attempts = math.max(attempts - 1, 0) else last = err end
    put_state(id, attempts, first, last)
  end
end
return 0
