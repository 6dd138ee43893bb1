-- wrk script for benches/compare: one JSON-RPC call (METHOD from the environment) sent as a
-- POST with a body built once, so wrk does no Lua work per request (but for eth_call_unique,
-- built per request). `done` prints the exact
-- percentiles (wrk keeps a 1 µs-resolution histogram of every request) as one JSON line.
local bodies = {
  eth_blockNumber = '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}',
  eth_call = '{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{"to":"0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48","data":"0x06fdde03"},"latest"]}',
  eth_getBlockByNumber = '{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["0x1500000",false]}',
}
local method = os.getenv("METHOD") or "eth_call"
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if method == "eth_call_unique" then
  -- Every call different (the response cache's 0% hits): other call data each time, from a
  -- random start so that runs do not repeat each other.
  math.randomseed(os.time())
  local n = math.random(1, 2^40)
  local template = '{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{"to":"0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48","data":"0x70a08231%064x"},"latest"]}'
  request = function()
    n = n + 1
    return wrk.format(nil, nil, nil, string.format(template, n))
  end
elseif os.getenv("BODY") then
  -- A body given whole (the large answers' requests, a batch).
  wrk.body = os.getenv("BODY")
else
  wrk.body = assert(bodies[method], "unknown METHOD " .. method)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '@@json {"requests":%d,"duration_us":%d,"errors":%d,"status_errors":%d,' ..
    '"p50":%d,"p99":%d,"p999":%d,"mean":%.2f,"max":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
