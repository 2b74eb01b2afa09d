-- wrk script for scripts/load-ingest: POSTs one image to /v1/images as fast as wrk can, counts
-- the answers by status and prints the summary table.
-- Arguments (after wrk's `--`): API key, image path.

-- Each wrk thread runs its own Lua state, so the counts live per thread; done() runs in the
-- main state and collects them through the thread handles that setup() kept.
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local key, image = args[1], args[2]
   local file = assert(io.open(image, "rb"))
   wrk.method = "POST"
   wrk.body = file:read("*a")
   file:close()
   wrk.headers["Authorization"] = "Bearer " .. key
   wrk.headers["Content-Type"] = "application/octet-stream"
   counts = {}
end

function response(status, headers, body)
   counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
   local by_status = {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("counts")) do
         by_status[status] = (by_status[status] or 0) + count
      end
   end
   local accepted, limited, other_4xx, server_errors, other = 0, 0, 0, 0, 0
   for status, count in pairs(by_status) do
      if status == 202 then
         accepted = accepted + count
      elseif status == 429 then
         limited = limited + count
      elseif status >= 400 and status < 500 then
         other_4xx = other_4xx + count
      elseif status >= 500 then
         server_errors = server_errors + count
      else
         other = other + count
      end
   end
   local seconds = summary.duration / 1e6
   local errors = summary.errors
   local row = function(name, value) io.write(string.format("  %-22s %s\n", name, value)) end
   io.write("load-ingest-summary\n")
   row("requests", summary.requests)
   row("duration", string.format("%.1f s", seconds))
   row("requests/s", string.format("%.1f", summary.requests / seconds))
   row("latency p50", string.format("%.1f ms", latency:percentile(50) / 1000))
   row("latency p99", string.format("%.1f ms", latency:percentile(99) / 1000))
   row("latency max", string.format("%.1f ms", latency.max / 1000))
   row("202 accepted", accepted)
   row("429 rate-limited", limited)
   row("other 4xx", other_4xx)
   row("5xx", server_errors)
   if other > 0 then
      row("other statuses", other)
   end
   row("socket errors", string.format("connect %d, read %d, write %d, timeout %d",
      errors.connect, errors.read, errors.write, errors.timeout))
   local statuses = {}
   for status in pairs(by_status) do
      table.insert(statuses, status)
   end
   table.sort(statuses)
   for _, status in ipairs(statuses) do
      row("  status " .. status, by_status[status])
   end
   -- Read by scripts/load-ingest for its exit status.
   io.write(string.format("load-ingest-5xx=%d\n", server_errors))
end
