import amqp from 'amqplib';
import { explainConnectFailure } from '../broker/connection.js';
import { lostQueueOf, topologyNames } from '../broker/topology.js';
import type { WarrenConfig } from '../config/schema.js';
import { ErrorCode, withoutCredentials } from '../shared/errors.js';
import { Keys } from '../store/keys.js';
import { PresenceStore } from '../store/presence-store.js';
import { closeRedis } from '../store/redis.js';
import { commandRedis } from './command-redis.js';

interface QueueInfo {
  queue: string;
  messages: number | null;
  consumers: number | null;
}

export interface Status {
  gateways: {
    id: string;
    alive: boolean;
    lastBeatAgoMs: number;
    connections: number | null;
    /** Users with a tab open on the gateway (online there). */
    users: number | null;
  }[];
  tenants: { id: string; online: number }[];
  /** Empty when the broker could not be reached (`brokerError` says why). */
  queues: QueueInfo[];
  /** Why the queues are missing: what Redis told is shown all the same (a broker outage is when it is asked). */
  brokerError?: string;
}

async function queueInfo(model: amqp.ChannelModel, queue: string): Promise<QueueInfo> {
  try {
    // checkQueue on a missing queue closes the channel, so each check gets its own.
    const channel = await model.createChannel();
    channel.on('error', () => {});
    const q = await channel.checkQueue(queue);
    await channel.close();
    return { queue, messages: q.messageCount, consumers: q.consumerCount };
  } catch {
    return { queue, messages: null, consumers: null };
  }
}

export async function collectStatus(config: Readonly<WarrenConfig>): Promise<Status> {
  const keys = new Keys(config.prefix);
  const names = topologyNames(config.prefix);
  const redis = await commandRedis(config, 'warren-status', { readOnly: true });
  try {
    const presence = new PresenceStore(redis, keys);
    const [time] = await redis.time();
    const now = Number(time) * 1000;
    const nodes = await presence.nodes();
    const gateways = await Promise.all(
      nodes.map(async ({ nodeId, lastBeat }) => {
        const stats = await presence.nodeStats(nodeId);
        return {
          id: nodeId,
          alive: now - lastBeat <= config.presence.expiryMs,
          lastBeatAgoMs: Math.max(0, now - lastBeat),
          connections: stats?.connections ?? null,
          users: stats?.users ?? null,
        };
      }),
    );
    const live = gateways.filter((g) => g.alive).map((g) => g.id);
    const tenantIds = (await redis.smembers(keys.tenants())).sort();
    const tenants = await Promise.all(
      tenantIds.map(async (id) => ({ id, online: await presence.onlineCount(id, live) })),
    );
    let model: amqp.ChannelModel;
    try {
      // Bounded: a broker host that drops packets would hold the command for the system's TCP timeout.
      model = await amqp.connect(config.rabbitmq.url, { timeout: config.rabbitmq.connectTimeoutMs });
    } catch (error) {
      const { url } = config.rabbitmq;
      const brokerError = `cannot connect to RabbitMQ at ${withoutCredentials(url)}: ${explainConnectFailure(error, url)}`;
      return { gateways, tenants, queues: [], brokerError };
    }
    // The broker closing the connection mid-command (a restart, `rabbitmqctl close_connection`) is an
    // 'error' event: unheard, it would end the command with a stack trace. The queues it leaves unread are
    // shown unknown.
    model.on('error', () => {});
    try {
      const queues = await Promise.all(
        [
          names.resolver,
          names.memberships,
          names.resolverRetry,
          names.dead,
          // Each node's queue, beside it where the broker puts what that queue dropped when full, and the
          // mark (one message at most) that this in its turn overflowed.
          ...gateways.flatMap((g) => [
            names.gatewayQueue(g.id),
            names.gatewayDropped(g.id),
            lostQueueOf(names.gatewayDropped(g.id)),
          ]),
        ].map((q) => queueInfo(model, q)),
      );
      return { gateways, tenants, queues };
    } finally {
      await model.close().catch(() => {});
    }
  } finally {
    await closeRedis(redis);
  }
}

function table(headers: string[], rows: (string | number)[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells: (string | number)[]) =>
    cells.map((c, i) => String(c).padEnd(widths[i] ?? 0)).join('  ');
  return [line(headers), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

const dash = (v: number | null): string | number => (v === null ? '-' : v);

/** Exit 1 when the broker could not be asked: what Redis holds is printed all the same. */
export async function runStatus(config: Readonly<WarrenConfig>, options: { json: boolean }): Promise<number> {
  const status = await collectStatus(config);
  const code = status.brokerError === undefined ? 0 : 1;
  if (options.json) {
    console.log(JSON.stringify(status, null, 2));
    return code;
  }
  console.log(`Warren status (prefix ${config.prefix})\n`);
  console.log(
    table(
      ['gateway', 'alive', 'last beat', 'connections', 'users'],
      status.gateways.map((g) => [
        g.id,
        g.alive ? 'yes' : 'no',
        `${Math.round(g.lastBeatAgoMs / 1000)} s ago`,
        dash(g.connections),
        dash(g.users),
      ]),
    ),
  );
  console.log(
    `\n${table(
      ['tenant', 'users online'],
      status.tenants.map((t) => [t.id, t.online]),
    )}`,
  );
  if (status.brokerError !== undefined) {
    // In the queues' place: an empty table there read as "no queues".
    console.log('\nqueues: unknown, RabbitMQ could not be asked (below)');
    console.error(`${ErrorCode.BrokerUnavailable}: ${status.brokerError}`);
    return code;
  }
  console.log(
    `\n${table(
      ['queue', 'messages', 'consumers'],
      status.queues.map((q) => [q.queue, dash(q.messages), dash(q.consumers)]),
    )}`,
  );
  // Empty tables and dashes alone read as an idle installation; this is more likely the wrong one.
  if (
    status.gateways.length === 0 &&
    status.tenants.length === 0 &&
    status.queues.every((q) => q.messages === null)
  )
    console.error(
      `\nnothing of prefix ${config.prefix} in Redis or RabbitMQ: no gateway, tenant or queue of it. Wrong ` +
        'prefix (WARREN_PREFIX), or not the Redis and RabbitMQ Warren runs on?',
    );
  return code;
}
