// Bundles the dashboard into dist/: content-hashed assets (with .gz siblings) and index.html.
// `npm run build` type-checks first (tsc --noEmit); this file only bundles.
import { build } from "esbuild";
import { gzipSync } from "node:zlib";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(here, "dist");
const assets = path.join(dist, "assets");
fs.rmSync(dist, { recursive: true, force: true });

const result = await build({
  entryPoints: { app: path.join(here, "src", "main.tsx") },
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2020"],
  outdir: assets,
  entryNames: "[name]-[hash]",
  assetNames: "[name]-[hash]",
  jsx: "automatic",
  jsxImportSource: "preact",
  legalComments: "none",
  metafile: true,
  logLevel: "warning",
});

const names = Object.keys(result.metafile.outputs).map((p) => path.basename(p));
const js = names.find((n) => n.endsWith(".js"));
const css = names.find((n) => n.endsWith(".css"));
if (!js || !css) throw new Error(`expected one .js and one .css output, got ${names.join(", ")}`);
const sizes = {};
for (const name of names) {
  const file = path.join(assets, name);
  const packed = gzipSync(fs.readFileSync(file), { level: 9 });
  fs.writeFileSync(file + ".gz", packed);
  sizes[name] = `${(fs.statSync(file).size / 1024).toFixed(1)} KB (${(packed.length / 1024).toFixed(1)} KB gzipped)`;
}
// index.html last: the server reloads the app when this file changes.
const html = fs
  .readFileSync(path.join(here, "src", "index.html"), "utf8")
  .replace("%APP_JS%", js)
  .replace("%APP_CSS%", css);
fs.writeFileSync(path.join(dist, "index.html"), html);

console.log("dashboard built:", JSON.stringify(sizes));
