import { randomBytes } from 'node:crypto';
import amqp from 'amqplib';
import { Redis } from 'ioredis';
import { SignJWT } from 'jose';
import { loadConfig } from '../../src/config/load.js';
import type { WarrenConfig } from '../../src/config/schema.js';
import type { Gateway } from '../../src/gateway/main.js';
import { deletePrefixKeys, deleteTopology } from '../support/prefix-cleanup.js';
import type { BenchContext } from './lib.js';

/** Shared set-up of the benches that start Warren's own processes in-process (gateway, resolver, throughput). */

export const BENCH_SECRET = 'bench-secret-bench-secret-bench-secret';

/** A prefix no other run uses: its own exchanges, queues and Redis keys. */
export function benchPrefix(name: string): string {
  return `bench-${name}-${randomBytes(4).toString('hex')}`;
}

/** The overrides behind `benchConfig`, for a process that loads its configuration itself. */
export function benchOverrides(
  ctx: BenchContext,
  prefix: string,
  gateway: Record<string, unknown> = {},
  resolver: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    prefix,
    log: { level: process.env['WARREN_BENCH_LOG_LEVEL'] ?? 'silent' },
    rabbitmq: { url: ctx.rabbitmqUrl },
    redis: { url: ctx.redisUrl },
    // A long unbind grace: closing the clients between phases must not add unbind churn to later ones.
    gateway: { host: '127.0.0.1', port: 0, drainWindowMs: 0, unbindGraceMs: 600_000, ...gateway },
    jwt: { secret: BENCH_SECRET },
    resolver,
  };
}

/** A validated configuration against the bench services; nothing is read from the environment. */
export function benchConfig(
  ctx: BenchContext,
  prefix: string,
  gateway: Record<string, unknown> = {},
  resolver: Record<string, unknown> = {},
): Readonly<WarrenConfig> {
  return loadConfig({ env: {}, overrides: benchOverrides(ctx, prefix, gateway, resolver) });
}

export async function signToken(tenantId: string, userId: string, secret = BENCH_SECRET): Promise<string> {
  return new SignJWT({ tid: tenantId })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(userId)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + 3600)
    .sign(new TextEncoder().encode(secret));
}

/** Sum of a metric's series in a gateway's registry (counters; for a histogram, pass `name_sum` etc.). */
export async function metricValue(gateway: Gateway, name: string, series?: string): Promise<number> {
  const metric = await gateway.metrics.getSingleMetric(name)?.get();
  return (metric?.values ?? [])
    .filter((v) => series === undefined || (v as { metricName?: string }).metricName === series)
    .reduce((sum, v) => sum + v.value, 0);
}

/** Deletes every Redis key of a prefix (tenant keys are `{prefix:tenant}:…`, global ones `prefix:…`). */
export async function cleanRedis(redisUrl: string, prefix: string): Promise<void> {
  const redis = new Redis(redisUrl);
  try {
    await deletePrefixKeys(redis, prefix);
  } finally {
    await redis.quit();
  }
}

/** Deletes the shared topology of a prefix and any extra queues/exchanges a bench declared. */
export async function cleanBroker(
  rabbitmqUrl: string,
  prefix: string,
  extra: { queues?: string[]; exchanges?: string[] } = {},
): Promise<void> {
  const model = await amqp.connect(rabbitmqUrl);
  try {
    const channel = await model.createChannel();
    await deleteTopology(channel, prefix, extra);
    await channel.close().catch(() => {});
  } finally {
    await model.close().catch(() => {});
  }
}

/** A deterministic PRNG (mulberry32), so every method of a bench sees the same random choices. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** `count` distinct integers in [0, range), in random order. */
export function sample(random: () => number, range: number, count: number): number[] {
  const picked = new Set<number>();
  while (picked.size < count) picked.add(Math.floor(random() * range));
  return [...picked];
}

/** `ulimit -n` of this process (soft), or undefined where it cannot be read. */
export async function openFileLimit(): Promise<number | undefined> {
  const { readFile } = await import('node:fs/promises');
  try {
    const limits = await readFile('/proc/self/limits', 'utf8');
    const line = limits.split('\n').find((l) => l.startsWith('Max open files'));
    const soft = line?.split(/\s{2,}/)[1];
    return soft === undefined ? undefined : Number(soft);
  } catch {
    return undefined;
  }
}

const SERVICE_COMMANDS = { rabbitmq: 'beam.smp', redis: 'redis-server' } as const;
export type ServiceCpu = Record<keyof typeof SERVICE_COMMANDS, number>;

/**
 * CPU time (ms, user + system) used so far by the local RabbitMQ and Redis processes, read from /proc
 * (Linux; NaN elsewhere or when the services run in other hosts or containers). Sampled before and after
 * a phase, it tells whether the broker was the busy one.
 */
export async function serviceCpu(): Promise<ServiceCpu> {
  const { readdir, readFile } = await import('node:fs/promises');
  const out: ServiceCpu = { rabbitmq: NaN, redis: NaN };
  let pids: string[];
  try {
    pids = (await readdir('/proc')).filter((p) => /^\d+$/.test(p));
  } catch {
    return out;
  }
  for (const pid of pids) {
    try {
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // Fields after the command: utime and stime are the 12th and 13th, in clock ticks (100 per second).
      const ms = (Number(fields[11]) + Number(fields[12])) * 10;
      for (const [name, command] of Object.entries(SERVICE_COMMANDS) as [keyof ServiceCpu, string][])
        if (comm === command) out[name] = (Number.isNaN(out[name]) ? 0 : out[name]) + ms;
    } catch {
      // The process ended meanwhile.
    }
  }
  return out;
}

/** Percent of one core each service used between two samples taken `wallMs` apart. */
export function serviceCpuColumns(
  before: ServiceCpu,
  after: ServiceCpu,
  wallMs: number,
): Record<string, string> {
  const pct = (a: number, b: number): string =>
    Number.isNaN(a) || Number.isNaN(b) ? 'n/a' : String(Math.round(((b - a) / wallMs) * 100));
  return {
    'rabbitmq CPU %': pct(before.rabbitmq, after.rabbitmq),
    'redis CPU %': pct(before.redis, after.redis),
  };
}

/** The 1-minute load average (Linux), to show how busy the shared machine was during a run. */
export async function loadAverage(): Promise<string> {
  const { readFile } = await import('node:fs/promises');
  try {
    return (await readFile('/proc/loadavg', 'utf8')).split(' ')[0] ?? 'n/a';
  } catch {
    return 'n/a';
  }
}
