// c2c throughput of the TypeScript SDK from ONE connection: an SDK client
// (Node.js, `ws`, binary frames by default) sends to one receiving SDK
// client through a real `switchboard serve` (test/node.ts's startNode:
// ephemeral ports, a fresh data dir, removed at the end).
//
//   npm run bench:throughput                       # 2,000 warm-up + 20,000 measured, window 256
//   npm run bench:throughput -- --window 64 --messages 20000 --warmup 2000
//
// `send()` does not wait for earlier sends: each call writes its frame at
// once and returns its own promise (up to `maxPendingRequests`, 1,024, at
// a time). The sender keeps a sliding window of `--window` sends unacked
// (a new send as soon as one is acked), not Promise.all over batches.
//
// The receiver is a second Node.js process (`--receiver child`, default),
// so the sender's process does nothing else; `--receiver same` puts both
// clients on one event loop. The measured interval runs from the first
// measured send until the receiver has the last message and the sender its
// last ack. CPU over it: the node's utime+stime from /proc/<pid>/stat (all
// threads), and each Node.js process's process.cpuUsage(). Loss check:
// every acked message received exactly once, in the sender's timeline
// order. Limits raised as `switchboard bench` raises them (rate_per_sec,
// rate_burst, outbound_queue 4096, max_unacked 100,000), so the
// per-connection rate limit does not decide the figure. Bounded: at most
// --timeout-s (default 180) seconds, then everything is stopped; the node,
// the receiver process and the clients are always stopped at the end.
//
// A figure on a shared machine: run it a few times and compare ratios.

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import WebSocket from "ws";
import { Client, type WebSocketConstructor, bodyText } from "../src/index.js";
import { BIN, type Node, clientFor, startNode } from "../test/node.js";

const SCRIPT = fileURLToPath(import.meta.url);
const { values: opt } = parseArgs({
  options: {
    messages: { type: "string", default: "20000" },
    warmup: { type: "string", default: "2000" },
    window: { type: "string", default: "256" },
    "body-bytes": { type: "string", default: "64" },
    format: { type: "string", default: "binary" },
    receiver: { type: "string", default: "child" },
    "timeout-s": { type: "string", default: "180" },
    json: { type: "boolean", default: false },
    // Internal: this process is the receiver started by the sender's.
    role: { type: "string", default: "sender" },
  },
  allowPositionals: false,
});

const MESSAGES = Number(opt.messages);
const WARMUP = Number(opt.warmup);
const WINDOW = Number(opt.window);
const BODY_BYTES = Number(opt["body-bytes"]);
const FORMAT = opt.format === "json" ? "json" : "binary";
const TIMEOUT_MS = Number(opt["timeout-s"]) * 1000;
const SENDER = "bench-sender";
const RECEIVER = "bench-receiver";

if (!(MESSAGES > 0 && WARMUP >= 0 && WINDOW >= 1 && WINDOW <= 1024 && BODY_BYTES >= 16)) {
  throw new Error("need --messages > 0, --warmup >= 0, 1 <= --window <= 1024 (the SDK's maxPendingRequests), --body-bytes >= 16");
}
if (opt.receiver !== "child" && opt.receiver !== "same") throw new Error("--receiver is child or same");

/** Wall clock in ms, comparable between processes on one machine. */
const now = () => performance.timeOrigin + performance.now();

/** A body of BODY_BYTES: the message's index, then padding. */
function body(i: number): string {
  const head = `${String(i).padStart(9, "0")} `;
  return head + "x".repeat(BODY_BYTES - head.length);
}

interface Mark {
  count: number;
  at: number;
  cpu: NodeJS.CpuUsage;
}

/** What the receiver reports at the end. */
interface Received {
  /** Message indexes in delivery order. */
  order: number[];
  /** Messages not from the sender, or that could not be parsed. */
  strange: number;
  reconnects: number;
}

/**
 * Counts `message` events of `client`; calls `mark` when the count reaches
 * each of `marks` (the end of the warm-up, the end).
 */
function receive(client: Client, marks: number[], mark: (m: Mark) => void): () => Received {
  const order: number[] = [];
  let strange = 0;
  let reconnects = 0;
  const wanted = new Set(marks);
  client.on("message", ({ message }) => {
    const i = Number.parseInt(bodyText(message).slice(0, 9), 10);
    if (message.from?.uid !== SENDER || Number.isNaN(i)) strange += 1;
    else order.push(i);
    if (wanted.has(order.length)) mark({ count: order.length, at: now(), cpu: process.cpuUsage() });
  });
  client.on("state", ({ state }) => {
    if (state === "reconnecting") reconnects += 1;
  });
  return () => ({ order, strange, reconnects });
}

// ---- the receiver process (--role receiver) ----

type ToReceiver = { wsUrl: string; token: string; marks: number[] } | { report: true };
type FromReceiver = { ready: true } | { mark: Mark } | { report: Received };

async function receiverMain(): Promise<void> {
  const send = (m: FromReceiver, then?: () => void) => process.send?.(m, undefined, undefined, then);
  let result: (() => Received) | undefined;
  let client: Client | undefined;
  process.on("message", async (m: ToReceiver) => {
    if ("report" in m) {
      client?.close();
      // Disconnect once the (large) report is written: earlier would drop it.
      send({ report: result?.() ?? { order: [], strange: 0, reconnects: 0 } }, () => process.disconnect());
      return;
    }
    client = new Client({
      url: m.wsUrl,
      token: m.token,
      deviceId: `${RECEIVER}-device`,
      format: FORMAT,
      WebSocket: WebSocket as unknown as WebSocketConstructor,
      reconnectMinMs: 50,
      reconnectMaxMs: 500,
    });
    result = receive(client, m.marks, (mark) => send({ mark }));
    await client.connect();
    send({ ready: true });
  });
  // The sender's process is gone: so is this one.
  process.on("disconnect", () => {
    client?.close();
    process.exit(0);
  });
}

// ---- the sender process ----

/** utime + stime of `pid` (all its threads), in seconds. */
function procCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name (which may hold spaces), from field 3 on.
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}
const CLK_TCK = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;

const cpuSeconds = (a: NodeJS.CpuUsage, b: NodeJS.CpuUsage) => (b.user - a.user + b.system - a.system) / 1e6;

/** Sends messages [from, to) with at most `window` unacked; `seqs[i]` gets message i's sequence on the sender's timeline. */
function sendRange(client: Client, from: number, to: number, window: number, seqs: BigInt64Array): Promise<void> {
  const peer = { app: "demo", uid: RECEIVER };
  return new Promise((resolve, reject) => {
    let next = from;
    let inFlight = 0;
    const pump = () => {
      while (inFlight < window && next < to) {
        const i = next++;
        inFlight += 1;
        client.send(peer, body(i)).then((r) => {
          seqs[i] = r.seq;
          inFlight -= 1;
          if (next >= to && inFlight === 0) resolve();
          else pump();
        }, reject);
      }
    };
    pump();
  });
}

/** The receiver's messages in the sender's timeline order, each acked one exactly once. */
function lossCheck(got: Received, seqs: BigInt64Array, total: number): string {
  if (got.strange > 0) return `${got.strange} unexpected messages`;
  const seen = new Uint8Array(total);
  let prev = -1n;
  for (const i of got.order) {
    if (i < 0 || i >= total) return `index ${i} out of range`;
    if (seen[i] === 1) return `message ${i} received twice`;
    seen[i] = 1;
    const seq = seqs[i] ?? 0n;
    if (seq <= prev) return `message ${i} out of the sender's timeline order`;
    prev = seq;
  }
  const missing = seen.reduce((n, x) => n + (x === 0 ? 1 : 0), 0);
  return missing === 0 ? `ok (${got.order.length}/${total})` : `${missing} acked messages never received`;
}

/** Where the receiver's marks arrive; `onMark` is called after each. */
interface Marked {
  marks: Mark[];
  onMark: (() => void) | null;
}

/** Resolves with the mark of count `n` once it has arrived. */
function markOf(marked: Marked, n: number): Promise<Mark> {
  return new Promise((ok) => {
    const check = () => {
      const m = marked.marks.find((x) => x.count === n);
      if (m !== undefined) {
        marked.onMark = null;
        ok(m);
      }
    };
    marked.onMark = check;
    check();
  });
}

interface Remote extends Marked {
  child: ChildProcess;
  report: Promise<Received>;
  request(): void;
}

/** Starts the receiver process (this script under vite-node again) and logs it in. */
async function startReceiverProcess(node: Node, marks: number[]): Promise<Remote> {
  // process.argv[1] is vite-node's CLI: run this file with it again.
  const child = spawn(process.execPath, [process.argv[1] ?? "", SCRIPT, "--role", "receiver", "--format", FORMAT, "--body-bytes", String(BODY_BYTES)], {
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  let reportDone: (r: Received) => void = () => {};
  const remote: Remote = {
    child,
    marks: [],
    onMark: null,
    report: new Promise((ok, fail) => {
      reportDone = ok;
      child.once("exit", (code) => fail(new Error(`receiver process exited (${code}) before its report`)));
    }),
    request: () => child.send({ report: true } satisfies ToReceiver),
  };
  // Awaited only at the end: an early exit must not be an unhandled rejection meanwhile.
  remote.report.catch(() => {});
  const ready = new Promise<void>((ok, fail) => {
    child.on("message", (m: FromReceiver) => {
      if ("ready" in m) ok();
      else if ("mark" in m) {
        remote.marks.push(m.mark);
        remote.onMark?.();
      } else if ("report" in m) reportDone(m.report);
    });
    child.once("exit", (code) => fail(new Error(`receiver process exited with ${code}`)));
  });
  child.send({ wsUrl: node.wsUrl, token: await node.token(RECEIVER), marks } satisfies ToReceiver);
  await ready;
  return remote;
}

async function senderMain(): Promise<void> {
  const total = WARMUP + MESSAGES;
  const node = await startNode({
    SWITCHBOARD_GATE__RATE_PER_SEC: "1000000",
    SWITCHBOARD_GATE__RATE_BURST: "1000000",
    SWITCHBOARD_GATE__OUTBOUND_QUEUE: "4096",
    SWITCHBOARD_GATE__MAX_UNACKED: "100000",
  });
  let remote: Remote | undefined;
  let local: (Marked & { client: Client; result: () => Received }) | undefined;
  let sender: Client | undefined;
  const deadline = setTimeout(() => {
    console.error(`timed out after ${TIMEOUT_MS / 1000} s`);
    sender?.close();
    local?.client.close();
    remote?.child.kill("SIGKILL");
    void node.stop().finally(() => process.exit(2));
  }, TIMEOUT_MS);
  try {
    const marks = WARMUP > 0 ? [WARMUP, total] : [total];
    // The receiver's marks arrive in `.marks`, wherever it runs.
    let marked: Marked;
    if (opt.receiver === "child") {
      remote = await startReceiverProcess(node, marks);
      marked = remote;
    } else {
      const client = await clientFor(node, RECEIVER, { format: FORMAT });
      const l = { client, marks: [] as Mark[], onMark: null as (() => void) | null, result: () => ({}) as Received };
      l.result = receive(client, marks, (m) => {
        l.marks.push(m);
        l.onMark?.();
      });
      await client.connect();
      local = l;
      marked = l;
    }
    const waitMark = (n: number) => markOf(marked, n);

    sender = await clientFor(node, SENDER, { format: FORMAT });
    let senderReconnects = 0;
    sender.on("state", ({ state }) => {
      if (state === "reconnecting") senderReconnects += 1;
    });
    await sender.connect();
    const seqs = new BigInt64Array(total);

    // Warm-up: the same load, not measured (JIT, connection buffers, the store's first writes).
    let startMark: Mark | undefined;
    if (WARMUP > 0) {
      await sendRange(sender, 0, WARMUP, WINDOW, seqs);
      startMark = await waitMark(WARMUP);
    }

    const server0 = procCpuSeconds(node.pid);
    const cpu0 = process.cpuUsage();
    const t0 = now();
    const gotAll = waitMark(total);
    await sendRange(sender, WARMUP, total, WINDOW, seqs);
    const tAcked = now();
    const endMark = await gotAll;
    const tEnd = now();
    const cpu1 = process.cpuUsage();
    const server1 = procCpuSeconds(node.pid);

    let got: Received;
    if (remote !== undefined) {
      remote.request();
      got = await remote.report;
    } else {
      got = local?.result() ?? { order: [], strange: 0, reconnects: 0 };
    }

    const deliveredS = (endMark.at - t0) / 1000;
    const intervalS = (Math.max(tEnd, endMark.at) - t0) / 1000;
    const serverCpu = server1 - server0;
    const senderCpu = cpuSeconds(cpu0, cpu1);
    // The receiver's own clock of its CPU: from the warm-up's last message (nothing arrives until the measured sends) to the last.
    const receiverCpu =
      remote !== undefined && startMark !== undefined ? cpuSeconds(startMark.cpu, endMark.cpu) : undefined;
    const us = (s: number) => Math.round((s * 1e6) / MESSAGES * 10) / 10;
    const result = {
      date: new Date().toISOString(),
      binary: BIN,
      format: FORMAT,
      receiver: opt.receiver,
      window: WINDOW,
      warmup: WARMUP,
      messages: MESSAGES,
      body_bytes: BODY_BYTES,
      delivered_msgs_per_s: Math.round(MESSAGES / deliveredS),
      acked_msgs_per_s: Math.round(MESSAGES / ((tAcked - t0) / 1000)),
      interval_s: Math.round(intervalS * 1000) / 1000,
      clk_tck: CLK_TCK,
      server_cpu_s: Math.round(serverCpu * 100) / 100,
      server_cpu_us_per_msg: us(serverCpu),
      sender_process_cpu_us_per_msg: us(senderCpu),
      receiver_process_cpu_us_per_msg: receiverCpu === undefined ? null : us(receiverCpu),
      loss_check: lossCheck(got, seqs, total),
      reconnects: senderReconnects + got.reconnects,
    };
    if (opt.json) {
      console.log(JSON.stringify(result));
    } else {
      const who = opt.receiver === "child" ? "sender process" : "Node.js process (sender + receiver)";
      console.log(
        [
          `c2c from one sdk-ts connection (${FORMAT} frames, window ${WINDOW}, ${BODY_BYTES}-byte bodies, receiver: ${opt.receiver === "child" ? "own process" : "same process"})`,
          `  ${MESSAGES.toLocaleString("en")} messages after ${WARMUP.toLocaleString("en")} warm-up, ${result.interval_s} s`,
          `  delivered: ${result.delivered_msgs_per_s.toLocaleString("en")} msgs/s (acked: ${result.acked_msgs_per_s.toLocaleString("en")} msgs/s)`,
          `  switchboard node CPU: ${result.server_cpu_us_per_msg} µs/msg (${result.server_cpu_s} s, /proc/${node.pid}/stat, CLK_TCK ${CLK_TCK})`,
          `  ${who} CPU: ${result.sender_process_cpu_us_per_msg} µs/msg (process.cpuUsage())`,
          ...(result.receiver_process_cpu_us_per_msg === null
            ? []
            : [`  receiver process CPU: ${result.receiver_process_cpu_us_per_msg} µs/msg (process.cpuUsage())`]),
          `  loss check: ${result.loss_check}; reconnects: ${result.reconnects}`,
          `  ${JSON.stringify(result)}`,
        ].join("\n"),
      );
    }
    if (!result.loss_check.startsWith("ok")) process.exitCode = 1;
  } finally {
    clearTimeout(deadline);
    sender?.close();
    local?.client.close();
    if (remote !== undefined && remote.child.exitCode === null) {
      const exited = new Promise((ok) => remote?.child.once("exit", ok));
      if (remote.child.connected) remote.child.disconnect();
      const kill = setTimeout(() => remote?.child.kill("SIGKILL"), 5_000);
      await exited;
      clearTimeout(kill);
    }
    await node.stop();
  }
}

if (opt.role === "receiver") await receiverMain();
else await senderMain();
