import type { Channel, ChannelModel } from 'amqplib';
import type { QueueType } from '../config/schema.js';
import { errorMessage } from '../shared/errors.js';
import { explainMismatch, queueMismatch, QueueMismatchError, type SharedQueues } from './queue-mismatch.js';

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
/**
 * Its records of drops (`.dropped`, `.dropped.lost`) outlive it: a node away about that long could otherwise
 * find its queue still there (so nothing lost with it) and its records of what that queue dropped gone.
 */
const GATEWAY_RECORDS_EXPIRE_MS = 2 * GATEWAY_QUEUE_EXPIRES_MS;
// What the dropped-deliveries queue keeps: it only tells the node that some were dropped, and how many.
const DROPPED_MAX_LENGTH = 1000;
const DROPPED_MAX_BYTES = 16 * 1024 * 1024;

/**
 * What a quorum queue Warren consumes is declared with. Two reasons to set one at all: RabbitMQ 4 limits
 * deliveries to 20 by default (then drops or dead-letters the message), and Warren requeues events and
 * membership changes for as long as Redis or the deliveries exchange is away; and RabbitMQ 3.10 puts a
 * message requeued to a quorum queue without a limit at the back (measured), where the membership queue's
 * order and the resolver's retries need it at the head, as classic queues do. Large enough never to be
 * reached by those (a requeue every half second for 5 days): Warren dead-letters what keeps failing itself
 * (`resolve_failed`). A lower `delivery-limit` policy takes precedence (the smaller of the two applies).
 */
export const QUORUM_DELIVERY_LIMIT = 1_000_000;

/**
 * Arguments of a shared durable queue of the configured type. The type is always said, classic too (which
 * RabbitMQ 3.10 takes as equivalent to a queue declared without it, as Warren's were before): on a broker
 * whose default queue type is quorum, a classic configuration then stays classic.
 */
function sharedArguments(
  queueType: QueueType,
  consumed: boolean,
  args: Record<string, unknown>,
): Record<string, unknown> {
  if (queueType === 'classic') return { ...args, 'x-queue-type': 'classic' };
  return {
    ...args,
    'x-queue-type': 'quorum',
    ...(consumed ? { 'x-delivery-limit': QUORUM_DELIVERY_LIMIT } : {}),
  };
}

/** Declares a shared durable queue; a queue there of another type or arguments is said in words. */
async function assertShared(
  channel: Channel,
  queue: string,
  queueType: QueueType,
  options: { consumed: boolean; shared: SharedQueues; arguments?: Record<string, unknown> },
): Promise<void> {
  const args = sharedArguments(queueType, options.consumed, options.arguments ?? {});
  try {
    await channel.assertQueue(queue, { durable: true, arguments: args });
  } catch (error) {
    throw queueMismatch(error, queueType, args, options.shared) ?? error;
  }
}

/** How the shared topology is declared (rabbitmq.queueType, the publisher SDK's `queueType`). */
export interface TopologyOptions {
  queueType: QueueType;
}

/**
 * Declares the shared topology. Idempotent: every process runs it on every (re)connect, whoever is first
 * creates, the others confirm. A shared queue that exists as another type (or with other arguments) rejects
 * with WARREN_ERR_TOPOLOGY_MISMATCH, which start-up does not retry.
 */
export async function declareTopology(
  channel: Channel,
  names: TopologyNames,
  { queueType }: TopologyOptions,
): Promise<void> {
  const shared = { consumed: [names.resolver, names.memberships, names.resolverRetry], dead: names.dead };
  await channel.assertExchange(names.events, 'topic', { durable: true });
  await channel.assertExchange(names.membership, 'topic', { durable: true });
  await channel.assertExchange(names.deliveries, 'topic', { durable: true });
  await channel.assertExchange(names.dlx, 'fanout', { durable: true });
  await assertShared(channel, names.dead, queueType, { consumed: false, shared });
  await channel.bindQueue(names.dead, names.dlx, '');
  await assertShared(channel, names.resolver, queueType, {
    consumed: true,
    shared,
    // A message a resolver rejects without requeue (a poison message) lands in the dead-letter queue.
    arguments: { 'x-dead-letter-exchange': names.dlx },
  });
  await channel.bindQueue(names.resolver, names.events, '#');
  // Membership changes need an order (an add then a remove of the same pair must end removed), which
  // competing consumers cannot keep: with two resolvers 181 of 300 add/remove pairs ended as members. So
  // they have a queue of their own that only one resolver at a time consumes.
  await assertShared(channel, names.memberships, queueType, {
    consumed: true,
    shared,
    arguments: { 'x-single-active-consumer': true, 'x-dead-letter-exchange': names.dlx },
  });
  await channel.bindQueue(names.memberships, names.membership, '#');
  // No consumer: a message expires (its own `expiration`) and goes back to the resolver queue by the
  // default exchange. Expiry happens at the head only, so one with a longer wait ahead of it waits too
  // (quorum queues alike, from RabbitMQ 3.10, which added message TTL to them).
  await assertShared(channel, names.resolverRetry, queueType, {
    consumed: false,
    shared,
    arguments: { 'x-dead-letter-exchange': '', 'x-dead-letter-routing-key': names.resolver },
  });
  // Installations from before that queue routed membership changes to the resolver queue.
  await channel.unbindQueue(names.resolver, names.membership, '#');
}

/**
 * `declareTopology` on a channel of its own, closed afterwards whatever happened (a failed declaration
 * closes the channel with an error event: reported by the rejection instead). A shared queue that exists
 * otherwise is described in full: its type, and every argument that differs.
 */
export async function declareTopologyOn(
  model: ChannelModel,
  names: TopologyNames,
  options: TopologyOptions,
): Promise<void> {
  const channel = await model.createChannel();
  channel.on('error', () => {});
  try {
    await declareTopology(channel, names, options);
  } catch (error) {
    // The broker names one difference, not always the type: asked until it says what the queue is.
    throw error instanceof QueueMismatchError ? await explainMismatch(model, error) : error;
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

/**
 * Where a node's dropped-deliveries queue puts the records it drops itself when full (`<dropped>.lost`):
 * one there means the node no longer knows whom every lost delivery was for.
 */
export const lostQueueOf = (dropped: string): string => `${dropped}.lost`;

/**
 * A node's dropped-deliveries queue (`gatewayDropped`), which its queue dead-letters to, and its own
 * overflow's (`lostQueueOf`), declared first: one message at most, the newest (only that there was one
 * counts).
 */
export async function declareDroppedQueue(channel: Channel, dropped: string): Promise<void> {
  const lost = lostQueueOf(dropped);
  await channel.assertQueue(lost, {
    durable: false,
    exclusive: false,
    autoDelete: false,
    arguments: { 'x-expires': GATEWAY_RECORDS_EXPIRE_MS, 'x-max-length': 1, 'x-overflow': 'drop-head' },
  });
  await channel.assertQueue(dropped, {
    durable: false,
    exclusive: false,
    autoDelete: false,
    arguments: {
      'x-expires': GATEWAY_RECORDS_EXPIRE_MS,
      'x-max-length': DROPPED_MAX_LENGTH,
      'x-max-length-bytes': DROPPED_MAX_BYTES,
      'x-overflow': 'drop-head',
      'x-dead-letter-exchange': '',
      'x-dead-letter-routing-key': lost,
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
  return (await passiveCheck(model, (channel) => channel.checkQueue(queue)))?.consumerCount;
}

/** Whether a queue exists. */
export async function queueExists(model: ChannelModel, queue: string): Promise<boolean> {
  return (await queueConsumers(model, queue)) !== undefined;
}

/** Whether an exchange exists. */
export async function exchangeExists(model: ChannelModel, exchange: string): Promise<boolean> {
  return (await passiveCheck(model, (channel) => channel.checkExchange(exchange))) !== undefined;
}

/**
 * A passive declaration's answer, or undefined when what it names does not exist: on a channel of its own,
 * as the broker closes the channel with that 404. Other errors are thrown, not taken for "missing".
 */
async function passiveCheck<T>(
  model: ChannelModel,
  check: (channel: Channel) => Promise<T>,
): Promise<T | undefined> {
  const channel = await model.createChannel();
  channel.on('error', () => {});
  try {
    const answer = await check(channel);
    await channel.close();
    return answer;
  } catch (error) {
    if (isNotFound(error)) return undefined;
    await channel.close().catch(() => {});
    throw error;
  }
}
