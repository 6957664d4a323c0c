// Against a node with the default request rate limit (50/s, bursts of 100)
// that expects a ping every second and drops a connection after two silent
// intervals: the client pings, so it stays; and it resends what the rate
// limiter refused, so every send is stored once.

import { afterAll, beforeAll, expect, it } from "vitest";
import { type Node, clientFor, startNode, until } from "./node.js";

let node: Node;

beforeAll(async () => {
  node = await startNode({ SWITCHBOARD_GATE__KEEPALIVE_SECS: "1", SWITCHBOARD_GATE__IDLE_KEEPALIVES: "2" });
});

afterAll(async () => {
  await node?.stop();
});

it("pings every keepalive interval, so an idle connection is not kicked", async () => {
  const c = await clientFor(node, "idle");
  const events: string[] = [];
  c.on("state", (e) => events.push(e.state));
  c.on("kick", (k) => events.push(`kick ${k.name}`));
  const info = await c.connect();
  expect(info.keepaliveSecs).toBe(1);
  await new Promise((r) => setTimeout(r, 3500));
  expect(events).toEqual(["connecting", "connected"]);
  expect(c.state).toBe("connected");
  c.close();
});

it("sends refused with RATE_LIMITED are retried with backoff and stored once", async () => {
  const a = await clientFor(node, "burst-a");
  const b = await clientFor(node, "burst-b");
  const got: bigint[] = [];
  b.on("message", (e) => got.push(e.seq));
  await Promise.all([a.connect(), b.connect()]);
  const N = 180;
  const receipts = await Promise.all(
    [...Array(N).keys()].map((i) => a.send({ app: "demo", uid: "burst-b" }, `burst ${i}`)),
  );
  const seqs = receipts.map((r) => r.seq).sort((x, y) => (x < y ? -1 : 1));
  expect(seqs).toEqual([...Array(N).keys()].map((i) => BigInt(i + 1)));
  await until(() => got.length === N, 20_000, "every message at the receiver");
  expect(got).toEqual([...Array(N).keys()].map((i) => BigInt(i + 1)));
  a.close();
  b.close();
});
