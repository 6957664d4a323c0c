// The SDK in headless Chromium (Debian's /usr/bin/chromium driven by
// playwright-core; scripts/test-ts installs it when missing): two users in
// two browser contexts chat, one closes its page, the other keeps writing,
// and the reopened page gets what it missed once, in order, resuming from
// the cursor its localStorage kept. Needs `npm run build` first (dist/).

import { existsSync, readFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { type Browser, type Page, chromium } from "playwright-core";
import { afterAll, beforeAll, expect, it } from "vitest";
import { type Node, startNode } from "./node.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const TYPES: Record<string, string> = { ".html": "text/html", ".js": "text/javascript", ".map": "application/json" };
/** Only what the page needs is served. */
const SERVED = ["/dist/", "/node_modules/@bufbuild/protobuf/", "/test/browser/"];

let node: Node;
let site: http.Server;
let origin: string;
let browser: Browser;

beforeAll(async () => {
  if (!existsSync(join(ROOT, "dist", "index.js"))) throw new Error("dist/ is missing: run `npm run build` first");
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install chromium (scripts/test-ts does)`);
  node = await startNode();
  site = http.createServer((req, res) => {
    const path = normalize(new URL(req.url ?? "/", "http://x").pathname);
    if (!SERVED.some((p) => path.startsWith(p)) || !existsSync(join(ROOT, path))) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": TYPES[extname(path)] ?? "application/octet-stream" });
    res.end(readFileSync(join(ROOT, path)));
  });
  await new Promise<void>((ok) => site.listen(0, "127.0.0.1", ok));
  origin = `http://127.0.0.1:${(site.address() as AddressInfo).port}`;
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
});

afterAll(async () => {
  await browser?.close();
  // A beforeAll that failed early (no Chromium) left no site: don't wait for it.
  if (site !== undefined) await new Promise((ok) => site.close(ok));
  await node?.stop();
});

interface Got {
  seq: string;
  from: string;
  text: string;
}

async function open(page: Page, uid: string, format: "binary" | "json"): Promise<void> {
  const q = new URLSearchParams({ url: node.wsUrl, token: await node.token(uid), format });
  page.on("pageerror", (e) => console.error(`page error (${uid}):`, e));
  await page.goto(`${origin}/test/browser/chat.html?${q}`);
  await page.waitForFunction(() => (window as unknown as { sb?: { state(): string } }).sb?.state() === "connected");
}

const got = (page: Page) => page.evaluate(() => (window as unknown as { sb: { got: Got[] } }).sb.got);
/** The page's messages once there are at least `n` (or whatever it has after 10 s). */
async function gotAtLeast(page: Page, n: number): Promise<Got[]> {
  let g = await got(page);
  for (const end = Date.now() + 10_000; g.length < n && Date.now() < end; g = await got(page)) {
    await new Promise((r) => setTimeout(r, 20));
  }
  return g;
}

const send = (page: Page, to: string, text: string) =>
  page.evaluate(([to, text]) => (window as unknown as { sb: { send(u: string, t: string): Promise<string> } }).sb.send(to!, text!), [
    to,
    text,
  ]);

it("two users chat in Chromium; the one that went offline catches up once, in order", async () => {
  const alice = await browser.newContext();
  const bob = await browser.newContext();
  const pa = await alice.newPage();
  let pb = await bob.newPage();
  await open(pa, "web-alice", "binary");
  await open(pb, "web-bob", "json");

  for (const t of ["hi bob", "are you there?"]) await send(pa, "web-bob", t);
  await send(pb, "web-alice", "yes!");
  expect(await gotAtLeast(pb, 2)).toEqual([
    { seq: "1", from: "web-alice", text: "hi bob" },
    { seq: "2", from: "web-alice", text: "are you there?" },
  ]);
  expect(await gotAtLeast(pa, 1)).toEqual([{ seq: "3", from: "web-bob", text: "yes!" }]);

  // Bob closes the tab; Alice keeps writing.
  await pb.close();
  for (const t of ["you left", "here is the order", "bye"]) await send(pa, "web-bob", t);

  // Bob comes back (same browser profile: same device id and stored cursor).
  pb = await bob.newPage();
  await open(pb, "web-bob", "json");
  await gotAtLeast(pb, 3);
  // A moment for anything delivered twice to show.
  await new Promise((r) => setTimeout(r, 300));
  expect(await got(pb)).toEqual([
    { seq: "4", from: "web-alice", text: "you left" },
    { seq: "5", from: "web-alice", text: "here is the order" },
    { seq: "6", from: "web-alice", text: "bye" },
  ]);
  await alice.close();
  await bob.close();
});
