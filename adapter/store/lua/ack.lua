-- ack: delivered items are gone from the spool, whatever their kind and state.
--
-- KEYS: none (every key is built from the prefix).
-- ARGV[1]: the key prefix.
-- ARGV[2]: the item numbers, space-separated.
-- Returns: how many entries were deleted from the streams.
ensure_groups()
local ids = {}
for n in string.gmatch(ARGV[2], '%d+') do ids[#ids + 1] = '0-' .. n end
local gone = 0
for _, kind in ipairs(KINDS) do
  variadic('XACK', {stream(kind), G}, ids)
  gone = gone + variadic('XDEL', {stream(kind)}, ids)
  variadic('ZREM', {leased(kind)}, ids)
  variadic('ZREM', {ready(kind)}, ids)
  if gone >= #ids then break end  -- all found: the other kinds' streams are left alone
end
variadic('HDEL', {STATE}, ids)
variadic('SREM', {CANCELLED}, ids)
variadic('ZREM', {REQUEUED}, ids)
return gone
