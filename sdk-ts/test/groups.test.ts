// Group conversations against a real node: members online get each post
// once and in the group's order (the sender's other devices too), an
// offline member catches up from what the login lists (and only that), a
// resend is stored once (a connection cut included), a non-member's post is
// a typed error, and a removed member gets nothing more, in binary and JSON
// frames. Groups and memberships are made over the HTTP API, as a business
// server does.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type Client,
  Code,
  GroupError,
  MemoryStorage,
  type Message,
  ServerError,
  bodyText,
  decodeJson,
} from "../src/index.js";
import { type Groups, type Node, clientFor, groupsOf, spyingWebSocket, startNode, startProxy, until } from "./node.js";

let node: Node;
let groups: Groups;

beforeAll(async () => {
  // Generous rates: the cut test sends a burst, and the limiter is not under test here.
  node = await startNode({ SWITCHBOARD_GATE__RATE_PER_SEC: "100000", SWITCHBOARD_GATE__RATE_BURST: "100000" });
  groups = groupsOf(node);
});

afterAll(async () => {
  await node?.stop();
});

type GroupEvent = { group: string; seq: bigint; message: Message };

/** Collects a client's group messages. */
function groupInbox(c: Client): GroupEvent[] {
  const got: GroupEvent[] = [];
  c.on("groupMessage", (e) => got.push(e));
  return got;
}

const texts = (got: { message: Message }[]) => got.map((e) => bodyText(e.message));
const seqs = (n: number, from = 1) => [...Array(n).keys()].map((i) => BigInt(i + from));

describe.each(["binary", "json"] as const)("%s frames", (format) => {
  it("members online get each post once, in group order, the sender's other device too", async () => {
    const g = `live-${format}`;
    const [alice, bob] = [`live-a-${format}`, `live-b-${format}`];
    await groups.create(g);
    await groups.add(g, [alice, bob]);
    const a1 = await clientFor(node, alice, { deviceId: "a-phone", format });
    const a2 = await clientFor(node, alice, { deviceId: "a-laptop", format });
    const b = await clientFor(node, bob, { format });
    const [gotA1, gotA2, gotB] = [groupInbox(a1), groupInbox(a2), groupInbox(b)];
    await Promise.all([a1.connect(), a2.connect(), b.connect()]);

    const receipts = [];
    for (let i = 0; i < 5; i++) receipts.push(await a1.sendGroup(g, "text", `post ${i}`));
    const reply = await b.sendGroup(g, "text", "reply");
    expect(receipts.map((r) => r.seq)).toEqual(seqs(5));
    expect(receipts.every((r) => r.group === g && !r.duplicate && r.msgId > 0n)).toBe(true);
    expect(reply.seq).toBe(6n);

    await until(() => gotA1.length === 1 && gotA2.length === 6 && gotB.length === 5, 10_000, "the group's pushes");
    // Bob: Alice's five, not his own reply; Alice's laptop: all six; the phone that posted: the reply only.
    expect(texts(gotB)).toEqual([0, 1, 2, 3, 4].map((i) => `post ${i}`));
    expect(gotB.map((e) => e.seq)).toEqual(seqs(5));
    expect(texts(gotA2)).toEqual([...texts(gotB), "reply"]);
    expect(gotA2.map((e) => e.seq)).toEqual(seqs(6));
    expect(texts(gotA1)).toEqual(["reply"]);
    expect(gotA1[0]?.seq).toBe(6n);
    expect(gotB[0]?.message.group).toBe(g);
    expect(gotB[0]?.message.from?.uid).toBe(alice);
    expect(gotA2.every((e) => e.group === g)).toBe(true);

    // A post by the business server (HTTP) reaches every member device the same way.
    expect(await groups.post(g, "from the shop")).toBe(7n);
    await until(() => gotA1.length === 2 && gotA2.length === 7 && gotB.length === 6, 10_000, "the HTTP post");
    expect(texts(gotB)[5]).toBe("from the shop");
    expect(gotB.map((e) => e.seq)).toEqual([...seqs(5), 7n]);
    for (const c of [a1, a2, b]) {
      await c.sync();
      expect(c.groupPosition(g)).toBe(7n);
      // Nothing on the users' own timelines.
      expect(c.lastSeq).toBe(0n);
    }
    expect([gotA1.length, gotA2.length, gotB.length]).toEqual([2, 7, 6]);
    for (const c of [a1, a2, b]) c.close();
  });
});

it("an offline member catches up after login from what login_ack.groups lists, once, in order", async () => {
  const [busy, quiet] = ["off-busy", "off-quiet"];
  const [alice, bob] = ["off-a", "off-b"];
  for (const g of [busy, quiet]) {
    await groups.create(g);
    await groups.add(g, [alice, bob]);
  }
  const a = await clientFor(node, alice);
  await a.connect();
  await a.sendGroup(quiet, "text", "q1");
  await a.sendGroup(quiet, "text", "q2");

  // Bob's first session: he reads the quiet group.
  const storage = new MemoryStorage();
  const b1 = await clientFor(node, bob, { storage });
  const got1 = groupInbox(b1);
  const info1 = await b1.connect();
  expect(info1.groups.map((s) => [s.group, s.head, s.cursor])).toEqual([[quiet, 2n, 0n]]);
  await until(() => got1.length === 2, 10_000, "the quiet group");
  await b1.sync();
  expect(texts(got1)).toEqual(["q1", "q2"]);
  b1.close();

  // Offline, the busy group gets twelve posts.
  for (let i = 0; i < 12; i++) await a.sendGroup(busy, "text", `missed ${i}`);

  // Second session (JSON, so its frames are readable): the busy group is listed and synced, page by page.
  const sent: (string | Uint8Array)[] = [];
  const b2 = await clientFor(node, bob, { storage, syncPage: 5, format: "json", WebSocket: spyingWebSocket(sent) });
  const got2 = groupInbox(b2);
  const info2 = await b2.connect();
  const listed = new Map(info2.groups.map((s) => [s.group, s]));
  expect(listed.get(busy)?.head).toBe(12n);
  expect(listed.get(busy)?.cursor).toBe(0n);
  await until(() => got2.length === 12, 10_000, "the sync of the busy group");
  expect(texts(got2)).toEqual([...Array(12).keys()].map((i) => `missed ${i}`));
  expect(got2.map((e) => e.seq)).toEqual(seqs(12));
  expect(got2.every((e) => e.group === busy)).toBe(true);
  expect(b2.groupPositions()).toEqual(new Map([[quiet, 2n], [busy, 12n]]));
  // What it synced after login: its own timeline and the busy group (three pages), never the quiet one.
  const frames = sent.map((f) => decodeJson(f as string));
  const synced = frames.flatMap((p) => (p?.cmd === "sync" ? [[p.body.group, p.body.since] as const] : []));
  expect(synced).toEqual([
    ["", 0n],
    [busy, 0n],
    [busy, 5n],
    [busy, 10n],
  ]);
  // Acknowledged on the group's timeline, up to the last entry.
  const acked = frames.flatMap((p) => (p?.cmd === "push_ack" ? [[p.body.group, p.body.seq] as const] : []));
  expect(acked.filter(([g]) => g === busy).at(-1)).toEqual([busy, 12n]);
  expect(acked.every(([g]) => g !== "")).toBe(true);
  b2.close();

  // Third session from the stored positions: only what is new.
  await a.sendGroup(busy, "text", "later");
  const b3 = await clientFor(node, bob, { storage });
  const got3 = groupInbox(b3);
  const info3 = await b3.connect();
  expect(info3.groups.find((s) => s.group === busy)?.head).toBe(13n);
  await until(() => got3.length === 1, 10_000, "the new post");
  await b3.sync();
  expect(texts(got3)).toEqual(["later"]);
  expect(got3[0]?.seq).toBe(13n);
  a.close();
  b3.close();
});

it("a resend with the same client_msg_id is stored once", async () => {
  const g = "dup";
  await groups.create(g);
  await groups.add(g, ["dup-a", "dup-b"]);
  const a = await clientFor(node, "dup-a");
  const b = await clientFor(node, "dup-b");
  const got = groupInbox(b);
  await Promise.all([a.connect(), b.connect()]);
  const first = await a.sendGroup(g, "text", "once", { clientMsgId: "order-42" });
  const again = await a.sendGroup(g, "text", "once", { clientMsgId: "order-42" });
  expect(first.duplicate).toBe(false);
  expect(again.duplicate).toBe(true);
  expect(again.msgId).toBe(first.msgId);
  expect(again.seq).toBe(first.seq);
  await a.sendGroup(g, "text", "next");
  await until(() => got.length === 2, 10_000, "two posts");
  await b.sync();
  expect(texts(got)).toEqual(["once", "next"]);
  expect(got.map((e) => e.seq)).toEqual([1n, 2n]);
  a.close();
  b.close();
});

it("posts cut off mid-stream are resent and stored once, and reach the member in order", async () => {
  const g = "cut";
  await groups.create(g);
  await groups.add(g, ["cut-a", "cut-b"]);
  const proxyA = await startProxy(node.httpAddr);
  const proxyB = await startProxy(node.httpAddr);
  const a = await clientFor(node, "cut-a", { url: `ws://${proxyA.addr}/ws` });
  const b = await clientFor(node, "cut-b", { url: `ws://${proxyB.addr}/ws`, format: "json" });
  const got = groupInbox(b);
  await Promise.all([a.connect(), b.connect()]);
  const N = 200;
  const posts: Promise<{ seq: bigint }>[] = [];
  for (let i = 0; i < N; i++) {
    posts.push(a.sendGroup(g, "text", `m${i}`, { clientMsgId: `cut-${i}` }));
    if (i % 60 === 30) {
      await new Promise((r) => setTimeout(r, 5));
      proxyA.cut();
      proxyB.cut();
    }
  }
  const receipts = await Promise.all(posts);
  expect(receipts.map((r) => r.seq).sort((x, y) => (x < y ? -1 : 1))).toEqual(seqs(N));
  await until(() => got.length >= N, 30_000, `${N} posts at the member`);
  await b.sync();
  expect(got.map((e) => e.seq)).toEqual(seqs(N));
  // One connection's posts are stored in request order, resends included.
  expect(texts(got)).toEqual([...Array(N).keys()].map((i) => `m${i}`));
  expect(proxyA.accepted()).toBeGreaterThan(1);
  a.close();
  b.close();
  await proxyA.close();
  await proxyB.close();
});

it("posts refused by the group are typed errors, not retried, and the client carries on", async () => {
  await groups.create("closed-club");
  await groups.add("closed-club", ["club-member"]);
  await groups.create("news", { post_policy: "admins" });
  await groups.add("news", ["club-member"]);
  const c = await clientFor(node, "club-outsider");
  const left: unknown[] = [];
  c.on("groupLeft", (e) => left.push(e));
  await c.connect();

  const notMember = await c.sendGroup("closed-club", "text", "let me in").catch((e: unknown) => e);
  expect(notMember).toBeInstanceOf(GroupError);
  expect(notMember).toBeInstanceOf(ServerError);
  expect((notMember as GroupError).code).toBe(Code.NOT_GROUP_MEMBER);
  expect((notMember as GroupError).group).toBe("closed-club");
  expect((notMember as GroupError).retryable).toBe(false);

  const missing = await c.sendGroup("no-such-group", "text", "x").catch((e: unknown) => e);
  expect(missing).toBeInstanceOf(GroupError);
  expect((missing as GroupError).code).toBe(Code.GROUP_NOT_FOUND);
  // Never followed, so nothing to leave.
  expect(left).toEqual([]);

  const m = await clientFor(node, "club-member");
  await m.connect();
  const adminsOnly = await m.sendGroup("news", "text", "hi").catch((e: unknown) => e);
  expect(adminsOnly).toBeInstanceOf(GroupError);
  expect((adminsOnly as GroupError).code).toBe(Code.GROUP_ADMINS_ONLY);
  // Still a member of news, and the connection goes on.
  expect((await m.sendGroup("closed-club", "text", "fine")).seq).toBe(1n);
  expect(c.state).toBe("connected");
  expect(m.state).toBe("connected");
  c.close();
  m.close();
});

it("a removed member gets nothing afterwards, is told it left, and starts over when added again", async () => {
  const g = "removal";
  await groups.create(g);
  await groups.add(g, ["rm-a", "rm-b"]);
  const a = await clientFor(node, "rm-a");
  const b = await clientFor(node, "rm-b");
  const got = groupInbox(b);
  const left: { group: string; code: number; name: string }[] = [];
  b.on("groupLeft", (e) => left.push(e));
  const direct: string[] = [];
  b.on("message", (e) => direct.push(bodyText(e.message)));
  await Promise.all([a.connect(), b.connect()]);

  await a.sendGroup(g, "text", "before");
  await until(() => got.length === 1, 10_000, "the first post");

  await groups.remove(g, ["rm-b"]);
  await a.sendGroup(g, "text", "after 1");
  await a.sendGroup(g, "text", "after 2");
  // Bob's client learns it when it next reads the group: the sync is refused.
  await b.sync();
  expect(left).toEqual([{ group: g, code: Code.NOT_GROUP_MEMBER, name: "NOT_GROUP_MEMBER" }]);
  expect(b.groupPosition(g)).toBeUndefined();
  const refused = await b.sendGroup(g, "text", "still here?").catch((e: unknown) => e);
  expect(refused).toBeInstanceOf(GroupError);
  expect((refused as GroupError).code).toBe(Code.NOT_GROUP_MEMBER);
  await a.sendGroup(g, "text", "after 3");
  // A direct message after all of them: once it is there, the pushes before it had their chance.
  await a.send({ app: "demo", uid: "rm-b" }, "sentinel");
  await until(() => direct.length === 1, 10_000, "the direct message");
  await b.sync();
  expect(direct).toEqual(["sentinel"]);
  expect(texts(got)).toEqual(["before"]);
  expect(left.length).toBe(1);

  // Added again (without the history): the next post starts the group over, from there.
  await groups.add(g, ["rm-b"]);
  expect(await a.sendGroup(g, "text", "welcome back").then((r) => r.seq)).toBe(5n);
  await until(() => got.length === 2, 10_000, "the post after re-joining");
  expect(texts(got)).toEqual(["before", "welcome back"]);
  expect(got[1]?.seq).toBe(5n);
  await b.sync();
  expect(b.groupPosition(g)).toBe(5n);
  expect(texts(got)).toEqual(["before", "welcome back"]);
  a.close();
  b.close();
});

it("a deleted group is left with GROUP_NOT_FOUND when the member next reads it", async () => {
  const g = "gone";
  await groups.create(g, { history_visible: true });
  await groups.add(g, ["gone-a", "gone-b"]);
  const a = await clientFor(node, "gone-a");
  const b = await clientFor(node, "gone-b", { format: "json" });
  const got = groupInbox(b);
  const left: { group: string; code: number }[] = [];
  b.on("groupLeft", (e) => left.push(e));
  await Promise.all([a.connect(), b.connect()]);
  await a.sendGroup(g, "text", "last words");
  await until(() => got.length === 1, 10_000, "the post");

  await groups.delete(g);
  await b.sync();
  expect(left).toEqual([{ group: g, code: Code.GROUP_NOT_FOUND, name: "GROUP_NOT_FOUND" }]);
  expect(b.groupPositions().size).toBe(0);
  const refused = await a.sendGroup(g, "text", "anyone?").catch((e: unknown) => e);
  expect(refused).toBeInstanceOf(GroupError);
  expect((refused as GroupError).code).toBe(Code.GROUP_NOT_FOUND);
  expect(texts(got)).toEqual(["last words"]);
  expect(b.state).toBe("connected");
  a.close();
  b.close();
});
