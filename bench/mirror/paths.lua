-- wrk script for bench/mirror/run.sh: each wrk thread cycles through the request paths
-- listed, one per line, in the file named by $BENCH_PATHS (each request its connections send
-- takes the next path), so every server under test serves the same mix of objects. At the end it prints one machine-readable line:
--   BENCH requests=N duration_us=N rps=F p50_us=N p90_us=N p99_us=N max_us=N non2xx=N socket_errors=N

local paths = {}
local formatted = {}
local next_index = 1

local function load_paths()
  local file = os.getenv("BENCH_PATHS")
  if file == nil then
    error("BENCH_PATHS is not set")
  end
  for line in io.lines(file) do
    if line ~= "" then
      paths[#paths + 1] = line
    end
  end
  if #paths == 0 then
    error(file .. " lists no paths")
  end
  -- Formatted once: request() runs for every request, and wrk's own cost is part of the
  -- measurement on a machine it shares with the server.
  for i, path in ipairs(paths) do
    formatted[i] = wrk.format("GET", path)
  end
end

local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
end

function init(args)
  load_paths()
  -- Start each thread at a different object so they do not move in lockstep.
  next_index = ((thread_id or 1) - 1) % #paths + 1
end

function request()
  local r = formatted[next_index]
  next_index = next_index % #formatted + 1
  return r
end

function done(summary, latency, requests)
  local e = summary.errors
  local rps = summary.requests / (summary.duration / 1e6)
  io.write(string.format(
    "BENCH requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d non2xx=%d socket_errors=%d\n",
    summary.requests, summary.duration, rps,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.status, e.connect + e.read + e.write + e.timeout))
end
