// Log in as a user, the conversation list and the chat pane.
//
// Conversations are built here from the timeline: one per peer seen, with
// its messages, and one per group (`#<gid>`) whose messages arrive (the
// business server creates groups and adds members; typing `#<gid>` in
// "start a chat with…" opens one to post to). They are kept in localStorage
// per user, next to the SDK's cursor, so a reload shows the history it had
// and the SDK then delivers only what came after. The unread counts come
// from the server's conversation list at login (and again when another
// device of the user reads), then move with the events; the open
// conversation is marked read as its messages are shown, the peer's read
// receipts put a "read" mark under this user's messages, and typing sends
// a transient "typing" message (at most one per 3 s) that the other side
// shows for 4 s. This user's own messages can be recalled ("message
// recalled" keeps their place) and edited (shown with "(edited)"); the
// `amended` notices update the lines held, here and in localStorage.

import {
  type AmendedEvent,
  Client,
  type Conversation as Listed,
  LocalStorageCursor,
  type Message,
  type ReceiptEvent,
  ServerError,
  bodyText,
  codeName,
} from "@switchboard/sdk";
import { fill, h, time } from "./dom.js";
import { HttpError, demoToken } from "./http.js";

type Status = "sending" | "stored" | "failed";

interface Line {
  /** The timeline sequence when known (received), else the client_msg_id. */
  key: string;
  seq?: string;
  /** The server's message id, once known (read receipts name messages by it). */
  msgId?: string;
  from: string;
  text: string;
  at: number;
  mine: boolean;
  status?: Status;
  error?: string;
  /** Recalled: the text is gone, the line keeps its place. */
  recalled?: boolean;
  /** Edited at this time (ms); `text` is the edited text. */
  editedAt?: number;
  /** Why this user's last recall or edit of the line was refused. */
  amendError?: string;
}

interface Conversation {
  /** The peer's uid, or `#<gid>` for a group. */
  peer: string;
  lines: Line[];
  unread: number;
  /** This user's read position (a seq on the user's timeline, or the group's). */
  readSeq?: string;
  /** 1:1: the peer read this user's messages up to this message id. */
  peerRead?: string;
  /** Why this user is no longer in the group (`NOT_GROUP_MEMBER`, `GROUP_NOT_FOUND`). */
  left?: string;
}

/** Lines kept per conversation in localStorage. */
const KEEP = 200;
const SYSTEM = "(system)";
/** Group conversations are keyed `#<gid>`. */
const GROUP = "#";
/** The type of the transient message sent while typing, at most once per TYPING_SEND_MS. */
const TYPING = "typing";
const TYPING_SEND_MS = 3000;
/** How long "typing…" shows after one arrives. */
const TYPING_SHOW_MS = 4000;
/** The inputs whose text a render keeps: the message being written, the peer of a new chat. */
const DRAFTS = ["text", "new-peer"];
/** How a recalled message shows, in the chat and as a conversation's last line. */
const RECALLED = "message recalled";

/** The group id of a conversation key, or null for a one-to-one conversation. */
function groupOf(peer: string): string | null {
  return peer.startsWith(GROUP) && peer.length > 1 ? peer.slice(1) : null;
}

let client: Client | null = null;
let me = "";
let myApp = "demo";
let convs = new Map<string, Conversation>();
let active: string | null = null;
let root: HTMLElement | null = null;
/** Conversation key -> who is typing there and until when (not persisted). */
const typing = new Map<string, { who: string; until: number }>();
/** The last "typing" sent: to which conversation, when. */
let typingSent = { peer: "", at: 0 };
/** The own line being edited in the compose box (its conversation and key), if any. */
let editing: { peer: string; key: string } | null = null;

const storeKey = () => `sb-console:convs:${me}`;

function deviceId(): string {
  let id = localStorage.getItem("sb-console:device");
  if (id === null) {
    id = `web-${crypto.randomUUID()}`;
    localStorage.setItem("sb-console:device", id);
  }
  return id;
}

function load(): void {
  try {
    const saved = JSON.parse(localStorage.getItem(storeKey()) ?? "[]") as Conversation[];
    convs = new Map(saved.map((c) => [c.peer, c]));
  } catch {
    convs = new Map();
  }
}

function save(): void {
  const all = [...convs.values()].map((c) => ({ ...c, lines: c.lines.slice(-KEEP) }));
  localStorage.setItem(storeKey(), JSON.stringify(all));
}

function conv(peer: string): Conversation {
  let c = convs.get(peer);
  if (c === undefined) {
    c = { peer, lines: [], unread: 0 };
    convs.set(peer, c);
  }
  return c;
}

/** The text of a body: `{"text": …}` JSON (what the SDK's examples send) or the raw text. */
function textOf(m: Message): string {
  const raw = bodyText(m);
  try {
    const v = JSON.parse(raw) as unknown;
    if (typeof v === "object" && v !== null && typeof (v as { text?: unknown }).text === "string") {
      return (v as { text: string }).text;
    }
  } catch {
    // Not JSON: shown as it is.
  }
  return raw;
}

/** The line of a message received (or listed), `seq` on its timeline (undefined: online-only). */
function lineOf(seq: bigint | undefined, m: Message): Line {
  const from = m.from?.uid ?? "";
  const mine = from === me;
  const line: Line = {
    key: seq === undefined ? `online-${m.msgId}` : String(seq),
    seq: seq === undefined ? undefined : String(seq),
    msgId: String(m.msgId),
    from: from === "" ? SYSTEM : from,
    text: "",
    at: Number(m.serverTimeMs),
    mine,
    status: mine ? "stored" : undefined,
  };
  setContent(line, m);
  return line;
}

/** A line takes a message's content as it is now: recalled, edited, or as sent. */
function setContent(line: Line, m: Message): void {
  line.text = m.recalled ? "" : textOf(m);
  line.recalled = m.recalled || undefined;
  line.editedAt = m.editedAtMs > 0n ? Number(m.editedAtMs) : undefined;
}

/** The conversation of a one-to-one message: the other user (or the system's). */
function peerOf(m: Message): string {
  const from = m.from?.uid ?? "";
  // My own sends from another device come back on my timeline.
  return from === me ? (m.to?.uid ?? "") : from === "" ? SYSTEM : from;
}

/** Adds a received line to conversation `key` (once per seq), counts it unread or reads it. */
function addLine(key: string, line: Line): void {
  const c = conv(key);
  if (line.seq !== undefined && c.lines.some((l) => l.seq === line.seq)) return;
  c.lines.push(line);
  if (typing.get(key)?.who === line.from) typing.delete(key);
  if (line.mine) {
    // Sending reads the conversation up to the message (the server counts it so too).
    ownRead(c, line.seq);
  } else if (key !== active || document.hidden) {
    c.unread += 1;
  } else {
    markShown();
  }
  save();
  render();
}

function received(seq: bigint | undefined, m: Message): void {
  addLine(peerOf(m), lineOf(seq, m));
}

/** A message was recalled or edited: the line holding it takes its content now (none held: nothing to show). */
function amended(e: AmendedEvent): void {
  const m = e.amended;
  const c = convs.get(e.group !== "" ? GROUP + e.group : peerOf(m));
  const line = c?.lines.find((l) => l.msgId === String(m.msgId));
  if (line === undefined) return;
  setContent(line, m);
  line.amendError = undefined;
  save();
  render();
}

function receivedGroup(group: string, seq: bigint, m: Message): void {
  // My own posts from another device come back as group messages.
  conv(GROUP + group).left = undefined;
  addLine(GROUP + group, lineOf(seq, m));
}

/** This user read `c` up to `seq` (here or on another device): nothing in it is unread. */
function ownRead(c: Conversation, seq: string | undefined): void {
  c.unread = 0;
  if (seq !== undefined && BigInt(seq) > BigInt(c.readSeq ?? "0")) c.readSeq = seq;
}

/** Marks the open conversation read up to the last message from others shown (when that moved). */
function markShown(): void {
  if (client === null || active === null || active === SYSTEM || document.hidden) return;
  const c = conv(active);
  c.unread = 0;
  let last: string | undefined;
  for (const l of c.lines) if (!l.mine && l.seq !== undefined) last = l.seq;
  if (last === undefined || BigInt(last) <= BigInt(c.readSeq ?? "0")) return;
  c.readSeq = last;
  const group = groupOf(active);
  const marked =
    group === null ? client.markRead({ app: myApp, uid: active }, BigInt(last)) : client.markGroupRead(group, BigInt(last));
  marked.catch((e: unknown) => console.warn("mark read:", e));
}

/** Takes the server's view of one conversation: its unread count and read positions. */
function listed(s: Listed): void {
  const key = s.group !== "" ? GROUP + s.group : (s.peer?.uid ?? "");
  if (key === "") return;
  const c = conv(key);
  const last = s.last?.seq ?? 0n;
  const m = s.last?.message;
  // Older than anything this device holds (another device's history): show the last message at least.
  if (c.lines.length === 0 && m !== undefined) c.lines.push(lineOf(last, m));
  // The last message as it is now (recalled or edited since this device got it).
  const held = m === undefined ? undefined : c.lines.find((l) => l.msgId === String(m.msgId));
  if (held !== undefined && m !== undefined) setContent(held, m);
  // What arrived after the server made the list is counted on top.
  const later = c.lines.filter((l) => !l.mine && l.seq !== undefined && BigInt(l.seq) > last).length;
  c.unread = Number(s.unread) + later;
  if (s.readSeq > BigInt(c.readSeq ?? "0")) c.readSeq = String(s.readSeq);
  if (s.peerReadMsgId > BigInt(c.peerRead ?? "0")) c.peerRead = String(s.peerReadMsgId);
  if (key === active) markShown();
}

/** Reads the server's conversation list (every page) into the conversations. */
async function refreshList(): Promise<void> {
  const cl = client;
  if (cl === null) return;
  let after = "";
  do {
    const page = await cl.conversations({ after, limit: 200 });
    if (client !== cl) return;
    for (const s of page.conversations) listed(s);
    after = page.next;
  } while (after !== "");
  save();
  render();
}

function receipt(e: ReceiptEvent): void {
  if (e.mine) {
    // Read on another device of this user: the server's list has what is left unread.
    refreshList().catch((err: unknown) => console.warn("conversations:", err));
    return;
  }
  const c = e.peer === undefined ? undefined : convs.get(e.peer.uid);
  if (c === undefined || e.read.msgId <= BigInt(c.peerRead ?? "0")) return;
  c.peerRead = String(e.read.msgId);
  save();
  render();
}

/** An online-only message: "typing" shows for a while, anything else is a line. */
function online(m: Message): void {
  if (m.type !== TYPING) {
    received(undefined, m);
    return;
  }
  const who = m.from?.uid ?? "";
  // My own typing on another device (a group's transient reaches it too).
  if (who === "" || who === me) return;
  typing.set(m.group !== "" ? GROUP + m.group : who, { who, until: Date.now() + TYPING_SHOW_MS });
  setTimeout(render, TYPING_SHOW_MS + 50);
  render();
}

/** Tells the peer (or the group) this user is typing, at most once per TYPING_SEND_MS. */
function typed(peer: string): void {
  const now = Date.now();
  if (client === null || peer === SYSTEM || (typingSent.peer === peer && now - typingSent.at < TYPING_SEND_MS)) return;
  typingSent = { peer, at: now };
  const group = groupOf(peer);
  const sent =
    group === null ? client.sendTransient({ app: myApp, uid: peer }, TYPING, "") : client.sendGroupTransient(group, TYPING, "");
  // Best effort: nobody online, or over the budget, is fine.
  sent.catch(() => undefined);
}

function leftGroup(group: string, why: string): void {
  conv(GROUP + group).left = why;
  save();
  render();
}

async function send(peer: string, text: string): Promise<void> {
  if (client === null) return;
  const c = conv(peer);
  const clientMsgId = crypto.randomUUID();
  const line: Line = { key: clientMsgId, from: me, text, at: Date.now(), mine: true, status: "sending" };
  c.lines.push(line);
  render();
  try {
    // Resent with the same client_msg_id across reconnects by the SDK.
    const body = JSON.stringify({ text });
    const group = groupOf(peer);
    const r =
      group === null
        ? await client.send({ app: myApp, uid: peer }, body, { clientMsgId })
        : await client.sendGroup(group, "text", body, { clientMsgId });
    line.status = "stored";
    line.seq = String(r.seq);
    line.msgId = String(r.msgId);
    line.at = Number(r.serverTimeMs);
    ownRead(c, line.seq);
  } catch (e) {
    line.status = "failed";
    line.error = e instanceof Error ? e.message : String(e);
  }
  save();
  render();
}

/** Why a request was refused, short: the protocol's code name when the server said no. */
function why(e: unknown): string {
  if (e instanceof ServerError) return codeName(e.code);
  return e instanceof Error ? e.message : String(e);
}

/** Recalls one of this user's messages; a refusal (e.g. past the app's window) shows under it. */
async function recall(line: Line): Promise<void> {
  if (client === null || line.msgId === undefined) return;
  line.amendError = undefined;
  try {
    // Its notice is not shown back to this client: the line changes here.
    await client.recall(BigInt(line.msgId));
    line.text = "";
    line.recalled = true;
  } catch (e) {
    line.amendError = `recall refused: ${why(e)}`;
  }
  save();
  render();
}

/** Replaces the text of one of this user's messages; a refusal shows under it. */
async function edit(line: Line, text: string): Promise<void> {
  if (client === null || line.msgId === undefined) return;
  line.amendError = undefined;
  try {
    await client.edit(BigInt(line.msgId), JSON.stringify({ text }));
    line.text = text;
    line.editedAt = Date.now();
  } catch (e) {
    line.amendError = `edit refused: ${why(e)}`;
  }
  save();
  render();
}

/** Puts an own line's text in the compose box to edit it. */
function startEdit(peer: string, line: Line): void {
  editing = { peer, key: line.key };
  render();
  const input = document.getElementById("text") as HTMLInputElement | null;
  if (input === null) return;
  input.value = line.text;
  input.focus();
}

function stopEdit(): void {
  editing = null;
  const input = document.getElementById("text") as HTMLInputElement | null;
  if (input !== null) input.value = "";
  render();
}

function setConn(state: string, detail = ""): void {
  const el = document.getElementById("conn");
  if (el === null) return;
  el.textContent = detail === "" ? state : `${state}: ${detail}`;
  el.dataset.state = state;
}

async function login(uid: string, pasted: string): Promise<void> {
  let token = pasted;
  let demo = pasted === "";
  if (demo) token = await demoToken(uid);
  me = uid;
  localStorage.setItem("sb-console:last-uid", uid);
  load();
  const id = deviceId();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  client = new Client({
    url: `${scheme}://${location.host}/ws`,
    token,
    // A fresh demo token before each reconnect; a pasted one is all we have.
    getToken: demo ? () => demoToken(uid) : () => token,
    deviceId: id,
    storage: new LocalStorageCursor(),
    cursorKey: `cursor:${uid}:${id}`,
  });
  client.on("message", ({ seq, message }) => received(seq, message));
  client.on("receipt", receipt);
  client.on("amended", amended);
  client.on("online", ({ message }) => online(message));
  client.on("groupMessage", ({ group, seq, message }) => receivedGroup(group, seq, message));
  client.on("groupLeft", ({ group, name }) => leftGroup(group, name));
  client.on("state", ({ state, error }) => setConn(state, error?.message ?? ""));
  client.on("kick", ({ name, terminal }) => setConn(terminal ? "kicked" : "reconnecting", name));
  const info = await client.connect();
  me = info.user.uid;
  myApp = info.user.app;
  const who = document.getElementById("who");
  if (who !== null) who.textContent = `${info.user.app}/${info.user.uid}`;
  // The unread counts: the server's, once what was missed is delivered (so both agree on where they stand).
  const cl = client;
  cl.sync()
    .then(refreshList)
    .catch((e: unknown) => console.warn("conversations:", e));
}

function loginView(): HTMLElement {
  const uid = h("input", { id: "uid", placeholder: "alice", required: true, value: localStorage.getItem("sb-console:last-uid") ?? "" });
  const token = h("input", { id: "token", placeholder: "a JWT (only needed with real apps)" });
  const err = h("p", { class: "error", id: "login-error" });
  const form = h(
    "form",
    { class: "card login", id: "login" },
    h("h2", {}, "Log in"),
    h("label", {}, "User id ", uid),
    h("details", {}, h("summary", {}, "Use a token"), h("label", {}, "Token ", token)),
    h("button", { type: "submit" }, "Log in"),
    err,
    h(
      "p",
      { class: "hint" },
      "In demo mode (no [[apps]] configured) the node mints a demo-app token for the user id you enter.",
    ),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    err.textContent = "";
    login(uid.value.trim(), token.value.trim())
      .then(render)
      .catch((e: unknown) => {
        client?.close();
        client = null;
        err.textContent =
          e instanceof HttpError && e.status === 404
            ? "This node has real apps configured: demo tokens are off. Paste a token instead."
            : e instanceof Error
              ? e.message
              : String(e);
      });
  });
  return form;
}

function listView(): HTMLElement {
  const sorted = [...convs.values()].sort((a, b) => (b.lines.at(-1)?.at ?? 0) - (a.lines.at(-1)?.at ?? 0));
  const peer = h("input", { id: "new-peer", placeholder: "a user, or #group" });
  const form = h("form", { id: "new-chat" }, peer, h("button", { type: "submit" }, "+"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = peer.value.trim();
    if (p === "") return;
    peer.value = "";
    conv(p);
    open(p);
  });
  return h(
    "aside",
    { class: "list" },
    form,
    h(
      "ul",
      { id: "conversations" },
      ...sorted.map((c) => {
        const last = c.lines.at(-1);
        return h(
          "li",
          { class: c.peer === active ? "conv active" : "conv", "data-peer": c.peer, onclick: () => open(c.peer) },
          h("span", { class: "peer" }, c.peer),
          c.unread > 0 ? h("span", { class: "badge", "data-unread": c.unread }, String(c.unread)) : null,
          h("span", { class: "last" }, last === undefined ? "" : `${who(c, last)}${last.recalled ? RECALLED : last.text}`),
        );
      }),
    ),
  );
}

/** Who wrote the last line, as the list shows it. */
function who(c: Conversation, l: Line): string {
  if (l.mine) return "you: ";
  return groupOf(c.peer) === null ? "" : `${l.from}: `;
}

function mark(l: Line, read: boolean): string {
  if (l.status === "sending") return "…";
  if (l.status === "failed") return "!";
  return read ? "✓ read" : "✓";
}

/**
 * Which of this user's lines the peer read: every one at or before the
 * message the peer's receipt names (by its place among the lines, or by
 * id when that message is not among them).
 */
function readLines(c: Conversation): Set<Line> {
  const out = new Set<Line>();
  if (c.peerRead === undefined || groupOf(c.peer) !== null) return out;
  const upTo = BigInt(c.peerRead);
  const at = c.lines.findIndex((l) => l.msgId === c.peerRead);
  c.lines.forEach((l, i) => {
    const covered = at >= 0 ? i <= at : l.msgId !== undefined && BigInt(l.msgId) <= upTo;
    if (l.mine && l.status === "stored" && covered) out.add(l);
  });
  return out;
}

function paneView(): HTMLElement {
  if (active === null) return h("section", { class: "pane empty" }, h("p", {}, "Pick a conversation, or start one."));
  const c = conv(active);
  const peer = active;
  const edited = editing?.peer === peer ? c.lines.find((l) => l.key === editing?.key && !l.recalled) : undefined;
  const text = h("input", {
    id: "text",
    placeholder: edited === undefined ? `message ${active}` : "edit the message",
    autocomplete: "off",
    oninput: () => typed(peer),
  });
  const form = h(
    "form",
    { id: "compose", class: edited === undefined ? undefined : "editing" },
    text,
    edited === undefined ? null : h("button", { type: "button", id: "cancel-edit", onclick: stopEdit }, "Cancel"),
    h("button", { type: "submit" }, edited === undefined ? "Send" : "Save"),
  );
  const inGroup = groupOf(peer) !== null;
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = text.value;
    if (t.trim() === "") return;
    text.value = "";
    if (edited !== undefined) {
      editing = null;
      void edit(edited, t);
    } else {
      void send(peer, t);
    }
  });
  const read = readLines(c);
  const lines = h(
    "ol",
    { id: "messages" },
    ...c.lines.map((l) =>
      h(
        "li",
        {
          class: `${l.mine ? "msg mine" : "msg"}${l.recalled ? " recalled" : ""}${l === edited ? " editing" : ""}`,
          "data-seq": l.seq,
          "data-from": l.from,
          "data-status": l.status,
          "data-read": read.has(l) ? "read" : undefined,
          "data-recalled": l.recalled,
          "data-edited": l.editedAt !== undefined && !l.recalled ? "edited" : undefined,
          title: l.error ?? (l.seq === undefined ? "" : `seq ${l.seq}`),
        },
        inGroup && !l.mine ? h("span", { class: "from" }, l.from) : null,
        h("span", { class: "text" }, l.recalled ? RECALLED : l.text),
        h(
          "span",
          { class: "meta" },
          l.editedAt !== undefined && !l.recalled ? h("span", { class: "edited" }, "(edited) ") : null,
          time(l.at),
          l.mine ? h("span", { class: "mark" }, ` ${mark(l, read.has(l))}`) : null,
        ),
        amendable(peer, l)
          ? h(
              "span",
              { class: "actions" },
              h("button", { type: "button", class: "edit", onclick: () => startEdit(peer, l) }, "edit"),
              h("button", { type: "button", class: "recall", onclick: () => void recall(l) }, "recall"),
            )
          : null,
        l.amendError === undefined ? null : h("span", { class: "amend-error" }, l.amendError),
      ),
    ),
  );
  const left =
    c.left === undefined ? null : h("p", { class: "notice", id: "left" }, `You are no longer in this group (${c.left}).`);
  const t = typing.get(peer);
  const typingNow =
    t !== undefined && t.until > Date.now()
      ? h("p", { class: "typing", id: "typing" }, inGroup ? `${t.who} is typing…` : "typing…")
      : null;
  return h(
    "section",
    { class: "pane" },
    h("h2", {}, peer === SYSTEM ? "System messages" : peer),
    lines,
    typingNow,
    left,
    peer === SYSTEM ? null : form,
  );
}

/**
 * Whether this user may try to recall or edit a line: one of theirs, stored,
 * not recalled. The app's windows are not known here: the server's refusal
 * shows under the line.
 */
function amendable(peer: string, l: Line): boolean {
  return peer !== SYSTEM && l.mine && l.status === "stored" && l.msgId !== undefined && !l.recalled;
}

function open(peer: string): void {
  if (active !== peer) editing = null;
  active = peer;
  conv(peer).unread = 0;
  markShown();
  save();
  render();
  document.getElementById("text")?.focus();
}

function render(): void {
  if (root === null || client === null) return;
  const focused = document.activeElement?.id;
  // What is being typed survives a render (events re-render at any time).
  const input = (id: string) => document.getElementById(id) as HTMLInputElement | null;
  const drafts = DRAFTS.map((id) => input(id)?.value ?? "");
  fill(root, h("div", { class: "chat" }, listView(), paneView()));
  DRAFTS.forEach((id, i) => {
    const el = input(id);
    if (el !== null) el.value = drafts[i] ?? "";
  });
  if (focused !== undefined && focused !== "") document.getElementById(focused)?.focus();
  const msgs = document.getElementById("messages");
  if (msgs !== null) msgs.scrollTop = msgs.scrollHeight;
}

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && active !== null && client !== null) open(active);
});

/** The chat page: the login form until logged in. */
export function chatPage(el: HTMLElement): void {
  root = el;
  if (client === null) fill(el, loginView());
  else render();
}
