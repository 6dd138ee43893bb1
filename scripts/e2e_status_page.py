#!/usr/bin/env python3
"""The status page in a real browser: headless Chromium opens /status.html of a detour in front
of two anvil nodes, the page must list both upstreams as healthy; one node is killed, and the
page must then show it out of rotation. A screenshot of each state is kept in
scripts/.artifacts/ (not committed). Loopback only; every wait is bounded.

usage: e2e_status_page.py ANVIL DETOUR WORKDIR
"""
import atexit
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys

from e2e_common import free_port, poll

ANVIL, DETOUR, WORK = sys.argv[1], sys.argv[2], sys.argv[3]
ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".artifacts")
procs = []


def log(msg):
    print(f"[e2e-page] {msg}", flush=True)


def fail(msg):
    raise SystemExit(f"[e2e-page] FAIL: {msg}")


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.kill()


atexit.register(cleanup)


def get(port, path, accept="application/json"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path, headers={"Accept": accept})
    r = conn.getresponse()
    body = r.read().decode()
    conn.close()
    return r.status, body


def wait_until(what, pred, timeout):
    if not poll(pred, timeout, interval=0.2):
        fail(f"timed out after {timeout}s waiting until {what}")


browser = shutil.which("chromium") or shutil.which("chromium-browser")
if not browser:
    fail("chromium is not installed (.ci/run installs Debian's chromium package)")

ports = {n: free_port() for n in ("a", "b")}
for n, p in ports.items():
    procs.append(subprocess.Popen([ANVIL, "--host", "127.0.0.1", "--port", str(p)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
anvils = dict(zip(ports, procs))
dport = free_port()
config = f"""
[server]
listen = "127.0.0.1:{dport}"
[client]
connect_timeout = "1s"
[chains.anvil]
chain_id = 31337
[chains.anvil.health]
probe_interval = "300ms"
idle_probe_interval = "300ms"
unhealthy_after = 1
"""
for n, p in ports.items():
    config += f'\n[[chains.anvil.upstreams]]\nname = "node-{n}"\nurl = "http://127.0.0.1:{p}"\nregion = "zone-{n}"\n'
with open(os.path.join(WORK, "page.toml"), "w") as f:
    f.write(config)
procs.append(subprocess.Popen([DETOUR, "--config", os.path.join(WORK, "page.toml")],
                              stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(WORK, "page-detour.log"), "w")))


def upstream_states():
    status, body = get(dport, "/status")
    return {u["name"]: u["state"] for u in json.loads(body)["chains"][0]["upstreams"]}


wait_until("both nodes are healthy", lambda: upstream_states() == {"node-a": "healthy", "node-b": "healthy"}, 30)
status, body = get(dport, "/status.html", accept="text/html")
if status != 200 or "<title>detour status</title>" not in body:
    fail(f"/status.html: HTTP {status}")

os.makedirs(ARTIFACTS, exist_ok=True)
profile = os.path.join(WORK, "chromium-profile")


def browse(extra):
    cmd = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}",
           "--virtual-time-budget=4000", *extra, f"http://127.0.0.1:{dport}/status.html"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    if r.returncode != 0:
        fail(f"chromium exited {r.returncode}: {r.stderr[-2000:]}")
    return r.stdout


def rows(dom):
    """upstream name -> state, from the rows the page's script rendered."""
    return dict(re.findall(r'<tr data-upstream="([^"]+)" data-state="([^"]+)"', dom))


dom = browse(["--dump-dom"])
seen = rows(dom)
if seen != {"node-a": "healthy", "node-b": "healthy"}:
    fail(f"the page shows {seen}, want both healthy; DOM starts: {dom[:500]}")
error = re.search(r'<span id="error">([^<]*)</span>', dom)
if error and error.group(1).strip():
    fail(f"the page says: {error.group(1)}")
browse([f"--screenshot={os.path.join(ARTIFACTS, 'status-healthy.png')}", "--window-size=1400,900"])
log("page lists node-a and node-b as healthy")

anvils["b"].send_signal(signal.SIGKILL)
anvils["b"].wait()
wait_until("node-b is out of rotation", lambda: upstream_states()["node-b"] == "cooling_down", 30)
dom = browse(["--dump-dom"])
seen = rows(dom)
# The browser takes seconds to start and render; by then node-b's 1 s cool-down may have
# ended in a half-open trial (which fails and cools it down again): both are out of rotation.
if seen.get("node-b") not in ("cooling_down", "half_open") or seen.get("node-a") != "healthy":
    fail(f"after killing node-b the page shows {seen}")
browse([f"--screenshot={os.path.join(ARTIFACTS, 'status-node-down.png')}", "--window-size=1400,900"])
log(f"page shows node-b {seen['node-b']} after it was killed; screenshots in scripts/.artifacts/")
