import type { Redis } from 'ioredis';
import type { BrokerConnection } from '../../broker/connection.js';
import { queueConsumers } from '../../broker/topology.js';
import { amqpUrl, NAME_PATTERN, QUEUE_TYPES, redisUrl, type QueueType } from '../../config/schema.js';
import { withoutCredentials } from '../../shared/errors.js';
import { withTimeout } from '../../shared/lifecycle.js';
import type { Logger } from '../../shared/logger.js';

// The publisher SDK's options: what they are, how they are checked, and the warning `connect` may give.

export interface PublisherOptions {
  /** Default `amqp://guest:guest@127.0.0.1:5672`. */
  rabbitmqUrl?: string;
  /** Default `redis://127.0.0.1:6379`; ignored when `redis` is given. */
  redisUrl?: string;
  /**
   * An ioredis client of yours to use (and not close). Without `keyPrefix`: Warren names its keys itself
   * (see `prefix`), and some of them are built inside its scripts, where ioredis would not prefix them.
   */
  redis?: Redis;
  /**
   * Redis for claim-checked payloads, when the installation keeps them on a server of their own (its
   * `WARREN_CLAIM_CHECK_REDIS_URL`). Default: the same Redis as everything else. Ignored when
   * `payloadRedis` is given.
   */
  payloadRedisUrl?: string;
  /** An ioredis client of yours for the payloads (not closed by `close`), without `keyPrefix`. */
  payloadRedis?: Redis;
  /** Must match the installation's `WARREN_PREFIX`. Default `warren`. */
  prefix?: string;
  /**
   * Declare Warren's exchanges and queues on connect, as gateways and resolvers do. Default true. Set false
   * for a service account that may only publish (RabbitMQ write on `<prefix>.events`, nothing else: see
   * "Broker permissions" in the README); `connect` then only checks that `<prefix>.events` exists.
   */
  declareTopology?: boolean;
  /**
   * Type of the shared durable queues it declares, as the installation's `WARREN_RABBITMQ_QUEUE_TYPE`:
   * `quorum` on a clustered RabbitMQ. Default `classic`. A queue that exists as the other type makes
   * `connect` reject at once with `WARREN_ERR_TOPOLOGY_MISMATCH`. Unused with `declareTopology: false`.
   */
  queueType?: QueueType;
  /** Payloads larger than this (serialised `data`, bytes) are put in Redis first. Default 16384. */
  claimCheckBytes?: number;
  /** Lifetime of such payloads in Redis; must cover the time to deliver the event. Default 3600 s. */
  claimCheckTtlSec?: number;
  /**
   * How long `publishEvent` waits for a lost broker connection to come back, before it sends or, when the
   * connection was lost before the broker confirmed the event, sends it again. Default 10 s.
   */
  publishTimeoutMs?: number;
  /**
   * How long `connect` tries to reach RabbitMQ before it rejects (`WARREN_ERR_BROKER_UNAVAILABLE`, with the
   * last attempt's error: refused, wrong credentials…). Default 30,000.
   */
  connectTimeoutMs?: number;
  /**
   * How long `publishEvent` waits for the broker's confirm (a broker under a memory or disk alarm confirms
   * nothing until it clears); then it rejects with WARREN_ERR_TIMEOUT, and publishing the event again is
   * safe (tabs show each id once). Also how long it waits for the broker to declare the topology again
   * after an event no queue took (then WARREN_ERR_UNROUTABLE, retryable). Default 30,000.
   */
  confirmTimeoutMs?: number;
  /**
   * How long a call that needs Redis (a membership change, a payload put, `publishEvent` of a large
   * payload) waits for it before it rejects with WARREN_ERR_TIMEOUT; the change may still be applied, and
   * applying it again is safe. Default 10,000.
   */
  redisTimeoutMs?: number;
  /**
   * A Redis connection of the SDK's own that sends nothing back for this long while commands wait on it is
   * made again (as `redis.socketTimeoutMs` on the servers). 0 = wait for the system to give it up. Default
   * 30,000. Not for a client of yours (`redis`, `payloadRedis`): its settings are yours.
   */
  redisSocketTimeoutMs?: number;
  logger?: Logger;
}

/** The longest delay a Node timer takes; a longer one (or Infinity) fires after 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Says so when no resolver reads the queue events go to. Declaring the topology, the SDK made the queue
 * itself if it was missing: with a `prefix` other than the servers' WARREN_PREFIX, events would wait there
 * for good, every publish confirmed. Also said when the SDK starts before any resolver, which is then
 * true (events wait until one starts). Without a logger of the caller's, it is a process warning (code
 * `WARREN_NO_RESOLVER`), so that it is seen at all. Not said when the broker does not answer the question
 * within `withinMs` (what is left of `connectTimeoutMs`): a connection that went silent right after it was
 * set up would otherwise hold `connect` until the heartbeat gave it up (for good with heartbeat=0).
 */
export async function warnIfUnread(
  broker: BrokerConnection,
  queue: string,
  prefix: string,
  logger: Logger,
  { processWarning, withinMs }: { processWarning: boolean; withinMs: number },
): Promise<void> {
  const model = broker.model;
  const readers =
    model &&
    (await withTimeout(
      queueConsumers(model, queue),
      Math.max(0, withinMs),
      'asking whether a resolver reads',
    ).catch(() => undefined));
  if (readers !== 0) return;
  const message =
    `no resolver reads ${queue}: published events wait there until one does ` +
    `(if Warren is running, its WARREN_PREFIX is not this publisher's prefix "${prefix}")`;
  logger.warn({ queue }, message);
  if (processWarning) process.emitWarning(message, { code: 'WARREN_NO_RESOLVER' });
}

/** Every problem with the numeric options (and the prefix and queue type), so that a bad one is not taken for a timeout of 1 ms. */
export function badOptions(options: PublisherOptions): string[] {
  const bad: string[] = [];
  const check = (name: keyof PublisherOptions, min: number, max = MAX_TIMER_MS): void => {
    const value = options[name];
    if (value !== undefined && !(Number.isInteger(value) && Number(value) >= min && Number(value) <= max))
      bad.push(`${name} must be a whole number from ${min} to ${max} (got ${String(value)})`);
  };
  check('claimCheckBytes', 0, Number.MAX_SAFE_INTEGER);
  check('claimCheckTtlSec', 1, MAX_TIMER_MS);
  // 0: publish at once or fail, without waiting for a lost connection to come back.
  check('publishTimeoutMs', 0);
  for (const name of ['connectTimeoutMs', 'confirmTimeoutMs', 'redisTimeoutMs'] as const) check(name, 1);
  // Under a second, a healthy connection waiting on an ordinary command would be dropped again and again.
  if (options.redisSocketTimeoutMs !== 0) check('redisSocketTimeoutMs', 1000);
  const { prefix, queueType } = options;
  if (queueType !== undefined && !(QUEUE_TYPES as readonly unknown[]).includes(queueType))
    bad.push(
      `queueType must be ${QUEUE_TYPES.join(' or ')}, as WARREN_RABBITMQ_QUEUE_TYPE (got ${JSON.stringify(queueType)})`,
    );
  // As WARREN_PREFIX: it is part of every exchange, queue and Redis key (a `:` or brace would move keys
  // out of the tenant's hash slot, a `.` out of the routing-key layout).
  if (prefix !== undefined && !(typeof prefix === 'string' && NAME_PATTERN.test(prefix)))
    bad.push(`prefix must match ${String(NAME_PATTERN)}, as WARREN_PREFIX (got ${JSON.stringify(prefix)})`);
  return bad;
}

/**
 * What is wrong with the URLs, as the servers' configuration would say it (WARREN_ERR_CONFIG, as a broker
 * URL that does not parse always was). A Redis path that is no database number made ioredis select NaN
 * after `connect` had rejected, an unhandled rejection that ended the caller's process; a URL of another
 * scheme was tried until connectTimeoutMs, or taken for a socket path.
 */
export function badUrls(options: PublisherOptions): string[] {
  const bad: string[] = [];
  const urls = [
    ['rabbitmqUrl', amqpUrl],
    // Not one a client of the caller's stands in for: it is not used.
    ...(options.redis ? [] : [['redisUrl', redisUrl] as const]),
    ...(options.payloadRedis ? [] : [['payloadRedisUrl', redisUrl] as const]),
  ] as const;
  for (const [name, schema] of urls) {
    const value = options[name];
    const result = value === undefined ? undefined : schema.safeParse(value);
    if (result && !result.success)
      bad.push(
        `${name} ${result.error.issues.map((issue) => issue.message).join('; ')} ` +
          `(got ${JSON.stringify(typeof value === 'string' ? withoutCredentials(value) : value)})`,
      );
  }
  return bad;
}
