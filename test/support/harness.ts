import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import amqp, { type Channel, type ChannelModel, type ConsumeMessage } from 'amqplib';
import { SignJWT } from 'jose';
import { pino } from 'pino';
import { inject } from 'vitest';
import WebSocket from 'ws';
import { BrokerConnection } from '../../src/broker/connection.js';
import { exchangeExists, queueExists } from '../../src/broker/topology.js';
import { loadConfig } from '../../src/config/load.js';
import type { WarrenConfig } from '../../src/config/schema.js';
import { startGateway, type Gateway } from '../../src/gateway/main.js';
import { ControlMessage, DeliveryHeader } from '../../src/protocol/delivery.js';
import type { ServerFrame } from '../../src/protocol/frames.js';
import { createLogger, silentLogger, type Logger } from '../../src/shared/logger.js';
import type { Registry } from '../../src/shared/metrics.js';
import { startResolver, type Resolver } from '../../src/resolver/main.js';
import { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { Keys } from '../../src/store/keys.js';
import { createRedis, type WarrenRedis } from '../../src/store/redis.js';
import { deletePrefixKeys, deleteTopology } from './prefix-cleanup.js';

export const TEST_SECRET = 'test-secret-test-secret-test-secret';

/** A prefix no other test uses: its own exchanges, queues and Redis keys. */
export function testPrefix(name: string): string {
  return `t-${name}-${randomBytes(4).toString('hex')}`;
}

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] };

/** A full, validated configuration for a test, against the test services, nothing read from the environment. */
export function testConfig(
  prefix: string,
  overrides: DeepPartial<WarrenConfig> = {},
): Readonly<WarrenConfig> {
  const base = {
    prefix,
    log: { level: process.env['WARREN_TEST_LOG_LEVEL'] ?? 'silent' },
    rabbitmq: { url: inject('rabbitmqUrl'), reconnectBaseMs: 50, reconnectCapMs: 500 },
    redis: { url: inject('redisUrl') },
    // No handoff: a drain or a lifetime closes at once, as most tests expect (the handoff's own set it).
    gateway: { host: '127.0.0.1', port: 0, drainWindowMs: 0, handoffMs: 0, unbindGraceMs: 30_000 },
    jwt: { secret: TEST_SECRET },
  };
  const merged = mergeDeep(base, overrides as Record<string, unknown>);
  return loadConfig({ env: {}, overrides: merged });
}

function mergeDeep(a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const cur = out[k];
    out[k] =
      v && typeof v === 'object' && !Array.isArray(v) && cur && typeof cur === 'object'
        ? mergeDeep(cur as Record<string, unknown>, v as Record<string, unknown>)
        : v;
  }
  return out;
}

export function testLogger(config: Readonly<WarrenConfig>) {
  return createLogger(config.log.level);
}

/** A broker connection to the test broker with short reconnect delays, not started yet. */
export function testBrokerConnection(name: string, url = inject('rabbitmqUrl')): BrokerConnection {
  return new BrokerConnection(
    {
      url,
      frameMax: 131_072,
      heartbeatSec: 10,
      reconnectBaseMs: 100,
      reconnectCapMs: 1000,
      connectTimeoutMs: 10_000,
      connectionName: `warren-test-${name}`,
    },
    silentLogger(),
  );
}

export async function startTestGateway(config: Readonly<WarrenConfig>): Promise<Gateway> {
  return startGateway(config, { logger: testLogger(config) });
}

export interface TokenClaims {
  sub: string;
  tid: string;
  /** Seconds from now; default one hour. */
  expiresIn?: number;
  secret?: string;
}

export async function token(claims: TokenClaims): Promise<string> {
  const { sub, tid, expiresIn = 3600, secret = TEST_SECRET } = claims;
  return new SignJWT({ tid })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(sub)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + expiresIn)
    .sign(new TextEncoder().encode(secret));
}

/** A tab as a test sees it: every frame it received, and how it was closed. */
export class TestTab {
  readonly frames: ServerFrame[] = [];
  closeCode: number | undefined;
  readonly closed: Promise<number>;
  welcome: Extract<ServerFrame, { type: 'welcome' }> | undefined;

  constructor(readonly ws: WebSocket) {
    this.closed = new Promise((resolve) => {
      ws.on('close', (code) => {
        this.closeCode = code;
        resolve(code);
      });
    });
    ws.on('message', (data) => {
      const frame = JSON.parse(data.toString()) as ServerFrame;
      if (frame.type === 'welcome') this.welcome = frame;
      this.frames.push(frame);
    });
  }

  events(): Extract<ServerFrame, { type: 'event' }>[] {
    return this.frames.filter((f): f is Extract<ServerFrame, { type: 'event' }> => f.type === 'event');
  }

  eventIds(): string[] {
    return this.events().map((e) => e.id);
  }

  send(value: unknown): void {
    this.ws.send(typeof value === 'string' ? value : JSON.stringify(value));
  }

  close(): Promise<number> {
    this.ws.close();
    return this.closed;
  }
}

export class UpgradeRefused extends Error {
  constructor(readonly status: number) {
    super(`upgrade refused with HTTP ${status}`);
  }
}

/** Opens a tab and resolves once `welcome` arrived; rejects with UpgradeRefused on an HTTP answer. */
export function openTab(
  port: number,
  jwt: string | undefined,
  how: 'query' | 'protocol' = 'query',
  /** Request headers besides the handshake's own (the cookies a browser sends, say). */
  headers: Record<string, string> = {},
): Promise<TestTab> {
  const url = `ws://127.0.0.1:${port}/ws${jwt && how === 'query' ? `?token=${jwt}` : ''}`;
  const protocols = jwt && how === 'protocol' ? ['warren', `bearer.${jwt}`] : undefined;
  const ws = new WebSocket(url, protocols, { headers });
  const tab = new TestTab(ws);
  return new Promise((resolve, reject) => {
    ws.once('unexpected-response', (_req, res) => {
      reject(new UpgradeRefused(res.statusCode ?? 0));
      ws.terminate();
    });
    ws.once('error', reject);
    const check = (): void => {
      if (tab.welcome) {
        ws.off('message', check);
        resolve(tab);
      }
    };
    ws.on('message', check);
    void tab.closed.then((code) => reject(new Error(`closed with ${code} before welcome`)));
  });
}

/** Polls until `check` holds, or fails with `what` after `timeoutMs`. */
export async function eventually(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The test's own broker connection, to publish raw deliveries and inspect queues. */
export class BrokerProbe {
  private constructor(
    readonly model: ChannelModel,
    readonly channel: Channel,
  ) {}

  static async open(): Promise<BrokerProbe> {
    const model = await amqp.connect(inject('rabbitmqUrl'));
    const channel = await model.createConfirmChannel();
    channel.on('error', () => {});
    return new BrokerProbe(model, channel);
  }

  /** Per prefix, the lists `deadLetters` handed out: every one gets each dead letter that arrives. */
  private readonly deadLists = new Map<string, ConsumeMessage[][]>();

  /**
   * The dead letters of an installation that arrive from now on. One consumer per prefix (without acks, on
   * a channel that closes with the probe) feeds every list asked for: a second consumer on the queue would
   * take turns with the first.
   */
  async deadLetters(prefix: string): Promise<ConsumeMessage[]> {
    const dead: ConsumeMessage[] = [];
    let lists = this.deadLists.get(prefix);
    if (lists) {
      lists.push(dead);
      return dead;
    }
    lists = [dead];
    this.deadLists.set(prefix, lists);
    const channel = await this.model.createChannel();
    channel.on('error', () => {});
    await channel.consume(`${prefix}.dead`, (m) => m && lists.forEach((list) => list.push(m)), {
      noAck: true,
    });
    return dead;
  }

  /** Publishes a model event straight to the events exchange, as a service without the SDK would. */
  async publishEvent(
    prefix: string,
    event: { tenantId: string; type: string } & Record<string, unknown>,
    headers?: Record<string, unknown>,
  ): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      (this.channel as unknown as amqp.ConfirmChannel).publish(
        `${prefix}.events`,
        `${event.tenantId}.${event.type}`,
        Buffer.from(JSON.stringify(event)),
        { contentType: 'application/json', ...(headers ? { headers } : {}) },
        (err: unknown) => (err ? reject(err as Error) : resolve()),
      );
    });
  }

  /**
   * Publishes a delivery as a resolver would: first key as routing key, the rest in CC. User keys name the
   * recipients themselves; node keys (`n.<node>`) go with a recipients bitmap in `extraHeaders`.
   */
  async deliver(
    prefix: string,
    keys: string[],
    event: { id: string; tenantId: string; type?: string; data?: unknown; jobId?: string },
    extraHeaders: Record<string, unknown> = {},
  ): Promise<void> {
    const [first, ...rest] = keys;
    const headers: Record<string, unknown> = { 'x-warren-tenant': event.tenantId, ...extraHeaders };
    if (event.jobId) headers['x-warren-job'] = event.jobId;
    await new Promise<void>((resolve, reject) => {
      (this.channel as unknown as amqp.ConfirmChannel).publish(
        `${prefix}.deliveries`,
        first ?? '',
        event.jobId ? Buffer.alloc(0) : Buffer.from(JSON.stringify(event.data ?? null)),
        {
          messageId: event.id,
          type: event.type ?? 'test.event',
          headers,
          ...(rest.length > 0 ? { CC: rest } : {}),
        },
        (err: unknown) => (err ? reject(err as Error) : resolve()),
      );
    });
  }

  /** Whether a queue exists (other broker errors are thrown, not taken for "missing"). */
  queueExists(queue: string): Promise<boolean> {
    return queueExists(this.model, queue);
  }

  /** Whether an exchange exists (other broker errors are thrown, not taken for "missing"). */
  exchangeExists(exchange: string): Promise<boolean> {
    return exchangeExists(this.model, exchange);
  }

  /** Whether a routing key reaches any queue on the deliveries exchange (mandatory publish). */
  async routes(prefix: string, key: string): Promise<boolean> {
    const ch = await this.model.createConfirmChannel();
    ch.on('error', () => {});
    let returned = false;
    ch.on('return', () => {
      returned = true;
    });
    await new Promise<void>((resolve, reject) =>
      ch.publish(
        `${prefix}.deliveries`,
        key,
        Buffer.from('null'),
        // A gateway's own binding probe: a gateway the key routes to acks it and does nothing else.
        { mandatory: true, headers: { [DeliveryHeader.Control]: ControlMessage.Probe } },
        (err: unknown) => (err ? reject(err as Error) : resolve()),
      ),
    );
    await ch.close();
    return !returned;
  }

  async deleteExchangesAndQueues(prefix: string, gatewayQueues: string[] = []): Promise<void> {
    const ch = await this.model.createChannel();
    await deleteTopology(ch, prefix, { queues: gatewayQueues });
    await ch.close().catch(() => {});
  }

  async close(): Promise<void> {
    await this.model.close().catch(() => {});
  }
}

/**
 * Reads one metric of a gateway's or resolver's registry, summed over the series matching `labels` (to
 * know when work has been done).
 */
export async function counter(
  process: { readonly metrics: Registry },
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const metric = await process.metrics.getSingleMetric(name)?.get();
  return (metric?.values ?? [])
    .filter((v) => Object.entries(labels).every(([k, want]) => String(v.labels[k]) === want))
    .reduce((sum, v) => sum + v.value, 0);
}

export async function startTestResolver(
  config: Readonly<WarrenConfig>,
  logger: Logger = testLogger(config),
): Promise<Resolver> {
  return startResolver(config, { logger });
}

/** A logger whose lines the test reads back (`lines`), at `level`. */
export function capturingLogger(level: 'debug' | 'info' | 'warn' | 'error' = 'info'): {
  logger: Logger;
  lines: Record<string, unknown>[];
} {
  const lines: Record<string, unknown>[] = [];
  const logger = pino(
    { level },
    { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) },
  );
  return { logger, lines };
}

export async function connectPublisher(config: Readonly<WarrenConfig>): Promise<WarrenPublisher> {
  return WarrenPublisher.connect({
    rabbitmqUrl: config.rabbitmq.url,
    redisUrl: config.redis.url,
    payloadRedisUrl: config.claimCheck.redisUrl,
    prefix: config.prefix,
    queueType: config.rabbitmq.queueType,
    claimCheckBytes: config.claimCheck.bytes,
    // Tests often connect one before their resolver starts: no process warning for that.
    logger: silentLogger(),
  });
}

/**
 * Runs `test` with a Warren Redis client (its scripts loaded) and the keys of a fresh prefix, then removes
 * everything under that prefix: for tests of a store or a view on their own, without a whole installation.
 */
export async function withWarrenRedis(
  name: string,
  test: (redis: WarrenRedis, keys: Keys) => Promise<void>,
): Promise<void> {
  const prefix = testPrefix(name);
  const redis = await createRedis({
    url: inject('redisUrl'),
    name: `warren-test-${name}`,
    logger: silentLogger(),
  });
  try {
    await test(redis, new Keys(prefix));
  } finally {
    await deletePrefixKeys(redis, prefix);
    await redis.quit();
  }
}

/**
 * The tests' Redis, another database of it (1, or 2 if the tests' URL names 1 already): stands in for a
 * Redis of the payloads' own (`claimCheck.redisUrl`).
 */
export function payloadRedisUrl(): string {
  const url = new URL(inject('redisUrl'));
  url.pathname = url.pathname === '/1' ? '/2' : '/1';
  return url.toString();
}

/** Deletes every Redis key of a test prefix (tenant keys are `{prefix:tenant}:…`, global ones `prefix:…`). */
export async function cleanRedis(prefix: string, url = inject('redisUrl')): Promise<void> {
  const { Redis } = await import('ioredis');
  const redis = new Redis(url);
  await deletePrefixKeys(redis, prefix);
  await redis.quit();
}

/** A gateway, a resolver and a publisher on one test prefix: what most end-to-end cases start with. */
export interface TestStack {
  gateway: Gateway;
  resolver: Resolver;
  warren: WarrenPublisher;
  /** Closes all three, then removes the prefix's exchanges, queues and Redis keys. */
  close(): Promise<void>;
}

export async function startTestStack(
  config: Readonly<WarrenConfig>,
  options: { resolverLogger?: Logger } = {},
): Promise<TestStack> {
  const gateway = await startTestGateway(config);
  const resolver = await startTestResolver(config, options.resolverLogger);
  const warren = await connectPublisher(config);
  return {
    gateway,
    resolver,
    warren,
    close: () => removeInstallation(config.prefix, { warren, resolvers: [resolver], gateways: [gateway] }),
  };
}

/**
 * Closes a test installation's publisher, resolvers and gateways, then removes everything its prefix left
 * on the broker (exchanges, queues, the gateways' queues) and in Redis.
 */
export async function removeInstallation(
  prefix: string,
  parts: { warren?: WarrenPublisher; resolvers?: (Resolver | undefined)[]; gateways?: Gateway[] },
): Promise<void> {
  const gateways = parts.gateways ?? [];
  // A close that fails (what a failing test often comes to) stops none of the rest: the prefix is removed
  // whatever happens, and the first failure is thrown after.
  const failures: unknown[] = [];
  const attempt = async (step: () => Promise<unknown> | undefined): Promise<void> => {
    try {
      await step();
    } catch (error) {
      failures.push(error);
    }
  };
  await attempt(() => parts.warren?.close());
  for (const resolver of parts.resolvers ?? []) await attempt(() => resolver?.close());
  await Promise.all(gateways.map((g) => attempt(() => g.close())));
  const probe = await BrokerProbe.open();
  try {
    await probe.deleteExchangesAndQueues(
      prefix,
      gateways.map((g) => g.queue),
    );
  } finally {
    await probe.close();
  }
  await cleanRedis(prefix);
  if (failures.length > 0) throw failures[0];
}

/**
 * A free TCP port now (for a node that must be known before it starts), below the range the system hands
 * out for port 0 (32768 and up on Linux): until the node binds it, no test's listener on port 0, nor any
 * outgoing connection, can be given it meanwhile.
 */
export async function freePort(): Promise<number> {
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const server = createServer();
    const free = await new Promise<boolean>((resolve) => {
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => resolve(true));
    });
    if (!free) continue;
    await new Promise((resolve) => server.close(resolve));
    return port;
  }
}
