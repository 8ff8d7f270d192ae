import { gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { clientBundle } from '../support/browser.js';

// The browser bundle's budget: 8 KiB gzipped, with no dependencies. `npm run size:client` prints the same
// numbers for the bundle `npm run build` writes (scripts/client-bundle.ts builds both).
const BUDGET_GZIP_BYTES = 8 * 1024;

describe('browser client bundle', () => {
  it('stays within 8 KiB gzipped and carries nothing of Node or zod', async () => {
    const js = await clientBundle();
    const gzipped = gzipSync(js, { level: 9 }).byteLength;
    console.log(
      `warren-client.js: ${(Buffer.byteLength(js) / 1024).toFixed(2)} KiB minified, ${(gzipped / 1024).toFixed(2)} KiB gzipped`,
    );
    expect(gzipped).toBeLessThanOrEqual(BUDGET_GZIP_BYTES);
    expect(js).not.toMatch(/from\s*["']node:|require\(|ZodError|process\.env/);
    expect(js).toMatch(/export\s*\{[^}]*\bconnect\b/);
  });
});
