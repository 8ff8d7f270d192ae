// Bundles the browser client (src/sdk/client) into dist/client/warren-client.js: ESM, minified, browser
// platform (a Node built-in creeping in fails the build), then prints its size raw and gzipped.
// `node scripts/build-client.mjs --size` prints the size of a fresh bundle without writing it.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outfile = join(root, 'dist', 'client', 'warren-client.js');
const sizeOnly = process.argv.includes('--size');

/** The esbuild options of the bundle; test/support/browser.ts builds the same way for the browser tests. */
const clientBuildOptions = {
  entryPoints: [join(root, 'src', 'sdk', 'client', 'index.ts')],
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: ['es2022'],
  minify: true,
  legalComments: 'none',
  write: false,
  outfile,
};

const result = await build(clientBuildOptions);
const file = result.outputFiles.find((f) => f.path === outfile);
if (!file) throw new Error('esbuild produced no bundle');
if (!sizeOnly) {
  mkdirSync(dirname(outfile), { recursive: true });
  writeFileSync(outfile, file.contents);
}
const kib = (n) => `${(n / 1024).toFixed(2)} KiB`;
console.log(
  `warren-client.js: ${kib(file.contents.byteLength)} minified, ${kib(gzipSync(file.contents, { level: 9 }).byteLength)} gzipped${sizeOnly ? '' : ` → ${outfile}`}`,
);
