// The operator page: the node's stats (connections, messages/s) polled
// from /v1/admin/stats, presence lookup and a user's timeline, with the
// operator's key (docs/http-api.md).

import { fill, h, time } from "./dom.js";
import { call } from "./http.js";

interface Stats {
  node: string;
  uptime_secs: number;
  connections: { total: number; open: number; by_platform: Record<string, number>; by_app: Record<string, number> };
  messages_stored_total: number;
  online_messages_total: number;
  pushes_total: number;
  slow_consumers_total: number;
  messages_per_sec: number;
  pushes_per_sec: number;
  rate_window_secs: number;
}

interface Presence {
  users: { uid: string; online: boolean; devices: { device_id: string; platform: string; since_ms: number; node: string }[] }[];
}

interface ApiMessage {
  msg_id: string;
  from: { app: string; uid: string };
  to: { app: string; uid: string };
  type: string;
  body: string | null;
  body_base64: string;
  server_time_ms: number;
  /** Set on a read receipt (`type` and the body are then empty). */
  read?: { peer: { app: string; uid: string } | null; group: string | null; seq: number; msg_id: string };
  /** Set on a recall or edit notice (`type` and the body are then empty): the message as it is now. */
  amended?: ApiMessage;
  /** The message was recalled (its body is gone). */
  recalled?: boolean;
  /** The message was edited at this time. */
  edited_at_ms?: number;
}

/** The type column of a timeline entry: the app's type, or what kind of entry it is. */
function kindOf(m: ApiMessage): string {
  if (m.read !== undefined) return "(read)";
  if (m.amended !== undefined) return m.amended.recalled === true ? "(recall)" : "(edit)";
  return m.type;
}

/** The body column of a timeline entry. */
function bodyOf(m: ApiMessage): string {
  if (m.read !== undefined) return `read ${m.read.group ? `#${m.read.group}` : (m.read.peer?.uid ?? "")} up to ${m.read.seq}`;
  if (m.amended !== undefined) return `${m.amended.recalled === true ? "recalled" : "edited"} ${m.amended.msg_id}`;
  if (m.recalled === true) return "(recalled)";
  const body = m.body ?? `base64 ${m.body_base64}`;
  return m.edited_at_ms === undefined ? body : `${body} (edited)`;
}

interface Timeline {
  entries: { seq: number; message: ApiMessage }[];
  timeline_head: number;
  has_more: boolean;
}

const KEY = "sb-console:admin-key";
let timer: ReturnType<typeof setInterval> | undefined;

const key = () => sessionStorage.getItem(KEY) ?? "";
const errText = (e: unknown) => (e instanceof Error ? e.message : String(e));
const counts = (m: Record<string, number>) =>
  Object.entries(m)
    .map(([k, v]) => `${k}: ${v}`)
    .join(", ") || "–";

function table(head: string[], rows: (string | number)[][], id: string): HTMLTableElement {
  return h(
    "table",
    { id },
    h("thead", {}, h("tr", {}, ...head.map((c) => h("th", {}, c)))),
    h("tbody", {}, ...rows.map((r) => h("tr", {}, ...r.map((c) => h("td", {}, String(c)))))),
  );
}

async function refreshStats(out: HTMLElement): Promise<void> {
  try {
    const s = await call<Stats>("GET", "/v1/admin/stats", key());
    fill(
      out,
      table(
        ["", ""],
        [
          ["node", `${s.node} (up ${s.uptime_secs} s)`],
          ["connections", `${s.connections.total} logged in, ${s.connections.open} open sockets`],
          ["by platform", counts(s.connections.by_platform)],
          ["by app", counts(s.connections.by_app)],
          ["messages/s", `${s.messages_per_sec.toFixed(2)} (over ${s.rate_window_secs.toFixed(0)} s)`],
          ["pushes/s", s.pushes_per_sec.toFixed(2)],
          ["stored / online / pushes", `${s.messages_stored_total} / ${s.online_messages_total} / ${s.pushes_total}`],
          ["slow consumers", s.slow_consumers_total],
        ],
        "stats",
      ),
    );
  } catch (e) {
    fill(out, h("p", { class: "error" }, errText(e)));
  }
}

function presenceForm(): HTMLElement {
  const app = h("input", { id: "presence-app", value: "demo", size: 8 });
  const users = h("input", { id: "presence-users", placeholder: "alice, bob" });
  const out = h("div", { id: "presence-out" });
  const form = h("form", { id: "presence" }, app, users, h("button", { type: "submit" }, "Look up"), out);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const list = users.value.split(",").map((u) => u.trim()).filter((u) => u !== "");
    call<Presence>("POST", `/v1/apps/${encodeURIComponent(app.value)}/presence`, key(), { users: list })
      .then((p) =>
        fill(
          out,
          table(
            ["user", "online", "devices"],
            p.users.map((u) => [
              u.uid,
              u.online ? "online" : "offline",
              u.devices.map((d) => `${d.device_id} (${d.platform}, since ${time(d.since_ms)}, ${d.node})`).join("; ") || "–",
            ]),
            "presence-table",
          ),
        ),
      )
      .catch((e: unknown) => fill(out, h("p", { class: "error" }, errText(e))));
  });
  return form;
}

function timelineForm(): HTMLElement {
  const app = h("input", { id: "timeline-app", value: "demo", size: 8 });
  const uid = h("input", { id: "timeline-uid", placeholder: "alice" });
  const since = h("input", { id: "timeline-since", value: "0", size: 6, inputMode: "numeric" });
  const out = h("div", { id: "timeline-out" });
  const form = h("form", { id: "timeline" }, app, uid, "since", since, h("button", { type: "submit" }, "Show"), out);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const path = `/v1/apps/${encodeURIComponent(app.value)}/users/${encodeURIComponent(uid.value.trim())}/timeline`;
    call<Timeline>("GET", `${path}?since=${encodeURIComponent(since.value || "0")}&limit=100`, key())
      .then((t) =>
        fill(
          out,
          h("p", {}, `head ${t.timeline_head}${t.has_more ? ", more after the last seq shown" : ""}`),
          table(
            ["seq", "time", "from", "to", "type", "body"],
            t.entries.map(({ seq, message: m }) => [
              seq,
              time(m.server_time_ms),
              m.from.uid === "" ? "(system)" : `${m.from.app}/${m.from.uid}`,
              `${m.to.app}/${m.to.uid}`,
              kindOf(m),
              bodyOf(m),
            ]),
            "timeline-table",
          ),
        ),
      )
      .catch((e: unknown) => fill(out, h("p", { class: "error" }, errText(e))));
  });
  return form;
}

/** The operator page. */
export function operatorPage(el: HTMLElement): void {
  const input = h("input", { id: "admin-key", type: "password", placeholder: "operator key", autocomplete: "off", value: key() });
  const stats = h("div", { id: "stats-out" });
  const keyForm = h("form", { id: "admin" }, input, h("button", { type: "submit" }, "Use key"));
  keyForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, input.value.trim());
    void refreshStats(stats);
  });
  fill(
    el,
    h(
      "div",
      { class: "operator" },
      h("section", { class: "card" }, h("h2", {}, "Operator key"), keyForm, h("p", { class: "hint" }, h("code", {}, "switchboard api-key --admin"), " prints it in demo mode.")),
      h("section", { class: "card" }, h("h2", {}, "Node"), stats),
      h("section", { class: "card" }, h("h2", {}, "Presence"), presenceForm()),
      h("section", { class: "card" }, h("h2", {}, "Timeline"), timelineForm()),
    ),
  );
  stopOperator();
  if (key() !== "") void refreshStats(stats);
  // Polled while the page is shown; the rates are the server's own window.
  timer = setInterval(() => {
    if (key() !== "" && !document.hidden) void refreshStats(stats);
  }, 2000);
}

export function stopOperator(): void {
  if (timer !== undefined) clearInterval(timer);
  timer = undefined;
}
