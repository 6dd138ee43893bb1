// End-to-end: event filters through detour while upstreams fail, with real clients.
//
// Three anvil nodes hold the same chain: every transaction is sent to each live node and each
// block is mined on each with the same timestamp, so their blocks are identical (anvil is
// deterministic); a restarted node "syncs" by replaying the history. detour serves them as one
// tier. A contract emits Ping(n) for n = 1..N, one per block, while
//   - ethers v6 `contract.on("Ping")` (eth_newFilter + eth_getFilterChanges over HTTP),
//   - viem `createContractEventFilter` + `getFilterChanges`, and
//   - viem `createBlockFilter` + `getFilterChanges`
// watch through detour; node A is SIGKILLed, restarted and resynced, then node B is killed.
// Every event must arrive exactly once and in order, and every block hash once, in order.
// Then `anvil_reorg` drops the last 3 blocks on the live nodes: a log filter gets their Ping
// logs again with "removed": true, highest block first.
//
// usage: NODE_PATH=scripts/.tools/node_modules node scripts/e2e_filters.cjs ANVIL DETOUR WORKDIR
"use strict";

const { spawn } = require("node:child_process");
const fs = require("node:fs");
const net = require("node:net");
const path = require("node:path");
const ethers = require("ethers");
const viem = require("viem");

const [ANVIL, DETOUR, WORK] = process.argv.slice(2);
const CHAIN_ID = 31337;
const T0 = 1_700_000_000;
const N = 60; // Ping events, one per block
const KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"; // anvil dev account 0
const children = new Set();
const log = (...a) => console.log("[e2e-filters]", ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function cleanup() {
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch {}
  }
}
process.on("exit", cleanup);
const deadline = setTimeout(() => {
  console.error("[e2e-filters] FAIL: the whole scenario took over 150 s");
  process.exit(1);
}, 150_000);

function fail(why) {
  console.error("[e2e-filters] FAIL:", why);
  for (const f of fs.readdirSync(WORK).filter((f) => f.startsWith("filters-"))) {
    const text = fs.readFileSync(path.join(WORK, f), "utf8").split("\n").slice(-15).join("\n");
    console.error(`--- ${f}\n${text}`);
  }
  process.exit(1);
}

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function rpc(url, method, params = []) {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }),
    signal: AbortSignal.timeout(10_000),
  });
  const body = await res.json();
  if (body.error) throw new Error(`${method}: ${JSON.stringify(body.error)}`);
  return body.result;
}

async function waitUp(url, seconds) {
  for (let i = 0; i < seconds * 10; i++) {
    try {
      await rpc(url, "eth_chainId");
      return;
    } catch {
      await sleep(100);
    }
  }
  fail(`${url} did not start`);
}

// --- the replicated chain ----------------------------------------------------------------
class Node {
  constructor(name, port) {
    this.name = name;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.proc = null;
  }
  async start() {
    const out = fs.openSync(path.join(WORK, `filters-anvil-${this.name}.log`), "a");
    this.proc = spawn(
      ANVIL,
      ["--host", "127.0.0.1", "--port", String(this.port), "--chain-id", String(CHAIN_ID),
        "--no-mining", "--timestamp", String(T0)],
      { stdio: ["ignore", out, out] },
    );
    children.add(this.proc);
    await waitUp(this.url, 30);
  }
  kill() {
    this.proc.kill("SIGKILL");
    children.delete(this.proc);
    this.proc = null;
  }
  get alive() {
    return this.proc !== null;
  }
}

const wallet = new ethers.Wallet(KEY);
const history = []; // per block: { raw: [signed txs], timestamp }
let nonce = 0;

async function mineOn(node, block) {
  for (const raw of block.raw) await rpc(node.url, "eth_sendRawTransaction", [raw]);
  await rpc(node.url, "evm_mine", [block.timestamp]);
}

async function mine(nodes, txs) {
  const raw = [];
  for (const tx of txs) {
    raw.push(await wallet.signTransaction({
      type: 2, chainId: CHAIN_ID, nonce: nonce++, gasLimit: 200_000,
      maxFeePerGas: 20_000_000_000n, maxPriorityFeePerGas: 1_000_000_000n, ...tx,
    }));
  }
  const block = { raw, timestamp: T0 + 12 * (history.length + 1) };
  history.push(block);
  await Promise.all(nodes.filter((n) => n.alive).map((n) => mineOn(n, block)));
}

async function resync(node) {
  for (const block of history) await mineOn(node, block);
}

// The contract: any call emits Ping(calldata[4..36]) (LOG2 with topic0 = keccak("Ping(uint256)")).
const TOPIC = ethers.id("Ping(uint256)");
const runtime = "6004357f" + TOPIC.slice(2) + "60006000a200";
const initcode = "0x602a600c600039602a6000f3" + runtime;
const ABI = ["event Ping(uint256 indexed n)", "function ping(uint256 n)"];
const iface = new ethers.Interface(ABI);

async function main() {
  const nodes = [];
  for (const name of ["a", "b", "c"]) nodes.push(new Node(name, await freePort()));
  await Promise.all(nodes.map((n) => n.start()));
  const [A, B] = nodes;

  const dport = await freePort();
  const config = path.join(WORK, "filters-detour.toml");
  fs.writeFileSync(config, `
[server]
listen = "127.0.0.1:${dport}"
[client]
connect_timeout = "1s"
attempt_timeout = "2s"
[tracker]
poll_interval = "200ms"
[chains.anvil]
chain_id = ${CHAIN_ID}
${nodes.map((n) => `[[chains.anvil.upstreams]]\nname = "anvil-${n.name}"\nurl = "${n.url}"\n`).join("\n")}
`);
  const dlog = fs.openSync(path.join(WORK, "filters-detour.log"), "a");
  const detour = spawn(DETOUR, ["--config", config], {
    stdio: ["ignore", dlog, dlog], env: { ...process.env, RUST_LOG: "info" },
  });
  children.add(detour);
  const RPC = `http://127.0.0.1:${dport}/anvil`;
  await waitUp(RPC, 30);
  log(`detour on ${RPC}; anvil on ${nodes.map((n) => n.port).join(", ")}`);

  // Deploy (block 1).
  const address = ethers.getCreateAddress({ from: wallet.address, nonce: 0 });
  await mine(nodes, [{ data: initcode }]);
  const code = await rpc(RPC, "eth_getCode", [address, "latest"]);
  if (code.length < 10) fail(`no contract at ${address}: ${code}`);
  log(`contract at ${address}`);

  // Watchers.
  const provider = new ethers.JsonRpcProvider(RPC, CHAIN_ID, { staticNetwork: true, pollingInterval: 200 });
  const contract = new ethers.Contract(address, ABI, provider);
  const byEthers = [];
  await contract.on("Ping", (n) => byEthers.push(Number(n)));

  const client = viem.createPublicClient({ transport: viem.http(RPC, { retryCount: 0 }) });
  const abi = viem.parseAbi(["event Ping(uint256 indexed n)"]);
  const eventFilter = await client.createContractEventFilter({ abi, address, eventName: "Ping" });
  const blockFilter = await client.createBlockFilter();
  const byViem = [];
  const blocks = [];
  const pollErrors = [];
  let polling = true;
  const poller = (async () => {
    while (polling) {
      try {
        for (const l of await client.getFilterChanges({ filter: eventFilter })) byViem.push(Number(l.args.n));
        blocks.push(...(await client.getFilterChanges({ filter: blockFilter })));
      } catch (e) {
        pollErrors.push(String(e.shortMessage || e.message));
      }
      await sleep(150);
    }
  })();
  // The first block each watcher can see is the one after they started.
  const firstWatched = history.length + 1;

  // The chain moves; faults meanwhile.
  for (let n = 1; n <= N; n++) {
    await mine(nodes, [{ to: address, data: iface.encodeFunctionData("ping", [n]) }]);
    if (n === 15) {
      A.kill();
      log("anvil-a killed");
    } else if (n === 30) {
      await A.start();
      await resync(A);
      log("anvil-a restarted and resynced");
    } else if (n === 40) {
      B.kill();
      log("anvil-b killed");
    }
    await sleep(120);
  }
  const want = Array.from({ length: N }, (_, i) => i + 1);
  const until = Date.now() + 20_000;
  while ((byEthers.length < N || byViem.length < N) && Date.now() < until) await sleep(100);
  polling = false;
  await poller;
  const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
  if (!same(byEthers, want)) fail(`ethers contract.on got ${JSON.stringify(byEthers)}`);
  if (!same(byViem, want)) fail(`viem getFilterChanges got ${JSON.stringify(byViem)}`);
  log(`ok: ethers contract.on and viem getFilterChanges each got Ping 1..${N} once, in order`);
  const head = Number(await rpc(RPC, "eth_blockNumber"));
  const canonical = [];
  for (let h = firstWatched; h <= head; h++) canonical.push((await rpc(RPC, "eth_getBlockByNumber", ["0x" + h.toString(16), false])).hash);
  if (!same(blocks, canonical)) fail(`block filter got ${blocks.length} hashes, want ${canonical.length}: ${JSON.stringify(blocks.slice(0, 3))}…`);
  log(`ok: viem block filter got blocks ${firstWatched}..${head} once, in order`);
  if (pollErrors.length) log(`(viem polls that failed and were retried: ${pollErrors.length}: ${pollErrors[0]})`);
  await contract.removeAllListeners();

  // A reorg: the last 3 blocks are dropped on the live nodes.
  const filter = await rpc(RPC, "eth_newFilter", [{ address, topics: [TOPIC] }]);
  await rpc(RPC, "eth_getFilterChanges", [filter]);
  for (const n of nodes.filter((n) => n.alive)) await rpc(n.url, "anvil_reorg", [3, []]);
  let removed = [];
  const reorgUntil = Date.now() + 15_000;
  while (removed.length < 3 && Date.now() < reorgUntil) {
    await sleep(200);
    removed.push(...(await rpc(RPC, "eth_getFilterChanges", [filter])));
  }
  const got = removed.map((l) => [l.removed, Number(BigInt(l.topics[1]))]);
  const wantRemoved = [[true, N], [true, N - 1], [true, N - 2]];
  if (JSON.stringify(got) !== JSON.stringify(wantRemoved)) fail(`after anvil_reorg the filter got ${JSON.stringify(got)}, want ${JSON.stringify(wantRemoved)}`);
  log("ok: anvil_reorg of 3 blocks: their Ping logs came again with removed: true, highest first");

  detour.kill("SIGTERM");
  clearTimeout(deadline);
  cleanup();
  log("passed");
  process.exit(0);
}

main().catch((e) => fail(e.stack || String(e)));
