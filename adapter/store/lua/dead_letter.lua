-- dead_letter: move spooled items to the dead letters, each with its reason. A cancelled
-- item (its user was deleted) is dropped instead.
--
-- KEYS: none (every key is built from the prefix).
-- ARGV[1]: the key prefix.
-- ARGV[2...]: (entry id '0-<number>', reason) pairs.
-- Returns: 0.
local now = now_us()
ensure_groups()
local nxt = next_ids((#ARGV - 1) / 2)
for i = 2, #ARGV, 2 do
  local id, reason = ARGV[i], ARGV[i + 1]
  local kind, f = kind_of(id)
  if kind then
    -- A cancelled item's user was deleted: dropped, not kept as a dead letter.
    if not cancelled(kind, id) then
      local attempts = state_of(id)
      redis.call('XADD', DEAD, '0-' .. n2s(nxt), 'k', kind, 'b', field(f, 'b'),
                 's', field(f, 's'), 'r', reason, 'n', n2s(attempts), 'c', field(f, 'c'),
                 'd', n2s(now))
      nxt = nxt + 1
    end
    drop(kind, id)
  end
end
return 0
