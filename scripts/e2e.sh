#!/usr/bin/env bash
# End-to-end test of detour against real Ethereum nodes (Foundry's anvil), driven by cast,
# curl and a small Python client. Loopback only; every step is bounded in time.
#
#   bash scripts/e2e.sh            # builds detour (debug) if needed
#   DETOUR_BIN=target/release/detour bash scripts/e2e.sh
#
# Three anvil nodes start from the same genesis: A in tier 0, B and C in tier 1. Transactions go
# to A (the preferred tier) and their receipts are polled there. Then a steady stream of reads
# runs while A is killed: every read must succeed (failover to B/C, no client-visible error).
# Then the health scenarios (e2e_health.py), filters and WebSocket subscriptions watched by ethers
# and viem through node failures and a reorg (e2e_subscriptions.cjs), a large answer streamed
# through a node's death and a cut connection (e2e_stream.cjs), the response cache
# (e2e_cache.py), three replicas sharing a Redis (e2e_shared.py) and the status page
# (e2e_status_page.py).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
FOUNDRY_VERSION=1.7.1
TOOLS=$ROOT/scripts/.tools
ANVIL=$TOOLS/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
CAST=$TOOLS/node_modules/@foundry-rs/cast-linux-amd64/bin/cast
WORK=$(mktemp -d -t detour-e2e.XXXXXX)
PIDS=()

log() { printf '[e2e] %s\n' "$*"; }
fail() { printf '[e2e] FAIL: %s\n' "$*" >&2; for f in "$WORK"/*.log; do echo "--- $f" >&2; tail -n 20 "$f" >&2; done; exit 1; }
cleanup() {
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- tools -------------------------------------------------------------------------------
ETHERS_VERSION=6.17.0
VIEM_VERSION=2.57.20
installed() { grep -q "\"version\": \"$2\"" "$TOOLS/node_modules/$1/package.json" 2>/dev/null; }
if [ ! -x "$ANVIL" ] || [ ! -x "$CAST" ] || ! "$ANVIL" --version | grep -q "$FOUNDRY_VERSION" \
  || ! installed ethers "$ETHERS_VERSION" || ! installed viem "$VIEM_VERSION"; then
  log "installing anvil and cast $FOUNDRY_VERSION, ethers $ETHERS_VERSION and viem $VIEM_VERSION from npm into scripts/.tools"
  mkdir -p "$TOOLS"
  npm install --prefix "$TOOLS" --no-save --no-audit --no-fund --loglevel=error \
    "@foundry-rs/anvil-linux-amd64@$FOUNDRY_VERSION" "@foundry-rs/cast-linux-amd64@$FOUNDRY_VERSION" \
    "ethers@$ETHERS_VERSION" "viem@$VIEM_VERSION" >/dev/null
fi
"$ANVIL" --version | head -1
DETOUR=${DETOUR_BIN:-$ROOT/target/debug/detour}
if [ -z "${DETOUR_BIN:-}" ]; then
  cargo build --quiet --bin detour
fi
[ -x "$DETOUR" ] || fail "no detour binary at $DETOUR"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url, seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    curl -s -o /dev/null -X POST -H 'content-type: application/json' \
      --data '{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}' "$1" && return 0
    sleep 0.1
  done
  return 1
}

# --- nodes -------------------------------------------------------------------------------
declare -A PORT PID
for n in a b c; do
  PORT[$n]=$(free_port)
  "$ANVIL" --host 127.0.0.1 --port "${PORT[$n]}" --chain-id 31337 >"$WORK/anvil-$n.log" 2>&1 &
  PID[$n]=$!
  PIDS+=("${PID[$n]}")
done
for n in a b c; do wait_http "http://127.0.0.1:${PORT[$n]}" 30 || fail "anvil $n did not start"; done
log "anvil nodes on ports ${PORT[a]} (tier 0), ${PORT[b]} and ${PORT[c]} (tier 1)"

# --- detour ------------------------------------------------------------------------------
DPORT=$(free_port)
cat >"$WORK/detour.toml" <<EOF
[server]
listen = "127.0.0.1:$DPORT"
request_timeout = "10s"

[client]
connect_timeout = "1s"
attempt_timeout = "3s"

[chains.anvil]
chain_id = 31337

[[chains.anvil.upstreams]]
name = "anvil-a"
url = "http://127.0.0.1:${PORT[a]}"
tier = 0

[[chains.anvil.upstreams]]
name = "anvil-b"
url = "http://127.0.0.1:${PORT[b]}"
tier = 1

[[chains.anvil.upstreams]]
name = "anvil-c"
url = "http://127.0.0.1:${PORT[c]}"
tier = 1
EOF
"$DETOUR" check --config "$WORK/detour.toml" >/dev/null || fail "detour check rejected the config"
RUST_LOG=info "$DETOUR" --config "$WORK/detour.toml" --log-format json >"$WORK/detour.log" 2>&1 &
DPID=$!
PIDS+=("$DPID")
RPC="http://127.0.0.1:$DPORT/anvil"
wait_http "$RPC" 30 || fail "detour did not start"
curl -sf "http://127.0.0.1:$DPORT/readyz" >/dev/null || fail "/readyz not ready"
log "detour on $RPC"

cast_() { local sub=$1; shift; timeout 30 "$CAST" "$sub" --rpc-url "$RPC" "$@"; }
expect() { # what, got, want
  [ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
  log "ok: $1 = $2"
}

# --- cast through detour -----------------------------------------------------------------
KEY=0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80   # anvil dev account 0
FROM=0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266
TO=0x70997970C51812dc3A010C7d01b50e0d17dc79C8                        # anvil dev account 1

CID=$(cast_ chain-id) || fail "chain-id"
expect "chain-id" "$CID" "31337"
expect "chain-id at /31337" "$(timeout 30 "$CAST" chain-id --rpc-url "http://127.0.0.1:$DPORT/31337")" "31337"
BN=$(cast_ block-number) || fail "block-number"
[[ "$BN" =~ ^[0-9]+$ ]] || fail "block-number: $BN"
log "ok: block-number = $BN"
BAL=$(cast_ balance "$TO") || fail "balance"
expect "balance of dev account 1" "$BAL" "10000000000000000000000"

# A contract whose every call returns 42 (runtime: PUSH1 42 PUSH1 0 MSTORE PUSH1 32 PUSH1 0 RETURN).
DEPLOY=$(cast_ send --private-key "$KEY" --json --create 0x69602a60005260206000f3600052600a6016f3) || fail "deploy"
ADDR=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); assert r["status"] in ("0x1",1), r; print(r["contractAddress"])' "$DEPLOY") \
  || fail "deploy receipt: $DEPLOY"
log "ok: deployed at $ADDR (receipt via detour)"
OUT=$(cast_ call "$ADDR" 'answer()(uint256)') || fail "call"
expect "call" "$OUT" "42"

TX=$(cast_ send --private-key "$KEY" --json --value 1ether "$TO") || fail "transfer"
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); assert r["status"] in ("0x1",1), r' "$TX" || fail "transfer receipt: $TX"
BAL=$(cast_ balance "$TO") || fail "balance"
expect "balance after transfer" "$BAL" "10001000000000000000000"
NONCE=$(cast_ nonce "$FROM") || fail "nonce"
expect "sender nonce" "$NONCE" "2"

# --- a batch with curl -------------------------------------------------------------------
BATCH=$(curl -sS -f -X POST -H 'content-type: application/json' "$RPC" --data \
  '[{"jsonrpc":"2.0","id":"first","method":"eth_chainId"},
    {"jsonrpc":"2.0","id":2,"method":"eth_getBalance","params":["'"$TO"'","latest"]},
    {"jsonrpc":"2.0","method":"eth_blockNumber"},
    {"jsonrpc":"2.0","id":null,"method":"eth_getTransactionCount","params":["'"$FROM"'","latest"]},
    {"jsonrpc":"2.0","id":4,"method":"no_such_method"}]') || fail "batch request"

python3 - "$BATCH" <<'PY' || fail "batch: $BATCH"
import json, sys
r = json.loads(sys.argv[1])
assert [e["id"] for e in r] == ["first", 2, None, 4], r
assert r[0]["result"] == "0x7a69", r
assert int(r[1]["result"], 16) == 10001 * 10**18, r
assert r[2]["result"] == "0x2", r
assert r[3]["error"]["code"] == -32601, r
PY
log "ok: batch of 5 (one notification) answered in order"

# --- kill the preferred node during a steady stream of reads -----------------------------
log "steady reads; killing anvil-a (tier 0) after 100 of 400"
python3 - "$RPC" "${PID[a]}" "$TO" <<'PY' || fail "reads failed while a node was killed"
import http.client, json, os, signal, sys, time, urllib.parse
rpc, victim, addr = sys.argv[1], int(sys.argv[2]), sys.argv[3]
u = urllib.parse.urlparse(rpc)
conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
methods = [("eth_getBalance", [addr, "latest"]), ("eth_blockNumber", []), ("eth_chainId", []),
           ("eth_getTransactionCount", [addr, "latest"])]
failures, started = [], time.time()
for i in range(400):
    if i == 100:
        os.kill(victim, signal.SIGKILL)
    m, p = methods[i % len(methods)]
    body = json.dumps({"jsonrpc": "2.0", "id": i, "method": m, "params": p})
    try:
        conn.request("POST", u.path, body, {"content-type": "application/json"})
        resp = conn.getresponse()
        r = json.loads(resp.read())
        if resp.status != 200 or "error" in r or r.get("id") != i:
            failures.append((i, m, resp.status, r))
    except Exception as e:  # a failed call, never expected
        failures.append((i, m, "exception", repr(e)))
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
    time.sleep(0.005)
print(f"[e2e] 400 reads in {time.time() - started:.1f}s, {len(failures)} failed")
if failures:
    print(failures[:5])
    sys.exit(1)
PY
grep -q '"upstream ejected"' "$WORK/detour.log" || grep -q 'upstream ejected' "$WORK/detour.log" \
  || fail "detour did not log the ejection of anvil-a"
log "ok: zero failed reads; anvil-a ejected"

# --- and a write still works through the remaining nodes ---------------------------------
TX=$(cast_ send --private-key "$KEY" --json --value 1ether "$TO") || fail "transfer after failover"
python3 -c 'import json,sys; r=json.loads(sys.argv[1]); assert r["status"] in ("0x1",1), r' "$TX" || fail "transfer after failover: $TX"
log "ok: transaction mined through tier 1 after tier 0 died"

# --- graceful stop -----------------------------------------------------------------------
kill -TERM "$DPID"
for _ in $(seq 1 100); do kill -0 "$DPID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$DPID" 2>/dev/null; then fail "detour did not exit after SIGTERM"; fi
wait "$DPID" || fail "detour exited non-zero after SIGTERM"
log "ok: detour exited 0 on SIGTERM"
# --- health scenarios: kill, freeze, lag, each under a steady stream of reads ---------------
python3 scripts/e2e_health.py "$ANVIL" "$DETOUR" "$WORK" || fail "health scenarios"
log "ok: health scenarios"

# --- filters and WebSocket subscriptions through node failures and a reorg, ethers and viem ----
NODE_PATH=$TOOLS/node_modules node scripts/e2e_subscriptions.cjs "$ANVIL" "$DETOUR" "$WORK" || fail "filters and subscriptions"
log "ok: filters and subscriptions"

# --- a large answer streamed to fetch, ethers and viem; failover before it, a cut inside it --
NODE_PATH=$TOOLS/node_modules node scripts/e2e_stream.cjs "$ANVIL" "$DETOUR" "$WORK" || fail "streamed answers"
log "ok: streamed answers"

# --- the response cache: repeated reads counted at the node, read after write, a reorg -------
python3 scripts/e2e_cache.py "$ANVIL" "$DETOUR" "$WORK" "$CAST" || fail "response cache"
log "ok: response cache"

# --- three replicas sharing a real Redis: block number, Redis killed, a shared rate limit ----
python3 scripts/e2e_shared.py "$ANVIL" "$DETOUR" "$WORK" "$CAST" || fail "shared state"
log "ok: shared state"

# --- the status page in headless Chromium --------------------------------------------------
python3 scripts/e2e_status_page.py "$ANVIL" "$DETOUR" "$WORK" || fail "status page"
log "ok: status page"
echo "e2e: 18 passed, 0 failed"
