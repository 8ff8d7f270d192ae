import amqp from 'amqplib';
import { declareGatewayQueue } from '../../src/broker/topology.js';
import { startGateway, type Gateway } from '../../src/gateway/main.js';
import { createLogger } from '../../src/shared/logger.js';
import { fmt, summarise, type Bench, type BenchContext, type BenchResult } from './lib.js';
import { ClientFleet, type OpenResult } from './support-clients.js';
import {
  BENCH_SECRET,
  benchConfig,
  benchPrefix,
  cleanBroker,
  cleanRedis,
  loadAverage,
  metricValue,
  openFileLimit,
  serviceCpu,
  serviceCpuColumns,
  type ServiceCpu,
} from './support-warren.js';

/**
 * One in-process gateway node. (a) Socket open → `welcome` (bind + presence) seen from the client, one
 * connection at a time and 50 at a time, plus a second tab of already bound users (no bind). (b) Binds/s
 * while 10,000 distinct users connect, against the broker's raw bind rate measured in the same run with
 * amqplib (one by one on one channel; over 8 channels, the gateway's default pool size).
 */

const TENANT = 'bench';
const LATENCY_CONCURRENCY = 50;
// Enough connections in flight to keep every channel of the gateway's bind pool busy.
const BIND_CONCURRENCY = 200;
const RAW_CHANNELS = 8;

interface Sizes {
  latencyClients: number;
  bindClients: number;
  rawBinds: number;
}

const WELCOME_SUM = 'warren_gateway_welcome_seconds_sum';
const WELCOME_COUNT = 'warren_gateway_welcome_seconds_count';

async function serverWelcome(gateway: Gateway): Promise<{ sum: number; count: number }> {
  return {
    sum: await metricValue(gateway, 'warren_gateway_welcome_seconds', WELCOME_SUM),
    count: await metricValue(gateway, 'warren_gateway_welcome_seconds', WELCOME_COUNT),
  };
}

const CPU_COLUMN = 'CPU % gateway/clients/rabbitmq/redis';

/**
 * CPU per process as % of one core over a phase (2 cores in all on the reference machine): shows whether
 * the clients, the gateway or the broker set the pace.
 */
async function cpuColumn(
  result: OpenResult,
  gateway: NodeJS.CpuUsage,
  services: ServiceCpu,
): Promise<Record<string, string>> {
  const s = serviceCpuColumns(services, await serviceCpu(), result.wallMs);
  const pct = (ms: number): string => String(Math.round((ms / result.wallMs) * 100));
  const gw = pct((gateway.user + gateway.system) / 1000);
  return { [CPU_COLUMN]: `${gw}/${pct(result.cpuMs)}/${s['rabbitmq CPU %']}/${s['redis CPU %']}` };
}

function users(tag: string, n: number): string[] {
  return Array.from({ length: n }, (_, i) => `${tag}-${i}`);
}

function checkOpened(what: string, result: OpenResult, expected: number): void {
  if (result.failures > 0 || result.openToWelcome.length !== expected)
    throw new Error(
      `${what}: ${result.failures} of ${expected} clients failed (${result.firstError ?? '?'})`,
    );
}

async function welcomeLatency(ctx: BenchContext, prefix: string, fleet: ClientFleet, n: number) {
  const config = benchConfig(ctx, prefix);
  const gateway = await startGateway(config, { logger: createLogger(config.log.level) });
  const rows: Record<string, string | number>[] = [];
  const phases = [
    { phase: 'new users, one at a time', tag: 'seq', concurrency: 1 },
    { phase: `new users, ${LATENCY_CONCURRENCY} at a time`, tag: 'c50', concurrency: LATENCY_CONCURRENCY },
    // Same users as the previous phase, whose first tab is still open: no bind, no presence change.
    { phase: `2nd tab of bound users, ${LATENCY_CONCURRENCY} at a time`, tag: 'c50', concurrency: 50 },
  ];
  try {
    for (const { phase, tag, concurrency } of phases) {
      const before = await serverWelcome(gateway);
      const services = await serviceCpu();
      const cpu = process.cpuUsage();
      const result = await fleet.open({
        ports: [gateway.port],
        tenantId: TENANT,
        userIds: users(tag, n),
        concurrency,
        secret: BENCH_SECRET,
      });
      const used = process.cpuUsage(cpu);
      checkOpened(phase, result, n);
      const after = await serverWelcome(gateway);
      const open = summarise(result.openToWelcome);
      const total = summarise(result.totalToWelcome);
      rows.push({
        phase,
        clients: n,
        'open→welcome p50 ms': fmt(open.p50),
        'open→welcome p99 ms': fmt(open.p99),
        'new→welcome p50 ms': fmt(total.p50),
        'new→welcome p99 ms': fmt(total.p99),
        'gateway-side mean ms': fmt(
          ((after.sum - before.sum) / Math.max(1, after.count - before.count)) * 1000,
        ),
        'welcomes/s': fmt(n / (result.wallMs / 1000)),
        ...(await cpuColumn(result, used, services)),
      });
    }
    await fleet.closeAll();
  } finally {
    await gateway.close();
  }
  return rows;
}

async function rawBindRates(ctx: BenchContext, prefix: string, n: number) {
  const exchange = `${prefix}.rawbind`;
  const model = await amqp.connect(ctx.rabbitmqUrl);
  const rows: Record<string, string | number>[] = [];
  const rates: number[] = [];
  try {
    const setup = await model.createChannel();
    // The same kinds of exchange and queue as the gateway's: durable topic exchange, gateway queue arguments.
    await setup.assertExchange(exchange, 'topic', { durable: true });
    for (const channels of [1, RAW_CHANNELS]) {
      const queue = `${prefix}.rawbind.${channels}`;
      await declareGatewayQueue(setup, queue, { maxLength: 100_000, dropped: `${queue}.dropped` });
      const pool = await Promise.all(Array.from({ length: channels }, () => model.createChannel()));
      let next = 0;
      const services = await serviceCpu();
      const started = performance.now();
      await Promise.all(
        pool.map(async (channel) => {
          for (let i = next++; i < n; i = next++) await channel.bindQueue(queue, exchange, `u.raw.${i}`);
        }),
      );
      const seconds = (performance.now() - started) / 1000;
      const cpu = serviceCpuColumns(services, await serviceCpu(), seconds * 1000);
      const deleting = performance.now();
      await setup.deleteQueue(queue);
      const deleteSeconds = (performance.now() - deleting) / 1000;
      await setup.deleteQueue(`${queue}.dropped`);
      await setup.deleteQueue(`${queue}.dropped.lost`);
      await Promise.all(pool.map((c) => c.close()));
      rates.push(n / seconds);
      rows.push({
        method: channels === 1 ? 'amqplib, awaited one by one, 1 channel' : `amqplib, ${channels} channels`,
        binds: n,
        seconds: fmt(seconds),
        'binds/s': fmt(n / seconds),
        'rabbitmq CPU %': cpu['rabbitmq CPU %'] as string,
        'delete queue holding them, s': fmt(deleteSeconds),
      });
    }
    await setup.deleteExchange(exchange);
    await setup.close();
  } finally {
    await model.close();
  }
  return { rows, oneByOne: rates[0] as number, pooled: rates[1] as number };
}

async function gatewayBindRate(ctx: BenchContext, prefix: string, fleet: ClientFleet, n: number) {
  const config = benchConfig(ctx, prefix);
  const gateway = await startGateway(config, { logger: createLogger(config.log.level) });
  try {
    const before = await metricValue(gateway, 'warren_gateway_binds_total');
    const services = await serviceCpu();
    const cpu = process.cpuUsage();
    const result = await fleet.open({
      ports: [gateway.port],
      tenantId: TENANT,
      userIds: users('bind', n),
      concurrency: BIND_CONCURRENCY,
      secret: BENCH_SECRET,
    });
    const used = process.cpuUsage(cpu);
    const cpuUse = await cpuColumn(result, used, services);
    checkOpened('gateway binds', result, n);
    const binds = (await metricValue(gateway, 'warren_gateway_binds_total')) - before;
    await fleet.closeAll();
    const closing = performance.now();
    await gateway.close();
    const closeSeconds = (performance.now() - closing) / 1000;
    const open = summarise(result.openToWelcome);
    return { binds, seconds: result.wallMs / 1000, open, closeSeconds, cpu: cpuUse };
  } finally {
    await gateway.close();
  }
}

async function run(ctx: BenchContext): Promise<BenchResult> {
  const sizes: Sizes = ctx.quick
    ? { latencyClients: 100, bindClients: 1000, rawBinds: 1000 }
    : { latencyClients: 1000, bindClients: 10_000, rawBinds: 10_000 };
  const prefix = benchPrefix('gateway');
  const loadBefore = await loadAverage();
  const fleet = ClientFleet.start();
  try {
    const latency = await welcomeLatency(ctx, prefix, fleet, sizes.latencyClients);
    const raw = await rawBindRates(ctx, prefix, sizes.rawBinds);
    const gw = await gatewayBindRate(ctx, prefix, fleet, sizes.bindClients);
    const rate = gw.binds / gw.seconds;
    const limit = await openFileLimit();
    return {
      tables: [
        { title: `(a) one gateway: socket open → welcome, client side (${TENANT} tenant)`, rows: latency },
        {
          title: '(b) raw broker binds, same run (queue bind on a topic exchange, literal keys)',
          rows: raw.rows,
        },
        {
          title: `(b) one gateway: ${sizes.bindClients} distinct users connecting, ${BIND_CONCURRENCY} in flight`,
          rows: [
            {
              users: sizes.bindClients,
              binds: gw.binds,
              'until last welcome, s': fmt(gw.seconds),
              'binds/s': fmt(rate),
              'open→welcome p50 ms': fmt(gw.open.p50),
              'open→welcome p99 ms': fmt(gw.open.p99),
              '× raw 1 channel': fmt(rate / raw.oneByOne),
              [`× raw ${RAW_CHANNELS} channels`]: fmt(rate / raw.pooled),
              ...gw.cpu,
              'drain + close, s': fmt(gw.closeSeconds),
            },
          ],
        },
        {
          title: 'run conditions',
          rows: [
            {
              'load avg (1 min) before/after': `${loadBefore}/${await loadAverage()}`,
              'ulimit -n': limit ?? 'n/a',
              clients: 'ws, in a child process (descriptors, and CPU not billed to the gateway)',
            },
          ],
        },
      ],
      data: { sizes, latency, raw, gateway: gw, bindConcurrency: BIND_CONCURRENCY, openFileLimit: limit },
    };
  } finally {
    await fleet.stop();
    await cleanBroker(ctx.rabbitmqUrl, prefix);
    await cleanRedis(ctx.redisUrl, prefix);
  }
}

const bench: Bench = {
  name: 'gateway',
  description: 'socket open → welcome latency and binds/s of one in-process gateway vs raw broker binds',
  run,
};
export default bench;
