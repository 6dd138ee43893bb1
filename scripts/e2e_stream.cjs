// End-to-end: a large answer streamed through detour (issue 19), with real clients and real
// nodes, through an upstream failure before the answer and a connection cut in the middle of it.
//
// Two anvil nodes hold a contract (set with anvil_setCode) whose every call returns 2.2 MB of
// memory: an `eth_call` answer of 4.4 MB, above `client.stream_min_bytes` (4 MiB). Node A is
// detour's tier 0; node B is tier 1, behind a TCP relay that can be told to cut the answer's
// connection after 1 MB.
//   - A raw `fetch` sees the answer chunked (streamed) and byte for byte the node's result;
//     ethers v6 `provider.call` and viem `call` get the node's result.
//   - Node A is SIGKILLed: the next calls fail over to B before the answer begins, and stream.
//   - The relay cuts B's answer after 1 MB: the client gets an error (fetch: the body fails;
//     ethers: the call throws), never a short result; detour counts the answer as broken and
//     charges B. Uncut, the next call is whole again.
// `detour_streamed_answers_total` is checked at each step.
//
// usage: NODE_PATH=scripts/.tools/node_modules node scripts/e2e_stream.cjs ANVIL DETOUR WORKDIR
"use strict";

const { spawn } = require("node:child_process");
const fs = require("node:fs");
const net = require("node:net");
const path = require("node:path");
const ethers = require("ethers");
const viem = require("viem");

const [ANVIL, DETOUR, WORK] = process.argv.slice(2);
const CHAIN_ID = 31337;
const RETURN_BYTES = 2_200_000;
const ADDRESS = "0x00000000000000000000000000000000000b16a5";
const children = new Set();
const log = (...a) => console.log("[e2e-stream]", ...a);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

process.on("exit", () => {
  for (const c of children) {
    try {
      c.kill("SIGKILL");
    } catch {}
  }
});
setTimeout(() => fail("the whole scenario took over 120 s"), 120_000).unref();

function fail(why) {
  console.error("[e2e-stream] FAIL:", why);
  for (const f of fs.readdirSync(WORK).filter((f) => f.startsWith("stream-"))) {
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
    signal: AbortSignal.timeout(20_000),
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

function startAnvil(name, port) {
  const out = fs.openSync(path.join(WORK, `stream-anvil-${name}.log`), "a");
  const proc = spawn(
    ANVIL,
    ["--host", "127.0.0.1", "--port", String(port), "--chain-id", String(CHAIN_ID)],
    { stdio: ["ignore", out, out] },
  );
  children.add(proc);
  return proc;
}

// A TCP relay to `port`; `cutAfter` (when set) closes both sides once that many bytes of
// answer have gone back on one connection, and counts the cut.
function relay(port) {
  const state = { cutAfter: null, cuts: 0 };
  const server = net.createServer((client) => {
    const up = net.connect(port, "127.0.0.1");
    let back = 0;
    client.on("data", (d) => up.write(d));
    up.on("data", (d) => {
      back += d.length;
      if (state.cutAfter !== null && back > state.cutAfter) {
        client.write(d.subarray(0, d.length - (back - state.cutAfter)));
        state.cuts++;
        client.destroy();
        up.destroy();
        return;
      }
      client.write(d);
    });
    const close = () => {
      client.destroy();
      up.destroy();
    };
    client.on("error", close).on("close", close);
    up.on("error", close).on("close", close);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve({ port: server.address().port, state }));
  });
}

// `detour_streamed_answers_total` for `upstream` and `outcome`.
async function streamed(metricsUrl, upstream, outcome) {
  const text = await (await fetch(metricsUrl)).text();
  const line = `detour_streamed_answers_total{chain="anvil",upstream="${upstream}",outcome="${outcome}"} `;
  const found = text.split("\n").find((l) => l.startsWith(line));
  return found ? Number(found.slice(line.length)) : 0;
}

async function main() {
  const [pa, pb, dport] = [await freePort(), await freePort(), await freePort()];
  const A = startAnvil("a", pa);
  startAnvil("b", pb);
  const [urlA, urlB] = [`http://127.0.0.1:${pa}`, `http://127.0.0.1:${pb}`];
  await waitUp(urlA, 30);
  await waitUp(urlB, 30);
  // Runtime: a word of 0x5a at 0, then RETURN(0, RETURN_BYTES).
  const size = RETURN_BYTES.toString(16).padStart(6, "0");
  const runtime = `0x7f${"5a".repeat(32)}600052` + `62${size}6000f3`;
  for (const url of [urlA, urlB]) await rpc(url, "anvil_setCode", [ADDRESS, runtime]);
  const cut = await relay(pb);

  const config = path.join(WORK, "stream-detour.toml");
  fs.writeFileSync(config, `
[server]
listen = "127.0.0.1:${dport}"
[client]
connect_timeout = "1s"
attempt_timeout = "20s"
[cache]
enabled = false
[chains.anvil]
chain_id = ${CHAIN_ID}
[[chains.anvil.upstreams]]
name = "anvil-a"
url = "${urlA}"
tier = 0
[[chains.anvil.upstreams]]
name = "anvil-b"
url = "http://127.0.0.1:${cut.port}"
tier = 1
`);
  const dlog = fs.openSync(path.join(WORK, "stream-detour.log"), "a");
  const detour = spawn(DETOUR, ["--config", config], {
    stdio: ["ignore", dlog, dlog], env: { ...process.env, RUST_LOG: "info" },
  });
  children.add(detour);
  const RPC = `http://127.0.0.1:${dport}/anvil`;
  const METRICS = `http://127.0.0.1:${dport}/metrics`;
  await waitUp(RPC, 30);
  log(`detour on ${RPC}; anvil on ${pa}, ${pb} (relayed on ${cut.port})`);

  const call = { to: ADDRESS, data: "0x" };
  const want = await rpc(urlA, "eth_call", [call, "latest"]);
  if (want.length !== 2 + 2 * RETURN_BYTES || !want.startsWith("0x5a5a")) {
    fail(`the node's answer is not what the contract returns: ${want.length} chars`);
  }
  const body = JSON.stringify({ jsonrpc: "2.0", id: "big-1", method: "eth_call", params: [call, "latest"] });

  // A raw client: streamed (chunked), the node's result behind the client's id.
  const raw = async () => {
    const res = await fetch(RPC, {
      method: "POST", headers: { "content-type": "application/json" }, body,
      signal: AbortSignal.timeout(20_000),
    });
    return { res, text: await res.text() };
  };
  {
    const { res, text } = await raw();
    if (res.headers.get("transfer-encoding") !== "chunked" || res.headers.get("content-length")) {
      fail(`not streamed: ${JSON.stringify([...res.headers])}`);
    }
    if (res.headers.get("x-detour-upstream") !== "anvil-a") fail("not answered by anvil-a");
    const expect = `{"jsonrpc":"2.0","id":"big-1","result":${JSON.stringify(want)}}`;
    if (text !== expect) fail(`the streamed answer differs (${text.length} vs ${expect.length} bytes)`);
  }
  // ethers and viem.
  const provider = new ethers.JsonRpcProvider(RPC, CHAIN_ID, { staticNetwork: true });
  const viemClient = viem.createPublicClient({ transport: viem.http(RPC, { timeout: 20_000, retryCount: 0 }) });
  if ((await provider.call(call)) !== want) fail("ethers got another result");
  if ((await viemClient.call({ to: ADDRESS })).data !== want) fail("viem got another result");
  const complete = await streamed(METRICS, "anvil-a", "complete");
  if (complete < 3) fail(`anvil-a's streamed answers counted complete: ${complete}, want 3`);
  log(`streamed ${want.length + 40} bytes to fetch, ethers and viem (complete: ${complete})`);

  // Node A dies: failover happens before the answer begins; B's answer streams.
  A.kill("SIGKILL");
  children.delete(A);
  if ((await provider.call(call)) !== want) fail("ethers got another result after anvil-a died");
  if ((await viemClient.call({ to: ADDRESS })).data !== want) fail("viem got another result after anvil-a died");
  if ((await streamed(METRICS, "anvil-b", "complete")) < 2) fail("anvil-b's answers were not streamed");
  log("anvil-a SIGKILLed: the calls failed over to anvil-b and streamed");

  // B's answer is cut after 1 MB: the clients see an error, never a short result.
  cut.state.cutAfter = 1_000_000;
  let fetchError = null;
  try {
    const { text } = await raw();
    fetchError = `fetch read a whole body of ${text.length} bytes`;
  } catch (e) {
    log(`fetch, answer cut mid-way: ${e.cause?.message ?? e.message}`);
  }
  if (fetchError) fail(fetchError);
  let ethersGot = null;
  try {
    ethersGot = await provider.call(call);
  } catch (e) {
    log(`ethers, answer cut mid-way: ${e.shortMessage ?? e.message}`.slice(0, 200));
  }
  if (ethersGot !== null) fail(`ethers got a result of ${ethersGot.length} chars from a cut answer`);
  if (cut.state.cuts < 2) fail(`the relay cut ${cut.state.cuts} answers, want 2`);
  const broken = await streamed(METRICS, "anvil-b", "broken");
  if (broken !== 2) fail(`anvil-b's cut answers counted broken: ${broken}, want 2`);
  const status = await (await fetch(`http://127.0.0.1:${dport}/status`)).json();
  const b = (status.chains ?? []).flatMap((c) => c.upstreams ?? []).find((u) => u.name === "anvil-b");
  if (!b || !(b.failures >= 1)) fail(`anvil-b was not charged a failure: ${JSON.stringify(b)}`);
  log(`the relay cut anvil-b's answers: fetch and ethers failed, broken: ${broken}`);

  // Uncut again: whole answers.
  cut.state.cutAfter = null;
  if ((await viemClient.call({ to: ADDRESS })).data !== want) fail("viem got another result after the cuts");
  log("ok");
  process.exit(0);
}

main().catch((e) => fail(e.stack || String(e)));
