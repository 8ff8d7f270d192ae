import { once } from 'node:events';
import amqp, { type Channel, type ConfirmChannel, type ConsumeMessage } from 'amqplib';
import roaring from 'roaring';
import { fmt } from './lib.js';
import { sample, seededRandom, serviceCpu, serviceCpuColumns } from './support-warren.js';

const { RoaringBitmap32 } = roaring;

/**
 * Broker-only measurements for the throughput bench, with amqplib and nothing of Warren: the raw
 * publish → consume rate of one queue, and CC-routed one-message-per-event against one message per
 * recipient on a topic exchange with literal user keys (DESIGN.md §6), to tell broker cost from gateway cost.
 */

const PREFETCH = 512;
const BIND_CHANNELS = 8;

/** Publishes with confirms, respecting the channel's write buffer; resolves when all are confirmed. */
async function publishAll(
  channel: ConfirmChannel,
  count: number,
  publish: (i: number) => boolean,
): Promise<void> {
  for (let i = 0; i < count; i += 1) if (!publish(i)) await once(channel, 'drain');
  await channel.waitForConfirms();
}

/** N small messages with confirms to one queue and consumed (manual ack, like a gateway) on another connection. */
export async function rawPublishConsume(url: string, prefix: string, n: number) {
  const pub = await amqp.connect(url);
  const sub = await amqp.connect(url);
  const queue = `${prefix}.raw`;
  try {
    const channel = await pub.createConfirmChannel();
    await channel.assertQueue(queue, { durable: false });
    const consumer = await sub.createChannel();
    await consumer.prefetch(PREFETCH);
    let received = 0;
    let done = (): void => {};
    const all = new Promise<void>((resolve) => (done = resolve));
    await consumer.consume(queue, (m) => {
      if (!m) return;
      consumer.ack(m);
      if (++received === n) done();
    });
    const body = Buffer.from('{"n":0}');
    const services = await serviceCpu();
    const started = performance.now();
    await publishAll(channel, n, () => channel.publish('', queue, body, { messageId: 'x', type: 'raw' }));
    await all;
    const ms = performance.now() - started;
    const cpu = serviceCpuColumns(services, await serviceCpu(), ms);
    return { messages: n, seconds: ms / 1000, rate: n / (ms / 1000), rabbitmqCpu: cpu['rabbitmq CPU %'] };
  } finally {
    await sub.close().catch(() => {});
    const cleanup = await pub.createChannel().catch(() => undefined);
    cleanup?.on('error', () => {});
    await cleanup?.deleteQueue(queue).catch(() => {});
    await pub.close().catch(() => {});
  }
}

export interface RoutingSizes {
  queues: number;
  bindingsPerQueue: number;
  /** Events per recipients-per-event figure. */
  events: Record<number, number>;
}

const ROUTINGS = [
  'nodes: one message per event to the queues holding recipients, bitmap',
  'CC: one message per event, user keys',
  'one message per recipient',
] as const;
const RATE_KEYS = ['nodes', 'cc', 'each'] as const;

function keysOf(message: ConsumeMessage): string[] {
  const cc: unknown = message.properties.headers?.['CC'];
  const rest = Array.isArray(cc)
    ? cc.map((k: unknown) => (Buffer.isBuffer(k) ? k.toString() : String(k)))
    : [];
  return [message.fields.routingKey, ...rest];
}

async function bindAll(channels: Channel[], bindings: [queue: string, exchange: string, key: string][]) {
  let next = 0;
  await Promise.all(
    channels.map(async (channel) => {
      for (let i = next++; i < bindings.length; i = next++)
        await channel.bindQueue(...(bindings[i] as [string, string, string]));
    }),
  );
}

/**
 * `queues` queues × `bindingsPerQueue` literal user keys (plus one node key each) on one topic exchange.
 * Per recipients-per-event figure, the same random recipient lists are published as one message per event
 * to the node keys of the queues holding recipients (recipients as a bitmap), as one message per event with
 * the user keys in CC, and as one message per recipient; consumers count the user-deliveries their queue's
 * copies carry for their users.
 */
export async function ccVersusPerRecipient(url: string, prefix: string, sizes: RoutingSizes) {
  const exchange = `${prefix}.cc`;
  const queueName = (q: number): string => `${prefix}.cc.q${q}`;
  const userKey = (q: number, j: number): string => `u.t.q${q}x${j}`;
  const pub = await amqp.connect(url);
  const sub = await amqp.connect(url);
  const rows: Record<string, string | number>[] = [];
  const rates: Record<string, number> = {};
  try {
    const setup = await pub.createChannel();
    await setup.assertExchange(exchange, 'topic', { durable: false });
    const bindings: [string, string, string][] = [];
    for (let q = 0; q < sizes.queues; q += 1) {
      await setup.assertQueue(queueName(q), { durable: false });
      await setup.bindQueue(queueName(q), exchange, `n.q${q}`);
      for (let j = 0; j < sizes.bindingsPerQueue; j += 1)
        bindings.push([queueName(q), exchange, userKey(q, j)]);
    }
    const bindStarted = performance.now();
    const bindChannels = await Promise.all(Array.from({ length: BIND_CHANNELS }, () => pub.createChannel()));
    await bindAll(bindChannels, bindings);
    const bindSeconds = (performance.now() - bindStarted) / 1000;
    await Promise.all(bindChannels.map((c) => c.close()));

    let counted = 0;
    let target = Infinity;
    let reached = (): void => {};
    for (let q = 0; q < sizes.queues; q += 1) {
      const consumer = await sub.createChannel();
      await consumer.prefetch(PREFETCH);
      const mine = `u.t.q${q}x`;
      const [from, to] = [q * sizes.bindingsPerQueue, (q + 1) * sizes.bindingsPerQueue];
      await consumer.consume(queueName(q), (m) => {
        if (!m) return;
        const bits: unknown = m.properties.headers?.['x-warren-recipients'];
        if (Buffer.isBuffer(bits)) {
          counted += RoaringBitmap32.deserialize(bits, 'portable').rangeCardinality(from, to);
        } else {
          for (const key of keysOf(m)) if (key.startsWith(mine)) counted += 1;
        }
        consumer.ack(m);
        if (counted >= target) reached();
      });
    }
    const channel = await pub.createConfirmChannel();
    const random = seededRandom(3);
    const users = sizes.queues * sizes.bindingsPerQueue;
    const body = Buffer.from('{"n":0}');
    for (const [perEvent, events] of Object.entries(sizes.events).map(([k, v]) => [Number(k), v] as const)) {
      const samples = Array.from({ length: events }, () => sample(random, users, perEvent));
      const lists = samples.map((list) =>
        list.map((u) => userKey(Math.floor(u / sizes.bindingsPerQueue), u % sizes.bindingsPerQueue)),
      );
      // What a resolver does per event in node routing: the queues holding recipients, the bitmap.
      const byNode = samples.map((list) => ({
        nodes: [...new Set(list.map((u) => `n.q${Math.floor(u / sizes.bindingsPerQueue)}`))],
        bits: Buffer.from(new RoaringBitmap32(list).serialize('portable')),
      }));
      for (const [r, routing] of ROUTINGS.entries()) {
        const variant = RATE_KEYS[r] as (typeof RATE_KEYS)[number];
        const messages = variant === 'each' ? events * perEvent : events;
        counted = 0;
        target = events * perEvent;
        const all = new Promise<void>((resolve) => (reached = resolve));
        const services = await serviceCpu();
        const started = performance.now();
        await publishAll(channel, messages, (i) => {
          const options = { messageId: `e${i}`, type: 'bench', headers: { 'x-warren-tenant': 't' } };
          if (variant === 'nodes') {
            const { nodes, bits } = byNode[i] as { nodes: string[]; bits: Buffer };
            const headers = { ...options.headers, 'x-warren-recipients': bits };
            const cc = nodes.length > 1 ? { CC: nodes.slice(1) } : {};
            return channel.publish(exchange, nodes[0] as string, body, { ...options, headers, ...cc });
          }
          const list = lists[variant === 'cc' ? i : Math.floor(i / perEvent)] as string[];
          if (variant === 'each')
            return channel.publish(exchange, list[i % perEvent] as string, body, options);
          return channel.publish(exchange, list[0] as string, body, { ...options, CC: list.slice(1) });
        });
        await all;
        const ms = performance.now() - started;
        const cpu = serviceCpuColumns(services, await serviceCpu(), ms);
        const rate = target / (ms / 1000);
        rates[`${variant}-${perEvent}`] = rate;
        rows.push({
          routing,
          'recipients/event': perEvent,
          events,
          'AMQP messages': messages,
          'user-deliveries': target,
          seconds: fmt(ms / 1000),
          'user-deliveries/s': fmt(rate),
          'rabbitmq CPU %': cpu['rabbitmq CPU %'] as string,
        });
      }
    }
    return { rows, rates, bindSeconds, bindings: bindings.length };
  } finally {
    await sub.close().catch(() => {});
    const cleanup = await pub.createChannel().catch(() => undefined);
    cleanup?.on('error', () => {});
    for (let q = 0; q < sizes.queues; q += 1) await cleanup?.deleteQueue(queueName(q)).catch(() => {});
    await cleanup?.deleteExchange(exchange).catch(() => {});
    await pub.close().catch(() => {});
    await sub.close().catch(() => {});
  }
}
