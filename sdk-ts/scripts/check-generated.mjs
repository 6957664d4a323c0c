// Fails when src/gen differs from what the code generator makes of
// crates/proto/proto/switchboard.proto (someone changed the schema and did
// not run `npm run generate`, or edited generated code by hand).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const out = mkdtempSync(join(tmpdir(), "sb-gen-"));
const template = join(out, "buf.gen.yaml");
writeFileSync(
  template,
  readFileSync("buf.gen.yaml", "utf8").replace("out: src/gen", `out: ${JSON.stringify(join(out, "gen"))}`),
);
try {
  execFileSync("npx", ["buf", "generate", "../crates/proto/proto", "--template", template], { stdio: "inherit" });
  const fresh = readdirSync(join(out, "gen")).sort();
  const committed = readdirSync("src/gen").sort();
  if (JSON.stringify(fresh) !== JSON.stringify(committed)) {
    throw new Error(`generated files differ: ${fresh.join(",")} vs committed ${committed.join(",")}`);
  }
  for (const f of fresh) {
    if (readFileSync(join(out, "gen", f), "utf8") !== readFileSync(join("src/gen", f), "utf8")) {
      throw new Error(`src/gen/${f} is stale: run \`npm run generate\` in sdk-ts`);
    }
  }
  console.log("src/gen is up to date with switchboard.proto");
} finally {
  rmSync(out, { recursive: true, force: true });
}
