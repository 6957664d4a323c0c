import { fileURLToPath } from "node:url";
import { defineConfig } from "vite";

// The node serves dist/ at /console (embedded in the binary), so every URL
// the build writes starts there.
export default defineConfig({
  base: "/console/",
  resolve: {
    // The SDK from its source in ../sdk-ts (no separate build step); its
    // one dependency resolves from here, so ../sdk-ts needs no node_modules.
    alias: { "@switchboard/sdk": fileURLToPath(new URL("../sdk-ts/src/index.ts", import.meta.url)) },
    dedupe: ["@bufbuild/protobuf"],
  },
  server: { fs: { allow: [".."] } },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    // Small and reproducible: what a fresh build writes is compared with the
    // committed dist/ (scripts/check-dist.mjs).
    sourcemap: false,
    modulePreload: { polyfill: false },
  },
});
