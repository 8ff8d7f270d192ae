import { join } from 'node:path';
import { build } from 'esbuild';

const root = join(import.meta.dirname, '..');

/** Where `npm run build` writes the browser client. */
export const CLIENT_BUNDLE_FILE = join(root, 'dist', 'client', 'warren-client.js');

/**
 * The browser client (src/sdk/client) bundled in memory: ESM, minified, browser platform (a Node built-in
 * creeping in fails the build). The build script writes it out; the browser tests load it as it is in the
 * tree, never a stale dist/.
 */
export async function bundleClient(): Promise<Uint8Array> {
  const result = await build({
    entryPoints: [join(root, 'src', 'sdk', 'client', 'index.ts')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: ['es2022'],
    minify: true,
    legalComments: 'none',
    write: false,
    outfile: CLIENT_BUNDLE_FILE,
  });
  const file = result.outputFiles.find((f) => f.path === CLIENT_BUNDLE_FILE);
  if (!file) throw new Error('esbuild produced no bundle');
  return file.contents;
}
