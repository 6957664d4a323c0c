// Log in as a user, the conversation list and the chat pane.
//
// The protocol has no conversation list yet, so conversations are built
// here from the timeline: one per peer seen, with its last message and an
// unread count kept by this page, and one per group (`#<gid>`) whose
// messages arrive (the business server creates groups and adds members;
// typing `#<gid>` in "start a chat with…" opens one to post to). They are kept in localStorage per user,
// next to the SDK's cursor, so a reload shows the history it had and the
// SDK then delivers only what came after.

import { Client, LocalStorageCursor, type Message, bodyText } from "@switchboard/sdk";
import { fill, h, time } from "./dom.js";
import { HttpError, demoToken } from "./http.js";

type Status = "sending" | "stored" | "failed";

interface Line {
  /** The timeline sequence when known (received), else the client_msg_id. */
  key: string;
  seq?: string;
  from: string;
  text: string;
  at: number;
  mine: boolean;
  status?: Status;
  error?: string;
}

interface Conversation {
  /** The peer's uid, or `#<gid>` for a group. */
  peer: string;
  lines: Line[];
  unread: number;
  /** Why this user is no longer in the group (`NOT_GROUP_MEMBER`, `GROUP_NOT_FOUND`). */
  left?: string;
}

/** Lines kept per conversation in localStorage. */
const KEEP = 200;
const SYSTEM = "(system)";
/** Group conversations are keyed `#<gid>`. */
const GROUP = "#";

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

function received(seq: bigint | undefined, m: Message): void {
  const from = m.from?.uid ?? "";
  const to = m.to?.uid ?? "";
  // My own sends from another device come back on my timeline.
  const mine = from === me;
  const peer = mine ? to : from === "" ? SYSTEM : from;
  const c = conv(peer);
  c.lines.push({
    key: seq === undefined ? `online-${m.msgId}` : String(seq),
    seq: seq === undefined ? undefined : String(seq),
    from: from === "" ? SYSTEM : from,
    text: textOf(m),
    at: Number(m.serverTimeMs),
    mine,
    status: mine ? "stored" : undefined,
  });
  if (!mine && (peer !== active || document.hidden)) c.unread += 1;
  save();
  render();
}

function receivedGroup(group: string, seq: bigint, m: Message): void {
  const from = m.from?.uid ?? "";
  // My own posts from another device come back as group messages.
  const mine = from === me;
  const c = conv(GROUP + group);
  c.left = undefined;
  c.lines.push({
    key: String(seq),
    seq: String(seq),
    from: from === "" ? SYSTEM : from,
    text: textOf(m),
    at: Number(m.serverTimeMs),
    mine,
    status: mine ? "stored" : undefined,
  });
  if (!mine && (c.peer !== active || document.hidden)) c.unread += 1;
  save();
  render();
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
    line.at = Number(r.serverTimeMs);
  } catch (e) {
    line.status = "failed";
    line.error = e instanceof Error ? e.message : String(e);
  }
  save();
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
  client.on("online", ({ message }) => received(undefined, message));
  client.on("groupMessage", ({ group, seq, message }) => receivedGroup(group, seq, message));
  client.on("groupLeft", ({ group, name }) => leftGroup(group, name));
  client.on("state", ({ state, error }) => setConn(state, error?.message ?? ""));
  client.on("kick", ({ name, terminal }) => setConn(terminal ? "kicked" : "reconnecting", name));
  const info = await client.connect();
  me = info.user.uid;
  myApp = info.user.app;
  const who = document.getElementById("who");
  if (who !== null) who.textContent = `${info.user.app}/${info.user.uid}`;
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
          h("span", { class: "last" }, last === undefined ? "" : `${who(c, last)}${last.text}`),
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

function mark(l: Line): string {
  if (l.status === "sending") return "…";
  if (l.status === "failed") return "!";
  return "✓";
}

function paneView(): HTMLElement {
  if (active === null) return h("section", { class: "pane empty" }, h("p", {}, "Pick a conversation, or start one."));
  const c = conv(active);
  const text = h("input", { id: "text", placeholder: `message ${active}`, autocomplete: "off" });
  const form = h("form", { id: "compose" }, text, h("button", { type: "submit" }, "Send"));
  const peer = active;
  const inGroup = groupOf(peer) !== null;
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = text.value;
    if (t.trim() === "") return;
    text.value = "";
    void send(peer, t);
  });
  const lines = h(
    "ol",
    { id: "messages" },
    ...c.lines.map((l) =>
      h(
        "li",
        {
          class: l.mine ? "msg mine" : "msg",
          "data-seq": l.seq,
          "data-from": l.from,
          "data-status": l.status,
          title: l.error ?? (l.seq === undefined ? "" : `seq ${l.seq}`),
        },
        inGroup && !l.mine ? h("span", { class: "from" }, l.from) : null,
        h("span", { class: "text" }, l.text),
        h("span", { class: "meta" }, time(l.at), l.mine ? h("span", { class: "mark" }, ` ${mark(l)}`) : null),
      ),
    ),
  );
  const left =
    c.left === undefined ? null : h("p", { class: "notice", id: "left" }, `You are no longer in this group (${c.left}).`);
  return h(
    "section",
    { class: "pane" },
    h("h2", {}, peer === SYSTEM ? "System messages" : peer),
    lines,
    left,
    peer === SYSTEM ? null : form,
  );
}

function open(peer: string): void {
  active = peer;
  conv(peer).unread = 0;
  save();
  render();
  document.getElementById("text")?.focus();
}

function render(): void {
  if (root === null || client === null) return;
  const focused = document.activeElement?.id;
  const draft = (document.getElementById("text") as HTMLInputElement | null)?.value ?? "";
  fill(root, h("div", { class: "chat" }, listView(), paneView()));
  const text = document.getElementById("text") as HTMLInputElement | null;
  if (text !== null) text.value = draft;
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
