-- wrk script of the bench: each request carries the session cookie of the next of the
-- logged-in users listed (one session key per line) in the file named by DPB_SESSIONS,
-- and the summary is printed as one JSON line for bench/load.py.
local keys = {}
for line in io.lines(os.getenv("DPB_SESSIONS")) do
  keys[#keys + 1] = line
end
local counter = 0

request = function()
  counter = counter + 1
  local key = keys[(counter % #keys) + 1]
  return wrk.format("GET", wrk.path, { ["Cookie"] = "sessionid=" .. key })
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'DPB-JSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "status_errors": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max))
end
