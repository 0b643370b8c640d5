-- wrk script of bench/serve.sh: POSTs one JSON body (the file named after `--`) on every request,
-- and prints one machine-readable line at the end:
--   RESULT rps=… p50_ms=… p90_ms=… p99_ms=… max_ms=… requests=… errors=…
-- errors counts socket errors (connect, read, write, timeout) and non-2xx answers.
--   wrk -t1 -c64 -d15s -s post.lua http://HOST:PORT/v2/models/churn/infer -- infer-1.json

function init(args)
   local path = args[1]
   if path == nil then
      error("usage: wrk ... -s post.lua URL -- BODY.json")
   end
   local f = assert(io.open(path, "rb"))
   wrk.body = f:read("*a")
   f:close()
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end

function done(summary, latency, requests)
   local e = summary.errors
   local errors = e.connect + e.read + e.write + e.timeout + e.status
   io.write(string.format(
      "RESULT rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f requests=%d errors=%d\n",
      summary.requests / (summary.duration / 1e6),
      latency:percentile(50) / 1000, latency:percentile(90) / 1000,
      latency:percentile(99) / 1000, latency.max / 1000,
      summary.requests, errors))
end
