// Recall and edit against a real node: the notice reaching the receiver's
// devices and the sender's other devices online (an `amended` event, never
// a `message`), a device offline then catching up by sync (the original
// already recalled, the notice after it), an edit, a group message's
// recall, the refusals with their codes, a resend with the same
// client_msg_id, and the recall / edit windows (a node whose app allows 1 s).

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type AmendedEvent, type Client, Code, type Message, ServerError, bodyText } from "../src/index.js";
import { type Groups, type Node, clientFor, groupsOf, record, startNode, until } from "./node.js";

let node: Node;
let groups: Groups;

beforeAll(async () => {
  node = await startNode();
  groups = groupsOf(node);
});

afterAll(async () => {
  await node?.stop();
});

const demo = (uid: string) => ({ app: "demo", uid });
const texts = (got: { message: Message }[]) => got.map((e) => bodyText(e.message));
/** The code a request was refused with (or "resolved"). */
const code = (p: Promise<unknown>) =>
  p.then(
    () => "resolved",
    (e: unknown) => (e instanceof ServerError ? e.code : String(e)),
  );
/** What an `amended` event says, in short. */
const told = (e: AmendedEvent) => ({
  seq: e.seq,
  group: e.group,
  mine: e.mine,
  by: e.message.from?.uid,
  msgId: e.amended.msgId,
  recalled: e.amended.recalled,
  edited: e.amended.editedAtMs > 0n,
  text: bodyText(e.amended),
});

describe.each(["binary", "json"] as const)("%s frames", (format) => {
  it("a recall reaches the receiver and the sender's other device online, and an offline device by sync", async () => {
    const [alice, bob] = [`rc-a-${format}`, `rc-b-${format}`];
    const phone = await clientFor(node, alice, { deviceId: "a-phone", format });
    const laptop = await clientFor(node, alice, { deviceId: "a-laptop", format });
    const bobPhone = await clientFor(node, bob, { deviceId: "b-phone", format });
    const [phoneAmended, laptopAmended] = [record(phone, "amended"), record(laptop, "amended")];
    const bobAmended = record(bobPhone, "amended");
    const [phoneGot, laptopGot, bobGot] = [record(phone, "message"), record(laptop, "message"), record(bobPhone, "message")];
    await Promise.all([phone.connect(), laptop.connect(), bobPhone.connect()]);

    const sent = await phone.send(demo(bob), "oops, wrong chat");
    await until(() => bobGot.length === 1 && laptopGot.length === 1, 10_000, "the pushes");
    const r = await phone.recall(sent.msgId);
    // Alice's timeline: 1 is the message, 2 the notice.
    expect([r.seq, r.group, r.duplicate, r.msgId > sent.msgId, r.clientMsgId !== ""]).toEqual([2n, "", false, true, true]);

    await until(() => bobAmended.length === 1 && laptopAmended.length === 1, 10_000, "the notices");
    const whole = { msgId: sent.msgId, recalled: true, edited: false, text: "", by: alice, group: "" };
    expect(told(bobAmended[0]!)).toEqual({ ...whole, seq: 2n, mine: false });
    expect(told(laptopAmended[0]!)).toEqual({ ...whole, seq: 2n, mine: true });
    for (const e of [bobAmended[0]!, laptopAmended[0]!]) {
      // The notice has nothing of its own; the message keeps its type, sender and time.
      expect([e.message.type, e.message.body.length, e.amended.type, e.amended.from?.uid]).toEqual(["", 0, "text", alice]);
      expect(e.amended.serverTimeMs).toBe(sent.serverTimeMs);
      expect(e.amended.body.length).toBe(0);
    }
    // The phone that recalled sees nothing back, and holds the notice's entry as delivered.
    expect(phone.lastSeq).toBe(2n);
    expect([phoneAmended.length, phoneGot.length]).toEqual([0, 0]);
    // Never a message event.
    expect([bobGot.length, laptopGot.length, bobPhone.lastSeq, laptop.lastSeq]).toEqual([1, 1, 2n, 2n]);

    // Bob's laptop was offline: its sync has the message already recalled, then the notice.
    const bobLaptop = await clientFor(node, bob, { deviceId: "b-laptop", format });
    const offlineGot = record(bobLaptop, "message");
    const offlineAmended = record(bobLaptop, "amended");
    await bobLaptop.connect();
    await bobLaptop.sync();
    expect(offlineGot.map((e) => [e.seq, e.message.msgId, e.message.recalled, e.message.body.length, e.message.type])).toEqual([
      [1n, sent.msgId, true, 0, "text"],
    ]);
    expect(offlineAmended.map(told)).toEqual([{ ...whole, seq: 2n, mine: false }]);

    // The list shows the message recalled, and the notice is never its last.
    const list = await bobLaptop.conversations();
    const conv = list.conversations.find((c) => c.peer?.uid === alice);
    expect([conv?.last?.seq, conv?.last?.message?.msgId, conv?.last?.message?.recalled]).toEqual([1n, sent.msgId, true]);
    for (const c of [phone, laptop, bobPhone, bobLaptop]) c.close();
  });

  it("an edit reaches every device, does not count as unread, and the list and sync show the edited body", async () => {
    const [alice, bob] = [`ed-a-${format}`, `ed-b-${format}`];
    const a = await clientFor(node, alice, { format });
    const b = await clientFor(node, bob, { format });
    const bobAmended = record(b, "amended");
    const bobGot = record(b, "message");
    await Promise.all([a.connect(), b.connect()]);

    const sent = await a.send(demo(bob), "see you at 5");
    await until(() => bobGot.length === 1, 10_000, "the push");
    await b.markRead(demo(alice), bobGot[0]!.seq);
    const r = await a.edit(sent.msgId, "see you at 6");
    // Both timelines: 1 the message, 2 Bob's receipt, 3 the notice.
    expect([r.seq, r.duplicate]).toEqual([3n, false]);
    await until(() => bobAmended.length === 1, 10_000, "the notice");
    expect(told(bobAmended[0]!)).toEqual({
      seq: 3n,
      group: "",
      mine: false,
      by: alice,
      msgId: sent.msgId,
      recalled: false,
      edited: true,
      text: "see you at 6",
    });
    const editedAt = bobAmended[0]!.amended.editedAtMs;
    expect(editedAt >= sent.serverTimeMs).toBe(true);

    // Not unread: Bob read the message before the edit.
    const list = await b.conversations();
    const conv = list.conversations.find((c) => c.peer?.uid === alice);
    expect([list.totalUnread, conv?.unread, conv?.last?.seq]).toEqual([0n, 0n, 1n]);
    expect([bodyText(conv!.last!.message!), conv?.last?.message?.editedAtMs]).toEqual(["see you at 6", editedAt]);
    // The sender's list too: the original, as it is now.
    const mine = (await a.conversations()).conversations.find((c) => c.peer?.uid === bob);
    expect([mine?.last?.seq, bodyText(mine!.last!.message!)]).toEqual([1n, "see you at 6"]);

    // Edited again, then recalled: a recalled message can't be edited any more.
    await a.edit(sent.msgId, "see you at 7");
    await a.recall(sent.msgId);
    expect(await code(a.edit(sent.msgId, "see you at 8"))).toBe(Code.MESSAGE_RECALLED);
    await until(() => bobAmended.length === 3, 10_000, "the later notices");
    expect(bobAmended.map((e) => [e.amended.recalled, bodyText(e.amended)])).toEqual([
      [false, "see you at 6"],
      [false, "see you at 7"],
      [true, ""],
    ]);
    // A device syncing from 0 has the message as it is now (recalled), then the three notices.
    const fresh = await clientFor(node, bob, { deviceId: "b-fresh", format });
    const freshGot = record(fresh, "message");
    const freshAmended = record(fresh, "amended");
    await fresh.connect();
    await fresh.sync();
    expect(freshGot.map((e) => [e.seq, e.message.recalled, bodyText(e.message)])).toEqual([[1n, true, ""]]);
    expect(freshAmended.map((e) => e.seq)).toEqual([3n, 4n, 5n]);
    expect(bobGot).toHaveLength(1);
    for (const c of [a, b, fresh]) c.close();
  });
});

it("a group message's recall reaches the members and the sender's other device on the group's timeline", async () => {
  await groups.create("am-g");
  await groups.add("am-g", ["gr-a", "gr-b", "gr-c"]);
  const phone = await clientFor(node, "gr-a", { deviceId: "a-phone" });
  const laptop = await clientFor(node, "gr-a", { deviceId: "a-laptop" });
  const b = await clientFor(node, "gr-b");
  const [phoneAmended, laptopAmended, bAmended] = [record(phone, "amended"), record(laptop, "amended"), record(b, "amended")];
  const [phoneGot, laptopGot, bGot] = [record(phone, "groupMessage"), record(laptop, "groupMessage"), record(b, "groupMessage")];
  await Promise.all([phone.connect(), laptop.connect(), b.connect()]);

  const sent = await phone.sendGroup("am-g", "text", "wrong group, sorry");
  await until(() => bGot.length === 1 && laptopGot.length === 1, 10_000, "the group's pushes");
  // Not the sender: refused.
  expect(await code(b.recall(sent.msgId))).toBe(Code.NOT_MESSAGE_SENDER);
  const r = await phone.recall(sent.msgId);
  // The group's timeline: 1 the post, 2 the notice.
  expect([r.seq, r.group]).toEqual([2n, "am-g"]);
  await until(() => bAmended.length === 1 && laptopAmended.length === 1, 10_000, "the notices");
  const whole = { seq: 2n, group: "am-g", by: "gr-a", msgId: sent.msgId, recalled: true, edited: false, text: "" };
  expect(told(bAmended[0]!)).toEqual({ ...whole, mine: false });
  expect(told(laptopAmended[0]!)).toEqual({ ...whole, mine: true });
  expect(bAmended[0]?.amended.group).toBe("am-g");
  expect(phone.groupPosition("am-g")).toBe(2n);
  expect([phoneAmended.length, phoneGot.length, bGot.length, laptopGot.length]).toEqual([0, 0, 1, 1]);
  // Nothing on the users' own timelines.
  expect([phone.lastSeq, b.lastSeq]).toEqual([0n, 0n]);

  // A member offline then: the post already recalled, then the notice.
  const c = await clientFor(node, "gr-c");
  const cGot = record(c, "groupMessage");
  const cAmended = record(c, "amended");
  await c.connect();
  await c.sync();
  expect(cGot.map((e) => [e.seq, e.message.msgId, e.message.recalled, e.message.body.length])).toEqual([[1n, sent.msgId, true, 0]]);
  expect(cAmended.map(told)).toEqual([{ ...whole, mine: false }]);
  const conv = (await c.conversations()).conversations.find((x) => x.group === "am-g");
  expect([conv?.last?.seq, conv?.last?.message?.recalled]).toEqual([1n, true]);
  for (const x of [phone, laptop, b, c]) x.close();
});

it("refusals: someone else's message, an unknown id, a receipt's id; a resend answers the first result", async () => {
  const a = await clientFor(node, "ref-a");
  const b = await clientFor(node, "ref-b");
  const bobGot = record(b, "message");
  const bobAmended = record(b, "amended");
  await Promise.all([a.connect(), b.connect()]);
  const sent = await a.send(demo("ref-b"), "hello");
  await until(() => bobGot.length === 1, 10_000, "the push");

  expect(await code(b.recall(sent.msgId))).toBe(Code.NOT_MESSAGE_SENDER);
  expect(await code(b.edit(sent.msgId, "hijacked"))).toBe(Code.NOT_MESSAGE_SENDER);
  expect(await code(a.recall(123_456_789n))).toBe(Code.MESSAGE_NOT_FOUND);
  expect(await code(a.edit(123_456_789n, "x"))).toBe(Code.MESSAGE_NOT_FOUND);
  // A read receipt is not an app message.
  const read = await b.markRead(demo("ref-a"), bobGot[0]!.seq);
  expect(await code(b.recall(read.msgId))).toBe(Code.MESSAGE_NOT_FOUND);
  // Nothing was stored, and the connections stay.
  expect([a.state, b.state]).toEqual(["connected", "connected"]);

  // The same client_msg_id twice: stored once, the second answer is the first one's.
  const first = await a.edit(sent.msgId, "hello!", { clientMsgId: "edit-once" });
  const again = await a.edit(sent.msgId, "hello!", { clientMsgId: "edit-once" });
  expect([again.msgId, again.seq, again.duplicate, first.duplicate]).toEqual([first.msgId, first.seq, true, false]);
  // A notice's own id is not a message either.
  expect(await code(a.recall(first.msgId))).toBe(Code.MESSAGE_NOT_FOUND);
  await until(() => bobAmended.length === 1, 10_000, "the notice");
  await b.sync();
  expect(bobAmended).toHaveLength(1);
  expect(bobGot).toHaveLength(1);
  a.close();
  b.close();
});

describe("windows", () => {
  let small: Node;
  const secret = "amend-window-test-secret";

  beforeAll(async () => {
    // The demo app configured by hand, with 1-second windows.
    const config = `[[apps]]\nname = "demo"\njwt_secret = "${secret}"\nrecall_window_secs = 1\nedit_window_secs = 1\n`;
    small = await startNode({}, { config, secret });
  });

  afterAll(async () => {
    await small?.stop();
  });

  it("a recall or an edit after the app's window is AMEND_WINDOW_CLOSED", async () => {
    const a: Client = await clientFor(small, "win-a");
    await a.connect();
    const early = await a.send(demo("win-b"), "recall me now");
    const late = await a.send(demo("win-b"), "too late");
    expect((await a.recall(early.msgId)).duplicate).toBe(false);
    await new Promise((r) => setTimeout(r, 2_100));
    expect(await code(a.recall(late.msgId))).toBe(Code.AMEND_WINDOW_CLOSED);
    expect(await code(a.edit(late.msgId, "edited"))).toBe(Code.AMEND_WINDOW_CLOSED);
    a.close();
  });
});
