import { cpus } from 'node:os';
import type { WarrenConfig } from '../../src/config/schema.js';
import { startGateway, type Gateway } from '../../src/gateway/main.js';
import type { MembershipChange } from '../../src/protocol/schemas.js';
import { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { createLogger, silentLogger } from '../../src/shared/logger.js';
import { Keys } from '../../src/store/keys.js';
import { MembershipStore } from '../../src/store/membership-store.js';
import { createRedis } from '../../src/store/redis.js';
import { fmt, type Bench, type BenchContext, type BenchResult } from './lib.js';
import { ccVersusPerRecipient, rawPublishConsume, type RoutingSizes } from './support-broker.js';
import { ClientFleet } from './support-clients.js';
import { ResolverChild } from './support-resolver.js';
import { TENANT, timedRun, type RunResult, type StartResolver } from './support-deliveries.js';
import {
  BENCH_SECRET,
  benchConfig,
  benchOverrides,
  benchPrefix,
  cleanBroker,
  cleanRedis,
  loadAverage,
  sample,
  seededRandom,
} from './support-warren.js';

/**
 * User-deliveries/s end to end: events published with the publisher SDK, one resolver draining them (in a
 * child process, as it runs beside the gateways when deployed), 2–4 in-process gateways, one `ws` tab per
 * user (in the client child process), counted until every tab has every event.
 * Warren (one message per event routed to the nodes holding recipients, recipients as a bitmap) against the
 * same resolver configured for user routing (recipients' keys in CC: resolver.routing = users) and for one
 * message per recipient (user routing, resolver.maxRecipientsPerMessage = 1), against the broker's raw
 * publish → consume rate, and CC against per-recipient routing at the broker alone. Every figure of a table
 * comes from the same run.
 */

interface Sizes {
  gateways: number;
  users: number;
  /** Events per run, by recipients per event. */
  events: Record<number, number>;
  rounds: number;
  rawMessages: number;
  routing: RoutingSizes;
}

const FULL: Sizes = {
  gateways: 4,
  users: 1000,
  events: { 10: 10_000, 100: 1000 },
  rounds: 2,
  rawMessages: 50_000,
  routing: { queues: 4, bindingsPerQueue: 5000, events: { 10: 5000, 100: 500 } },
};
const QUICK: Sizes = {
  gateways: 2,
  users: 200,
  events: { 10: 200, 100: 30 },
  rounds: 1,
  rawMessages: 5000,
  routing: { queues: 2, bindingsPerQueue: 500, events: { 10: 500, 100: 50 } },
};

const VARIANTS = {
  warren: 'Warren: one message per event to its nodes, bitmap',
  cc: 'user routing: one message per event, user keys in CC',
  each: 'one message per recipient',
} as const;
type Variant = keyof typeof VARIANTS;

function teamId(size: number, i: number): string {
  return `s${size}-${i}`;
}

/** Teams of each size with random members; every user gets one tab, spread over the gateways. */
async function setUp(config: Readonly<WarrenConfig>, sizes: Sizes, fleet: ClientFleet, gateways: Gateway[]) {
  const random = seededRandom(4);
  const teams: Record<number, string[]> = {};
  const changes: MembershipChange[] = [];
  for (const size of Object.keys(sizes.events).map(Number)) {
    const count = Math.max(2, Math.round(sizes.users / size));
    teams[size] = Array.from({ length: count }, (_, i) => teamId(size, i));
    for (const team of teams[size] ?? [])
      for (const u of sample(random, sizes.users, size))
        changes.push({ kind: 'user-team', op: 'add', tenantId: TENANT, userId: `user${u}`, teamId: team });
  }
  const redis = await createRedis({
    url: config.redis.url,
    name: 'warren-bench-members',
    logger: createLogger('silent'),
  });
  try {
    await new MembershipStore(redis, new Keys(config.prefix)).applyBulk(TENANT, changes);
  } finally {
    await redis.quit();
  }
  const opened = await fleet.open({
    ports: gateways.map((g) => g.port),
    tenantId: TENANT,
    userIds: Array.from({ length: sizes.users }, (_, i) => `user${i}`),
    concurrency: 50,
    secret: BENCH_SECRET,
  });
  if (opened.failures > 0)
    throw new Error(`${opened.failures} tabs failed to open: ${opened.firstError ?? '?'}`);
  return teams;
}

async function endToEnd(ctx: BenchContext, prefix: string, sizes: Sizes, fleet: ClientFleet) {
  const config = benchConfig(ctx, prefix);
  const logger = createLogger(config.log.level);
  const starters: Record<Variant, StartResolver> = {
    warren: () => ResolverChild.start(benchOverrides(ctx, prefix)),
    cc: () => ResolverChild.start(benchOverrides(ctx, prefix, {}, { routing: 'users' })),
    // The same resolver, configured to send one message per recipient (its key as routing key, no CC).
    each: () =>
      ResolverChild.start(benchOverrides(ctx, prefix, {}, { routing: 'users', maxRecipientsPerMessage: 1 })),
  };
  const gateways: Gateway[] = [];
  const publisher = await WarrenPublisher.connect({
    rabbitmqUrl: ctx.rabbitmqUrl,
    redisUrl: ctx.redisUrl,
    prefix,
    // Silent: the bench's resolver starts after this publisher, which is not worth a warning.
    logger: silentLogger(),
  });
  const results: { variant: Variant; size: number; round: number; run: RunResult }[] = [];
  try {
    for (let g = 0; g < sizes.gateways; g += 1) gateways.push(await startGateway(config, { logger }));
    const teams = await setUp(config, sizes, fleet, gateways);
    for (let round = 1; round <= sizes.rounds; round += 1) {
      // Alternate which variant goes first, so drift in the machine's load does not favour one.
      const order: Variant[] = round % 2 === 1 ? ['warren', 'cc', 'each'] : ['each', 'cc', 'warren'];
      for (const [size, events] of Object.entries(sizes.events).map(([k, v]) => [Number(k), v] as const)) {
        for (const variant of order) {
          const tag = `${variant}-${size}-${round}`;
          const run = await timedRun(
            starters[variant],
            publisher,
            fleet,
            tag,
            teams[size] ?? [],
            size,
            events,
          );
          results.push({ variant, size, round, run });
        }
      }
    }
  } finally {
    await fleet.closeAll();
    await publisher.close();
    for (const gateway of gateways) await gateway.close();
  }
  return results;
}

function best(results: Awaited<ReturnType<typeof endToEnd>>, variant: Variant, size: number) {
  const runs = results.filter((r) => r.variant === variant && r.size === size).map((r) => r.run);
  return runs.reduce((a, b) => (b.rate > a.rate ? b : a));
}

async function run(ctx: BenchContext): Promise<BenchResult> {
  const sizes = ctx.quick ? QUICK : FULL;
  const prefix = benchPrefix('throughput');
  const loadBefore = await loadAverage();
  const fleet = ClientFleet.start();
  try {
    const raw = await rawPublishConsume(ctx.rabbitmqUrl, prefix, sizes.rawMessages);
    const e2e = await endToEnd(ctx, prefix, sizes, fleet);
    const routing = await ccVersusPerRecipient(ctx.rabbitmqUrl, prefix, sizes.routing);
    const rows: Record<string, string | number>[] = [];
    const targets: NonNullable<BenchResult['targets']> = [];
    for (const size of Object.keys(sizes.events).map(Number)) {
      const warren = best(e2e, 'warren', size);
      const each = best(e2e, 'each', size);
      for (const [variant, r] of [
        ['warren', warren],
        ['cc', best(e2e, 'cc', size)],
        ['each', each],
      ] as const) {
        rows.push({
          variant: VARIANTS[variant],
          'recipients/event': size,
          'user-deliveries': r.deliveries,
          'first→last delivery, s': fmt(r.seconds),
          'user-deliveries/s': fmt(r.rate),
          '× per-recipient': fmt(r.rate / each.rate),
          '× raw broker msgs/s': fmt(r.rate / raw.rate),
          'CPU ms per 1,000 deliveries': fmt(r.cpuPer1000),
          'CPU % gateways/resolver/clients/rabbitmq/redis': r.cpu,
          'SDK publish, events/s': fmt(r.publishRate),
          'extra deliveries': r.extra,
        });
      }
      targets.push({
        target: `Warren ≥ 2× one message per recipient, ${size} recipients/event`,
        value: `${fmt(warren.rate / each.rate)}×`,
        met: warren.rate >= 2 * each.rate,
      });
      targets.push({
        target: `no duplicate or extra deliveries, ${size} recipients/event`,
        value: String(e2e.filter((r) => r.size === size).reduce((s, r) => s + r.run.extra, 0)),
        met: e2e.every((r) => r.size !== size || r.run.extra === 0),
      });
    }
    const brokerRatio = (variant: string, n: number): string =>
      fmt((routing.rates[`${variant}-${n}`] ?? NaN) / (routing.rates[`each-${n}`] ?? NaN));
    return {
      tables: [
        {
          title: `raw broker: ${sizes.rawMessages} small messages published with confirms to one queue and consumed (manual ack, prefetch 512)`,
          rows: [
            {
              messages: raw.messages,
              seconds: fmt(raw.seconds),
              'messages/s': fmt(raw.rate),
              'rabbitmq CPU %': raw.rabbitmqCpu as string,
            },
          ],
        },
        {
          title: `end to end: ${sizes.gateways} gateways, 1 resolver, ${sizes.users} users × 1 tab (best of ${sizes.rounds} rounds)`,
          rows,
        },
        {
          title: `broker alone: topic exchange, ${sizes.routing.queues} queues × ${sizes.routing.bindingsPerQueue} literal user keys (bound in ${fmt(routing.bindSeconds)} s); ÷ per-recipient: nodes ${brokerRatio('nodes', 10)}×, CC ${brokerRatio('cc', 10)}× at 10, nodes ${brokerRatio('nodes', 100)}×, CC ${brokerRatio('cc', 100)}× at 100 recipients/event`,
          rows: routing.rows,
        },
        {
          title: 'run conditions',
          rows: [
            { 'load avg (1 min) before/after': `${loadBefore}/${await loadAverage()}`, cores: cpus().length },
          ],
        },
      ],
      targets,
      data: { sizes, raw, e2e, routing, load: [loadBefore, await loadAverage()] },
    };
  } finally {
    await fleet.stop();
    await cleanBroker(ctx.rabbitmqUrl, prefix);
    await cleanRedis(ctx.redisUrl, prefix);
  }
}

const bench: Bench = {
  name: 'throughput',
  description:
    'user-deliveries/s through resolver and gateways: node routing, user routing (CC), one message per recipient',
  run,
};
export default bench;
