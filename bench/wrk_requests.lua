-- wrk script for bench/webhook.py: POSTs pre-generated, signed Segment webhooks.
--
--   wrk ... --script bench/wrk_requests.lua URL -- FILE FIRST LAST NTHREADS
--
-- FILE holds one request per line: the 40 hex digits of X-Signature, one space, the JSON
-- body. Thread k (of NTHREADS) sends lines FIRST+k, FIRST+k+NTHREADS, ... below LAST, in
-- order, each once; only if it runs out does it start its share again (`done` reports how
-- many each thread took, so the caller can tell). `done` prints one WRK_JSON line with the
-- exact counts and latencies (microseconds) for the caller to parse.

local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   local path = args[1]
   local first, last, nthreads = tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
   signatures, bodies = {}, {}
   local index = 0
   for line in io.lines(path) do
      if index >= last then
         break
      end
      if index >= first and (index - first) % nthreads == id then
         signatures[#signatures + 1] = line:sub(1, 40)
         bodies[#bodies + 1] = line:sub(42)
      end
      index = index + 1
   end
   if #bodies == 0 then
      error("wrk_requests.lua: no requests for thread " .. id .. " in " .. path)
   end
   available = #bodies
   taken = 0
   headers = { ["Content-Type"] = "application/json" }
end

function request()
   local i = taken % available + 1
   taken = taken + 1
   headers["X-Signature"] = signatures[i]
   return wrk.format("POST", nil, headers, bodies[i])
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
