// Checks that the committed dist/ is what the sources build to: builds into
// a temporary directory and compares every file, byte for byte. Vite's
// output is deterministic for the same sources and lock file, so any
// difference means someone changed src/ (or ../sdk-ts/src) without
// rebuilding: the binary would embed a stale console.

import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const fresh = mkdtempSync(join(tmpdir(), "sb-console-"));

function files(dir) {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .sort();
}

try {
  execFileSync("npx", ["vite", "build", "--logLevel", "warn", "--outDir", fresh, "--emptyOutDir"], {
    cwd: root,
    stdio: "inherit",
  });
  const want = files(fresh);
  const have = files(join(root, "dist"));
  const problems = [];
  for (const f of want) {
    if (!have.includes(f)) problems.push(`missing in dist/: ${f}`);
    else if (!readFileSync(join(fresh, f)).equals(readFileSync(join(root, "dist", f)))) problems.push(`differs: ${f}`);
  }
  for (const f of have) if (!want.includes(f)) problems.push(`stale in dist/: ${f}`);
  if (problems.length > 0) {
    console.error(`console/dist is not what the sources build to (run \`npm run build\` in console/ and commit dist/):\n  ${problems.join("\n  ")}`);
    process.exit(1);
  }
  console.log(`console/dist matches a fresh build (${want.length} files)`);
} finally {
  rmSync(fresh, { recursive: true, force: true });
}
