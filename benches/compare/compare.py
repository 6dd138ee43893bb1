#!/usr/bin/env python3
"""detour vs nginx vs direct (and the `floor`: the smallest proxy on the runtime detour's hot
path is built from, the mock with --forward-to), side by side, on loopback. Run it through `run.sh`, which builds
the binaries and installs the tools; this file does the measuring.

    python3 benches/compare/compare.py [--rounds 5] [--seconds 3] [--rate auto] [--quick]

Layout: the load generator runs on CPU 0; the mock upstream and the proxy under test share CPU 1
(`taskset`). nginx runs one worker with keep-alive connections to the mock; detour runs one
worker thread. Every phase visits the targets in an order that rotates each round, and the
report gives the median over rounds plus every per-round ratio, because a shared VM drifts.

Phases (each bounded by time):
  sequential   1 connection, wrk, per method: p50 / p99 / p99.9, added p50 vs direct
  closed loop  64 connections, wrk, per method: requests/s, proxy CPU µs per request
               (utime + stime of the proxy's processes from /proc, over requests served)
  open loop    oha at a fixed rate with --latency-correction (coordinated omission), eth_call
  memory       1 000 keep-alive connections, first sending at half the open-loop rate in all
               (oha -c 1000), then all busy at once (wrk -c1000); peak RSS (VmHWM, VmRSS sampled)
  shapes       mainnet-shaped large answers (a header with withdrawals, a block with full
               transactions, a block's receipts, a wide eth_getLogs, a batch of 50 mixed calls),
               closed loop at 64 connections with both wrk (C) and oha (hyper): requests/s and
               proxy CPU per request
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
METHODS = ["eth_blockNumber", "eth_call", "eth_getBlockByNumber"]
BODIES = {
    "eth_blockNumber": '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}',
    "eth_call": '{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{"to":"0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48","data":"0x06fdde03"},"latest"]}',
    "eth_getBlockByNumber": '{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["0x1500000",false]}',
}
CACHE_METHODS = ["eth_call", "eth_getBlockByNumber", "eth_call_unique"]
CACHE_SHORT = {"eth_call": "call 500 B, hits", "eth_getBlockByNumber": "block 14 KB, hits", "eth_call_unique": "call 500 B, 0% hits"}
SHORT = {"eth_blockNumber": "blockNumber", "eth_call": "call 500 B", "eth_getBlockByNumber": "block 14 KB"}


def _batch50():
    calls = []
    for i in range(50):
        if i % 5 == 0:
            calls.append({"jsonrpc": "2.0", "id": i, "method": "eth_getBlockByNumber", "params": ["0x1500000", False]})
        elif i % 5 == 1:
            calls.append({"jsonrpc": "2.0", "id": i, "method": "eth_blockNumber", "params": []})
        else:
            calls.append({"jsonrpc": "2.0", "id": i, "method": "eth_call", "params": [{"to": "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", "data": "0x06fdde03"}, "latest"]})
    return json.dumps(calls, separators=(",", ":"))


# The large, mainnet-shaped answers (see mock.rs): name → (label, request body).
SHAPES = {
    "header": ("header 200 tx + 16 withdrawals", '{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["0x1500001",false]}'),
    "full_block": ("block, 200 full tx", '{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["0x1500000",true]}'),
    "receipts": ("eth_getBlockReceipts, 600 logs", '{"jsonrpc":"2.0","id":1,"method":"eth_getBlockReceipts","params":["0x1500000"]}'),
    "logs": ("eth_getLogs, 1 900 logs", '{"jsonrpc":"2.0","id":1,"method":"eth_getLogs","params":[{"fromBlock":"0x14ff000","toBlock":"0x1500000"}]}'),
    "batch50": ("batch of 50 mixed calls", _batch50()),
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def die(msg):
    print(f"compare: {msg}", file=sys.stderr)
    sys.exit(1)


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pids):
    """(utime, stime) summed over the processes, in clock ticks."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            user += int(rest[11])
            system += int(rest[12])
        except (OSError, IndexError, ValueError):
            pass
    return user, system


def cpu_us_per_req(before, after, requests):
    """Total, user and system CPU µs per request between two cpu_ticks readings."""
    per = 1e6 / CLK_TCK / max(1, requests)
    user, system = after[0] - before[0], after[1] - before[1]
    return {"cpu_us_per_req": (user + system) * per, "user_us_per_req": user * per, "sys_us_per_req": system * per}


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def post(url, body, timeout=2.0):
    req = urllib.request.Request(url, data=body.encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


class Target:
    def __init__(self, name, url, proc, pids):
        self.name, self.url, self.proc, self._pids = name, url, proc, pids

    def pids(self):
        return self._pids()


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="detour-compare.")
        self.procs = []
        self.shape_bytes = {}
        ncpu = len(os.sched_getaffinity(0))
        if ncpu >= 2:
            cpus = sorted(os.sched_getaffinity(0))
            self.load_cpu, self.server_cpu = str(cpus[0]), str(cpus[1])
        else:
            print("compare: fewer than 2 CPUs; running unpinned", file=sys.stderr)
            self.load_cpu = self.server_cpu = None

    def pinned(self, cpu, cmd):
        return (["taskset", "-c", cpu] + cmd) if cpu is not None else cmd

    def spawn(self, cmd, **kw):
        p = subprocess.Popen(cmd, **kw)
        self.procs.append(p)
        return p

    def stop(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + 10
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.work, ignore_errors=True)

    # --- the three targets ---------------------------------------------------------------

    def start_mock(self):
        p = self.spawn(
            self.pinned(self.server_cpu, [self.args.mock_bin]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = p.stdout.readline()
        m = re.match(r"listening on (\S+)", line)
        if not m:
            die(f"the mock did not start: {line!r}")
        self.mock_addr = m.group(1)
        return Target("direct", f"http://{self.mock_addr}/bench", p, lambda: [p.pid])

    def start_floor(self):
        """The smallest proxy on Tokio and httparse (compare-mock --forward-to): the floor."""
        p = self.spawn(
            self.pinned(self.server_cpu, [self.args.mock_bin, "--forward-to", self.mock_addr]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        m = re.match(r"listening on (\S+)", p.stdout.readline())
        if not m:
            die("the floor proxy did not start")
        return Target("floor", f"http://{m.group(1)}/bench", p, lambda: [p.pid])

    def start_nginx(self):
        port = free_port()
        prefix = os.path.join(self.work, "nginx")
        os.makedirs(prefix)
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""
worker_processes 1;
worker_rlimit_nofile 65536;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
user root;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    upstream mock {{
        server {self.mock_addr};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Large answers: buffered in memory and passed on as they come, never spooled to
            # a temporary file (the default beyond 64 KB, which would slow nginx down).
            proxy_buffers 32 16k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
""")
        p = self.spawn(
            self.pinned(self.server_cpu, [self.args.nginx_bin, "-p", prefix, "-c", conf]),
            stderr=subprocess.DEVNULL,
        )
        # The master forks the worker; count both (the master is idle).
        return Target("nginx", f"http://127.0.0.1:{port}/bench", p, lambda: [p.pid] + children(p.pid))

    def start_detour(self, cache=False, name="detour"):
        """detour as the proxies compare: the response cache off (nginx caches nothing). With
        `cache`, the default cache on, for the cache phase."""
        port = free_port()
        conf = os.path.join(self.work, f"{name}.toml")
        with open(conf, "w") as f:
            f.write(f"""
[server]
listen = "127.0.0.1:{port}"
worker_threads = 1
access_log = {"true" if self.args.access_log == "on" else "false"}

[cache]
enabled = {"true" if cache else "false"}

[chains.bench]
chain_id = 1

[[chains.bench.upstreams]]
name = "mock"
url = "http://{self.mock_addr}"
""")
        p = self.spawn(
            self.pinned(self.server_cpu, [self.args.detour_bin, "--config", conf]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, RUST_LOG="info" if self.args.access_log == "on" else "warn"),
        )
        return Target(name, f"http://127.0.0.1:{port}/bench", p, lambda: [p.pid])

    def wait_ready(self, target):
        deadline = time.time() + 20
        while True:
            if target.proc.poll() is not None:
                die(f"{target.name} exited with {target.proc.returncode}")
            try:
                status, _ = post(target.url, BODIES["eth_blockNumber"], timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            if time.time() > deadline:
                die(f"{target.name} did not answer at {target.url}")
            time.sleep(0.05)

    # --- load generators ---------------------------------------------------------------

    def wrk(self, target, method, conns, seconds, body=None):
        cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "5s", "-s", os.path.join(HERE, "wrk.lua"), target.url]
        pids = target.pids()
        before = cpu_ticks(pids)
        env = dict(os.environ, METHOD=method)
        if body is not None:
            env["BODY"] = body
        out = subprocess.run(
            self.pinned(self.load_cpu, cmd),
            env=env,
            capture_output=True,
            text=True,
            timeout=seconds + 30,
        )
        after = cpu_ticks(pids)
        m = re.search(r"^@@json (.*)$", out.stdout, re.M)
        if out.returncode != 0 or not m:
            die(f"wrk against {target.name} failed:\n{out.stdout}\n{out.stderr}")
        r = json.loads(m.group(1))
        if r["errors"] or r["status_errors"]:
            die(f"{target.name} {method}: {r['errors']} socket errors, {r['status_errors']} non-2xx of {r['requests']}")
        r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
        r.update(cpu_us_per_req(before, after, r["requests"]))
        return r

    def oha(self, target, method, rate, seconds, conns=32, body=None):
        """oha at `rate` (open loop, latency corrected), or as fast as it can with `rate` None."""
        paced = ["-q", str(rate), "--latency-correction"] if rate else []
        cmd = [
            self.args.oha_bin, "--no-tui", "--output-format", "json", "--worker-threads", "1",
            "-z", f"{seconds}s", *paced, "-c", str(conns),
            "-m", "POST", "-T", "application/json", "-d", body or BODIES[method], target.url,
        ]
        pids = target.pids()
        before = cpu_ticks(pids)
        out = subprocess.run(self.pinned(self.load_cpu, cmd), capture_output=True, text=True, timeout=seconds + 30)
        after = cpu_ticks(pids)
        if out.returncode != 0:
            die(f"oha against {target.name} failed:\n{out.stderr}")
        d = json.loads(out.stdout)
        codes = d.get("statusCodeDistribution") or {}
        ok = codes.get("200", 0)
        bad = sum(v for k, v in codes.items() if k != "200")
        # Requests cut by the end of the run are reported as errors ("aborted due to deadline").
        errors = {k: v for k, v in (d.get("errorDistribution") or {}).items() if "deadline" not in k}
        if bad or errors:
            die(f"{target.name} open loop: {bad} non-200, errors {errors}")
        p = d["latencyPercentiles"]
        return {
            "requests": ok,
            "rps": d["summary"]["requestsPerSec"],
            "p50": p["p50"] * 1e6,
            "p99": p["p99"] * 1e6,
            "p999": p["p99.9"] * 1e6,
            **cpu_us_per_req(before, after, ok),
        }

    def memory(self, target, seconds, rate):
        """RSS with 1 000 keep-alive connections: first open and sending eth_call at `rate`
        in all (oha), then all busy at once (wrk, closed loop: 1 000 requests in flight)."""
        out = {}
        for kind in ("open", "busy"):
            stop = threading.Event()
            peak = [0]

            def sample():
                while not stop.is_set():
                    peak[0] = max(peak[0], sum(status_kib(p, "VmRSS") for p in target.pids()))
                    time.sleep(0.05)

            t = threading.Thread(target=sample)
            t.start()
            try:
                if kind == "open":
                    r = self.oha(target, "eth_call", rate, seconds, conns=1000)
                else:
                    r = self.wrk(target, "eth_call", 1000, seconds)
            finally:
                stop.set()
                t.join()
            r["rss_peak_kib"] = peak[0]
            r["hwm_kib"] = max(status_kib(p, "VmHWM") for p in target.pids())
            out[kind] = r
        return out


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_list(xs, nd=2):
    return "[" + ", ".join(f"{x:.{nd}f}" for x in xs) + "]"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each sequential/closed-loop run")
    ap.add_argument("--rate", default="auto", help="open-loop requests/s (auto: half the slower proxy's closed-loop eth_call rate, or 2000 without that phase)")
    ap.add_argument("--quick", action="store_true", help="1 round of 1 s runs: checks that everything works")
    ap.add_argument("--phases", default="seq,closed,open,memory,cache,shapes", help="comma-separated subset of seq,closed,open,memory,cache,shapes")
    ap.add_argument("--json", help="also write every measurement to this file")
    ap.add_argument("--access-log", choices=["on", "off"], default="off", help="detour's access log (on is detour's default; off matches nginx's access_log off)")
    ap.add_argument("--detour-bin", default=os.path.join(ROOT, "target/release/detour"))
    ap.add_argument("--mock-bin", default=os.path.join(ROOT, "target/release/examples/compare-mock"))
    ap.add_argument("--nginx-bin", default=shutil.which("nginx") or "/usr/sbin/nginx")
    ap.add_argument("--oha-bin", default=shutil.which("oha") or os.path.join(HERE, ".tools/bin/oha"))
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.seconds = 1, 1.0
    secs = max(1, round(args.seconds))
    phases = set(args.phases.split(","))
    if not phases <= {"seq", "closed", "open", "memory", "cache", "shapes"}:
        die(f"unknown phase in --phases {args.phases}")
    for tool in [args.detour_bin, args.mock_bin, args.nginx_bin, args.oha_bin, shutil.which("wrk") or "wrk"]:
        if not (os.path.isfile(tool) and os.access(tool, os.X_OK)):
            die(f"{tool} is missing; run benches/compare/run.sh, which builds and installs everything")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if want < 4096 and "memory" in phases:
        if not args.quick:
            die(f"the open-files limit is {hard}; the 1 000-connection phase needs 4096 (ulimit -n)")
        print(f"compare: open-files limit {hard}: skipping the 1 000-connection phase", file=sys.stderr)
        phases.discard("memory")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))

    b = Bench(args)
    results = {"seq": {}, "closed": {}, "open": {}, "memory": {}, "cache": {}, "shapes": {}}
    try:
        direct = b.start_mock()
        nginx = b.start_nginx()
        detour = b.start_detour()
        floor = b.start_floor()
        targets = [direct, nginx, detour, floor]
        for t in targets:
            b.wait_ready(t)
        # Transparency first: both proxies must give the mock's bytes exactly.
        for m in METHODS:
            want = post(direct.url, BODIES[m])[1]
            for t in (nginx, detour, floor):
                got = post(t.url, BODIES[m])[1]
                if got != want:
                    die(f"{t.name} changed the {m} answer: {got[:120]!r} vs {want[:120]!r}")
        for name, (_, body) in SHAPES.items() if "shapes" in phases else []:
            want = post(direct.url, body, timeout=10)[1]
            for t in (nginx, detour, floor):
                got = post(t.url, body, timeout=10)[1]
                if got != want:
                    die(f"{t.name} changed the {name} answer ({len(got)} vs {len(want)} bytes)")
            b.shape_bytes[name] = len(want)
        print(f"mock {b.mock_addr}; load generator on CPU {b.load_cpu}, servers on CPU {b.server_cpu}", file=sys.stderr)
        for t in targets:  # warm-up: connections, caches, detour's latency estimate
            b.wrk(t, "eth_call", 8, 1)

        def rotate(r):
            k = r % len(targets)
            return targets[k:] + targets[:k]

        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
            for m in METHODS:
                for t in rotate(r) if "seq" in phases else []:
                    results["seq"].setdefault(m, {}).setdefault(t.name, []).append(b.wrk(t, m, 1, secs))
                for t in rotate(r) if "closed" in phases else []:
                    results["closed"].setdefault(m, {}).setdefault(t.name, []).append(b.wrk(t, m, 64, secs))

        if args.rate != "auto":
            rate = int(args.rate)
        elif "closed" not in phases:
            rate = 2000  # no closed-loop numbers to size it from
        else:
            slow = min(med([x["rps"] for x in results["closed"]["eth_call"][n]]) for n in ("nginx", "detour"))
            rate = max(500, int(slow / 2 / 500) * 500)
        open_rounds = max(1, min(3, args.rounds)) if "open" in phases else 0
        for r in range(open_rounds):
            print(f"open loop {r + 1}/{open_rounds} at {rate}/s", file=sys.stderr)
            for t in rotate(r):
                results["open"].setdefault(t.name, []).append(b.oha(t, "eth_call", rate, secs + 2))

        if "memory" in phases:
            print("1 000 keep-alive connections", file=sys.stderr)
        # 1 000 clients at a quarter of the slower proxy's capacity: many open connections,
        # modest load (at full load the all-busy run shows the other extreme).
        mem_rate = max(500, rate // 2 // 500 * 500)
        for t in (nginx, detour, floor) if "memory" in phases else []:
            results["memory"][t.name] = b.memory(t, secs + 2, mem_rate)

        for r in range(args.rounds) if "shapes" in phases else []:
            print(f"large answers round {r + 1}/{args.rounds}", file=sys.stderr)
            for name, (_, body) in SHAPES.items():
                for t in rotate(r):
                    if t is direct:
                        continue
                    shape = results["shapes"].setdefault(name, {}).setdefault(t.name, {"wrk": [], "oha": []})
                    shape["wrk"].append(b.wrk(t, "shape", 64, secs, body=body))
                    shape["oha"].append(b.oha(t, "shape", None, secs, conns=64, body=body))

        if "cache" in phases:
            # The response cache: detour with the cache on against the same build with it off.
            cached = b.start_detour(cache=True, name="detour+cache")
            b.wait_ready(cached)
            targets.append(cached)
            for t in (detour, cached):
                b.wrk(t, "eth_call", 8, 2)  # warm-up: the cache follows the chain
            for r in range(args.rounds):
                print(f"cache round {r + 1}/{args.rounds}", file=sys.stderr)
                for m in CACHE_METHODS:
                    pair = (detour, cached) if r % 2 == 0 else (cached, detour)
                    for t in pair:
                        results["cache"].setdefault(m, {}).setdefault(t.name, []).append(b.wrk(t, m, 64, secs))
        for t in targets:
            if t.proc.poll() is not None:
                die(f"{t.name} exited during the run")
        report(b, args, results, rate, secs, mem_rate if "memory" in phases else 0)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rate": rate, "seconds": secs, "rounds": args.rounds, "results": results}, f, indent=1)
    finally:
        b.stop()


def report(b, args, res, rate, secs, mem_rate):
    names = ["direct", "nginx", "detour", "floor"]
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    ver = subprocess.run([args.nginx_bin, "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
    print(f"\n## detour vs nginx {ver} vs direct — {args.rounds} round(s), {secs} s per run, {cpu}, {os.cpu_count()} CPUs, detour's access log {args.access_log}")
    print("Medians over rounds; [per-round detour/nginx ratios]. Latency in µs. `floor`: the")
    print("smallest proxy on what detour's HTTP/1 path is built from (Tokio current-thread,")
    print("httparse, one upstream connection per client; no JSON-RPC work, no timeouts), to show")
    print("what the runtime itself costs.\n")

    def col(phase, m, n, key):
        return med([x[key] for x in res[phase][m][n]])

    added, cpu_ratio, rps_ratio = {}, {}, {}
    if res["seq"]:
        added = report_seq(res, names, col)
    if res["closed"]:
        cpu_ratio, rps_ratio = report_closed(res, names, col)
    if res["open"]:
        report_open(res, names, rate)
    if res["memory"]:
        report_memory(res, mem_rate)
    if res["cache"]:
        report_cache(res)
    if res["shapes"]:
        report_shapes(res, b.shape_bytes)
    report_targets(res, added, cpu_ratio, rps_ratio)


def report_seq(res, names, col):
    print("### Sequential, 1 connection (wrk)\n")
    print("| call | target | requests/run | p50 | p99 | p99.9 | added p50 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    added = {}
    for m in METHODS:
        for n in names:
            rows = res["seq"][m][n]
            adds = [rows[i]["p50"] - res["seq"][m]["direct"][i]["p50"] for i in range(len(rows))]
            added[(m, n)] = adds
            a = "" if n == "direct" else f"{med(adds):.0f}"
            print(f"| {SHORT[m]} | {n} | {min(x['requests'] for x in rows)} | {col('seq', m, n, 'p50'):.0f} | {col('seq', m, n, 'p99'):.0f} | {col('seq', m, n, 'p999'):.0f} | {a} |")
    print("\nadded p50, detour/nginx per round:")
    for m in METHODS:
        ratios = [d / max(1e-9, g) for d, g in zip(added[(m, "detour")], added[(m, "nginx")])]
        print(f"- {SHORT[m]}: {fmt_list(ratios)}  (median {med(ratios):.2f})")

    return added


def report_closed(res, names, col):
    print("\n### Closed loop, 64 connections (wrk)\n")
    print("| call | target | requests/s | proxy CPU per request | user + sys |")
    print("|---|---|---:|---:|---:|")
    for m in METHODS:
        for n in names:
            c = "(the mock) | " if n == "direct" else f"{col('closed', m, n, 'cpu_us_per_req'):.1f} µs | {col('closed', m, n, 'user_us_per_req'):.1f} + {col('closed', m, n, 'sys_us_per_req'):.1f}"
            print(f"| {SHORT[m]} | {n} | {col('closed', m, n, 'rps'):.0f} | {c} |")
    print("\ndetour/nginx per round:")
    cpu_ratio, rps_ratio = {}, {}
    for m in METHODS:
        d, g = res["closed"][m]["detour"], res["closed"][m]["nginx"]
        cpu_ratio[m] = [x["cpu_us_per_req"] / max(1e-9, y["cpu_us_per_req"]) for x, y in zip(d, g)]
        rps_ratio[m] = [x["rps"] / y["rps"] for x, y in zip(d, g)]
        print(f"- {SHORT[m]}: CPU {fmt_list(cpu_ratio[m])} (median {med(cpu_ratio[m]):.2f}), throughput {fmt_list(rps_ratio[m])} (median {med(rps_ratio[m]):.2f})")

    return cpu_ratio, rps_ratio


def report_open(res, names, rate):
    print(f"\n### Open loop, eth_call at {rate}/s, 32 connections (oha, latency corrected for coordinated omission)\n")
    print("| target | p50 | p99 | p99.9 | proxy CPU per request |")
    print("|---|---:|---:|---:|---:|")
    for n in names:
        rows = res["open"][n]
        c = "" if n == "direct" else f"{med([x['cpu_us_per_req'] for x in rows]):.1f} µs"
        print(f"| {n} | {med([x['p50'] for x in rows]):.0f} | {med([x['p99'] for x in rows]):.0f} | {med([x['p999'] for x in rows]):.0f} | {c} |")



def report_memory(res, rate):
    print("\n### Memory with 1 000 keep-alive client connections, eth_call\n")
    print("| target | load | requests/s | RSS peak during the run | peak RSS of the process so far (VmHWM) |")
    print("|---|---|---:|---:|---:|")
    for n in ("nginx", "detour", "floor"):
        for kind, what in (("open", f"{rate}/s in all (oha)"), ("busy", "all busy (wrk -c1000)")):
            r = res["memory"][n][kind]
            print(f"| {n} | {what} | {r['rps']:.0f} | {r['rss_peak_kib'] / 1024:.1f} MiB | {r['hwm_kib'] / 1024:.1f} MiB |")
    print("\n(nginx: master + worker during the run; VmHWM of the largest process.)")


def report_cache(res):
    print("\n### The response cache, closed loop, 64 connections (wrk)\n")
    print("detour with `[cache] enabled = true` against the same build with it off. Hits: the same")
    print("call every time. 0% hits: every `eth_call` has other call data (wrk's Lua), so every")
    print("lookup misses and the answer goes upstream.\n")
    print("| call | cache | requests/s | proxy CPU per request | user + sys |")
    print("|---|---|---:|---:|---:|")
    for m in CACHE_METHODS:
        for n in ("detour", "detour+cache"):
            rows = res["cache"][m][n]
            print(f"| {CACHE_SHORT[m]} | {'on' if n != 'detour' else 'off'} | {med([x['rps'] for x in rows]):.0f} | {med([x['cpu_us_per_req'] for x in rows]):.1f} µs | {med([x['user_us_per_req'] for x in rows]):.1f} + {med([x['sys_us_per_req'] for x in rows]):.1f} |")
    print("\ncache on / off per round:")
    for m in CACHE_METHODS:
        on, off = res["cache"][m]["detour+cache"], res["cache"][m]["detour"]
        cpu = [x["cpu_us_per_req"] / max(1e-9, y["cpu_us_per_req"]) for x, y in zip(on, off)]
        rps = [x["rps"] / y["rps"] for x, y in zip(on, off)]
        print(f"- {CACHE_SHORT[m]}: CPU {fmt_list(cpu)} (median {med(cpu):.2f}), throughput {fmt_list(rps)} (median {med(rps):.2f})")


def report_shapes(res, sizes):
    print("\n### Large, mainnet-shaped answers, closed loop, 64 connections (wrk and oha)\n")
    print("Proxy CPU per request (user + sys) and requests/s; detour/nginx is the median of the")
    print("per-round ratios.\n")
    print("| answer | bytes | load generator | nginx CPU | detour CPU | floor CPU | detour/nginx CPU | detour/nginx requests/s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for name, (label, _) in SHAPES.items():
        for gen in ("wrk", "oha"):
            rows = {n: res["shapes"][name][n][gen] for n in ("nginx", "detour", "floor")}
            c = {n: med([x["cpu_us_per_req"] for x in rows[n]]) for n in rows}
            cpu = med([d["cpu_us_per_req"] / max(1e-9, g["cpu_us_per_req"]) for d, g in zip(rows["detour"], rows["nginx"])])
            rps = med([d["rps"] / max(1e-9, g["rps"]) for d, g in zip(rows["detour"], rows["nginx"])])
            print(f"| {label} | {sizes.get(name, 0)} | {gen} | {c['nginx']:.1f} µs | {c['detour']:.1f} µs | {c['floor']:.1f} µs | {cpu:.2f} | {rps:.2f} |")


def report_targets(res, added, cpu_ratio, rps_ratio):
    print("\n### Targets (detour against nginx in this run)\n")

    def check(what, value, ok):
        print(f"- {what}: {value:.2f} — {'met' if ok else 'NOT met'}")

    if cpu_ratio:
        c = med(cpu_ratio["eth_call"])
        check("CPU per request, eth_call, ≤ 1.0× nginx", c, c <= 1.0)
        c = med(cpu_ratio["eth_getBlockByNumber"])
        check("CPU per request, 14 KB block, ≤ 1.2× nginx", c, c <= 1.2)
        t = med(rps_ratio["eth_call"])
        check("throughput at 64 connections, eth_call, ≥ 1.0× nginx", t, t >= 1.0)
    if added:
        a = med([d / max(1e-9, g) for d, g in zip(added[("eth_call", "detour")], added[("eth_call", "nginx")])])
        check("added p50, eth_call, ≤ 1.0× nginx", a, a <= 1.0)
    if res["memory"]:
        rss = res["memory"]["detour"]["open"]["hwm_kib"] / 1024
        check("peak RSS with 1 000 open keep-alive connections ≤ 30 MiB (MiB)", rss, rss <= 30)
        rss = res["memory"]["detour"]["busy"]["hwm_kib"] / 1024
        print(f"  (with all 1 000 busy at once: {rss:.1f} MiB)")
    if res["cache"]:
        ratio = lambda m, k: med([x[k] / max(1e-9, y[k]) for x, y in zip(res["cache"][m]["detour+cache"], res["cache"][m]["detour"])])
        c = ratio("eth_call", "cpu_us_per_req")
        check("cache hit CPU per request, eth_call, ≤ 0.5× proxied", c, c <= 0.5)
        t = ratio("eth_call", "rps")
        check("cache hit throughput, eth_call, ≥ 2× proxied", t, t >= 2.0)
        c = ratio("eth_call_unique", "cpu_us_per_req")
        check("cache on, 0% hits, CPU per request ≤ 1.05× cache off", c, c <= 1.05)
    for name, (label, _) in SHAPES.items() if res["shapes"] else []:
        for gen in ("wrk", "oha"):
            d, g = res["shapes"][name]["detour"][gen], res["shapes"][name]["nginx"][gen]
            c = med([x["cpu_us_per_req"] / max(1e-9, y["cpu_us_per_req"]) for x, y in zip(d, g)])
            check(f"CPU per request, {label} ({gen}), ≤ 1.0× nginx", c, c <= 1.0)
    print("- selection flat from 3 to 1 000 upstreams: `cargo bench --bench select`")


if __name__ == "__main__":
    main()
