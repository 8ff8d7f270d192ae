// `npm run bench [-- name…] [--quick]`: runs every test/bench/*.bench.ts (or the named ones) one after the
// other, prints their tables and targets, and saves each result as JSON under bench-results/.
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { recoverCpuTiers } from './cpu-tiers.js';
import { benchServices, printTable, saveResult, type Bench } from './lib.js';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const quick = args.includes('--quick');
const wanted = args.filter((a) => !a.startsWith('--'));

const files = readdirSync(here)
  .filter((f) => f.endsWith('.bench.ts'))
  .sort();
const benches: Bench[] = [];
for (const file of files) {
  const mod = (await import(pathToFileURL(join(here, file)).href)) as { default: Bench };
  benches.push(mod.default);
}
const unknown = wanted.filter((w) => !benches.some((b) => b.name === w));
if (unknown.length > 0) {
  process.stderr.write(
    `unknown bench ${unknown.join(', ')}; available: ${benches.map((b) => b.name).join(', ')}\n`,
  );
  process.exit(2);
}

// A run that ended without putting RabbitMQ and Redis back on their CPUs (killed) is mended first.
const pinned = process.platform === 'linux' ? recoverCpuTiers() : undefined;
if (pinned) process.stderr.write(`WARNING: ${pinned}\n`);
const ctx = { ...(await benchServices()), quick };
let failed = false;
for (const bench of benches.filter((b) => wanted.length === 0 || wanted.includes(b.name))) {
  process.stdout.write(`\n=== ${bench.name}: ${bench.description}${quick ? ' (quick)' : ''}\n`);
  try {
    const result = await bench.run(ctx);
    for (const table of result.tables) printTable(table.title, table.rows);
    if (result.targets?.length) {
      printTable(
        'targets',
        result.targets.map((t) => ({ target: t.target, value: t.value, met: t.met ? 'yes' : 'NO' })),
      );
    }
    process.stdout.write(`\nsaved ${saveResult(bench.name, result)}\n`);
  } catch (error) {
    failed = true;
    process.stderr.write(
      `bench ${bench.name} failed: ${error instanceof Error ? error.stack : String(error)}\n`,
    );
  }
}
process.exit(failed ? 1 : 0);
