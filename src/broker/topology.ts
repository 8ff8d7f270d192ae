import type { Channel, ChannelModel } from 'amqplib';
import { errorMessage } from '../shared/errors.js';

/** Every exchange and queue name, derived from the prefix (DESIGN.md §3). */
export interface TopologyNames {
  events: string;
  membership: string;
  resolver: string;
  /** Membership changes from the exchange, applied in order by one resolver at a time. */
  memberships: string;
  /**
   * Events put aside for a while (their payloads' Redis did not answer): each waits out its own expiry
   * here, then the broker dead-letters it back to the resolver queue.
   */
  resolverRetry: string;
  deliveries: string;
  dlx: string;
  dead: string;
  gatewayQueue(gatewayId: string): string;
  /** Where a node's queue puts the deliveries it drops when full: the node tells its tabs. */
  gatewayDropped(gatewayId: string): string;
}

export function topologyNames(prefix: string): TopologyNames {
  return {
    events: `${prefix}.events`,
    membership: `${prefix}.membership`,
    resolver: `${prefix}.resolver`,
    memberships: `${prefix}.resolver.membership`,
    resolverRetry: `${prefix}.resolver.retry`,
    deliveries: `${prefix}.deliveries`,
    dlx: `${prefix}.dlx`,
    dead: `${prefix}.dead`,
    gatewayQueue: (gatewayId) => `${prefix}.gw.${gatewayId}`,
    gatewayDropped: (gatewayId) => `${prefix}.gw.${gatewayId}.dropped`,
  };
}

// A gateway that dies without cleaning up leaves its queue; the broker removes it after this long unused.
const GATEWAY_QUEUE_EXPIRES_MS = 60_000;
// What the dropped-deliveries queue keeps: it only tells the node that some were dropped, and how many.
const DROPPED_MAX_LENGTH = 1000;
const DROPPED_MAX_BYTES = 16 * 1024 * 1024;

/**
 * Declares the shared topology. Idempotent: every process runs it on every (re)connect, whoever is first
 * creates, the others confirm.
 */
export async function declareTopology(channel: Channel, names: TopologyNames): Promise<void> {
  await channel.assertExchange(names.events, 'topic', { durable: true });
  await channel.assertExchange(names.membership, 'topic', { durable: true });
  await channel.assertExchange(names.deliveries, 'topic', { durable: true });
  await channel.assertExchange(names.dlx, 'fanout', { durable: true });
  await channel.assertQueue(names.dead, { durable: true });
  await channel.bindQueue(names.dead, names.dlx, '');
  await channel.assertQueue(names.resolver, {
    durable: true,
    // A message a resolver rejects without requeue (a poison message) lands in the dead-letter queue.
    arguments: { 'x-dead-letter-exchange': names.dlx },
  });
  await channel.bindQueue(names.resolver, names.events, '#');
  // Membership changes need an order (an add then a remove of the same pair must end removed), which
  // competing consumers cannot keep: with two resolvers 181 of 300 add/remove pairs ended as members. So
  // they have a queue of their own that only one resolver at a time consumes.
  await channel.assertQueue(names.memberships, {
    durable: true,
    arguments: { 'x-single-active-consumer': true, 'x-dead-letter-exchange': names.dlx },
  });
  await channel.bindQueue(names.memberships, names.membership, '#');
  // No consumer: a message expires (its own `expiration`) and goes back to the resolver queue by the
  // default exchange. Expiry happens at the head only, so one with a longer wait ahead of it waits too.
  await channel.assertQueue(names.resolverRetry, {
    durable: true,
    arguments: { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': names.resolver },
  });
  // Installations from before that queue routed membership changes to the resolver queue.
  await channel.unbindQueue(names.resolver, names.membership, '#');
}

/**
 * `declareTopology` on a channel of its own, closed afterwards whatever happened (a failed declaration
 * closes the channel with an error event: reported by the rejection instead).
 */
export async function declareTopologyOn(model: ChannelModel, names: TopologyNames): Promise<void> {
  const channel = await model.createChannel();
  channel.on('error', () => {});
  try {
    await declareTopology(channel, names);
  } finally {
    await channel.close().catch(() => {});
  }
}

/**
 * Checks, declaring nothing, that an exchange exists (a passive declare needs no permission): for a client
 * whose account may only publish. Rejects with a message that says what to do when it is missing.
 */
export async function checkExchangeOn(model: ChannelModel, exchange: string): Promise<void> {
  const channel = await model.createChannel();
  channel.on('error', () => {});
  try {
    await channel.checkExchange(exchange);
  } catch (error) {
    throw new Error(
      `exchange ${exchange} does not exist: start a Warren gateway or resolver (they declare it), or check the prefix (${errorMessage(error)})`,
      { cause: error },
    );
  } finally {
    await channel.close().catch(() => {});
  }
}

interface GatewayQueueOptions {
  /** Deliveries it holds ready; past that the oldest are dropped (gateway.queueMaxLength). */
  maxLength: number;
  /** Dropped deliveries go there (`gatewayDropped`), declared here first. */
  dropped: string;
  /** The node's own key for node-routed deliveries. */
  nodeBinding?: { exchange: string; key: string };
}

/**
 * A gateway node's own queue: not exclusive, so deliveries that arrive during a broker blip wait for it.
 * Bounded, so that an orphaned or stalled node's queue cannot take the broker's memory: the oldest
 * deliveries go first, dead-lettered to the node's dropped-deliveries queue so that the node can tell its
 * tabs instead of losing them silently.
 */
export async function declareGatewayQueue(
  channel: Channel,
  queue: string,
  options: GatewayQueueOptions,
): Promise<void> {
  await declareDroppedQueue(channel, options.dropped);
  await channel.assertQueue(queue, {
    durable: false,
    exclusive: false,
    autoDelete: false,
    arguments: {
      'x-expires': GATEWAY_QUEUE_EXPIRES_MS,
      'x-max-length': options.maxLength,
      'x-overflow': 'drop-head',
      'x-dead-letter-exchange': '',
      'x-dead-letter-routing-key': options.dropped,
    },
  });
  if (options.nodeBinding)
    await channel.bindQueue(queue, options.nodeBinding.exchange, options.nodeBinding.key);
}

/** A node's dropped-deliveries queue (`gatewayDropped`), which its queue dead-letters to. */
export async function declareDroppedQueue(channel: Channel, dropped: string): Promise<void> {
  await channel.assertQueue(dropped, {
    durable: false,
    exclusive: false,
    autoDelete: false,
    arguments: {
      'x-expires': GATEWAY_QUEUE_EXPIRES_MS,
      'x-max-length': DROPPED_MAX_LENGTH,
      'x-max-length-bytes': DROPPED_MAX_BYTES,
      'x-overflow': 'drop-head',
    },
  });
}

/** Whether an AMQP error is the broker's 404: the queue or exchange named does not exist. */
export function isNotFound(error: unknown): boolean {
  return (error as { code?: unknown } | null)?.code === 404;
}

/**
 * How many consumers read a queue, undefined when there is no such queue (asked on a channel of its own:
 * the broker closes a channel that asks for none).
 */
export async function queueConsumers(model: ChannelModel, queue: string): Promise<number | undefined> {
  const channel = await model.createChannel();
  channel.on('error', () => {});
  try {
    const { consumerCount } = await channel.checkQueue(queue);
    await channel.close();
    return consumerCount;
  } catch (error) {
    if (isNotFound(error)) return undefined;
    await channel.close().catch(() => {});
    throw error;
  }
}

/** Whether a queue exists. */
export async function queueExists(model: ChannelModel, queue: string): Promise<boolean> {
  return (await queueConsumers(model, queue)) !== undefined;
}
