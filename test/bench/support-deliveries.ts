import type { ResolverChild } from './support-resolver.js';
import type { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import type { ClientFleet } from './support-clients.js';
import { serviceCpu } from './support-warren.js';

/** One end-to-end run of the throughput bench: a backlog of events, drained by a fresh resolver into the tabs. */

export const TENANT = 'tp';
const PUBLISH_CONCURRENCY = 256;
const WARMUP_EVENTS = 20;

export async function publishEvents(publisher: WarrenPublisher, tag: string, teams: string[], count: number) {
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < count; i = next++) {
      await publisher.publishEvent({
        id: `${tag}-${i}`,
        tenantId: TENANT,
        type: 'bench.throughput',
        audience: { teams: [teams[i % teams.length] as string] },
        data: { i },
      });
    }
  };
  await Promise.all(Array.from({ length: Math.min(PUBLISH_CONCURRENCY, count) }, worker));
}

export interface RunResult {
  deliveries: number;
  /** SDK publish rate while the backlog was built. */
  publishRate: number;
  /** First to last delivery at the tabs. */
  seconds: number;
  rate: number;
  extra: number;
  /** CPU % of one core per process, over the drain: gateways / resolver / clients / rabbitmq / redis. */
  cpu: string;
  /** CPU of all four, ms per 1,000 user-deliveries. */
  cpuPer1000: number;
}

export type StartResolver = () => Promise<ResolverChild>;

async function warmUp(
  start: StartResolver,
  publisher: WarrenPublisher,
  fleet: ClientFleet,
  tag: string,
  teams: string[],
  size: number,
) {
  const resolver = await start();
  try {
    await fleet.reset();
    await publishEvents(publisher, tag, teams, WARMUP_EVENTS);
    await fleet.expect(WARMUP_EVENTS * size, 30_000);
  } finally {
    await resolver.close();
  }
}

/**
 * One timed run: `events` events to teams of `size` are published while no resolver runs, then a fresh
 * resolver drains them; the rate is first to last delivery at the tabs. Publishing concurrently would
 * measure the SDK's persistent, confirmed publishing to the durable resolver queue instead, which on the
 * reference machine was the slower stage (its rate is reported beside).
 */
export async function timedRun(
  start: StartResolver,
  publisher: WarrenPublisher,
  fleet: ClientFleet,
  tag: string,
  teams: string[],
  size: number,
  events: number,
): Promise<RunResult> {
  await warmUp(start, publisher, fleet, `${tag}-warm`, teams, size);
  await fleet.reset();
  const publishStarted = performance.now();
  await publishEvents(publisher, tag, teams, events);
  const publishRate = events / ((performance.now() - publishStarted) / 1000);
  const expected = events * size;
  const base = await fleet.count();
  const services = await serviceCpu();
  const cpu = process.cpuUsage();
  const resolver = await start();
  const resolverCpu = await resolver.cpuMs();
  try {
    const reached = await fleet.expect(expected, 120_000 + expected);
    const used = process.cpuUsage(cpu);
    const after = await serviceCpu();
    const resolverMs = (await resolver.cpuMs()) - resolverCpu;
    // Anything beyond the expected count would be a duplicate or a delivery to a non-member.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const extra = (await fleet.count()).events - expected;
    const cpuMs = {
      gateways: (used.user + used.system) / 1000,
      resolver: resolverMs,
      clients: reached.cpuMs - base.cpuMs,
      rabbitmq: after.rabbitmq - services.rabbitmq,
      redis: after.redis - services.redis,
    };
    const seconds = (reached.lastAt - reached.firstAt) / 1000;
    // Over the drain itself: the window also holds the resolver's start (a child process), nearly idle.
    const pct = (v: number): string =>
      Number.isNaN(v) ? 'n/a' : String(Math.round((v / (seconds * 1000)) * 100));
    return {
      deliveries: expected,
      publishRate,
      seconds,
      rate: (expected - 1) / seconds,
      extra,
      cpu: [cpuMs.gateways, cpuMs.resolver, cpuMs.clients, cpuMs.rabbitmq, cpuMs.redis].map(pct).join('/'),
      cpuPer1000:
        ((cpuMs.gateways + cpuMs.resolver + cpuMs.clients + cpuMs.rabbitmq + cpuMs.redis) / expected) * 1000,
    };
  } finally {
    await resolver.close();
  }
}
