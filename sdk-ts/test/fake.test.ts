// The group side of the delivery contract against a scripted server (the
// Rust SDK's tests/fake_server.rs, ported): the test plays the server over
// a real WebSocket in JSON frames and checks every frame the client sends,
// for the cases a real node can't be made to produce on demand (a push past
// a hole, a page starting later than asked, a login listing some groups, a
// receipt racing its own mark_read_ack, a transient message in flight when
// the connection drops, an own recall or edit whose notice a sync brings
// before its ack).

import { afterEach, beforeEach, expect, it } from "vitest";
import WebSocket, { WebSocketServer } from "ws";
import type { AddressInfo } from "node:net";
import {
  Client,
  type ClientEvents,
  Code,
  ConnectionError,
  GroupError,
  MemoryStorage,
  type Packet,
  ServerError,
  type WebSocketConstructor,
  decodeJson,
  encodeJson,
  packet,
} from "../src/index.js";
import { record } from "./node.js";

/** The server's end of one connection: frames in, in order. */
class Peer {
  private readonly inbox: Packet[] = [];
  private waiting: ((p: Packet) => void) | null = null;
  constructor(readonly ws: WebSocket) {
    ws.on("message", (data) => {
      const p = decodeJson(data.toString());
      if (p === null) throw new Error(`undecodable frame ${data.toString()}`);
      // The keepalive is not under test.
      if (p.cmd === "ping") return;
      const w = this.waiting;
      if (w !== null) {
        this.waiting = null;
        w(p);
      } else {
        this.inbox.push(p);
      }
    });
  }

  recv(ms = 5_000): Promise<Packet> {
    const p = this.inbox.shift();
    if (p !== undefined) return Promise.resolve(p);
    return new Promise((ok, fail) => {
      const timer = setTimeout(() => fail(new Error("no frame from the client")), ms);
      this.waiting = (q) => {
        clearTimeout(timer);
        ok(q);
      };
    });
  }

  send(p: Packet): void {
    this.ws.send(encodeJson(p));
  }

  async expectAck(seq: bigint, group = ""): Promise<void> {
    const p = await this.recv();
    expect(p.cmd === "push_ack" ? [p.body.seq, p.body.group] : p).toEqual([seq, group]);
  }

  /** Expects a sync of `group` from `since`; returns its header seq. */
  async expectSync(group: string, since: bigint): Promise<number> {
    const p = await this.recv();
    expect(p.cmd === "sync" ? [p.body.group, p.body.since] : p).toEqual([group, since]);
    return p.seq;
  }
}

let server: WebSocketServer;
let url: string;
let peers: Peer[];
let arrived: (() => void) | null;

beforeEach(async () => {
  peers = [];
  arrived = null;
  server = new WebSocketServer({ port: 0, host: "127.0.0.1" });
  server.on("connection", (ws) => {
    peers.push(new Peer(ws));
    arrived?.();
  });
  await new Promise<void>((ok) => server.once("listening", () => ok()));
  url = `ws://127.0.0.1:${(server.address() as AddressInfo).port}/ws`;
});

afterEach(async () => {
  for (const p of peers) p.ws.terminate();
  await new Promise((ok) => server.close(ok));
});

async function nextPeer(): Promise<Peer> {
  const have = peers.length;
  while (peers.length === have) await new Promise<void>((ok) => (arrived = ok));
  return peers[peers.length - 1]!;
}

const ALICE = { app: "demo", uid: "alice" };
const CAROL = { app: "demo", uid: "carol" };

/** Accepts a connection and answers its login. */
async function login(ack: { groups?: { group: string; head: bigint; cursor: bigint }[] } = {}): Promise<Peer> {
  const peer = await nextPeer();
  const p = await peer.recv();
  expect(p.cmd).toBe("login");
  peer.send(packet("login_ack", p.seq, { user: ALICE, keepaliveSecs: 30, maxFrameBytes: 65_536, ...ack }));
  return peer;
}

/** Connects `c` with nothing stored and answers the first sync of its timeline as empty. */
async function connectedEmpty(c: Client): Promise<Peer> {
  const connecting = c.connect();
  const peer = await login();
  await connecting;
  const sync = await peer.expectSync("", 0n);
  peer.send(syncReply(sync, 0n, []));
  return peer;
}

function client(storage = new MemoryStorage()): Client {
  return new Client({
    url,
    token: "t",
    deviceId: "d",
    format: "json",
    storage,
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    reconnectMinMs: 10,
    reconnectMaxMs: 50,
  });
}

/** A storage holding the positions an earlier run left. */
function stored(seq: bigint, groups: Record<string, bigint>): MemoryStorage {
  const s = new MemoryStorage();
  const g = Object.fromEntries(Object.entries(groups).map(([k, v]) => [k, v.toString()]));
  s.set("cursor:d", JSON.stringify({ user: "demo/alice", seq: seq.toString(), groups: g }));
  return s;
}

function groupEntry(group: string, seq: bigint, from = CAROL, clientMsgId = `c-${seq}`) {
  return {
    seq,
    message: { msgId: 1000n + seq, from, to: { app: "demo" }, type: "text", body: new TextEncoder().encode(`${group} ${seq}`), clientMsgId, group },
  };
}
const groupPush = (group: string, seq: bigint) => packet("push", 0, groupEntry(group, seq));
const userPush = (seq: bigint) =>
  packet("push", 0, { seq, message: { msgId: seq, from: CAROL, to: ALICE, type: "text", clientMsgId: `u-${seq}` } });
const syncReply = (seq: number, since: bigint, entries: ReturnType<typeof groupEntry>[], hasMore = false) =>
  packet("sync_reply", seq, { since, entries, hasMore, timelineHead: entries.at(-1)?.seq ?? since });

const groupSeqs = (got: ClientEvents["groupMessage"][]) => got.map((e) => `${e.group}#${e.seq}`);

it("group pushes arrive in group order next to the user's timeline", async () => {
  const c = client(stored(0n, { g1: 10n }));
  const got = record(c, "groupMessage");
  const mine = record(c, "message");
  const connecting = c.connect();
  const peer = await login();
  await connecting;
  await peer.expectSync("", 0n);
  expect(c.groupPosition("g1")).toBe(10n);

  peer.send(groupPush("g1", 11n));
  await peer.expectAck(11n, "g1");
  // The user's timeline and the group's are apart: user entry 1 is no gap of the group's.
  peer.send(userPush(1n));
  await peer.expectAck(1n);
  // 13 before 12: held back, and the group (only) is synced from 11.
  peer.send(groupPush("g1", 13n));
  const seq = await peer.expectSync("g1", 11n);
  peer.send(groupPush("g1", 12n));
  peer.send(syncReply(seq, 11n, [groupEntry("g1", 12n), groupEntry("g1", 13n)]));
  await peer.expectAck(13n, "g1");
  // A resent push: acknowledged again, not shown again.
  peer.send(groupPush("g1", 12n));
  await peer.expectAck(13n, "g1");
  expect(groupSeqs(got)).toEqual(["g1#11", "g1#12", "g1#13"]);
  expect(got[0]?.message.group).toBe("g1");
  expect(mine.map((e) => e.seq)).toEqual([1n]);
  expect(c.groupPositions()).toEqual(new Map([["g1", 13n]]));
  expect(c.lastSeq).toBe(1n);
  c.close();
});

it("a group first seen by a push syncs from 0 and starts where the member's view does", async () => {
  const storage = new MemoryStorage();
  const c = client(storage);
  const got = record(c, "groupMessage");
  const peer = await connectedEmpty(c);
  expect(c.groupPosition("g2")).toBeUndefined();

  // Added while online: entry 42 of a group never seen.
  peer.send(groupPush("g2", 42n));
  const seq = await peer.expectSync("g2", 0n);
  // This member's view starts after 40.
  peer.send(syncReply(seq, 40n, [groupEntry("g2", 41n), groupEntry("g2", 42n)]));
  await peer.expectAck(42n, "g2");
  peer.send(groupPush("g2", 43n));
  await peer.expectAck(43n, "g2");
  expect(groupSeqs(got)).toEqual(["g2#41", "g2#42", "g2#43"]);
  expect(c.groupPosition("g2")).toBe(43n);
  // Persisted next to the user's cursor.
  expect(JSON.parse((await storage.get("cursor:d"))!)).toEqual({ user: "demo/alice", seq: "0", groups: { g2: "43" } });
  c.close();
});

it("login syncs exactly the groups it lists, after catching the server's cursors up", async () => {
  const c = client(stored(0n, { "g-old": 8n, "g-quiet": 3n }));
  const got = record(c, "groupMessage");
  const connecting = c.connect();
  const state = (group: string, head: bigint, cursor: bigint) => ({ group, head, cursor });
  const peer = await login({ groups: [state("g-old", 9n, 7n), state("g-new", 2n, 0n)] });
  const info = await connecting;
  expect(info.groups.map((g) => g.group)).toEqual(["g-old", "g-new"]);
  // The server's cursor of g-old is behind what this device has: moved up first.
  await peer.expectAck(8n, "g-old");
  // Then one pass: the user's timeline and the two listed groups, not g-quiet.
  const userSync = await peer.expectSync("", 0n);
  const oldSync = await peer.expectSync("g-old", 8n);
  const newSync = await peer.expectSync("g-new", 0n);
  peer.send(syncReply(newSync, 0n, [groupEntry("g-new", 1n), groupEntry("g-new", 2n)]));
  peer.send(syncReply(oldSync, 8n, [groupEntry("g-old", 9n)]));
  peer.send(syncReply(userSync, 0n, []));
  // One ack per group, in whichever order.
  const acks = [await peer.recv(), await peer.recv()].map((p) => (p.cmd === "push_ack" ? `${p.body.group}@${p.body.seq}` : p.cmd));
  expect(acks.sort()).toEqual(["g-new@2", "g-old@9"]);
  // Nothing else was asked: the next frame is the ack of this push.
  peer.send(userPush(1n));
  await peer.expectAck(1n);
  expect(groupSeqs(got)).toEqual(["g-new#1", "g-new#2", "g-old#9"]);
  expect(c.groupPosition("g-quiet")).toBe(3n);
  expect(c.groupPosition("g-new")).toBe(2n);
  c.close();
});

it("a refused group sync leaves the group; a refused post is a GroupError, not retried", async () => {
  const c = client(stored(0n, { g3: 5n }));
  const got = record(c, "groupMessage");
  const left = record(c, "groupLeft");
  const peer = await connectedEmpty(c);

  peer.send(groupPush("g3", 6n));
  await peer.expectAck(6n, "g3");
  // Removed: a push past a hole, and the sync is refused.
  peer.send(groupPush("g3", 9n));
  const seq = await peer.expectSync("g3", 6n);
  peer.send(packet("error", seq, { code: Code.NOT_GROUP_MEMBER, message: "not a member" }));
  await expect.poll(() => left.length).toBe(1);
  expect(left[0]).toEqual({ group: "g3", code: Code.NOT_GROUP_MEMBER, name: "NOT_GROUP_MEMBER" });
  expect(c.groupPosition("g3")).toBeUndefined();
  expect(groupSeqs(got)).toEqual(["g3#6"]);

  // A broadcast group refuses the post: the error comes back, once.
  const post = c.sendGroup("news", "text", "hi").catch((e: unknown) => e);
  const p = await peer.recv();
  expect(p.cmd === "c2c" ? [p.body.group, p.body.to] : p).toEqual(["news", undefined]);
  peer.send(packet("error", p.seq, { code: Code.GROUP_ADMINS_ONLY, message: "admins only" }));
  const err = await post;
  expect(err).toBeInstanceOf(GroupError);
  expect((err as GroupError).code).toBe(Code.GROUP_ADMINS_ONLY);
  expect((err as GroupError).group).toBe("news");
  // The connection stays (and no resend came first).
  peer.send(userPush(1n));
  await peer.expectAck(1n);
  expect(c.state).toBe("connected");
  c.close();
});

it("a group post is resent with its id after a reconnect and not shown back", async () => {
  const c = client();
  const got = record(c, "groupMessage");
  let peer = await connectedEmpty(c);

  const post = c.sendGroup("g1", "text", "hi all", { clientMsgId: "gm-1" });
  const first = await peer.recv();
  expect(first.cmd === "c2c" ? [first.body.clientMsgId, first.body.group] : first).toEqual(["gm-1", "g1"]);
  // Stored, then the connection dropped before the ack.
  peer.ws.terminate();

  // The login lists g1 (entry 4 is the post); the resend follows the syncs.
  peer = await login({ groups: [{ group: "g1", head: 4n, cursor: 3n }] });
  const userSync = await peer.expectSync("", 0n);
  const groupSync = await peer.expectSync("g1", 3n);
  const resent = await peer.recv();
  expect(resent.cmd === "c2c" ? [resent.body.clientMsgId, resent.body.group] : resent).toEqual(["gm-1", "g1"]);
  peer.send(syncReply(userSync, 0n, []));
  peer.send(syncReply(groupSync, 3n, [groupEntry("g1", 4n, ALICE, "gm-1")]));
  peer.send(packet("c2c_ack", resent.seq, { clientMsgId: "gm-1", msgId: 1004n, seq: 4n, serverTimeMs: 1n, duplicate: true }));
  const receipt = await post;
  expect([receipt.seq, receipt.duplicate, receipt.group]).toEqual([4n, true, "g1"]);
  await peer.expectAck(4n, "g1");
  // The next group event is 5: the own post (4) was not shown.
  peer.send(groupPush("g1", 5n));
  await peer.expectAck(5n, "g1");
  expect(groupSeqs(got)).toEqual(["g1#5"]);
  expect(c.groupPosition("g1")).toBe(5n);
  c.close();
});

it("a group sync refused with a retryable code is asked again on the same connection", async () => {
  const c = client(stored(0n, { g4: 1n }));
  const got = record(c, "groupMessage");
  const states = record(c, "state");
  const connecting = c.connect();
  const peer = await login({ groups: [{ group: "g4", head: 2n, cursor: 1n }] });
  await connecting;
  const userSync = await peer.expectSync("", 0n);
  const first = await peer.expectSync("g4", 1n);
  peer.send(syncReply(userSync, 0n, []));
  const synced = c.sync();
  peer.send(packet("error", first, { code: Code.RATE_LIMITED, message: "slow down" }));
  // sync() also asked for the user's timeline again.
  const frames = [await peer.recv(), await peer.recv()];
  const bySync = new Map(frames.flatMap((p) => (p.cmd === "sync" ? [[p.body.group, p] as const] : [])));
  expect([...bySync.keys()].sort()).toEqual(["", "g4"]);
  expect(bySync.get("g4")?.body.since).toBe(1n);
  peer.send(syncReply(bySync.get("")!.seq, 0n, []));
  peer.send(syncReply(bySync.get("g4")!.seq, 1n, [groupEntry("g4", 2n)]));
  await peer.expectAck(2n, "g4");
  await synced;
  expect(groupSeqs(got)).toEqual(["g4#2"]);
  // One connection throughout.
  expect(states.map((e) => e.state)).toEqual(["connecting", "connected"]);
  expect(peers.length).toBe(1);
  c.close();
});

const BOB = { app: "demo", uid: "bob" };
/** A read-receipt entry of Alice's timeline: `from` read the conversation with `peer` up to `seq`. */
function receiptEntry(seq: bigint, from: { app: string; uid: string }, peer: { app: string; uid: string }, readSeq: bigint) {
  return { seq, message: { msgId: 2000n + seq, from, to: from === ALICE ? peer : ALICE, read: { peer, seq: readSeq, msgId: 500n + readSeq } } };
}

it("a mark_read_ack's entry is held as received; receipts from the peer and from another device are receipt events", async () => {
  const c = client(stored(2n, {}));
  const receipts = record(c, "receipt");
  const messages = record(c, "message");
  const connecting = c.connect();
  const peer = await login();
  await connecting;
  // The server's cursor (0) is caught up first, then the sync.
  await peer.expectAck(2n);
  const sync = await peer.expectSync("", 2n);
  peer.send(syncReply(sync, 2n, []));

  const marked = c.markRead({ uid: "bob" }, 2n);
  const p = await peer.recv();
  expect(p.cmd === "mark_read" ? [p.body.peer?.uid, p.body.peer?.app, p.body.group, p.body.seq] : p).toEqual(["bob", "", "", 2n]);
  peer.send(packet("mark_read_ack", p.seq, { seq: 3n, msgId: 77n }));
  expect(await marked).toEqual({ seq: 3n, msgId: 77n });
  // Acknowledged as delivered: no sync for it, nothing shown.
  await peer.expectAck(3n);
  expect(c.lastSeq).toBe(3n);

  // Bob read Alice's messages; then Alice read on another device.
  peer.send(packet("push", 0, receiptEntry(4n, BOB, ALICE, 9n)));
  await peer.expectAck(4n);
  peer.send(packet("push", 0, receiptEntry(5n, ALICE, BOB, 2n)));
  await peer.expectAck(5n);
  expect(receipts.map((r) => [r.seq, r.mine, r.peer?.uid, r.group, r.read.seq])).toEqual([
    [4n, false, "bob", "", 9n],
    [5n, true, "bob", "", 2n],
  ]);
  expect(messages).toHaveLength(0);
  expect(c.lastSeq).toBe(5n);
  c.close();
});

it("this client's receipt brought by a sync before its ack is not shown back", async () => {
  const c = client();
  const receipts = record(c, "receipt");
  const peer = await connectedEmpty(c);
  peer.send(userPush(1n));
  await peer.expectAck(1n);

  const marked = c.markRead(CAROL, 1n);
  const p = await peer.recv();
  expect(p.cmd).toBe("mark_read");
  const synced = c.sync();
  const sync = await peer.expectSync("", 1n);
  // The receipt (entry 2) comes in the page, before the mark_read's answer.
  peer.send(packet("sync_reply", sync, { entries: [receiptEntry(2n, ALICE, CAROL, 1n)], timelineHead: 2n }));
  peer.send(packet("mark_read_ack", p.seq, { seq: 2n, msgId: 2002n }));
  await synced;
  expect((await marked).seq).toBe(2n);
  await peer.expectAck(2n);
  expect(receipts).toHaveLength(0);
  expect(c.lastSeq).toBe(2n);
  c.close();
});

it("transient messages: the ack's devices_reached, never retried, never resent after a reconnect", async () => {
  const c = client();
  let peer = await connectedEmpty(c);

  const typing = c.sendTransient({ uid: "bob" }, "typing", "");
  let p = await peer.recv();
  expect(p.cmd === "c2c" ? [p.body.transient, p.body.type, p.body.to?.uid] : p).toEqual([true, "typing", "bob"]);
  peer.send(packet("c2c_ack", p.seq, { clientMsgId: p.cmd === "c2c" ? p.body.clientMsgId : "", msgId: 9n, seq: 0n, devicesReached: 2 }));
  expect(await typing).toEqual({ msgId: 9n, devicesReached: 2 });
  expect(c.lastSeq).toBe(0n);

  // Over the transient budget: the caller hears it, nothing is resent.
  const limited = c.sendGroupTransient("g1", "typing", "").catch((e: unknown) => e);
  p = await peer.recv();
  expect(p.cmd === "c2c" ? [p.body.transient, p.body.group] : p).toEqual([true, "g1"]);
  peer.send(packet("error", p.seq, { code: Code.RATE_LIMITED, message: "slow down" }));
  const err = await limited;
  expect((err as GroupError).code).toBe(Code.RATE_LIMITED);
  expect((err as GroupError).retryable).toBe(true);

  // Unanswered when the connection drops: rejected, not resent on the next connection.
  const lost = c.sendTransient({ uid: "bob" }, "typing", "").catch((e: unknown) => e);
  expect((await peer.recv()).cmd).toBe("c2c");
  peer.ws.terminate();
  expect(await lost).toBeInstanceOf(ConnectionError);
  peer = await login();
  const again = await peer.expectSync("", 0n);
  peer.send(syncReply(again, 0n, []));
  peer.send(userPush(1n));
  await peer.expectAck(1n);
  c.close();
});

/** A recall or edit notice of Alice's timeline (or a group's): `from` amended message `target`. */
function noticeEntry(seq: bigint, from: { app: string; uid: string }, target: bigint, edit?: string, group = "", clientMsgId = "") {
  const amended =
    edit === undefined
      ? { msgId: target, from, type: "text", recalled: true, group }
      : { msgId: target, from, type: "text", body: new TextEncoder().encode(edit), editedAtMs: 1_767_225_600_000n, group };
  return { seq, message: { msgId: 3000n + seq, from, group, clientMsgId, amended } };
}

it("an own recall's notice is held as delivered; the peer's and another device's are amended events", async () => {
  const c = client();
  const amended = record(c, "amended");
  const messages = record(c, "message");
  const peer = await connectedEmpty(c);
  peer.send(userPush(1n));
  await peer.expectAck(1n);

  const recalled = c.recall(200n);
  const p = await peer.recv();
  expect(p.cmd === "amend" ? [p.body.msgId, p.body.recall, p.body.body.length, p.body.clientMsgId !== ""] : p).toEqual([
    200n,
    true,
    0,
    true,
  ]);
  const id = p.cmd === "amend" ? p.body.clientMsgId : "";
  peer.send(packet("amend_ack", p.seq, { clientMsgId: id, msgId: 3002n, seq: 2n }));
  expect(await recalled).toEqual({ clientMsgId: id, msgId: 3002n, seq: 2n, group: "", duplicate: false });
  // Not pushed to this connection: the ack's entry is held as delivered, no sync for it.
  await peer.expectAck(2n);
  expect(c.lastSeq).toBe(2n);
  expect(amended).toHaveLength(0);

  // Carol edited her message 7; then Alice recalled one on another device.
  peer.send(packet("push", 0, noticeEntry(3n, CAROL, 7n, "fixed")));
  await peer.expectAck(3n);
  peer.send(packet("push", 0, noticeEntry(4n, ALICE, 201n)));
  await peer.expectAck(4n);
  expect(amended.map((e) => [e.seq, e.group, e.mine, e.message.from?.uid, e.amended.msgId, e.amended.recalled])).toEqual([
    [3n, "", false, "carol", 7n, false],
    [4n, "", true, "alice", 201n, true],
  ]);
  expect(new TextDecoder().decode(amended[0]?.amended.body)).toBe("fixed");
  expect(amended[0]?.amended.editedAtMs).toBe(1_767_225_600_000n);
  // Never a message event.
  expect(messages.map((e) => e.seq)).toEqual([1n]);
  expect(c.lastSeq).toBe(4n);
  c.close();
});

it("an edit cut by a disconnect is resent with its client_msg_id; a group's notice before its ack is not shown", async () => {
  const c = client(stored(0n, { g1: 5n }));
  const amended = record(c, "amended");
  const got = record(c, "groupMessage");
  const connecting = c.connect();
  let peer = await login();
  await connecting;
  peer.send(syncReply(await peer.expectSync("", 0n), 0n, []));

  const edited = c.edit(1005n, "hi all, again", { clientMsgId: "am-1" });
  const first = await peer.recv();
  expect(first.cmd === "amend" ? [first.body.clientMsgId, first.body.msgId, first.body.recall] : first).toEqual([
    "am-1",
    1005n,
    false,
  ]);
  expect(first.cmd === "amend" ? new TextDecoder().decode(first.body.body) : "").toBe("hi all, again");
  // Stored (the notice is g1's entry 6), then the connection dropped before the ack.
  peer.ws.terminate();

  peer = await login({ groups: [{ group: "g1", head: 6n, cursor: 5n }] });
  const userSync = await peer.expectSync("", 0n);
  const groupSync = await peer.expectSync("g1", 5n);
  const resent = await peer.recv();
  expect(resent.cmd === "amend" ? [resent.body.clientMsgId, resent.body.msgId] : resent).toEqual(["am-1", 1005n]);
  peer.send(syncReply(userSync, 0n, []));
  // The page brings the notice before the answer: the pending request claims it.
  peer.send(packet("sync_reply", groupSync, { since: 5n, entries: [noticeEntry(6n, ALICE, 1005n, "hi all, again", "g1", "am-1")], timelineHead: 6n }));
  await peer.expectAck(6n, "g1");
  peer.send(packet("amend_ack", resent.seq, { clientMsgId: "am-1", msgId: 3006n, seq: 6n, duplicate: true, group: "g1" }));
  expect(await edited).toEqual({ clientMsgId: "am-1", msgId: 3006n, seq: 6n, group: "g1", duplicate: true });

  // Carol's recall in the group is an amended event of the group's timeline.
  peer.send(packet("push", 0, noticeEntry(7n, CAROL, 12n, undefined, "g1")));
  await peer.expectAck(7n, "g1");
  peer.send(groupPush("g1", 8n));
  await peer.expectAck(8n, "g1");
  expect(amended.map((e) => [e.seq, e.group, e.mine, e.amended.msgId, e.amended.recalled])).toEqual([[7n, "g1", false, 12n, true]]);
  expect(groupSeqs(got)).toEqual(["g1#8"]);

  // Alice's own recall there: the ack names the group, whose entry 9 is held as hers.
  const recalled = c.recall(1008n);
  const p = await peer.recv();
  expect(p.cmd).toBe("amend");
  peer.send(packet("amend_ack", p.seq, { clientMsgId: p.cmd === "amend" ? p.body.clientMsgId : "", msgId: 3009n, seq: 9n, group: "g1" }));
  expect((await recalled).group).toBe("g1");
  await peer.expectAck(9n, "g1");
  expect([c.groupPosition("g1"), c.lastSeq, amended.length]).toEqual([9n, 0n, 1]);
  c.close();
});

it("a refused amend is a ServerError with its code, not retried", async () => {
  const c = client();
  const peer = await connectedEmpty(c);
  for (const code of [Code.NOT_MESSAGE_SENDER, Code.MESSAGE_NOT_FOUND, Code.AMEND_WINDOW_CLOSED, Code.MESSAGE_RECALLED]) {
    const refused = c.edit(5n, "x").catch((e: unknown) => e);
    const p = await peer.recv();
    expect(p.cmd).toBe("amend");
    peer.send(packet("error", p.seq, { code, message: "no" }));
    const err = await refused;
    expect(err).toBeInstanceOf(ServerError);
    expect((err as ServerError).code).toBe(code);
  }
  // Nothing was resent: the next frame is the ack of this push.
  peer.send(userPush(1n));
  await peer.expectAck(1n);
  c.close();
});
