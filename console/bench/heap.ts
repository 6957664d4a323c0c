// JS heap of the web console (console/dist as the node serves it at
// /console) in headless Chromium with 20 conversations loaded.
//
//   npm run bench:heap                       # 20 peers × 50 messages to one user
//   npm run bench:heap -- --peers 20 --per-peer 50
//
// A real `switchboard serve` (sdk-ts/test/node.ts's startNode: ephemeral
// ports, fresh data dir, demo mode). Each of --peers users sends
// --per-peer c2c messages to `viewer` with the SDK from Node.js first, so
// they wait on viewer's timeline. Then Debian's /usr/bin/chromium
// (playwright-core, a fresh --user-data-dir) opens /console, logs in as
// viewer (a demo token), and the SDK syncs the backlog into the
// conversation list. The JS heap of the page is read three times, each after
// a forced GC (CDP HeapProfiler.collectGarbage, then Runtime.getHeapUsage):
// on the login form, with the conversations loaded (list shown, no
// conversation open), and with the most recent conversation open.
// performance.memory.usedJSHeapSize (precise: --enable-precise-memory-info)
// and the DOM node count (Performance.getMetrics) are printed next to it.
// Bounded: --timeout-s (default 120) s; the browser, its profile dir and the
// node are always removed at the end.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type BrowserContext, type CDPSession, type Page, chromium } from "playwright-core";
import { type Node, clientFor, startNode } from "../../sdk-ts/test/node.js";

const { values: opt } = parseArgs({
  options: {
    peers: { type: "string", default: "20" },
    "per-peer": { type: "string", default: "50" },
    "timeout-s": { type: "string", default: "120" },
    json: { type: "boolean", default: false },
  },
});
const PEERS = Number(opt.peers);
const PER_PEER = Number(opt["per-peer"]);
const TIMEOUT_MS = Number(opt["timeout-s"]) * 1000;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const VIEWER = "viewer";
const TARGET_MB = 50;
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
  // performance.memory unrounded (it does not change the heap).
  "--enable-precise-memory-info",
];
if (!(PEERS >= 1 && PER_PEER >= 1)) throw new Error("need --peers >= 1 and --per-peer >= 1");

const peerId = (i: number) => `peer-${String(i + 1).padStart(2, "0")}`;

/** Every peer's messages to the viewer, stored before the console logs in. */
async function fill(node: Node): Promise<void> {
  for (let p = 0; p < PEERS; p++) {
    const client = await clientFor(node, peerId(p));
    await client.connect();
    const sends: Promise<unknown>[] = [];
    for (let i = 0; i < PER_PEER; i++) {
      const text = `${peerId(p)}, message ${i + 1} of ${PER_PEER}: the quick brown fox jumps over the lazy dog`;
      sends.push(client.send({ app: "demo", uid: VIEWER }, JSON.stringify({ text })));
    }
    await Promise.all(sends);
    client.close();
  }
}

interface Heap {
  /** Runtime.getHeapUsage after HeapProfiler.collectGarbage. */
  usedBytes: number;
  totalBytes: number;
  /** performance.memory.usedJSHeapSize, same moment. */
  perfUsedBytes: number;
  domNodes: number;
  listeners: number;
  /** Characters the console and the SDK keep in localStorage. */
  localStorageChars: number;
}

async function heap(page: Page, cdp: CDPSession): Promise<Heap> {
  // Twice: the first may leave garbage only the second frees (weak refs, finalizers).
  await cdp.send("HeapProfiler.collectGarbage");
  await cdp.send("HeapProfiler.collectGarbage");
  const usage = await cdp.send("Runtime.getHeapUsage");
  const metrics = await cdp.send("Performance.getMetrics");
  const metric = (name: string) => metrics.metrics.find((m) => m.name === name)?.value ?? Number.NaN;
  const inPage = await page.evaluate(() => {
    let chars = 0;
    for (let i = 0; i < localStorage.length; i++) {
      const k = localStorage.key(i) ?? "";
      chars += k.length + (localStorage.getItem(k)?.length ?? 0);
    }
    const mem = (performance as unknown as { memory?: { usedJSHeapSize: number } }).memory;
    return { perf: mem?.usedJSHeapSize ?? Number.NaN, chars };
  });
  return {
    usedBytes: usage.usedSize,
    totalBytes: usage.totalSize,
    perfUsedBytes: inPage.perf,
    domNodes: metric("Nodes"),
    listeners: metric("JSEventListeners"),
    localStorageChars: inPage.chars,
  };
}

const mb = (b: number) => Math.round((b / 1e6) * 100) / 100;

async function main(): Promise<void> {
  const node = await startNode({ SWITCHBOARD_GATE__RATE_PER_SEC: "100000", SWITCHBOARD_GATE__RATE_BURST: "100000" });
  const profile = mkdtempSync(join(tmpdir(), "sb-heap-profile-"));
  let context: BrowserContext | undefined;
  const deadline = setTimeout(() => {
    console.error(`timed out after ${TIMEOUT_MS / 1000} s`);
    void (context?.close() ?? Promise.resolve())
      .catch(() => {})
      .finally(() =>
        node.stop().finally(() => {
          rmSync(profile, { recursive: true, force: true });
          process.exit(2);
        }),
      );
  }, TIMEOUT_MS);
  try {
    await fill(node);
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: FLAGS,
      viewport: { width: 1000, height: 560 },
    });
    const version = context.browser()?.version() ?? "?";
    const page = context.pages()[0] ?? (await context.newPage());
    page.on("pageerror", (e) => console.error("page error:", e));
    const cdp = await context.newCDPSession(page);
    await cdp.send("Performance.enable");

    await page.goto(`${node.httpUrl}/console/`);
    await page.waitForSelector("#login");
    const empty = await heap(page, cdp);

    const t0 = Date.now();
    await page.fill("#uid", VIEWER);
    await page.click("#login button[type=submit]");
    await page.waitForSelector('#conn[data-state="connected"]');
    // Every conversation listed with all its messages unread: the backlog is in.
    await page.waitForFunction(
      ([peers, total]) => {
        const convs = document.querySelectorAll("li.conv");
        let unread = 0;
        for (const b of document.querySelectorAll("li.conv .badge")) unread += Number(b.textContent);
        return convs.length === peers && unread === total;
      },
      [PEERS, PEERS * PER_PEER],
      { timeout: TIMEOUT_MS, polling: 100 },
    );
    const loadMs = Date.now() - t0;
    const loaded = await heap(page, cdp);

    await page.click("li.conv >> nth=0");
    await page.waitForFunction((n) => document.querySelectorAll("#messages li").length === n, PER_PEER, {
      timeout: TIMEOUT_MS,
    });
    const open = await heap(page, cdp);

    const result = {
      date: new Date().toISOString(),
      chromium: version,
      peers: PEERS,
      per_peer: PER_PEER,
      messages: PEERS * PER_PEER,
      login_to_loaded_ms: loadMs,
      heap_used_mb: { login_form: mb(empty.usedBytes), loaded: mb(loaded.usedBytes), conversation_open: mb(open.usedBytes) },
      heap_total_mb: { login_form: mb(empty.totalBytes), loaded: mb(loaded.totalBytes), conversation_open: mb(open.totalBytes) },
      perf_used_js_heap_mb: {
        login_form: mb(empty.perfUsedBytes),
        loaded: mb(loaded.perfUsedBytes),
        conversation_open: mb(open.perfUsedBytes),
      },
      dom_nodes: { login_form: empty.domNodes, loaded: loaded.domNodes, conversation_open: open.domNodes },
      js_event_listeners: { login_form: empty.listeners, loaded: loaded.listeners, conversation_open: open.listeners },
      local_storage_chars: open.localStorageChars,
    };
    if (opt.json) {
      console.log(JSON.stringify(result));
    } else {
      const worst = Math.max(loaded.usedBytes, open.usedBytes);
      const row = (name: string, h: Heap) =>
        `  ${name.padEnd(26)} ${String(mb(h.usedBytes)).padStart(6)} MB used of ${mb(h.totalBytes)} MB (performance.memory ${mb(h.perfUsedBytes)} MB), ${h.domNodes} DOM nodes`;
      console.log(
        [
          `web console in headless Chromium ${version}: ${PEERS} conversations × ${PER_PEER} messages (${PEERS * PER_PEER}), loaded ${loadMs} ms after login`,
          "  JS heap after a forced GC (CDP Runtime.getHeapUsage):",
          row("login form", empty),
          row(`${PEERS} conversations loaded`, loaded),
          row("one conversation open", open),
          `  localStorage: ${open.localStorageChars.toLocaleString("en")} characters`,
          `  target < ${TARGET_MB} MB: ${worst < TARGET_MB * 1e6 ? "met" : "not met"} (${mb(worst)} MB)`,
          `  ${JSON.stringify(result)}`,
        ].join("\n"),
      );
    }
  } finally {
    clearTimeout(deadline);
    await context?.close().catch(() => {});
    await node.stop();
    rmSync(profile, { recursive: true, force: true });
  }
}

await main();
