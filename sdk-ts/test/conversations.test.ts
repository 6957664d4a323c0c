// Conversations against a real node: the list's unread counts after
// offline sends and after a read on another device, read receipts reaching
// the reader's other devices and both of the sender's, transient messages
// (online devices only, never in sync or the list), refusals with their
// codes, and paging with `next`.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  Code,
  type Conversation,
  GroupError,
  type Message,
  ServerError,
  bodyText,
  decodeJson,
} from "../src/index.js";
import { type Groups, type Node, clientFor, groupsOf, record, spyingWebSocket, startNode, until } from "./node.js";

let node: Node;
let groups: Groups;

beforeAll(async () => {
  // The default rate limits: these tests send little, transient messages included.
  node = await startNode();
  groups = groupsOf(node);
});

afterAll(async () => {
  await node?.stop();
});

const demo = (uid: string) => ({ app: "demo", uid });
const texts = (got: { message: Message }[]) => got.map((e) => bodyText(e.message));

/** The 1:1 conversation with `uid` in a page. */
function withPeer(list: Conversation[], uid: string): Conversation | undefined {
  return list.find((c) => c.peer?.uid === uid);
}

/** Every frame's command a spying client sent after `from` (JSON frames). */
function commands(sent: (string | Uint8Array)[], from = 0): string[] {
  return sent.slice(from).map((f) => decodeJson(f as string)?.cmd ?? "?");
}

describe.each(["binary", "json"] as const)("%s frames", (format) => {
  it("unread counts after offline sends, and after a read on another device", async () => {
    const [alice, bob] = [`unread-a-${format}`, `unread-b-${format}`];
    const a = await clientFor(node, alice, { format });
    await a.connect();
    const sent = [];
    for (let i = 0; i < 3; i++) sent.push(await a.send(demo(bob), `offline ${i}`));

    // Bob's phone (its frames recorded, in JSON) and laptop log in after the sends.
    const frames: (string | Uint8Array)[] = [];
    const phone = await clientFor(node, bob, { deviceId: "phone", format: "json", WebSocket: spyingWebSocket(frames) });
    const laptop = await clientFor(node, bob, { deviceId: "laptop", format });
    const phoneGot = record(phone, "message");
    const phoneReceipts = record(phone, "receipt");
    const laptopReceipts = record(laptop, "receipt");
    await Promise.all([phone.connect(), laptop.connect()]);
    await until(() => phoneGot.length === 3, 10_000, "the phone's sync");
    await Promise.all([phone.sync(), laptop.sync()]);

    const first = await laptop.conversations();
    const conv = withPeer(first.conversations, alice);
    expect(first.conversations).toHaveLength(1);
    expect(first.totalUnread).toBe(3n);
    expect(first.next).toBe("");
    expect(conv?.peer).toMatchObject(demo(alice));
    expect(conv?.group).toBe("");
    expect([conv?.unread, conv?.readSeq, conv?.peerReadMsgId]).toEqual([3n, 0n, 0n]);
    expect(conv?.last?.seq).toBe(3n);
    expect(bodyText(conv!.last!.message!)).toBe("offline 2");
    expect(conv?.last?.message?.msgId).toBe(sent[2]?.msgId);
    expect(conv?.lastTimeMs).toBe(sent[2]?.serverTimeMs);
    // The sender's side: sending read the conversation, nothing unread.
    const mine = withPeer((await a.conversations()).conversations, bob);
    expect([mine?.unread, mine?.readSeq, mine?.last?.seq]).toEqual([0n, 3n, 3n]);

    // The phone reads two of the three.
    const before = frames.length;
    const ack = await phone.markRead(demo(alice), phoneGot[1]!.seq);
    expect(ack.seq).toBe(4n);
    expect(ack.msgId > sent[2]!.msgId).toBe(true);
    // The receipt's entry is held as received: the phone's position moves, nothing shown, nothing synced.
    expect(phone.lastSeq).toBe(4n);
    await until(() => laptopReceipts.length === 1, 10_000, "the laptop's receipt");
    const r = laptopReceipts[0]!;
    expect([r.seq, r.mine, r.group, r.read.seq, r.read.msgId]).toEqual([4n, true, "", 2n, sent[1]!.msgId]);
    expect(r.peer).toMatchObject(demo(alice));
    expect(r.message.from).toMatchObject(demo(bob));
    expect([r.message.type, r.message.body.length]).toEqual(["", 0]);
    await until(() => commands(frames, before).includes("push_ack"), 10_000, "the phone's ack of its receipt");
    expect(commands(frames, before)).toEqual(["mark_read", "push_ack"]);
    expect(decodeJson(frames.at(-1) as string)?.body).toMatchObject({ seq: 4n });
    expect(laptop.lastSeq).toBe(4n);

    const after = await laptop.conversations();
    expect(after.totalUnread).toBe(1n);
    expect([withPeer(after.conversations, alice)?.unread, withPeer(after.conversations, alice)?.readSeq]).toEqual([1n, 2n]);
    // A receipt is never a conversation's last message.
    expect(withPeer(after.conversations, alice)?.last?.seq).toBe(3n);

    // The laptop reads the rest: the phone is told, and the badge clears everywhere.
    await laptop.markRead(demo(alice), 3n);
    await until(() => phoneReceipts.length === 1, 10_000, "the phone's receipt");
    expect([phoneReceipts[0]?.seq, phoneReceipts[0]?.mine, phoneReceipts[0]?.read.seq]).toEqual([5n, true, 3n]);
    const cleared = await phone.conversations();
    expect(cleared.totalUnread).toBe(0n);
    expect(withPeer(cleared.conversations, alice)?.readSeq).toBe(3n);
    // No message events for the receipts, on either device.
    expect(phoneGot).toHaveLength(3);
    expect(laptopReceipts).toHaveLength(1);
    for (const c of [a, phone, laptop]) c.close();
  });
});

it("a read receipt reaches both of the sender's devices, and the list has the peer's position", async () => {
  const a1 = await clientFor(node, "rr-a", { deviceId: "a-phone" });
  const a2 = await clientFor(node, "rr-a", { deviceId: "a-laptop" });
  const b = await clientFor(node, "rr-b");
  const [r1, r2] = [record(a1, "receipt"), record(a2, "receipt")];
  const [m1, m2] = [record(a1, "message"), record(a2, "message")];
  const gotB = record(b, "message");
  await Promise.all([a1.connect(), a2.connect(), b.connect()]);

  const first = await a1.send(demo("rr-b"), "one");
  const second = await a1.send(demo("rr-b"), "two");
  await until(() => gotB.length === 2 && m2.length === 2, 10_000, "the pushes");
  // Bob reads both: the receipt names the last one by its id, the same on both timelines.
  await b.markRead(demo("rr-a"), gotB[1]!.seq);
  await until(() => r1.length === 1 && r2.length === 1, 10_000, "both devices' receipts");
  for (const r of [r1[0]!, r2[0]!]) {
    expect(r.mine).toBe(false);
    expect(r.peer).toMatchObject(demo("rr-b"));
    expect(r.message.from).toMatchObject(demo("rr-b"));
    expect(r.read.msgId).toBe(second.msgId);
    // Entry 3 of Alice's timeline (after her two messages).
    expect(r.seq).toBe(3n);
  }
  expect(first.msgId < second.msgId).toBe(true);
  // The phone that sent saw no message events; the laptop saw its two sends, no receipt as a message.
  expect(m1).toHaveLength(0);
  expect(texts(m2)).toEqual(["one", "two"]);
  expect([a1.lastSeq, a2.lastSeq]).toEqual([3n, 3n]);

  const list = await a2.conversations();
  const conv = withPeer(list.conversations, "rr-b");
  expect([conv?.peerReadMsgId, conv?.unread, list.totalUnread]).toEqual([second.msgId, 0n, 0n]);
  for (const c of [a1, a2, b]) c.close();
});

it("a transient message reaches only the devices online, is never synced nor listed", async () => {
  const alice = await clientFor(node, "tr-a", { deviceId: "a-phone" });
  const phone = await clientFor(node, "tr-b", { deviceId: "b-phone" });
  const online = record(phone, "online");
  const stored = record(phone, "message");
  const sentOnline = record(alice, "online");
  await Promise.all([alice.connect(), phone.connect()]);

  const r = await alice.sendTransient({ uid: "tr-b" }, "typing", "{}");
  expect(r.devicesReached).toBe(1);
  expect(r.msgId > 0n).toBe(true);
  await until(() => online.length === 1, 10_000, "the typing push");
  const m = online[0]!.message;
  expect([m.type, bodyText(m), m.from?.uid, m.msgId, m.group]).toEqual(["typing", "{}", "tr-a", r.msgId, ""]);
  // Nothing on anyone's timeline: positions stay, the sender got nothing back.
  expect([alice.lastSeq, phone.lastSeq, stored.length, sentOnline.length]).toEqual([0n, 0n, 0, 0]);

  // Bob's laptop, offline then, never gets it: not in sync, not in the list.
  const laptop = await clientFor(node, "tr-b", { deviceId: "b-laptop" });
  const laptopAll = [record(laptop, "online"), record(laptop, "message"), record(laptop, "receipt")];
  const info = await laptop.connect();
  await laptop.sync();
  expect([info.timelineHead, laptop.lastSeq]).toEqual([0n, 0n]);
  expect(laptopAll.map((l) => l.length)).toEqual([0, 0, 0]);
  expect((await laptop.conversations()).conversations).toEqual([]);

  // To nobody online: answered, reaching 0 devices.
  expect((await alice.sendTransient(demo("tr-nobody"), "typing", "")).devicesReached).toBe(0);
  // Now both of Bob's devices are online.
  expect((await alice.sendTransient(demo("tr-b"), "typing", "")).devicesReached).toBe(2);
  await until(() => online.length === 2 && laptopAll[0]!.length === 1, 10_000, "the second typing push");

  // In a group: every member device online but the sending connection, Alice's other device too.
  await groups.create("tr-g");
  await groups.add("tr-g", ["tr-a", "tr-b"]);
  const alice2 = await clientFor(node, "tr-a", { deviceId: "a-laptop" });
  const alice2Online = record(alice2, "online");
  await alice2.connect();
  const g = await alice.sendGroupTransient("tr-g", "typing", "");
  expect(g.devicesReached).toBe(3);
  await until(() => online.length === 3 && alice2Online.length === 1, 10_000, "the group's typing pushes");
  expect([online[2]?.message.group, online[2]?.message.from?.uid]).toEqual(["tr-g", "tr-a"]);
  expect(phone.groupPosition("tr-g")).toBeUndefined();
  // Not a member: a typed group error.
  const refused = await laptop.sendGroupTransient("tr-other", "typing", "").catch((e: unknown) => e);
  expect(refused).toBeInstanceOf(GroupError);
  expect((refused as GroupError).code).toBe(Code.GROUP_NOT_FOUND);
  expect(sentOnline).toHaveLength(0);
  for (const c of [alice, alice2, phone, laptop]) c.close();
});

it("markRead with a bad seq, a bad page cursor and a group not joined are refused with their codes", async () => {
  const a = await clientFor(node, "bad-a");
  const b = await clientFor(node, "bad-b");
  const gotB = record(b, "message");
  await Promise.all([a.connect(), b.connect()]);
  await a.send(demo("bad-b"), "hi");
  await a.send(demo("bad-c"), "to someone else");
  await until(() => gotB.length === 1, 10_000, "the push");

  const code = (p: Promise<unknown>) => p.then(() => "resolved", (e: unknown) => (e instanceof ServerError ? e.code : String(e)));
  // Past the head, 0, and an entry of another conversation (Alice's entry 2 is to bad-c).
  expect(await code(b.markRead(demo("bad-a"), 99n))).toBe(Code.INVALID_ARGUMENT);
  expect(await code(b.markRead(demo("bad-a"), 0n))).toBe(Code.INVALID_ARGUMENT);
  expect(await code(a.markRead(demo("bad-b"), 2n))).toBe(Code.INVALID_ARGUMENT);
  expect(await code(a.conversations({ after: "not-a-cursor" }))).toBe(Code.INVALID_ARGUMENT);
  const group = await a.markGroupRead("bad-nowhere", 1n).catch((e: unknown) => e);
  expect(group).toBeInstanceOf(GroupError);
  expect((group as GroupError).code).toBe(Code.GROUP_NOT_FOUND);
  // Nothing was stored, and the connections stay.
  expect(b.lastSeq).toBe(1n);
  expect((await b.markRead(demo("bad-a"), 1n)).seq).toBe(2n);
  expect([a.state, b.state]).toEqual(["connected", "connected"]);
  a.close();
  b.close();
});

it("pages through the conversations with next, most recent first; groups are listed and marked read", async () => {
  const me = await clientFor(node, "page-me");
  const receipts = record(me, "receipt");
  await me.connect();
  const peers = ["page-p1", "page-p2", "page-p3", "page-p4", "page-p5"];
  for (const p of peers) {
    const c = await clientFor(node, p);
    await c.connect();
    await c.send(demo("page-me"), `from ${p}`);
    c.close();
  }
  await groups.create("page-g");
  await groups.add("page-g", ["page-me", "page-p1"]);
  await groups.post("page-g", "to the group", "page-p1");
  await groups.post("page-g", "again", "page-p1");
  await me.sync();

  const seen: string[] = [];
  const unread: bigint[] = [];
  let after = "";
  let pages = 0;
  do {
    const page = await me.conversations({ after, limit: 2 });
    expect(page.totalUnread).toBe(7n);
    expect(page.conversations.length).toBeLessThanOrEqual(2);
    for (const c of page.conversations) {
      seen.push(c.group !== "" ? `#${c.group}` : c.peer!.uid);
      unread.push(c.unread);
    }
    after = page.next;
    pages += 1;
  } while (after !== "" && pages < 10);
  expect(pages).toBe(3);
  // Most recent first: the group, then the peers in reverse order of their messages.
  expect(seen).toEqual(["#page-g", ...[...peers].reverse()]);
  expect(unread).toEqual([2n, 1n, 1n, 1n, 1n, 1n]);
  // The whole list in one page is the same.
  const all = await me.conversations();
  expect(all.conversations.map((c) => (c.group !== "" ? `#${c.group}` : c.peer!.uid))).toEqual(seen);
  expect(all.next).toBe("");

  // The group read: the list drops its unread; the receipt is only for this user's devices.
  const ack = await me.markGroupRead("page-g", 2n);
  expect(ack.seq).toBe(6n);
  const group = (await me.conversations({ limit: 1 })).conversations[0];
  expect([group?.group, group?.unread, group?.readSeq]).toEqual(["page-g", 0n, 2n]);
  expect(receipts).toHaveLength(0);
  me.close();
});
