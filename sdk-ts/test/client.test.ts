// The SDK against a real node: delivery online and offline, several
// devices, resend de-duplication, a connection cut mid-stream, a bad token
// and an operator's kick, in binary and JSON frames.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type Client,
  ClosedError,
  Code,
  KickedError,
  MemoryStorage,
  type Message,
  ServerError,
  bodyText,
} from "../src/index.js";
import { type Node, clientFor, startNode, startProxy, until } from "./node.js";

let node: Node;

beforeAll(async () => {
  // Generous rates: the cut test sends a burst, and the limiter is not under test here.
  node = await startNode({ SWITCHBOARD_GATE__RATE_PER_SEC: "100000", SWITCHBOARD_GATE__RATE_BURST: "100000" });
});

afterAll(async () => {
  await node?.stop();
});

/** Collects a client's message events. */
function inbox(c: Client): { seq: bigint; message: Message }[] {
  const got: { seq: bigint; message: Message }[] = [];
  c.on("message", (e) => got.push(e));
  return got;
}

const texts = (got: { message: Message }[]) => got.map((e) => bodyText(e.message));
const demo = (uid: string) => ({ app: "demo", uid });

describe.each(["binary", "json"] as const)("%s frames", (format) => {
  it("delivers online messages in order, once, with the sender's receipts", async () => {
    const a = await clientFor(node, `on-a-${format}`, { format });
    const b = await clientFor(node, `on-b-${format}`, { format });
    const got = inbox(b);
    const info = await b.connect();
    expect(info.user.uid).toBe(`on-b-${format}`);
    await a.connect();
    const receipts = [];
    for (let i = 0; i < 5; i++) receipts.push(await a.send(demo(`on-b-${format}`), `hello ${i}`));
    await until(() => got.length === 5, 10_000, "five pushes");
    expect(texts(got)).toEqual([0, 1, 2, 3, 4].map((i) => `hello ${i}`));
    expect(got.map((e) => e.seq)).toEqual([1n, 2n, 3n, 4n, 5n]);
    expect(got[0]?.message.from?.uid).toBe(`on-a-${format}`);
    // The sender's own timeline holds its sent messages: 1..5, not shown back to it.
    expect(receipts.map((r) => r.seq)).toEqual([1n, 2n, 3n, 4n, 5n]);
    expect(receipts.every((r) => !r.duplicate && r.msgId > 0n)).toBe(true);
    expect(a.lastSeq).toBe(5n);
    // A report reaches the bus.
    const rep = await a.report("position", '{"lat":1}');
    expect(rep.msgId > 0n).toBe(true);
    a.close();
    b.close();
  });
});

it("an offline user gets what it missed by sync, once, and the cursor persists", async () => {
  const a = await clientFor(node, "off-a");
  await a.connect();
  for (let i = 0; i < 12; i++) await a.send(demo("off-b"), `missed ${i}`);

  const storage = new MemoryStorage();
  const b1 = await clientFor(node, "off-b", { storage, syncPage: 5 });
  const got1 = inbox(b1);
  const info = await b1.connect();
  expect(info.timelineHead).toBe(12n);
  expect(info.cursor).toBe(0n);
  // Three sync pages of at most 5.
  await until(() => got1.length === 12, 10_000, "the sync");
  expect(texts(got1)).toEqual([...Array(12).keys()].map((i) => `missed ${i}`));
  await b1.sync();
  expect(got1.length).toBe(12);
  // The ack reached the server: a fresh login of this device says so.
  await new Promise((r) => setTimeout(r, 100));
  b1.close();

  // The same installation later: resumes from the stored cursor, sees only what is new.
  await a.send(demo("off-b"), "later");
  const b2 = await clientFor(node, "off-b", { storage });
  const got2 = inbox(b2);
  const info2 = await b2.connect();
  expect(info2.cursor).toBe(12n);
  await until(() => got2.length === 1, 10_000, "the new message");
  await b2.sync();
  expect(texts(got2)).toEqual(["later"]);
  expect(got2[0]?.seq).toBe(13n);
  a.close();
  b2.close();
});

it("every device of the receiver and the sender's other devices get each message", async () => {
  const a1 = await clientFor(node, "dev-a", { deviceId: "a-phone" });
  const a2 = await clientFor(node, "dev-a", { deviceId: "a-laptop" });
  const b1 = await clientFor(node, "dev-b", { deviceId: "b-phone" });
  const b2 = await clientFor(node, "dev-b", { deviceId: "b-laptop", format: "json" });
  const [gotA1, gotA2, gotB1, gotB2] = [inbox(a1), inbox(a2), inbox(b1), inbox(b2)];
  await Promise.all([a1.connect(), a2.connect(), b1.connect(), b2.connect()]);
  await a1.send(demo("dev-b"), "to both of bob's");
  await b2.send(demo("dev-a"), "reply");
  await until(() => gotB1.length === 2 && gotB2.length === 1 && gotA2.length === 2 && gotA1.length === 1, 10_000, "fan-out");
  // Bob's phone sees Alice's message and its other device's reply; the laptop that sent the reply sees only Alice's.
  expect(texts(gotB1)).toEqual(["to both of bob's", "reply"]);
  expect(texts(gotB2)).toEqual(["to both of bob's"]);
  // Alice's laptop sees what her phone sent, and the reply; the phone only the reply.
  expect(texts(gotA2)).toEqual(["to both of bob's", "reply"]);
  expect(texts(gotA1)).toEqual(["reply"]);
  for (const c of [a1, a2, b1, b2]) c.close();
});

it("a resend with the same client_msg_id is stored once", async () => {
  const a = await clientFor(node, "dup-a");
  const b = await clientFor(node, "dup-b");
  const got = inbox(b);
  await Promise.all([a.connect(), b.connect()]);
  const first = await a.send(demo("dup-b"), "once", { clientMsgId: "order-42" });
  const again = await a.send(demo("dup-b"), "once", { clientMsgId: "order-42" });
  expect(first.duplicate).toBe(false);
  expect(again.duplicate).toBe(true);
  expect(again.msgId).toBe(first.msgId);
  expect(again.seq).toBe(first.seq);
  await a.send(demo("dup-b"), "next");
  await until(() => got.length === 2, 10_000, "two messages");
  expect(texts(got)).toEqual(["once", "next"]);
  a.close();
  b.close();
});

it("a connection cut mid-stream loses and duplicates nothing acknowledged", async () => {
  const proxyA = await startProxy(node.httpAddr);
  const proxyB = await startProxy(node.httpAddr);
  let tokenFetches = 0;
  const tokenA = await node.token("cut-a");
  const a = await clientFor(node, "cut-a", {
    url: `ws://${proxyA.addr}/ws`,
    getToken: async () => {
      tokenFetches += 1;
      return tokenA;
    },
  });
  const b = await clientFor(node, "cut-b", { url: `ws://${proxyB.addr}/ws` });
  const got = inbox(b);
  const states: string[] = [];
  b.on("state", (e) => states.push(e.state));
  await Promise.all([a.connect(), b.connect()]);

  const N = 300;
  const sends: Promise<unknown>[] = [];
  for (let i = 0; i < N; i++) {
    sends.push(a.send(demo("cut-b"), `m${i}`, { clientMsgId: `cut-${i}` }));
    // Cut both sides a few times while messages are in flight.
    if (i % 75 === 40) {
      await new Promise((r) => setTimeout(r, 5));
      proxyA.cut();
      proxyB.cut();
    }
  }
  const receipts = (await Promise.all(sends)) as { seq: bigint }[];
  // Each send stored exactly once: the sender's sequences are 1..N with no hole or repeat.
  expect(receipts.map((r) => r.seq).sort((x, y) => (x < y ? -1 : 1))).toEqual([...Array(N).keys()].map((i) => BigInt(i + 1)));
  proxyB.cut();
  await until(() => got.length >= N, 30_000, `${N} messages at the receiver`);
  await b.sync();
  expect(got.length).toBe(N);
  expect(got.map((e) => e.seq)).toEqual([...Array(N).keys()].map((i) => BigInt(i + 1)));
  // One connection's c2c are stored in request order, resends included.
  expect(texts(got)).toEqual([...Array(N).keys()].map((i) => `m${i}`));
  expect(proxyA.accepted()).toBeGreaterThan(1);
  expect(proxyB.accepted()).toBeGreaterThan(1);
  expect(states).toContain("reconnecting");
  // getToken was asked for a fresh token before each reconnect.
  expect(tokenFetches).toBe(proxyA.accepted() - 1);
  a.close();
  b.close();
  await proxyA.close();
  await proxyB.close();
});

it("pushes from the business server arrive as stored messages and online-only ones", async () => {
  const c = await clientFor(node, "s2c-u");
  const got = inbox(c);
  const online: Message[] = [];
  c.on("online", (e) => online.push(e.message));
  await c.connect();
  const key = await node.apiKey();
  for (const mode of ["stored", "online_only"]) {
    const res = await fetch(`${node.httpUrl}/v1/apps/demo/push`, {
      method: "POST",
      headers: { Authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ to: ["s2c-u"], type: "order.status", body: { mode }, mode }),
    });
    expect(res.status).toBe(200);
  }
  await until(() => got.length === 1 && online.length === 1, 10_000, "both pushes");
  expect(JSON.parse(bodyText(got[0]!.message))).toEqual({ mode: "stored" });
  expect(got[0]?.seq).toBe(1n);
  expect(JSON.parse(bodyText(online[0]!))).toEqual({ mode: "online_only" });
  c.close();
});

it("a refused send rejects with the server's code and the client carries on", async () => {
  const a = await clientFor(node, "bad-send-a");
  await a.connect();
  const err = await a.send(demo("bad-send-b"), "x", { type: "t".repeat(65) }).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(ServerError);
  expect((err as ServerError).code).toBe(Code.INVALID_ARGUMENT);
  expect((err as ServerError).retryable).toBe(false);
  const ok = await a.send(demo("bad-send-b"), "fine");
  expect(ok.seq).toBe(1n);
  await a.logout();
  expect(a.state).toBe("closed");
  await expect(a.send(demo("bad-send-b"), "after")).rejects.toBeInstanceOf(ClosedError);
});

it("a token refused on reconnect closes the client with the login's error", async () => {
  const proxy = await startProxy(node.httpAddr);
  const c = await clientFor(node, "expiring", { url: `ws://${proxy.addr}/ws`, getToken: () => "expired-or-revoked" });
  const closed = new Promise<unknown>((ok) => c.on("state", (e) => e.state === "closed" && ok(e.error)));
  await c.connect();
  proxy.cut();
  const err = await closed;
  expect(err).toBeInstanceOf(ServerError);
  expect((err as ServerError).code).toBe(Code.TOKEN_INVALID);
  await proxy.close();
});

it("a bad token is a typed TOKEN_INVALID error and the client closes", async () => {
  const c = await clientFor(node, "bad", { token: "not-a-jwt" });
  const err = await c.connect().catch((e: unknown) => e);
  expect(err).toBeInstanceOf(ServerError);
  expect((err as ServerError).code).toBe(Code.TOKEN_INVALID);
  expect(c.state).toBe("closed");
  await expect(c.send(demo("x"), "y")).rejects.toBeInstanceOf(ClosedError);
});

it("an operator's kick ends the client without a reconnect", async () => {
  const b = await clientFor(node, "kick-b");
  const kicks: { code: number; terminal: boolean }[] = [];
  b.on("kick", (k) => kicks.push(k));
  const closed = new Promise<unknown>((ok) => b.on("state", (e) => e.state === "closed" && ok(e.error)));
  await b.connect();
  const res = await fetch(`${node.httpUrl}/v1/apps/demo/users/kick-b/kick`, {
    method: "POST",
    headers: { Authorization: `Bearer ${await node.adminKey()}` },
  });
  expect(res.status).toBe(200);
  expect(await res.json()).toEqual({ kicked: 1 });
  const err = await closed;
  expect(err).toBeInstanceOf(KickedError);
  expect((err as KickedError).code).toBe(Code.KICK_ADMIN);
  expect(kicks).toEqual([expect.objectContaining({ code: Code.KICK_ADMIN, terminal: true })]);
  await new Promise((r) => setTimeout(r, 300));
  expect(b.state).toBe("closed");
  await expect(b.send(demo("x"), "y")).rejects.toBeInstanceOf(ClosedError);
});
