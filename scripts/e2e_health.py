#!/usr/bin/env python3
"""End-to-end health scenarios: real anvil nodes behind detour, a steady stream of reads, and
three faults in turn. Every read must succeed, eth_blockNumber must never go backwards, and
traffic must return to each node after it recovers (a fair share within 5 s after a kill or
a freeze).

  1. killed:  anvil-a is SIGKILLed, later restarted on the same port;
  2. frozen:  anvil-b is SIGSTOPped for 10 s (TCP accepted, no answer), then SIGCONTed;
  3. lagging: anvil-c stops mining while the others mine, then catches up.

The three nodes are independent dev chains mining a block a second; a real node catches up by
syncing, which `anvil_mine` stands in for here. Loopback only; every wait is bounded.

usage: e2e_health.py ANVIL DETOUR WORKDIR
"""
import atexit
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

from e2e_common import free_port, poll

ANVIL, DETOUR, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
CHAIN_ID = 31337
ADDR = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"  # anvil dev account 1
procs = {}


def log(msg):
    print(f"[e2e-health] {msg}", flush=True)


def rpc(port, method, params=None, path="/", timeout=5):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
    conn.request("POST", path, body, {"content-type": "application/json"})
    r = json.loads(conn.getresponse().read())
    conn.close()
    if "error" in r:
        raise RuntimeError(f"{method}: {r['error']}")
    return r["result"]


def wait_until(what, pred, timeout):
    if poll(pred, timeout):
        return
    try:
        for name, u in status().items():
            log(f"   status {name}: {json.dumps(u)}")
    except Exception:  # detour itself may be the problem
        pass
    raise SystemExit(f"[e2e-health] FAIL: timed out after {timeout}s waiting until {what}")


def start_anvil(name, port):
    out = open(os.path.join(WORK, f"health-{name}.log"), "a")
    procs[name] = subprocess.Popen(
        [ANVIL, "--host", "127.0.0.1", "--port", str(port), "--chain-id", str(CHAIN_ID),
         "--block-time", "1"], stdout=out, stderr=subprocess.STDOUT)
    wait_until(f"{name} answers", lambda: rpc(port, "eth_chainId"), 30)


def head(port):
    return int(rpc(port, "eth_blockNumber", timeout=2), 16)


def catch_up(name):
    """Mines the blocks a node missed, as syncing would."""
    others = [head(PORTS[n]) for n in PORTS if n != name]
    gap = max(others) - head(PORTS[name])
    if gap > 0:
        rpc(PORTS[name], "anvil_mine", [hex(gap)])


def cleanup():
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()


atexit.register(cleanup)

PORTS = {n: free_port() for n in ("a", "b", "c")}
for n, p in PORTS.items():
    start_anvil(n, p)

DPORT = free_port()
config = f"""
[server]
listen = "127.0.0.1:{DPORT}"
[client]
connect_timeout = "1s"
attempt_timeout = "3s"
[chains.anvil]
chain_id = {CHAIN_ID}
[chains.anvil.health]
probe_interval = "300ms"
idle_probe_interval = "300ms"
max_lag_blocks = 3
unhealthy_after = 2
healthy_after = 1
[chains.anvil.hedge]
min_delay = "50ms"
max_delay = "300ms"
"""
for n, p in PORTS.items():
    config += f"""
[[chains.anvil.upstreams]]
name = "anvil-{n}"
url = "http://127.0.0.1:{p}"
region = "zone-{n}"
"""
with open(os.path.join(WORK, "health.toml"), "w") as f:
    f.write(config)
dlog = open(os.path.join(WORK, "health-detour.log"), "w")
procs["detour"] = subprocess.Popen(
    [DETOUR, "--config", os.path.join(WORK, "health.toml"), "--log-format", "json"],
    stdout=dlog, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "info"})


def status():
    conn = http.client.HTTPConnection("127.0.0.1", DPORT, timeout=5)
    conn.request("GET", "/status")
    s = json.loads(conn.getresponse().read())
    conn.close()
    return {u["name"]: u for u in s["chains"][0]["upstreams"]}


wait_until("every node is verified and healthy",
           lambda: all(u["chain_check"] == "verified" and u["state"] == "healthy"
                       for u in status().values()), 30)
log(f"detour on :{DPORT}; anvil nodes a, b, c on {list(PORTS.values())}")

# --- the steady reader ---------------------------------------------------------------------
reads = []  # (time, upstream, ok, detail)
stop = threading.Event()


def reader():
    conn = http.client.HTTPConnection("127.0.0.1", DPORT, timeout=15)
    i = 0
    last_block = 0
    while not stop.is_set():
        i += 1
        m, p = (("eth_getBalance", [ADDR, "latest"]) if i % 2 else ("eth_blockNumber", []))
        body = json.dumps({"jsonrpc": "2.0", "id": i, "method": m, "params": p})
        t = time.time()
        try:
            conn.request("POST", "/anvil", body, {"content-type": "application/json"})
            resp = conn.getresponse()
            r = json.loads(resp.read())
            by = resp.getheader("x-detour-upstream", "")
            ok = resp.status == 200 and "result" in r and r.get("id") == i
            detail = r
            if ok and m == "eth_blockNumber":
                n = int(r["result"], 16)
                if n < last_block:
                    ok, detail = False, f"eth_blockNumber went back from {last_block} to {n}"
                last_block = max(last_block, n)
            if ok and m == "eth_getBalance" and int(r["result"], 16) != 10000 * 10**18:
                ok, detail = False, f"wrong balance {r['result']}"
            reads.append((t, by, ok, detail))
        except Exception as e:  # a failed read, never expected
            reads.append((t, "", False, repr(e)))
            conn = http.client.HTTPConnection("127.0.0.1", DPORT, timeout=15)
        time.sleep(0.02)


thread = threading.Thread(target=reader, daemon=True)
thread.start()


def served_by(name, since):
    return any(t >= since and by == f"anvil-{name}" and ok for t, by, ok, _ in reads)


def share(name, since, until):
    window = [by for t, by, ok, _ in reads if since <= t < until and ok]
    return sum(by == f"anvil-{name}" for by in window) / max(1, len(window))


def fair_share_within_5s(name, back):
    """A recovered node must serve a fair share again: measured over the 5 s that start 5 s
    after it came back (a third would be even; at least a tenth is required)."""
    time.sleep(max(0.0, back + 10 - time.time()))
    got = share(name, back + 5, back + 10)
    log(f"   anvil-{name} served {got:.0%} of the reads 5-10 s after it came back")
    assert got >= 0.10, f"anvil-{name} got {got:.0%} of the traffic 5-10 s after recovering"


def failures():
    return [r for r in reads if not r[2]]


wait_until("every node serves reads", lambda: all(served_by(n, 0) for n in PORTS), 30)

# --- 1. killed -------------------------------------------------------------------------------
log("1. SIGKILL anvil-a during the reads")
procs["a"].send_signal(signal.SIGKILL)
procs["a"].wait()
t0 = time.time()
wait_until("anvil-a is out of rotation", lambda: status()["anvil-a"]["state"] == "cooling_down", 15)
time.sleep(2)
assert not served_by("a", t0 + 0.5), "a killed node served reads"
log("   restarting anvil-a and syncing it")
start_anvil("a", PORTS["a"])
catch_up("a")
t1 = time.time()
wait_until("traffic returns to anvil-a", lambda: served_by("a", t1), 30)
log(f"   traffic back on anvil-a {time.time() - t1:.1f}s after it came back")
fair_share_within_5s("a", t1)

# --- 2. frozen -------------------------------------------------------------------------------
log("2. SIGSTOP anvil-b for 10 s during the reads")
procs["b"].send_signal(signal.SIGSTOP)
time.sleep(10)
procs["b"].send_signal(signal.SIGCONT)
catch_up("b")
t2 = time.time()
wait_until("traffic returns to anvil-b", lambda: served_by("b", t2), 30)
log(f"   traffic back on anvil-b {time.time() - t2:.1f}s after SIGCONT")
fair_share_within_5s("b", t2)

# --- 3. lagging ------------------------------------------------------------------------------
log("3. anvil-c stops mining while the others mine")
rpc(PORTS["c"], "evm_setIntervalMining", [0])
wait_until("anvil-c is lagging", lambda: status()["anvil-c"]["state"] == "lagging", 20)
t3 = time.time()
time.sleep(2)
lag = status()["anvil-c"]["lag"]
assert not served_by("c", t3), "a lagging node served reads of the latest state"
log(f"   anvil-c is {lag} blocks behind: no reads sent to it for 2 s")
catch_up("c")
rpc(PORTS["c"], "evm_setIntervalMining", [1])
t4 = time.time()
wait_until("traffic returns to anvil-c", lambda: served_by("c", t4), 30)
log(f"   traffic back on anvil-c {time.time() - t4:.1f}s after it caught up")

stop.set()
thread.join(timeout=20)
bad = failures()
log(f"{len(reads)} reads, {len(bad)} failed")
for r in bad[:5]:
    log(f"   failed: {r}")
for p in procs.values():
    if p.poll() is None:
        p.send_signal(signal.SIGCONT)
        p.terminate()
for p in procs.values():
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
if bad:
    sys.exit(1)
log("ok: zero failed reads through a kill, a freeze and a lag; traffic returned each time")
