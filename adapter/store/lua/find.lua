-- find: one page of a deletion's pre-scan: the entries of a stream that may be records or
-- uploads of some users. Read-only and bounded, so Redis serves other clients between
-- pages.
--
-- KEYS: none (every key is built from the prefix).
-- ARGV[1]: the key prefix.
-- ARGV[2]: which stream: 'record' or 'user' (spool:<kind>), or 'dead' (the dead letters).
-- ARGV[3]: read after this entry id (exclusive); '-' from the start.
-- ARGV[4]: read up to this entry id (inclusive).
-- ARGV[5]: how many entries to read at most.
-- ARGV[6]: u, the number of user ids.
-- ARGV[7...6+u]: the user ids; the arguments after them: their anonymous ids.
-- Returns: the last entry id read ('' when the range is done), then the ids of the
-- entries that may belong to the users.
local key = ARGV[2] == 'dead' and DEAD or stream(ARGV[2])
local after, stop, count = ARGV[3], ARGV[4], tonumber(ARGV[5])
local users, anonymous, n = {}, {}, tonumber(ARGV[6])
for j = 7, 6 + n do users[ARGV[j]] = true end
for j = 7 + n, #ARGV do anonymous[ARGV[j]] = true end
local mine = matcher(users, anonymous)
if after ~= '-' then after = '(' .. after end
local page = redis.call('XRANGE', key, after, stop, 'COUNT', count)
local out = {#page < count and '' or page[#page][1]}
for _, e in ipairs(page) do
  local f = e[2]
  local kind = key == DEAD and field(f, 'k') or ARGV[2]
  if (kind == 'record' or kind == 'user') and mine(field(f, 'b')) then
    out[#out + 1] = e[1]
  end
end
return out
