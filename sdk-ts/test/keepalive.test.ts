// Keepalive against a node that expects a ping every second and drops a
// connection after two silent intervals: the client pings, so it stays.

import { afterAll, beforeAll, expect, it } from "vitest";
import { type Node, clientFor, startNode } from "./node.js";

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
