-- wrk script of the bench: plain anonymous GETs (no cookie); the summary is printed as one
-- JSON line, as bench/wrk_sessions.lua does.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'DPB-JSON {"requests": %d, "duration_us": %d, "socket_errors": %d, "status_errors": %d, '
      .. '"p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max))
end
