// A real Switchboard node for the tests: `switchboard serve` on ephemeral
// ports with a temporary data dir; tokens and keys come from the binary's
// own CLI (`token`, `api-key`), so the tests don't depend on how the demo
// app keeps its secrets. Plus a TCP proxy whose connections a test can cut.

import { type ChildProcess, execFile, spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import WebSocket from "ws";
import { Client, type ClientEvents, type ClientOptions, type WebSocketConstructor } from "../src/index.js";

const run = promisify(execFile);

/** The binary under test: $SWITCHBOARD_BIN, default ../target/release/switchboard. */
export const BIN = resolve(
  process.env.SWITCHBOARD_BIN ?? fileURLToPath(new URL("../../target/release/switchboard", import.meta.url)),
);

export interface Node {
  wsUrl: string;
  httpUrl: string;
  /** host:port of HTTP and WebSocket. */
  httpAddr: string;
  dataDir: string;
  /** The `switchboard serve` process (for reading its CPU time in /proc). */
  pid: number;
  token(uid: string): Promise<string>;
  adminKey(): Promise<string>;
  /** The demo app's HTTP API key. */
  apiKey(): Promise<string>;
  stop(): Promise<void>;
}

export interface NodeOptions {
  /** A configuration file's TOML (e.g. `[[apps]]` entries) for `serve --config`, written into the data dir. */
  config?: string;
  /** The HS256 secret `token()` signs with (an app's of `config`) instead of the demo app's. */
  secret?: string;
}

/** Starts a node; `env` adds settings (SWITCHBOARD_GATE__…). */
export async function startNode(env: Record<string, string> = {}, options: NodeOptions = {}): Promise<Node> {
  const dataDir = mkdtempSync(join(tmpdir(), "sb-ts-"));
  const args = ["serve", "--data-dir", dataDir, "--http", "127.0.0.1:0", "--tcp", "127.0.0.1:0"];
  if (options.config !== undefined) {
    const file = join(dataDir, "config.toml");
    writeFileSync(file, options.config);
    args.push("--config", file);
  }
  // Every SWITCHBOARD_* variable is a setting to `serve`: ours (the binary's path) is not one.
  const { SWITCHBOARD_BIN: _, ...inherited } = process.env;
  const child: ChildProcess = spawn(BIN, args, {
    env: { ...inherited, SWITCHBOARD_LOG: process.env.SWITCHBOARD_LOG ?? "warn", ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const httpAddr = await new Promise<string>((ok, fail) => {
    let out = "";
    const timer = setTimeout(() => fail(new Error(`switchboard did not start: ${out}`)), 30_000);
    child.stdout?.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      const m = out.match(/HTTP and WebSocket on http:\/\/([0-9.:]+)\/ws/);
      if (m?.[1] !== undefined) {
        clearTimeout(timer);
        ok(m[1]);
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      fail(new Error(`switchboard exited with ${code}: ${out}`));
    });
  });
  child.stdout?.resume();
  return {
    wsUrl: `ws://${httpAddr}/ws`,
    httpUrl: `http://${httpAddr}`,
    httpAddr,
    dataDir,
    pid: child.pid ?? 0,
    async token(uid) {
      const secret = options.secret === undefined ? [] : ["--secret", options.secret];
      const { stdout } = await run(BIN, ["token", "--uid", uid, "--data-dir", dataDir, ...secret]);
      return stdout.trim();
    },
    async adminKey() {
      const { stdout } = await run(BIN, ["api-key", "--admin", "--data-dir", dataDir]);
      return stdout.trim();
    },
    async apiKey() {
      const { stdout } = await run(BIN, ["api-key", "--data-dir", dataDir]);
      return stdout.trim();
    },
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((ok) => child.once("exit", ok));
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** A TCP proxy to `target` whose live connections `cut()` destroys (a dropped network). */
export interface Proxy {
  addr: string;
  cut(): void;
  /** Connections accepted so far. */
  accepted(): number;
  close(): Promise<void>;
}

export async function startProxy(target: string): Promise<Proxy> {
  const [host, port] = splitAddr(target);
  const live = new Set<net.Socket>();
  let accepted = 0;
  const server = net.createServer((inbound) => {
    accepted += 1;
    const outbound = net.connect(port, host);
    live.add(inbound);
    live.add(outbound);
    const drop = () => {
      inbound.destroy();
      outbound.destroy();
      live.delete(inbound);
      live.delete(outbound);
    };
    inbound.on("error", drop).on("close", drop);
    outbound.on("error", drop).on("close", drop);
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  const address = server.address() as net.AddressInfo;
  const cut = () => {
    for (const s of live) s.resetAndDestroy();
    live.clear();
  };
  return {
    addr: `127.0.0.1:${address.port}`,
    cut,
    accepted: () => accepted,
    close() {
      cut();
      return new Promise((ok) => server.close(() => ok()));
    },
  };
}

function splitAddr(addr: string): [string, number] {
  const i = addr.lastIndexOf(":");
  return [addr.slice(0, i), Number(addr.slice(i + 1))];
}

/** A client of `node` for `uid` (ws from the `ws` package: Node.js 20 has no global WebSocket). */
export async function clientFor(
  node: Node,
  uid: string,
  opts: Partial<ClientOptions> = {},
): Promise<Client> {
  return new Client({
    url: node.wsUrl,
    token: await node.token(uid),
    deviceId: `${uid}-device`,
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    reconnectMinMs: 50,
    reconnectMaxMs: 500,
    ...opts,
  });
}

/** Every event of `name` that `c` emits, as they come. */
export function record<K extends keyof ClientEvents>(c: Client, name: K): ClientEvents[K][] {
  const got: ClientEvents[K][] = [];
  c.on(name, (e) => got.push(e));
  return got;
}

/** Resolves once `pred` holds, polling; rejects after `ms`. */
export async function until(pred: () => boolean, ms = 10_000, what = "condition"): Promise<void> {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** The demo app's group API (HTTP, with the app's API key), as a business server uses it. */
export interface Groups {
  /** Creates (or updates) group `gid`: `post_policy` `members`/`admins`, `history_visible`. */
  create(gid: string, settings?: { post_policy?: "members" | "admins"; history_visible?: boolean }): Promise<void>;
  add(gid: string, uids: string[], role?: "member" | "admin"): Promise<void>;
  remove(gid: string, uids: string[]): Promise<void>;
  delete(gid: string): Promise<void>;
  /** Posts as `from` (or as the system when absent); returns the entry's seq. */
  post(gid: string, body: string, from?: string): Promise<bigint>;
}

export function groupsOf(node: Node, app = "demo"): Groups {
  let key: Promise<string> | undefined;
  const call = async (method: string, path: string, body: unknown): Promise<unknown> => {
    key ??= node.apiKey();
    const res = await fetch(`${node.httpUrl}/v1/apps/${app}/groups/${path}`, {
      method,
      headers: { Authorization: `Bearer ${await key}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  };
  return {
    async create(gid, settings = {}) {
      await call("PUT", encodeURIComponent(gid), settings);
    },
    async add(gid, uids, role = "member") {
      await call("POST", `${encodeURIComponent(gid)}/members`, { members: uids.map((uid) => ({ uid, role })) });
    },
    async remove(gid, uids) {
      await call("POST", `${encodeURIComponent(gid)}/members/remove`, { uids });
    },
    async delete(gid) {
      await call("DELETE", encodeURIComponent(gid), undefined);
    },
    async post(gid, body, from) {
      const r = (await call("POST", `${encodeURIComponent(gid)}/messages`, {
        ...(from !== undefined ? { from } : {}),
        client_msg_id: `http-${Math.random().toString(36).slice(2)}`,
        type: "text",
        body,
      })) as { seq: number };
      return BigInt(r.seq);
    },
  };
}

/** A WebSocket constructor (from `ws`) that records every frame the client sends. */
export function spyingWebSocket(sent: (string | Uint8Array)[]): WebSocketConstructor {
  class Spy extends WebSocket {
    override send(data: unknown, ...rest: unknown[]): void {
      sent.push(data as string | Uint8Array);
      (super.send as (...a: unknown[]) => void)(data, ...rest);
    }
  }
  return Spy as unknown as WebSocketConstructor;
}
