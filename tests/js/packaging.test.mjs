// Packaging (node --test tests/js/): `npm pack` of @sluice/sdk and @sluice/react, installed from the
// tarballs into a fresh project, imported by Node and bundled by esbuild.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, statSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const root = resolve(import.meta.dirname, "../..");
const run = (cmd, args, cwd) => execFileSync(cmd, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, npm_config_loglevel: "error" } });

test("both packages pack, install from their tarballs, import in Node and bundle with esbuild", { timeout: 180_000 }, () => {
  const work = mkdtempSync(join(tmpdir(), "sluice-pack-"));
  try {
    const tarballs = ["sdk", "react"].map((name) => {
      const out = JSON.parse(run("npm", ["pack", "--json", "--pack-destination", work], join(root, "packages", name)));
      const file = join(work, out[0].filename);
      const files = out[0].files.map((f) => f.path).sort();
      assert.deepEqual(files, ["README.md", "index.d.ts", "index.js", "package.json"], `${name} ships only its files`);
      console.log(`    measured: ${out[0].name} ${out[0].version}: ${statSync(file).size} bytes packed, ${out[0].unpackedSize} unpacked`);
      return file;
    });
    const app = join(work, "app");
    run("mkdir", ["-p", app]);
    writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
    const react = JSON.parse(readFileSync(join(root, "node_modules/react/package.json"), "utf8")).version;
    run("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", ...tarballs, `react@${react}`], app);

    writeFileSync(
      join(app, "check.mjs"),
      `import { SluiceClient, SluiceError } from "@sluice/sdk";
       import { SluiceProvider, useAuth, useGatewayChat } from "@sluice/react";
       const c = new SluiceClient({ baseUrl: "https://gw.example", project: "p" });
       console.log(JSON.stringify({ gateway: typeof c.gateway.stream, chat: typeof c.chat.stream, error: typeof SluiceError,
         hooks: [typeof SluiceProvider, typeof useAuth, typeof useGatewayChat] }));`,
    );
    const imported = JSON.parse(run("node", ["check.mjs"], app));
    assert.deepEqual(imported, { gateway: "function", chat: "function", error: "function", hooks: ["function", "function", "function"] });

    const esbuild = join(root, "node_modules/.bin/esbuild");
    writeFileSync(join(app, "entry.js"), `import { useGatewayChat } from "@sluice/react"; export const hook = useGatewayChat;`);
    run(esbuild, ["entry.js", "--bundle", "--format=esm", "--platform=browser", "--outfile=out.js", "--log-level=error"], app);
    const bundled = readFileSync(join(app, "out.js"), "utf8");
    assert.ok(bundled.includes("useGatewayChat") && bundled.includes("SluiceClient"), "the bundle holds the hooks and the client");
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
