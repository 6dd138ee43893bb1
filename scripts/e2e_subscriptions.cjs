// End-to-end: event filters through detour while upstreams fail, with real clients.
//
// Three anvil nodes hold the same chain: every transaction is sent to each live node and each
// block is mined on each with the same timestamp, so their blocks are identical (anvil is
// deterministic); a restarted node "syncs" by replaying the history. detour serves them as one
// tier. A contract emits Ping(n) for n = 1..N, one per block, while
//   - ethers v6 `contract.on("Ping")` (eth_newFilter + eth_getFilterChanges over HTTP),
//   - viem `createContractEventFilter` + `getFilterChanges`, and
//   - viem `createBlockFilter` + `getFilterChanges`
//   - viem `createBlockFilter` + `getFilterChanges`, and over WebSocket (ws://…/anvil):
//   - ethers v6 `WebSocketProvider`: `on("block")` and `contract.on("Ping")` (eth_subscribe),
//   - viem's `webSocket` transport: `watchBlocks` and `watchContractEvent` (eth_subscribe),
//   - two raw clients subscribed to `newPendingTransactions` (relayed from one node)
// watch through detour; node A is SIGKILLed, restarted and resynced, then node B is killed.
// detour follows heads over one node's WebSocket (anvil serves it on its HTTP port), so the
// kills also take its head source away at least once.
// Every event must arrive exactly once and in order, and every block once, in order.
// Then `anvil_reorg` drops the last 3 blocks on the live nodes: a filter and a WebSocket logs
// subscription get their Ping logs again with "removed": true, highest block first, and a
// newHeads subscription the new branch's heads.
//
// usage: NODE_PATH=scripts/.tools/node_modules node scripts/e2e_subscriptions.cjs ANVIL DETOUR WORKDIR
"use strict";

const { spawn } = require("node:child_process");
const fs = require("node:fs");
const net = require("node:net");
const path = require("node:path");
const ethers = require("ethers");
const viem = require("viem");
const WebSocket = require("ws");

const [ANVIL, DETOUR, WORK] = process.argv.slice(2);
const CHAIN_ID = 31337;
const T0 = 1_700_000_000;
const N = 60; // Ping events, one per block
const KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"; // anvil dev account 0
const children = new Set();
const log = (...a) => console.log("[e2e-subscriptions]", ...a);
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
  console.error("[e2e-subscriptions] FAIL: the whole scenario took over 150 s");
  process.exit(1);
}, 150_000);

function fail(why) {
  console.error("[e2e-subscriptions] FAIL:", why);
  for (const f of fs.readdirSync(WORK).filter((f) => f.startsWith("subs-"))) {
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
    const out = fs.openSync(path.join(WORK, `subs-anvil-${this.name}.log`), "a");
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
  let [A, B] = nodes;

  const dport = await freePort();
  const config = path.join(WORK, "subs-detour.toml");
  fs.writeFileSync(config, `
[server]
listen = "127.0.0.1:${dport}"
[client]
connect_timeout = "1s"
attempt_timeout = "2s"
[tracker]
poll_interval = "1s"
[chains.anvil]
chain_id = ${CHAIN_ID}
${nodes.map((n) => `[[chains.anvil.upstreams]]\nname = "anvil-${n.name}"\nurl = "${n.url}"\nws_url = "ws://127.0.0.1:${n.port}"\n`).join("\n")}
`);
  const dlog = fs.openSync(path.join(WORK, "subs-detour.log"), "a");
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
  // Over WebSocket.
  const WS = `ws://127.0.0.1:${dport}/anvil`;
  const wsProvider = new ethers.WebSocketProvider(WS, CHAIN_ID, { staticNetwork: true });
  const wsContract = new ethers.Contract(address, ABI, wsProvider);
  const byEthersWs = [];
  const ethersWsBlocks = [];
  await wsContract.on("Ping", (n) => byEthersWs.push(Number(n)));
  await wsProvider.on("block", (n) => ethersWsBlocks.push(Number(n)));
  const wsClient = viem.createPublicClient({ transport: viem.webSocket(WS, { retryCount: 0 }) });
  const byViemWs = [];
  const viemWsBlocks = [];
  const unwatchEvents = wsClient.watchContractEvent({
    abi, address, eventName: "Ping",
    onLogs: (logs) => { for (const l of logs) byViemWs.push(Number(l.args.n)); },
    onError: (e) => pollErrors.push("viem ws events: " + e.message),
  });
  const unwatchBlocks = wsClient.watchBlocks({
    onBlock: (b) => viemWsBlocks.push(Number(b.number)),
    onError: (e) => pollErrors.push("viem ws blocks: " + e.message),
  });
  // And a raw subscriber, which sees the notifications as they are on the wire.
  const wire = new WebSocket(WS);
  await new Promise((ok, err) => { wire.once("open", ok); wire.once("error", err); });
  const wireHeads = [];
  wire.on("message", (m) => {
    const v = JSON.parse(m);
    if (v.method === "eth_subscription") wireHeads.push(v.params.result);
  });
  wire.send(JSON.stringify({ jsonrpc: "2.0", id: 1, method: "eth_subscribe", params: ["newHeads"] }));
  // newPendingTransactions is relayed from one node's WebSocket (best effort), shared by both.
  const pendingHashes = [[], []];
  const pendingSockets = [];
  for (const got of pendingHashes) {
    const s = new WebSocket(WS);
    await new Promise((ok, err) => { s.once("open", ok); s.once("error", err); });
    s.on("message", (m) => {
      const v = JSON.parse(m);
      if (v.id === 1 && !v.result) fail(`eth_subscribe(newPendingTransactions): ${JSON.stringify(v)}`);
      if (v.method === "eth_subscription") got.push(v.params.result);
    });
    s.send(JSON.stringify({ jsonrpc: "2.0", id: 1, method: "eth_subscribe", params: ["newPendingTransactions"] }));
    pendingSockets.push(s);
  }
  await sleep(500); // the subscriptions are made
  // The first block each watcher can see is the one after they started.
  const firstWatched = history.length + 1;
  // detour follows heads over one node's WebSocket: that node is killed first.
  const headSource = async () => {
    const status = await (await fetch(`http://127.0.0.1:${dport}/status`)).json();
    return status.chains[0].filters.source;
  };
  const first = await headSource();
  if (first?.via !== "websocket") fail(`the chain is not followed over a WebSocket: ${JSON.stringify(first)}`);
  A = nodes.find((n) => `anvil-${n.name}` === first.upstream);
  B = nodes.find((n) => n !== A);
  log(`heads come over ${first.upstream}'s WebSocket`);

  // The chain moves; faults meanwhile.
  for (let n = 1; n <= N; n++) {
    await mine(nodes, [{ to: address, data: iface.encodeFunctionData("ping", [n]) }]);
    if (n === 15) {
      A.kill();
      log(`anvil-${A.name} (the head source) killed`);
    } else if (n === 30) {
      await A.start();
      await resync(A);
      log(`anvil-${A.name} restarted and resynced; heads now over ${JSON.stringify(await headSource())}`);
    } else if (n === 40) {
      B.kill();
      log(`anvil-${B.name} killed`);
    }
    await sleep(120);
  }
  const want = Array.from({ length: N }, (_, i) => i + 1);
  const until = Date.now() + 20_000;
  // Pollers read a filter when they see a new block (ethers), so blocks without events follow
  // until every watcher has every event.
  const allEvents = () => byEthers.length >= N && byViem.length >= N && byEthersWs.length >= N &&
    byViemWs.length >= N;
  while (!allEvents() && Date.now() < until) {
    await mine(nodes, []);
    await sleep(300);
  }
  const lastBlock = history.length;
  const allHeads = () => viemWsBlocks.length >= lastBlock - firstWatched + 1 &&
    ethersWsBlocks.at(-1) >= lastBlock && wireHeads.length >= lastBlock - firstWatched + 1;
  while (!allHeads() && Date.now() < until) await sleep(100);
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
  if (!same(byEthersWs, want)) fail(`ethers WebSocketProvider contract.on got ${JSON.stringify(byEthersWs)}`);
  if (!same(byViemWs, want)) fail(`viem webSocket watchContractEvent got ${JSON.stringify(byViemWs)}`);
  log(`ok: over WebSocket, ethers contract.on and viem watchContractEvent each got Ping 1..${N} once, in order`);
  const heights = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
  // ethers reports the head it sees at start, then each new one; viem each new head.
  const ethersFrom = ethersWsBlocks[0] === firstWatched - 1 ? firstWatched - 1 : firstWatched;
  if (!same(ethersWsBlocks, heights(ethersFrom, lastBlock))) fail(`ethers WebSocketProvider blocks ${JSON.stringify(ethersWsBlocks)}`);
  // viem fetches each head's block before its callback, so callbacks may swap neighbours:
  // each head once is checked here, and the order on the wire by the raw subscriber below.
  const sorted = [...viemWsBlocks].sort((a, b) => a - b);
  if (!same(sorted, heights(firstWatched, lastBlock))) fail(`viem watchBlocks got ${JSON.stringify(viemWsBlocks)}, want ${firstWatched}..${lastBlock}`);
  const onWire = wireHeads.map((h) => Number(h.number));
  if (!same(onWire, heights(firstWatched, lastBlock))) fail(`newHeads on the wire: ${JSON.stringify(onWire)}`);
  for (const h of wireHeads) {
    if (h.hash !== canonical[Number(h.number) - firstWatched]) fail(`head ${Number(h.number)}: ${h.hash} is not canonical`);
    if ("transactions" in h) fail(`a newHeads notification carries transactions: ${JSON.stringify(h).slice(0, 200)}`);
  }
  wire.close();
  // Pending transactions: hashes of the Ping transactions sent, never another, each once per
  // client; most of them (what was sent while the relay moved to another node is lost).
  const sent = new Set(history.flatMap((b) => b.raw.map((r) => ethers.keccak256(r))));
  for (const [i, got] of pendingHashes.entries()) {
    if (got.some((h) => !sent.has(h))) fail(`client ${i}: a pending hash that was never sent: ${got.find((h) => !sent.has(h))}`);
    if (new Set(got).size !== got.length) fail(`client ${i}: a pending hash twice`);
    if (got.length < N / 2) fail(`client ${i}: only ${got.length} pending hashes for ${N} transactions`);
  }
  for (const s of pendingSockets) s.close();
  log(`ok: newPendingTransactions relayed through the kills: ${pendingHashes[0].length} and ${pendingHashes[1].length} of ${N} hashes, none twice, none unknown`);
  log(`ok: over WebSocket, heads ${firstWatched}..${lastBlock} once each to ethers on("block") and viem watchBlocks, and in order on the wire, hashes canonical`);
  const metrics = await (await fetch(`http://127.0.0.1:${dport}/metrics`)).text();
  const sourceChanges = Number((metrics.match(/^detour_tracker_source_changes_total\{chain="anvil"\} (\d+)/m) || [])[1]);
  const wsHeads = Number((metrics.match(/^detour_tracker_websocket_heads_total\{chain="anvil"\} (\d+)/m) || [])[1]);
  if (!(sourceChanges >= 1) || !(wsHeads >= N / 2)) fail(`head source changes ${sourceChanges}, heads over WebSocket ${wsHeads}`);
  const now = await headSource();
  if (now?.via !== "websocket") fail(`after the faults the chain is not followed over a WebSocket: ${JSON.stringify(now)}`);
  log(`ok: the head source was replaced ${sourceChanges} time(s), ${wsHeads} heads came over WebSocket, now over ${now.upstream}`);
  if (pollErrors.length) log(`(viem polls that failed and were retried: ${pollErrors.length}: ${pollErrors[0]})`);
  await contract.removeAllListeners();
  await wsContract.removeAllListeners();
  await wsProvider.removeAllListeners();
  unwatchEvents();
  unwatchBlocks();

  // A reorg: three blocks with Ping N+1..N+3, then anvil_reorg drops them on the live nodes.
  const filter = await rpc(RPC, "eth_newFilter", [{ address, topics: [TOPIC] }]);
  const raw = new WebSocket(WS);
  await new Promise((ok, err) => { raw.once("open", ok); raw.once("error", err); });
  const pushed = [];
  raw.on("message", (m) => pushed.push(JSON.parse(m)));
  raw.send(JSON.stringify({ jsonrpc: "2.0", id: 1, method: "eth_subscribe", params: ["logs", { address }] }));
  raw.send(JSON.stringify({ jsonrpc: "2.0", id: 2, method: "eth_subscribe", params: ["newHeads"] }));
  const wsUntil = Date.now() + 30_000;
  while (pushed.length < 2 && Date.now() < wsUntil) await sleep(50);
  const [logsSub, headsSub] = [1, 2].map((id) => pushed.find((m) => m.id === id)?.result);
  if (!logsSub || !headsSub) fail(`eth_subscribe over ws: ${JSON.stringify(pushed)}`);
  const of = (sub) => pushed.filter((m) => m.params?.subscription === sub).map((m) => m.params.result);
  const pings = (logs) => logs.map((l) => [l.removed, Number(BigInt(l.topics[1]))]);
  for (let n = N + 1; n <= N + 3; n++) {
    await mine(nodes, [{ to: address, data: iface.encodeFunctionData("ping", [n]) }]);
  }
  const top = history.length;
  let changes = [];
  while ((changes.length < 3 || of(logsSub).length < 3 || of(headsSub).length < 3) && Date.now() < wsUntil) {
    await sleep(200);
    changes.push(...(await rpc(RPC, "eth_getFilterChanges", [filter])));
  }
  const added = [[false, N + 1], [false, N + 2], [false, N + 3]];
  if (JSON.stringify(pings(changes)) !== JSON.stringify(added)) fail(`before the reorg the filter got ${JSON.stringify(pings(changes))}`);
  const oldHeads = of(headsSub).map((h) => h.hash);
  for (const n of nodes.filter((n) => n.alive)) await rpc(n.url, "anvil_reorg", [3, []]);
  changes = [];
  while ((changes.length < 3 || of(logsSub).length < 6 || of(headsSub).length < 6) && Date.now() < wsUntil) {
    await sleep(200);
    changes.push(...(await rpc(RPC, "eth_getFilterChanges", [filter])));
  }
  const wantRemoved = [[true, N + 3], [true, N + 2], [true, N + 1]];
  if (JSON.stringify(pings(changes)) !== JSON.stringify(wantRemoved)) fail(`after anvil_reorg the filter got ${JSON.stringify(pings(changes))}, want ${JSON.stringify(wantRemoved)}`);
  log("ok: anvil_reorg of 3 blocks: a filter got their Ping logs again with removed: true, highest first");
  if (JSON.stringify(pings(of(logsSub))) !== JSON.stringify([...added, ...wantRemoved])) fail(`the logs subscription got ${JSON.stringify(pings(of(logsSub)))}`);
  const heads = of(headsSub);
  const numbers = heads.map((h) => Number(h.number));
  const wantNumbers = [top - 2, top - 1, top, top - 2, top - 1, top];
  if (JSON.stringify(numbers) !== JSON.stringify(wantNumbers)) fail(`newHeads around the reorg: ${JSON.stringify(numbers)}, want ${JSON.stringify(wantNumbers)}`);
  if (heads.slice(3).some((h, i) => h.hash === oldHeads[i])) fail("the new branch's heads have the old hashes");
  raw.close();
  log("ok: over WebSocket, the same reorg: logs removed highest first, then the new branch's heads from the fork point");

  detour.kill("SIGTERM");
  clearTimeout(deadline);
  cleanup();
  log("passed");
  process.exit(0);
}

main().catch((e) => fail(e.stack || String(e)));
