#!/usr/bin/env python3
"""End-to-end: the response cache against a real anvil node. Between detour and the node sits a
small counting forwarder, so the calls that reach the node are counted there.

  1. repeated reads: a dApp's mix of reads (head, balances, a contract call, final and recent
     blocks) is answered byte for byte as the node answers, and the node sees a fraction of them;
  2. read after write: a transfer sent through detour by cast (which waits for its receipt),
     then the balance: the new balance, never the one cached before the block;
  3. a reorg (anvil_reorg): once detour's tracker has seen it, no answer from before the reorg
     is served for the replaced blocks (by number or as the latest block), while the blocks
     below the fork are still answered from the cache. The time from the reorg to detour
     seeing it is reported;
  4. a wide eth_getLogs against a node limited to a small range: the forwarder refuses ranges
     wider than 20 blocks as providers do ("block range is too large"); detour halves the
     rejected range until the node accepts, and returns every log, in order, as the node has
     them.

The node is followed over its WebSocket (anvil serves it on its HTTP port), as a dApp backend's
node would be. Loopback only; every wait is bounded.

usage: e2e_cache.py ANVIL DETOUR WORKDIR CAST
"""
import atexit
import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

from e2e_common import free_port, poll

ANVIL, DETOUR, WORK, CAST = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
KEY0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil dev account 0
CHAIN_ID = 31337
DEV0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
DEV1 = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
DEV2 = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
procs = []


def log(msg):
    print(f"[e2e-cache] {msg}", flush=True)


def fail(msg):
    raise SystemExit(f"[e2e-cache] FAIL: {msg}")


def post(port, method, params=None, path="/", headers=None):
    """One call; returns (result or error, the x-detour-cache header)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": params or []})
    conn.request("POST", path, body, {"content-type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    r = json.loads(resp.read())
    how = resp.getheader("x-detour-cache") or ""
    conn.close()
    if r.get("id") != 7:
        fail(f"{method}: the id came back as {r.get('id')!r}")
    return (r["result"] if "result" in r else {"error": r["error"]}), how


def node(method, params=None):
    return post(NODE, method, params)[0]


def via(method, params=None, headers=None):
    return post(DPORT, method, params, "/anvil", headers)


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.kill()


atexit.register(cleanup)

# --- the node, and the counting forwarder in front of it ----------------------------------
NODE = free_port()
procs.append(subprocess.Popen(
    [ANVIL, "--host", "127.0.0.1", "--port", str(NODE), "--chain-id", str(CHAIN_ID)],
    stdout=open(os.path.join(WORK, "cache-anvil.log"), "w"), stderr=subprocess.STDOUT))
if not poll(lambda: node("eth_chainId"), 30):
    fail("anvil did not start")

counts = {}
counts_lock = threading.Lock()
LOGS_LIMIT = 20  # the widest eth_getLogs range the forwarder lets through
refused = {"getLogs": 0}


def too_wide(calls):
    """A refusal as a provider words it, for an eth_getLogs range over LOGS_LIMIT blocks."""
    if not isinstance(calls, dict) or calls.get("method") != "eth_getLogs":
        return None
    f = (calls.get("params") or [{}])[0]
    try:
        span = int(f["toBlock"], 16) - int(f["fromBlock"], 16) + 1
    except (KeyError, ValueError, TypeError):
        return None
    if span <= LOGS_LIMIT:
        return None
    refused["getLogs"] += 1
    return json.dumps({"jsonrpc": "2.0", "id": calls.get("id"), "error": {
        "code": -32005, "message": f"block range is too large, max {LOGS_LIMIT}"}}).encode()


class Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        out = None
        if "x-detour-probe" not in self.headers:
            try:
                calls = json.loads(body)
                for c in calls if isinstance(calls, list) else [calls]:
                    with counts_lock:
                        counts[c.get("method")] = counts.get(c.get("method"), 0) + 1
                out = too_wide(calls)
            except ValueError:
                pass
        if out is None:
            req = urllib.request.Request(f"http://127.0.0.1:{NODE}/", body, {"content-type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                out = r.read()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


FWD = free_port()
server = http.server.ThreadingHTTPServer(("127.0.0.1", FWD), Forward)
threading.Thread(target=server.serve_forever, daemon=True).start()

# --- detour ---------------------------------------------------------------------------------
DPORT = free_port()
config = f"""
[server]
listen = "127.0.0.1:{DPORT}"
[tracker]
poll_interval = "500ms"
[chains.anvil]
chain_id = {CHAIN_ID}
[[chains.anvil.upstreams]]
name = "anvil"
url = "http://127.0.0.1:{FWD}"
ws_url = "ws://127.0.0.1:{NODE}"
"""
with open(os.path.join(WORK, "cache.toml"), "w") as f:
    f.write(config)
procs.append(subprocess.Popen(
    [DETOUR, "--config", os.path.join(WORK, "cache.toml"), "--log-format", "json"],
    stdout=open(os.path.join(WORK, "cache-detour.log"), "w"), stderr=subprocess.STDOUT,
    env={**os.environ, "RUST_LOG": "info"}))
if not poll(lambda: via("eth_chainId")[0] == hex(CHAIN_ID), 30):
    fail("detour did not start")

node("anvil_mine", ["0x64"])  # 100 blocks: the finalized block is 64 below the head
if not poll(lambda: via("eth_blockNumber")[0] == "0x64", 10):
    fail("detour did not see block 100")


def metric(name):
    with urllib.request.urlopen(f"http://127.0.0.1:{DPORT}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- 1. repeated reads ------------------------------------------------------------------------
# Head reads come often enough for detour to follow the chain for the cache; wait until it does.
if not poll(lambda: via("eth_blockNumber")[1] == "hit", 15, interval=0.02):
    fail("the cache never answered eth_blockNumber")
# Blocks the tracker has seen since it started following can be checked for being canonical
# (recent blocks are cached only then): two more.
node("anvil_mine", ["0x2"])
if not poll(lambda: via("eth_blockNumber") == ("0x66", "hit"), 10, interval=0.02):
    fail("detour's tracker did not follow to block 102")
READS = [
    ("eth_blockNumber", []),
    ("eth_getBalance", [DEV1, "latest"]),
    ("eth_getTransactionCount", [DEV0, "latest"]),
    ("eth_call", [{"to": DEV2, "data": "0x06fdde03"}, "latest"]),
    ("eth_getBlockByNumber", ["0xa", False]),   # final
    ("eth_getBlockByNumber", ["0x65", False]),  # recent, canonical
    ("eth_getBlockByNumber", ["latest", False]),
    ("eth_gasPrice", []),
]
before = dict(counts)
for i in range(400):
    m, p = READS[i % len(READS)]
    got, _ = via(m, p)
    want = node(m, p)
    if got != want:
        fail(f"{m} {p}: detour answered {str(got)[:120]}, the node {str(want)[:120]}")
# Every call that reached the node counts, detour's own (following the chain) included.
delta = {m: n - before.get(m, 0) for m, n in counts.items() if n > before.get(m, 0)}
asked = sum(delta.values())
log(f"400 reads through detour: {asked} calls reached the node ({delta})")
if asked > 40:
    fail(f"the node saw {asked} calls for 400 repeated reads")
log("ok: repeated reads answered as the node answers, a tenth or less of them upstream")

# --- 2. read after write --------------------------------------------------------------------
old = via("eth_getBalance", [DEV1, "latest"])[0]
if via("eth_getBalance", [DEV1, "latest"])[1] != "hit":
    fail("the balance was not cached before the transfer")
# cast sends the transfer through detour and waits for its receipt there.
sent = subprocess.run(
    [CAST, "send", "--rpc-url", f"http://127.0.0.1:{DPORT}/anvil", "--private-key", KEY0,
     "--value", "1ether", DEV1], capture_output=True, text=True, timeout=60)
if sent.returncode != 0:
    fail(f"cast send: {sent.stderr}")
new, how = via("eth_getBalance", [DEV1, "latest"])
if int(new, 16) != int(old, 16) + 10**18:
    fail(f"balance after the transfer: {new} (was {old}; served {how or 'upstream'})")
log("ok: read after write: the new balance, not the cached one")

# --- 3. a reorg -----------------------------------------------------------------------------
node("anvil_mine", ["0x5"])
head = int(node("eth_blockNumber"), 16)
# A hit at the new head: the tracker has followed to it (until then, recent blocks are not
# cached: they cannot be checked against the tracked chain).
if not poll(lambda: via("eth_blockNumber") == (hex(head), "hit"), 10, interval=0.02):
    fail(f"detour's tracker did not follow to block {head}")
heights = list(range(head - 4, head + 1))
old_hash = {}
for n in heights:
    via("eth_getBlockByNumber", [hex(n), False])
    via("eth_getBlockByNumber", [hex(n), False])  # kept from the second time it is seen
    block, how = via("eth_getBlockByNumber", [hex(n), False])
    if how != "hit":
        fail(f"recent block {n} was not cached ({how})")
    old_hash[n] = block["hash"]
via("eth_getBlockByNumber", ["latest", False])
reorgs = metric("detour_tracker_reorgs_total")
evicted = metric('detour_cache_evictions_total{chain="anvil",method="eth_getBlockByNumber",reason="reorg"}')
started = time.time()
node("anvil_reorg", [3, []])  # replaces the last 3 blocks
if not poll(lambda: metric("detour_tracker_reorgs_total") > reorgs, 10, interval=0.01):
    fail("detour's tracker never saw the reorg")
seen_ms = (time.time() - started) * 1000
log(f"the tracker saw the reorg {seen_ms:.0f} ms after anvil_reorg returned")
evicted = metric('detour_cache_evictions_total{chain="anvil",method="eth_getBlockByNumber",reason="reorg"}') - evicted
if evicted != 3:
    fail(f"{evicted} recent blocks evicted by the reorg, want the 3 replaced")
end = time.time() + 2
rounds = 0
while time.time() < end:
    rounds += 1
    for n in heights:
        block, how = via("eth_getBlockByNumber", [hex(n), False])
        want = node("eth_getBlockByNumber", [hex(n), False])["hash"]
        if block["hash"] != want:
            fail(f"block {n}: detour served {block['hash']} ({how}), the node has {want}")
        if n > head - 3 and block["hash"] == old_hash[n]:
            fail(f"block {n}: the replaced block was served after the reorg ({how})")
        if n <= head - 3 and rounds > 1 and how != "hit":
            fail(f"block {n}, below the fork, was not served from the cache ({how})")
    latest, _ = via("eth_getBlockByNumber", ["latest", False])
    if latest["hash"] in {old_hash[n] for n in heights if n > head - 3}:
        fail(f"the latest block served is a replaced one: {latest['hash']}")
log(f"ok: {rounds} rounds over 2 s after the reorg: replaced blocks never served, the rest from the cache")

# --- 4. a wide eth_getLogs against a node that accepts 20 blocks at most ----------------------
# A contract whose every call logs one event (topic: the caller): CALLER PUSH1 32 PUSH1 0 LOG1.
INIT = "0x663360206000a10060005260076019f3"
tx = node("eth_sendTransaction", [{"from": DEV0, "data": INIT}])
if not isinstance(tx, str):
    fail(f"deploying the log emitter: {tx}")
if not poll(lambda: node("eth_getTransactionReceipt", [tx]), 10):
    fail("the log emitter was not mined")
emitter = node("eth_getTransactionReceipt", [tx])["contractAddress"]
first = int(node("eth_blockNumber"), 16) + 1
for i in range(30):
    node("eth_sendTransaction", [{"from": DEV0, "to": emitter}])  # mined at once, one log
    node("anvil_mine", [hex(1 + i % 7)])  # spread over about 130 blocks
last = int(node("eth_blockNumber"), 16)
flt = {"fromBlock": hex(first), "toBlock": hex(last), "address": emitter}
want = node("eth_getLogs", [flt])
if len(want) != 30:
    fail(f"the node has {len(want)} logs, want 30")
refused_before, chunks_before = refused["getLogs"], counts.get("eth_getLogs", 0)
got, _ = via("eth_getLogs", [flt])
if isinstance(got, dict):
    fail(f"eth_getLogs over {last - first + 1} blocks through detour: {got}")
if got != want:
    fail(f"eth_getLogs through detour: {len(got)} logs, the node has {len(want)} "
         f"(first differing: {next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)})")
logs_asked = counts.get("eth_getLogs", 0) - chunks_before
halved = metric('detour_getlogs_chunks_total{chain="anvil",kind="halved"}')
log(f"ok: eth_getLogs over {last - first + 1} blocks, node limited to {LOGS_LIMIT}: all 30 logs in "
    f"order; {refused['getLogs'] - refused_before} ranges refused, {logs_asked} asked, {halved:.0f} halved chunks")
if halved < 2:
    fail("detour did not halve the refused range")
print(json.dumps({"reads": 400, "reached_node": asked, "reorg_seen_ms": round(seen_ms),
                  "getlogs_blocks": last - first + 1, "getlogs_asked": logs_asked}))
