// Bundles the browser client into dist/client/warren-client.js and prints its size raw and gzipped.
// `tsx scripts/build-client.ts --size` prints the size of a fresh bundle without writing it.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { gzipSync } from 'node:zlib';
import { bundleClient, CLIENT_BUNDLE_FILE } from './client-bundle.js';

const sizeOnly = process.argv.includes('--size');
const contents = await bundleClient();
if (!sizeOnly) {
  mkdirSync(dirname(CLIENT_BUNDLE_FILE), { recursive: true });
  writeFileSync(CLIENT_BUNDLE_FILE, contents);
}
const kib = (n: number): string => `${(n / 1024).toFixed(2)} KiB`;
const gzipped = gzipSync(contents, { level: 9 }).byteLength;
console.log(
  `warren-client.js: ${kib(contents.byteLength)} minified, ${kib(gzipped)} gzipped${sizeOnly ? '' : ` → ${CLIENT_BUNDLE_FILE}`}`,
);
