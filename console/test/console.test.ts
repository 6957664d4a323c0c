// The console as the node serves it (/console, embedded in the binary), in
// headless Chromium (Debian's /usr/bin/chromium driven by playwright-core;
// scripts/test-ts installs it when missing). Two users in two browser
// contexts log in with demo tokens, chat with delivery marks, one closes
// its page while the other writes, and the reopened page shows what it
// missed once, in order. Then the operator page, and a group conversation
// (made over the HTTP API) with a member removed. Then the server's unread
// counts at login, the "read" mark from the peer's receipt, and "typing…".
// Then a message edited and one recalled, on both sides, in the lists and
// on the operator page.
// Screenshots go to a temp
// dir, or to docs/ (the README's pictures) with SWITCHBOARD_SCREENSHOTS=docs,
// so a test run leaves the tracked pictures alone.

import { mkdirSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type Browser, type Page, chromium } from "playwright-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { type Node, clientFor, startNode, until } from "../../sdk-ts/test/node.js";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const DOCS =
  process.env.SWITCHBOARD_SCREENSHOTS === "docs"
    ? fileURLToPath(new URL("../../docs/", import.meta.url))
    : `${mkdtempSync(join(tmpdir(), "console-shots-"))}/`;
const VIEW = { width: 1000, height: 560 };

let node: Node;
let browser: Browser;

beforeAll(async () => {
  node = await startNode();
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
  mkdirSync(DOCS, { recursive: true });
});

afterAll(async () => {
  await browser?.close();
  await node?.stop();
});

async function logIn(page: Page, uid: string): Promise<void> {
  page.on("pageerror", (e) => console.error(`page error (${uid}):`, e));
  await page.goto(`${node.httpUrl}/console/`);
  await page.fill("#uid", uid);
  await page.click("#login button[type=submit]");
  await page.waitForSelector('#conn[data-state="connected"]');
  expect(await page.textContent("#who")).toBe(`demo/${uid}`);
}

async function say(page: Page, text: string): Promise<void> {
  const before = await page.locator("#messages li.mine").count();
  await page.fill("#text", text);
  await page.press("#text", "Enter");
  // The delivery mark: the server stored it (the send was acked).
  await expect.poll(() => page.locator("#messages li.mine").count()).toBe(before + 1);
  await expect
    .poll(() => page.locator("#messages li.mine").nth(before).getAttribute("data-status"))
    .toBe("stored");
}

const texts = (page: Page) => page.locator("#messages li .text").allTextContents();
const marks = (page: Page) => page.locator("#messages li.mine .mark").evaluateAll((els) => els.map((e) => e.textContent?.trim()));
const badge = (page: Page, peer: string) => page.locator(`li.conv[data-peer="${peer}"] .badge`).textContent();

it("two users chat in the console; the one that went offline sees what it missed once, in order", async () => {
  const alice = await browser.newContext({ viewport: VIEW });
  const bob = await browser.newContext({ viewport: VIEW });
  const pa = await alice.newPage();
  let pb = await bob.newPage();
  await logIn(pa, "alice");
  await logIn(pb, "bob");

  await pa.fill("#new-peer", "bob");
  await pa.press("#new-peer", "Enter");
  await say(pa, "hi bob");
  await say(pa, "are you there?");

  // Bob's list shows the new conversation with its unread count.
  await pb.waitForSelector('li.conv[data-peer="alice"] .badge');
  await expect.poll(() => badge(pb, "alice")).toBe("2");
  await expect.poll(() => pb.locator('li.conv[data-peer="alice"] .last').textContent()).toBe("are you there?");
  await pb.click('li.conv[data-peer="alice"]');
  expect(await pb.locator('li.conv[data-peer="alice"] .badge').count()).toBe(0);
  expect(await texts(pb)).toEqual(["hi bob", "are you there?"]);
  // Shown, so read: Alice's page marks both.
  await expect.poll(() => marks(pa)).toEqual(["✓ read", "✓ read"]);
  await say(pb, "yes!");
  await expect.poll(() => texts(pa)).toEqual(["hi bob", "are you there?", "yes!"]);
  await expect.poll(() => marks(pb)).toEqual(["✓ read"]);
  await pa.screenshot({ path: `${DOCS}console-chat.png` });

  // Bob closes the page; Alice keeps writing.
  await pb.close();
  for (const t of ["you left", "here is the order", "bye"]) await say(pa, t);

  // Bob comes back in the same browser profile (same device id and cursor).
  pb = await bob.newPage();
  await logIn(pb, "bob");
  await expect.poll(() => badge(pb, "alice")).toBe("3");
  await pb.click('li.conv[data-peer="alice"]');
  await expect.poll(() => texts(pb)).toHaveLength(6);
  // A moment for anything delivered twice to show.
  await new Promise((r) => setTimeout(r, 500));
  expect(await texts(pb)).toEqual(["hi bob", "are you there?", "yes!", "you left", "here is the order", "bye"]);
  const seqs = await pb.locator("#messages li:not(.mine)").evaluateAll((els) => els.map((e) => e.getAttribute("data-seq")));
  // Bob's timeline: 3 is his read receipt, 4 his "yes!", 5 Alice's receipt of it.
  expect(seqs).toEqual(["1", "2", "6", "7", "8"]);
  await pb.screenshot({ path: `${DOCS}console-catchup.png` });

  // The operator page (Alice's tab, still logged in): both online, Bob's
  // timeline as the HTTP API has it.
  await pa.click("#nav-operator");
  await pa.fill("#admin-key", await node.adminKey());
  await pa.click("#admin button");
  await pa.waitForSelector("#stats");
  await expect.poll(() => pa.locator("#stats").textContent()).toContain("2 logged in");
  await pa.fill("#presence-users", "alice, bob, nobody");
  await pa.click("#presence button");
  await pa.waitForSelector("#presence-table");
  expect(await pa.locator("#presence-table tbody tr td:nth-child(2)").allTextContents()).toEqual(["online", "online", "offline"]);
  await pa.fill("#timeline-uid", "bob");
  await pa.click("#timeline button");
  await pa.waitForSelector("#timeline-table");
  const rows = await pa
    .locator("#timeline-table tbody tr")
    .evaluateAll((trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent ?? "")));
  expect(rows.filter((r) => r[4] !== "(read)").map((r) => r[5])).toEqual(
    ["hi bob", "are you there?", "yes!", "you left", "here is the order", "bye"].map((text) => JSON.stringify({ text })),
  );
  // The read receipts are entries too: Bob read Alice's two, Alice read his "yes!" (entry 4 of her timeline).
  expect(rows.filter((r) => r[4] === "(read)").slice(0, 2).map((r) => [r[0], r[2], r[5]])).toEqual([
    ["3", "demo/bob", "read alice up to 2"],
    ["5", "demo/alice", "read bob up to 4"],
  ]);
  await pa.screenshot({ path: `${DOCS}console-operator.png`, fullPage: true });

  await alice.close();
  await bob.close();
});

it("members chat in a group their business server made; a removed member is told", async () => {
  const key = await node.apiKey();
  const api = async (method: string, path: string, body: unknown) => {
    const res = await fetch(`${node.httpUrl}/v1/apps/demo/groups/${path}`, {
      method,
      headers: { Authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    expect(res.ok).toBe(true);
  };
  await api("PUT", "team", { name: "Team" });
  await api("POST", "team/members", { members: [{ uid: "carol" }, { uid: "dave" }] });
  const carol = await browser.newContext({ viewport: VIEW });
  const dave = await browser.newContext({ viewport: VIEW });
  const pc = await carol.newPage();
  const pd = await dave.newPage();
  await logIn(pc, "carol");
  await logIn(pd, "dave");

  await pc.fill("#new-peer", "#team");
  await pc.press("#new-peer", "Enter");
  await say(pc, "hello team");
  await say(pc, "standup in 5");

  // Dave's list shows the group with its unread count and who wrote last.
  await expect.poll(() => badge(pd, "#team")).toBe("2");
  expect(await pd.locator('li.conv[data-peer="#team"] .last').textContent()).toBe("carol: standup in 5");
  await pd.click('li.conv[data-peer="#team"]');
  expect(await texts(pd)).toEqual(["hello team", "standup in 5"]);
  expect(await pd.locator("#messages li .from").allTextContents()).toEqual(["carol", "carol"]);
  await say(pd, "on my way");
  await expect.poll(() => texts(pc)).toEqual(["hello team", "standup in 5", "on my way"]);
  const seqs = await pc.locator("#messages li:not(.mine)").evaluateAll((els) => els.map((e) => e.getAttribute("data-seq")));
  expect(seqs).toEqual(["3"]);
  await pc.screenshot({ path: `${DOCS}console-group.png` });

  // Removed by the business server: Dave's next post is refused and the page says why.
  await api("POST", "team/members/remove", { uids: ["dave"] });
  await pd.fill("#text", "still there?");
  await pd.press("#text", "Enter");
  await expect.poll(() => pd.locator("#messages li.mine").last().getAttribute("data-status")).toBe("failed");
  await expect.poll(() => pd.locator("#left").textContent()).toContain("NOT_GROUP_MEMBER");
  expect(await texts(pc)).toEqual(["hello team", "standup in 5", "on my way"]);

  await carol.close();
  await dave.close();
});

it("a wrong operator key is refused with its code", async () => {
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(`${node.httpUrl}/console/#/operator`);
  await page.fill("#admin-key", "not-the-key");
  await page.click("#admin button");
  await expect.poll(() => page.locator("#stats-out .error").textContent()).toContain("INVALID_API_KEY");
  await ctx.close();
});

it("the unread badge comes from the server at login; the peer's read and typing show in the chat", async () => {
  const erin = await browser.newContext({ viewport: VIEW });
  const frank = await browser.newContext({ viewport: VIEW });
  // Erin's browser has been here before: it holds her (empty) conversations and cursor.
  let pe = await erin.newPage();
  await logIn(pe, "erin");
  await pe.close();

  const pf = await frank.newPage();
  await logIn(pf, "frank");
  await pf.fill("#new-peer", "erin");
  await pf.press("#new-peer", "Enter");
  for (const t of ["one", "two", "three"]) await say(pf, t);
  expect(await marks(pf)).toEqual(["✓", "✓", "✓"]);

  // Erin reads two of them on her phone (the SDK in Node.js).
  const phone = await clientFor(node, "erin", { deviceId: "erin-phone" });
  const got: bigint[] = [];
  phone.on("message", ({ seq }) => got.push(seq));
  await phone.connect();
  await until(() => got.length === 3, 10_000, "the phone's messages");
  await phone.markRead({ app: "demo", uid: "frank" }, got[1]!);
  // Frank's page: the read mark under the two she read.
  await expect.poll(() => marks(pf)).toEqual(["✓ read", "✓ read", "✓"]);

  // Her browser comes back: the server's list says one is left unread (the three arrive by sync first).
  pe = await erin.newPage();
  await logIn(pe, "erin");
  await expect.poll(() => badge(pe, "frank")).toBe("1");
  await new Promise((r) => setTimeout(r, 500));
  expect(await badge(pe, "frank")).toBe("1");
  await pe.click('li.conv[data-peer="frank"]');
  expect(await texts(pe)).toEqual(["one", "two", "three"]);
  expect(await pe.locator('li.conv[data-peer="frank"] .badge').count()).toBe(0);
  await expect.poll(() => marks(pf)).toEqual(["✓ read", "✓ read", "✓ read"]);

  // Frank types: Erin sees "typing…" for a few seconds. (Filling the box for his
  // first messages said so already, to nobody: at most one per 3 s.)
  await new Promise((r) => setTimeout(r, 3_000));
  await pf.locator("#text").pressSequentially("hello?");
  await expect.poll(() => pe.locator("#typing").textContent()).toBe("typing…");
  await expect.poll(() => pe.locator("#typing").count(), { timeout: 10_000 }).toBe(0);
  // A message from Frank while the conversation is open is read at once: no badge, the mark on his side.
  await pf.press("#text", "Enter");
  await expect.poll(() => texts(pe)).toEqual(["one", "two", "three", "hello?"]);
  await expect.poll(() => marks(pf)).toEqual(["✓ read", "✓ read", "✓ read", "✓ read"]);
  expect(await pe.locator('li.conv[data-peer="frank"] .badge').count()).toBe(0);

  phone.close();
  await erin.close();
  await frank.close();
});

it("own messages are edited and recalled: both sides show it in the chat and the list, kept across a reload", async () => {
  const ivy = await browser.newContext({ viewport: VIEW });
  const jack = await browser.newContext({ viewport: VIEW });
  const pi = await ivy.newPage();
  let pj = await jack.newPage();
  await logIn(pi, "ivy");
  await logIn(pj, "jack");

  await pi.fill("#new-peer", "jack");
  await pi.press("#new-peer", "Enter");
  for (const t of ["meet at noon", "the secret plan"]) await say(pi, t);
  await pj.click('li.conv[data-peer="ivy"]');
  await expect.poll(() => texts(pj)).toEqual(["meet at noon", "the secret plan"]);
  // Only one's own messages have the actions.
  expect(await pj.locator("#messages li .actions").count()).toBe(0);

  // Ivy edits the first one in the compose box.
  const first = pi.locator("#messages li.mine").nth(0);
  await first.hover();
  await first.locator("button.edit").click();
  expect(await pi.inputValue("#text")).toBe("meet at noon");
  expect(await pi.textContent("#compose button[type=submit]")).toBe("Save");
  await pi.fill("#text", "meet at one");
  await pi.press("#text", "Enter");
  await expect.poll(() => texts(pi)).toEqual(["meet at one", "the secret plan"]);
  await expect.poll(() => texts(pj)).toEqual(["meet at one", "the secret plan"]);
  for (const p of [pi, pj]) {
    await expect.poll(() => p.locator("#messages li[data-edited] .edited").allTextContents()).toEqual(["(edited) "]);
  }
  expect(await pi.textContent("#compose button[type=submit]")).toBe("Send");

  // Then recalls the second: it keeps its place, on both sides and in both lists.
  const second = pi.locator("#messages li.mine").nth(1);
  await second.hover();
  await second.locator("button.recall").click();
  const shown = ["meet at one", "message recalled"];
  await expect.poll(() => texts(pi)).toEqual(shown);
  await expect.poll(() => texts(pj)).toEqual(shown);
  expect(await pi.locator("#messages li[data-recalled]").count()).toBe(1);
  expect(await pi.locator("#messages li[data-recalled] .actions").count()).toBe(0);
  await expect.poll(() => pj.locator('li.conv[data-peer="ivy"] .last').textContent()).toBe("message recalled");
  await expect.poll(() => pi.locator('li.conv[data-peer="jack"] .last').textContent()).toBe("you: message recalled");

  // Jack's page is closed while Ivy writes one more and recalls it: the reopened page has it recalled.
  await say(pi, "oops");
  await expect.poll(() => texts(pj)).toEqual([...shown, "oops"]);
  await pj.close();
  const third = pi.locator("#messages li.mine").nth(2);
  await third.hover();
  await third.locator("button.recall").click();
  await expect.poll(() => texts(pi)).toEqual([...shown, "message recalled"]);
  pj = await jack.newPage();
  await logIn(pj, "jack");
  await pj.click('li.conv[data-peer="ivy"]');
  await expect.poll(() => texts(pj)).toEqual([...shown, "message recalled"]);
  expect(await pj.locator("#messages li[data-edited]").count()).toBe(1);
  // Nothing unread: the notices are not messages.
  expect(await pj.locator('li.conv[data-peer="ivy"] .badge').count()).toBe(0);

  // The operator page shows Jack's timeline with the messages as they are now and the notices.
  await pi.click("#nav-operator");
  await pi.fill("#admin-key", await node.adminKey());
  await pi.click("#admin button");
  await pi.fill("#timeline-uid", "jack");
  await pi.click("#timeline button");
  await pi.waitForSelector("#timeline-table");
  const rows = await pi
    .locator("#timeline-table tbody tr")
    .evaluateAll((trs) => trs.map((tr) => [...tr.querySelectorAll("td")].map((td) => td.textContent ?? "")));
  expect(rows.filter((r) => r[4] === "text").map((r) => r[5])).toEqual([
    `${JSON.stringify({ text: "meet at one" })} (edited)`,
    "(recalled)",
    "(recalled)",
  ]);
  expect(rows.filter((r) => r[4] === "(edit)" || r[4] === "(recall)").map((r) => r[4])).toEqual(["(edit)", "(recall)", "(recall)"]);

  await ivy.close();
  await jack.close();
});
