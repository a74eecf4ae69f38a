-- wrk script: GET with the bearer token, printing percentiles.
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")

done = function(summary, latency, requests)
  io.write("latency p50/p99/p99.9 (ms): ",
    string.format("%.2f / %.2f / %.2f\n", latency:percentile(50) / 1000,
      latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
  io.write(string.format("non-2xx: %d\n", summary.errors.status))
end
