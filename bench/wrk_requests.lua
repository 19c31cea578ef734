-- wrk script for bench/webhook.py: POSTs pre-generated, signed Segment webhooks.
--
--   wrk ... --script bench/wrk_requests.lua URL -- FILE FIRST LAST NTHREADS [REST]
--
-- FILE holds one request per line: the 40 hex digits of X-Signature, one space, the JSON
-- body. Thread k (of NTHREADS) sends lines FIRST+k, FIRST+k+NTHREADS, ... below LAST, in
-- order, each once; only if it runs out does it start its share again (`done` reports how
-- many each thread took, so the caller can tell). `done` prints one WRK_JSON line with the
-- exact counts and latencies (microseconds) for the caller to parse.
--
-- With REST (bench/webhook.py --batch N), each request is a Webhooks (Actions) array: a
-- JSON array of N messages whose X-Signature covers only JSON.stringify of the first one.
-- A line of FILE is then that signature and the first message (with its own messageId);
-- REST holds the other N-1 messages, comma-separated, each messageId carrying the
-- placeholder "@@@@@@@@". Request i is "[" .. line i .. "," .. REST .. "]" with every
-- placeholder replaced by i in 8 hex digits, so every message of every request has its
-- own messageId (a repeated one would be answered as a cheap duplicate), and the client
-- computes no JSON and no HMAC.

local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

-- parts = {"[", head, ",", piece1, token, piece2, token, ..., pieceN, "]"}: the head and
-- token slots are filled in per request, then one table.concat.
local function batch_parts(path)
   local file = assert(io.open(path, "rb"))
   local rest = file:read("*a")
   file:close()
   parts, slots = { "[", "", "," }, {}
   local start = 1
   while true do
      local at = rest:find("@@@@@@@@", start, true)
      if at == nil then
         break
      end
      parts[#parts + 1] = rest:sub(start, at - 1)
      parts[#parts + 1] = ""
      slots[#slots + 1] = #parts
      start = at + 8
   end
   parts[#parts + 1] = rest:sub(start)
   parts[#parts + 1] = "]"
end

function init(args)
   local path = args[1]
   local first, last, nthreads = tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
   signatures, bodies, tokens = {}, {}, {}
   local index = 0
   for line in io.lines(path) do
      if index >= last then
         break
      end
      if index >= first and (index - first) % nthreads == id then
         signatures[#signatures + 1] = line:sub(1, 40)
         bodies[#bodies + 1] = line:sub(42)
         tokens[#tokens + 1] = string.format("%08x", index)
      end
      index = index + 1
   end
   if #bodies == 0 then
      error("wrk_requests.lua: no requests for thread " .. id .. " in " .. path)
   end
   if args[5] then
      batch_parts(args[5])
   end
   available = #bodies
   taken = 0
   headers = { ["Content-Type"] = "application/json" }
end

function request()
   local i = taken % available + 1
   taken = taken + 1
   headers["X-Signature"] = signatures[i]
   if parts == nil then
      return wrk.format("POST", nil, headers, bodies[i])
   end
   parts[2] = bodies[i]
   for _, slot in ipairs(slots) do
      parts[slot] = tokens[i]
   end
   return wrk.format("POST", nil, headers, table.concat(parts))
end

function done(summary, latency, requests)
   local taken_max, taken_sum, available_min = 0, 0, math.huge
   for _, thread in ipairs(threads) do
      local n = thread:get("taken")
      taken_sum = taken_sum + n
      taken_max = math.max(taken_max, n)
      available_min = math.min(available_min, thread:get("available"))
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, '
         .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, '
         .. '"p99_us": %d, "max_us": %d, "taken_sum": %d, "taken_max": %d, "available_min": %d}\n',
      summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      taken_sum, taken_max, available_min
   ))
end
