#!/usr/bin/env python3
"""End-to-end: three detour replicas sharing a real redis-server, each in front of its own real
anvil node, as replicas behind a load balancer whose nodes are at different heights.

  1. a client moved from replica to replica on every call (cast, the Foundry CLI, for some of
     the reads) never sees eth_blockNumber go back, though each replica's node is at another
     height, and follows a node that moves ahead;
  2. redis-server is killed (SIGKILL) during a steady stream of reads through all three: no read
     fails; it is started again on the same port, and sharing resumes by itself (/status);
  3. a per-client rate limit holds across the three: a client alternating between them as fast
     as it can is admitted about what one replica alone would admit, not three times that.

Without redis-server on the machine this says so and passes (.ci/run installs it).
Loopback only; every wait is bounded.

usage: e2e_shared.py ANVIL DETOUR WORKDIR CAST
"""
import atexit
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

from e2e_common import free_port, poll

ANVIL, DETOUR, WORK, CAST = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
CHAIN_ID = 31337
procs = []


def log(msg):
    print(f"[e2e-shared] {msg}", flush=True)


def fail(msg):
    raise SystemExit(f"[e2e-shared] FAIL: {msg}")


def post(port, method, params=None, path="/anvil"):
    """One call; returns (HTTP status, the response object)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    body = json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": params or []})
    conn.request("POST", path, body, {"content-type": "application/json"})
    resp = conn.getresponse()
    status, r = resp.status, json.loads(resp.read())
    conn.close()
    return status, r


def block_number(port):
    status, r = post(port, "eth_blockNumber")
    if status != 200 or "result" not in r:
        fail(f"eth_blockNumber through :{port}: {status} {r}")
    return int(r["result"], 16)


def status(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
        return json.loads(r.read())


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.kill()


atexit.register(cleanup)

if shutil.which("redis-server") is None:
    log("SKIPPED: redis-server is not installed (Debian's redis-server; .ci/run installs it)")
    sys.exit(0)

# --- Redis, three nodes at different heights, three replicas -------------------------------
RPORT = free_port()


def start_redis():
    p = subprocess.Popen(
        ["redis-server", "--port", str(RPORT), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=open(os.path.join(WORK, "redis.log"), "a"), stderr=subprocess.STDOUT)
    procs.append(p)
    return p


redis = start_redis()
nodes = []
for i, blocks in enumerate([40, 10, 25]):
    port = free_port()
    procs.append(subprocess.Popen(
        [ANVIL, "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(CHAIN_ID)],
        stdout=open(os.path.join(WORK, f"shared-anvil-{i}.log"), "w"), stderr=subprocess.STDOUT))
    nodes.append(port)
    if not poll(lambda: post(port, "eth_chainId", path="/")[1].get("result"), 30):
        fail("anvil did not start")
    post(port, "anvil_mine", [hex(blocks)], path="/")

replicas = []
for i, node in enumerate(nodes):
    port = free_port()
    toml = f"""
[server]
listen = "127.0.0.1:{port}"
[server.rate_limit]
per_second = 20
burst = 10
[shared]
redis_url = "redis://127.0.0.1:{RPORT}"
prefix = "e2e{os.getpid()}"
[cache]
enabled = false
[chains.anvil]
chain_id = {CHAIN_ID}
[[chains.anvil.upstreams]]
name = "node"
url = "http://127.0.0.1:{node}"
"""
    path = os.path.join(WORK, f"shared-{i}.toml")
    with open(path, "w") as f:
        f.write(toml)
    procs.append(subprocess.Popen(
        [DETOUR, "--config", path, "--log-format", "json"],
        stdout=open(os.path.join(WORK, f"shared-detour-{i}.log"), "w"), stderr=subprocess.STDOUT))
    replicas.append(port)
for port in replicas:
    if not poll(lambda: status(port)["shared"]["state"] == "up", 30):
        fail(f"replica :{port} never reached Redis")
heights = [int(post(n, "eth_blockNumber", path="/")[1]["result"], 16) for n in nodes]
log(f"three replicas up; their nodes are at {heights}")


def pause_for_rate_limit():
    # The replicas share one rate limit for this client (20/s, burst 10): stay under it.
    time.sleep(0.06)


# --- 1. a client moved between replicas never sees the head go back ------------------------
last = 0
for i in range(24):
    port = replicas[i % 3]
    if i % 6 == 0:
        out = subprocess.run([CAST, "block-number", "--rpc-url", f"http://127.0.0.1:{port}/anvil"],
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            fail(f"cast block-number: {out.stderr}")
        n = int(out.stdout.strip())
    else:
        n = block_number(port)
    if n < last:
        fail(f"eth_blockNumber went back from {last} to {n} (replica :{port})")
    last = n
    pause_for_rate_limit()
if last < max(heights):
    fail(f"the highest node is at {max(heights)}, the client saw at most {last}")
# The node behind the second replica moves ahead of all: every replica follows it.
post(nodes[1], "anvil_mine", [hex(50)], path="/")
ahead = int(post(nodes[1], "eth_blockNumber", path="/")[1]["result"], 16)
seen = [block_number(replicas[1])]
pause_for_rate_limit()
for port in (replicas[0], replicas[2]):
    seen.append(block_number(port))
    pause_for_rate_limit()
if seen != [ahead] * 3:
    fail(f"after node 2 moved to {ahead}, the replicas answered {seen}")
log(f"1. a client moved between replicas saw {last}, then {ahead} on all three (nodes at "
    f"{heights}): never lower")

# --- 2. Redis killed under load: no read fails, and sharing resumes ------------------------
failed, reads = [], 0
start = time.time()
killed = restarted = None
while time.time() - start < 4.0:
    port = replicas[reads % 3]
    code, r = post(port, "eth_blockNumber")
    reads += 1
    if code != 200 or "result" not in r:
        # A rate-limit refusal is the limit at work, not a failure (every replica still
        # applies its own limit while Redis is away).
        if code != 429:
            failed.append((code, r))
    if killed is None and time.time() - start > 1.0:
        redis.kill()
        redis.wait()
        killed = time.time()
        log("redis-server killed")
    if killed and restarted is None and time.time() - killed > 1.5:
        redis = start_redis()
        restarted = time.time()
        log("redis-server started again")
    time.sleep(0.05)
if failed:
    fail(f"{len(failed)} of {reads} reads failed while Redis was killed: {failed[:3]}")
for port in replicas:
    if not poll(lambda: status(port)["shared"]["state"] == "up", 15):
        fail(f"replica :{port} did not resume sharing after Redis came back")
log(f"2. {reads} reads through three replicas while Redis was killed and restarted: none "
    f"failed; all three share again")

# --- 3. one client's rate limit across the three --------------------------------------------
time.sleep(1.5)  # a full burst again
ok = limited = 0
start = time.time()
i = 0
while time.time() - start < 2.0:
    code, _ = post(replicas[i % 3], "eth_blockNumber")
    i += 1
    if code == 200:
        ok += 1
    elif code == 429:
        limited += 1
    else:
        fail(f"status {code}")
secs = time.time() - start
allowed = 10 + 20 * secs
if ok > allowed + 3:
    fail(f"{ok} admitted in {secs:.1f} s across three replicas; the limit allows {allowed:.0f}")
if limited == 0:
    fail("nothing was limited")
log(f"3. a client alternating between three replicas for {secs:.1f} s: {ok} admitted, "
    f"{limited} refused with 429 (the limit allows {allowed:.0f}; each replica alone would "
    f"admit that many)")
log("PASS")
