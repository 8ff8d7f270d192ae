import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { answers } from '../support/services.js';

/**
 * Shared pieces of `npm run bench`. Absolute times drift on shared machines, so every bench measures its
 * baseline in the same run and reports ratios next to the raw numbers.
 */

export interface BenchContext {
  rabbitmqUrl: string;
  redisUrl: string;
  /**
   * WARREN_TEST_PAYLOAD_REDIS_URL: a Redis for claim-checked payloads only (`claimCheck.redisUrl`), started
   * by whoever runs the bench (and pinned where they want it); unset, payloads share `redisUrl`.
   */
  payloadRedisUrl?: string;
  /** `--quick`: smaller sizes, for checking that a bench still runs. */
  quick: boolean;
}

export interface Bench {
  name: string;
  description: string;
  run(ctx: BenchContext): Promise<BenchResult>;
}

export interface BenchResult {
  /** Printed as tables, in order. */
  tables: { title: string; rows: Record<string, string | number>[] }[];
  /** Anything else worth keeping in the JSON file. */
  data?: unknown;
  /** One line per target: what it is, the figure, and whether it was met. */
  targets?: { target: string; value: string; met: boolean }[];
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index] as number;
}

export function summarise(samples: readonly number[]): { p50: number; p99: number; mean: number; n: number } {
  const sorted = [...samples].sort((a, b) => a - b);
  const mean = sorted.reduce((s, v) => s + v, 0) / Math.max(1, sorted.length);
  return { p50: percentile(sorted, 50), p99: percentile(sorted, 99), mean, n: sorted.length };
}

/** A number rounded for a table: 3 significant digits below 100, whole numbers above. */
export function fmt(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  if (Math.abs(value) >= 100) return Math.round(value).toLocaleString('en-US');
  return Number(value.toPrecision(3)).toString();
}

export function printTable(title: string, rows: readonly Record<string, string | number>[]): void {
  const first = rows[0];
  if (!first) return;
  const headers = Object.keys(first);
  const cells = rows.map((r) => headers.map((h) => String(r[h] ?? '')));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] ?? '').length)));
  const line = (values: string[]): string => values.map((v, i) => v.padEnd(widths[i] ?? 0)).join('  ');
  process.stdout.write(`\n${title}\n${line(headers)}\n${line(widths.map((w) => '-'.repeat(w)))}\n`);
  for (const c of cells) process.stdout.write(`${line(c)}\n`);
}

export function saveResult(name: string, result: BenchResult): string {
  const dir = join(process.cwd(), 'bench-results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  writeFileSync(file, `${JSON.stringify({ name, at: new Date().toISOString(), ...result }, null, 2)}\n`);
  return file;
}

/** The same services the tests use: WARREN_TEST_* URLs, else the local ones. */
export async function benchServices(): Promise<Omit<BenchContext, 'quick'>> {
  const rabbitmqUrl = process.env['WARREN_TEST_RABBITMQ_URL'] ?? 'amqp://guest:guest@127.0.0.1:5672';
  const redisUrl = process.env['WARREN_TEST_REDIS_URL'] ?? 'redis://127.0.0.1:6379';
  if (!process.env['WARREN_TEST_RABBITMQ_URL'] && !(await answers(5672)))
    throw new Error('RabbitMQ does not answer on 127.0.0.1:5672 (or set WARREN_TEST_RABBITMQ_URL)');
  if (!process.env['WARREN_TEST_REDIS_URL'] && !(await answers(6379)))
    throw new Error('Redis does not answer on 127.0.0.1:6379 (or set WARREN_TEST_REDIS_URL)');
  const payloadRedisUrl = process.env['WARREN_TEST_PAYLOAD_REDIS_URL'];
  return { rabbitmqUrl, redisUrl, ...(payloadRedisUrl ? { payloadRedisUrl } : {}) };
}
