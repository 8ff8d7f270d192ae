import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { BrokerConnection, refusedForGood } from '../../broker/connection.js';
import { Publisher } from '../../broker/publisher.js';
import {
  checkExchangeOn,
  declareTopologyOn,
  queueConsumers,
  topologyNames,
  type TopologyNames,
} from '../../broker/topology.js';
import { DEFAULTS, NAME_PATTERN } from '../../config/schema.js';
import {
  describeIssues,
  membershipChangeSchema,
  modelEventSchema,
  type MembershipChange,
  type ModelEvent,
} from '../../protocol/schemas.js';
import { ControlMessage, DeliveryHeader } from '../../protocol/delivery.js';
import { isValidId, userKey } from '../../protocol/ids.js';
import { ErrorCode, errorMessage, isWarrenError, WarrenError } from '../../shared/errors.js';
import { withTimeout } from '../../shared/lifecycle.js';
import { silentLogger, type Logger } from '../../shared/logger.js';
import { Keys } from '../../store/keys.js';
import { MembershipStore } from '../../store/membership-store.js';
import { PayloadStore } from '../../store/payload-store.js';
import {
  DEFAULT_REVOCATION_TTL_SEC,
  RevocationStore,
  type Revocation,
} from '../../store/revocation-store.js';
import {
  closeRedis,
  createPayloadRedis,
  createRedis,
  refusedByRedis,
  withWarrenCommands,
} from '../../store/redis.js';

/**
 * The resolver's own limit on a message (`resolver.maxMessageBytes`, 16 MiB by default): an event's data
 * that would make it larger is claim-checked whatever `claimCheckBytes` says, or the resolver would
 * dead-letter it unread.
 */
export const MAX_INLINE_EVENT_BYTES = 16 * 1024 * 1024;

export type { MembershipChange, ModelEvent, Revocation };
export { ErrorCode, WarrenError } from '../../shared/errors.js';

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
  /** Payloads larger than this (serialised `data`, bytes) are put in Redis first. Default 16384. */
  claimCheckBytes?: number;
  /** Lifetime of such payloads in Redis; must cover the time to deliver the event. Default 3600 s. */
  claimCheckTtlSec?: number;
  /** How long `publishEvent` waits for a lost broker connection to come back. Default 10 s. */
  publishTimeoutMs?: number;
  /**
   * How long `connect` tries to reach RabbitMQ before it rejects (`WARREN_ERR_BROKER_UNAVAILABLE`, with the
   * last attempt's error: refused, wrong credentials…). Default 30,000.
   */
  connectTimeoutMs?: number;
  /**
   * How long `publishEvent` waits for the broker's confirm (a broker under a memory or disk alarm confirms
   * nothing until it clears); then it rejects with WARREN_ERR_TIMEOUT, and publishing the event again is
   * safe (tabs show each id once). Default 30,000.
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
 * `WARREN_NO_RESOLVER`), so that it is seen at all.
 */
async function warnIfUnread(
  broker: BrokerConnection,
  queue: string,
  prefix: string,
  logger: Logger,
  processWarning: boolean,
): Promise<void> {
  const model = broker.model;
  const readers = model && (await queueConsumers(model, queue).catch(() => undefined));
  if (readers !== 0) return;
  const message =
    `no resolver reads ${queue}: published events wait there until one does ` +
    `(if Warren is running, its WARREN_PREFIX is not this publisher's prefix "${prefix}")`;
  logger.warn({ queue }, message);
  if (processWarning) process.emitWarning(message, { code: 'WARREN_NO_RESOLVER' });
}

/** Every problem with the numeric options (and the prefix), so that a bad one is not taken for a timeout of 1 ms. */
function badOptions(options: PublisherOptions): string[] {
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
  // As WARREN_PREFIX: it is part of every exchange, queue and Redis key (a `:` or brace would move keys
  // out of the tenant's hash slot, a `.` out of the routing-key layout).
  const { prefix } = options;
  if (prefix !== undefined && !(typeof prefix === 'string' && NAME_PATTERN.test(prefix)))
    bad.push(`prefix must match ${String(NAME_PATTERN)}, as WARREN_PREFIX (got ${JSON.stringify(prefix)})`);
  return bad;
}

/** An event as a service writes it; `data` is any JSON value. */
export type EventInput = Omit<ModelEvent, 'data' | 'jobId'> & { data?: unknown; jobId?: string };

/**
 * The SDK services use to talk to Warren: publish model events and manage memberships.
 *
 * ```ts
 * const warren = await WarrenPublisher.connect({ rabbitmqUrl, redisUrl });
 * await warren.addUserToTeam('acme', 'u42', 'icu');
 * await warren.publishEvent({ id: 'evt_1', tenantId: 'acme', type: 'message.created',
 *   audience: { teams: ['icu'] }, data: { text: 'hello' } });
 * ```
 */
export class WarrenPublisher {
  private closing: Promise<void> | undefined;
  /**
   * Revocation notices go to `<prefix>.deliveries` on a confirm channel of their own: an account that may
   * not write there has that channel closed, not the one events are published on. Opened at first use.
   */
  private controls: Publisher | undefined;
  /** Keys a payload's job id to its event: a retry of the same event overwrites its copy (`jobIdFor`). */
  private readonly jobSecret = randomBytes(32);

  private constructor(
    private readonly broker: BrokerConnection,
    private readonly publisher: Publisher,
    /** The Redis clients this publisher made, and closes. */
    private readonly ownRedis: Redis[],
    private readonly names: TopologyNames,
    private readonly members: MembershipStore,
    private readonly payloads: PayloadStore,
    private readonly revocations: RevocationStore,
    private readonly settings: Required<
      Pick<
        PublisherOptions,
        | 'claimCheckBytes'
        | 'claimCheckTtlSec'
        | 'publishTimeoutMs'
        | 'confirmTimeoutMs'
        | 'redisTimeoutMs'
        | 'declareTopology'
      >
    >,
    private readonly logger: Logger,
  ) {}

  static async connect(options: PublisherOptions = {}): Promise<WarrenPublisher> {
    const logger = options.logger ?? silentLogger();
    const bad = badOptions(options);
    if (bad.length > 0) throw new TypeError(`WarrenPublisher.connect: ${bad.join('; ')}`);
    for (const name of ['redis', 'payloadRedis'] as const) {
      const keyPrefix = options[name]?.options.keyPrefix;
      if (!keyPrefix) continue;
      // Half of a membership change would land under the client's prefix and half outside it, where
      // resolvers read: a user could get another user's bit, and a removal would silently do nothing. A
      // payload would land where no gateway looks.
      throw new TypeError(
        `WarrenPublisher.connect: the \`${name}\` client given has keyPrefix "${keyPrefix}"; pass one ` +
          'without it (Warren prefixes its own keys: set the `prefix` option to match WARREN_PREFIX instead)',
      );
    }
    const prefix = options.prefix ?? DEFAULTS.prefix;
    const names = topologyNames(prefix);
    const keys = new Keys(prefix);
    const ownRedis: Redis[] = [];
    const redis = options.redis
      ? withWarrenCommands(options.redis)
      : await createRedis({
          url: options.redisUrl ?? DEFAULTS.redisUrl,
          name: 'warren-publisher',
          logger,
          socketTimeoutMs: options.redisSocketTimeoutMs,
          connectTimeoutMs: options.connectTimeoutMs ?? 30_000,
        });
    if (!options.redis) ownRedis.push(redis);
    let payloadRedis: Redis = options.payloadRedis ?? redis;
    /** The payloads' server of their own, through a client made here (not one of the caller's). */
    let ownPayloadServer = false;
    if (!options.payloadRedis && options.payloadRedisUrl !== undefined) {
      try {
        payloadRedis = await createPayloadRedis({
          url: options.payloadRedisUrl,
          name: 'warren-publisher-payloads',
          logger,
          socketTimeoutMs: options.redisSocketTimeoutMs,
          connectTimeoutMs: options.connectTimeoutMs ?? 30_000,
        });
      } catch (error) {
        for (const client of ownRedis) client.disconnect();
        throw error;
      }
      ownRedis.push(payloadRedis);
      ownPayloadServer = true;
    }
    const broker = new BrokerConnection(
      {
        url: options.rabbitmqUrl ?? DEFAULTS.rabbitmqUrl,
        frameMax: DEFAULTS.frameMax,
        heartbeatSec: DEFAULTS.heartbeatSec,
        reconnectBaseMs: DEFAULTS.reconnectBaseMs,
        reconnectCapMs: DEFAULTS.reconnectCapMs,
        // An attempt outliving the give-up would keep the process alive (its socket) after the rejection.
        connectTimeoutMs: Math.min(DEFAULTS.connectTimeoutMs, options.connectTimeoutMs ?? Infinity),
        connectionName: 'warren-publisher',
      },
      logger,
    );
    const publisher = new Publisher(broker, logger);
    await broker.onConnect((model) =>
      options.declareTopology === false
        ? checkExchangeOn(model, names.events)
        : declareTopologyOn(model, names),
    );
    await publisher.start();
    try {
      await broker.start({ timeoutMs: options.connectTimeoutMs ?? 30_000, giveUpOn: refusedForGood });
    } catch (error) {
      // Nothing left behind: no channel being reopened, and the Redis client this made closed too.
      await publisher.close();
      for (const client of ownRedis) client.disconnect();
      // Declaring the topology was refused: most likely an account meant only to publish.
      if (
        options.declareTopology !== false &&
        isWarrenError(error) &&
        /ACCESS.REFUSED - (configure )?access to (exchange|queue)/.test(error.message)
      ) {
        throw new WarrenError(
          error.code,
          `${error.message} (an account that may only publish: connect with declareTopology: false)`,
          // Waiting does not mend a permission (an operator may, and a later connect then succeeds).
          { cause: error, retryable: false },
        );
      }
      throw error;
    }
    if (options.declareTopology !== false)
      await warnIfUnread(broker, names.resolver, prefix, logger, !options.logger);
    return new WarrenPublisher(
      broker,
      publisher,
      ownRedis,
      names,
      new MembershipStore(redis, keys),
      // On a server of their own (payloadRedisUrl), payload commands fail at once while it is away
      // (PayloadStore's `own`). Not for a client of the caller's, which may connect lazily, on first use.
      new PayloadStore(payloadRedis, keys, ownPayloadServer),
      new RevocationStore(redis, keys),
      {
        claimCheckBytes: options.claimCheckBytes ?? DEFAULTS.claimCheckBytes,
        claimCheckTtlSec: options.claimCheckTtlSec ?? DEFAULTS.claimCheckTtlSec,
        publishTimeoutMs: options.publishTimeoutMs ?? 10_000,
        confirmTimeoutMs: options.confirmTimeoutMs ?? 30_000,
        redisTimeoutMs: options.redisTimeoutMs ?? 10_000,
        declareTopology: options.declareTopology !== false,
      },
      logger,
    );
  }

  /** Every call after `close()` is refused the same way, whatever it would have used. */
  private assertOpen(): void {
    if (this.closing) throw new WarrenError(ErrorCode.Closed, 'the publisher is closed');
  }

  /**
   * A Redis call bounded by `redisTimeoutMs` (a Redis that takes the connection but never answers), its
   * failure told with a code: closed meanwhile, refused by Redis for good (`retryable: false`), or Redis
   * unavailable (`retryable: true`).
   */
  private async bounded<T>(call: Promise<T>, what: string): Promise<T> {
    try {
      return await withTimeout(call, this.settings.redisTimeoutMs, what);
    } catch (error) {
      if (isWarrenError(error)) throw error;
      if (this.closing)
        throw new WarrenError(ErrorCode.Closed, `the publisher was closed while ${what}`, { cause: error });
      if (refusedByRedis(error))
        throw new WarrenError(ErrorCode.RedisRefused, `Redis refused ${what}: ${errorMessage(error)}`, {
          cause: error,
        });
      throw new WarrenError(ErrorCode.RedisUnavailable, `${what} failed: ${errorMessage(error)}`, {
        cause: error,
        retryable: true,
      });
    }
  }

  /**
   * Validates the event, puts a payload larger than `claimCheckBytes` in Redis first (the event then
   * carries only its job id, and no delivery on the broker carries the payload), and resolves once the
   * broker has confirmed the event. Rejects with WARREN_ERR_INVALID_EVENT before sending anything if the
   * event is malformed.
   */
  async publishEvent(input: EventInput): Promise<void> {
    this.assertOpen();
    const result = modelEventSchema.safeParse(input);
    if (!result.success) {
      throw new WarrenError(ErrorCode.InvalidEvent, `invalid event: ${describeIssues(result.error)}`);
    }
    const { data, ...envelope } = result.data;
    let body = JSON.stringify(envelope);
    // Undefined for `undefined` or a bare function: then the event has no data, as JSON would say.
    let serialised: string | undefined;
    try {
      serialised = data === undefined ? undefined : (JSON.stringify(data) as string | undefined);
    } catch (error) {
      // A BigInt, a cycle, a toJSON that throws: the caller's event, not a broken SDK.
      throw new WarrenError(
        ErrorCode.InvalidEvent,
        `invalid event: data: not serialisable as JSON (${errorMessage(error)})`,
      );
    }
    if (serialised !== undefined) {
      const bytes = Buffer.byteLength(serialised);
      if (bytes > this.settings.claimCheckBytes || bytes + body.length > MAX_INLINE_EVENT_BYTES - 64) {
        // Not stored for an event that cannot be published now: a caller retrying through an outage
        // would leave a copy per attempt in Redis for the TTL.
        await this.publishable();
        const payload = Buffer.from(serialised);
        const jobId = await this.bounded(
          this.payloads.put(
            envelope.tenantId,
            payload,
            this.settings.claimCheckTtlSec,
            // The same for a retry of this event: its copy is overwritten, not stored once more.
            PayloadStore.jobIdFor(this.jobSecret, envelope.tenantId, envelope.id, payload),
          ),
          'storing the payload in Redis',
        );
        body = JSON.stringify({ ...envelope, jobId });
      } else {
        // Spliced in rather than serialised a second time along with the envelope.
        body = `${body.slice(0, -1)},"data":${serialised}}`;
      }
    }
    const send = () =>
      this.publisher.publish(this.names.events, `${envelope.tenantId}.${envelope.type}`, Buffer.from(body), {
        contentType: 'application/json',
        messageId: envelope.id,
        persistent: true,
        // The broker confirms an event it routed nowhere (the resolver queue deleted): told, not lost.
        mandatory: true,
        waitForConnectionMs: this.settings.publishTimeoutMs,
        confirmTimeoutMs: this.settings.confirmTimeoutMs,
        failIfBlocked: true,
      });
    try {
      await send();
    } catch (error) {
      if (!isWarrenError(error, ErrorCode.Unroutable)) throw error;
      const model = this.broker.model;
      if (!this.settings.declareTopology || !model)
        throw new WarrenError(
          ErrorCode.Unroutable,
          `no queue took the event: ${this.names.resolver} is missing or not bound to ${this.names.events} ` +
            '(a resolver, or a publisher connected with declareTopology, declares it)',
          { cause: error, retryable: true },
        );
      // Declared again, as on connect, and sent once more: it reached no queue, so it is not a repeat.
      try {
        await declareTopologyOn(model, this.names);
      } catch (cause) {
        throw new WarrenError(
          ErrorCode.Unroutable,
          `no queue took the event, and declaring ${this.names.resolver} again failed: ${errorMessage(cause)}`,
          // A queue declared with other arguments, or a refused permission, stays so; a lost connection not.
          { cause, retryable: !/\b(403|406)\b/.test(errorMessage(cause)) },
        );
      }
      await send();
    }
  }

  /**
   * Throws what a publish would now (closed, the broker blocking publishers, no channel within
   * `publishTimeoutMs`) before anything is stored for it.
   */
  private async publishable(): Promise<void> {
    this.assertOpen();
    const blocked = this.broker.blocked;
    if (blocked !== undefined)
      throw new WarrenError(
        ErrorCode.BrokerUnavailable,
        `the broker is not taking messages (${blocked}): try again later`,
        { retryable: true },
      );
    if (await this.publisher.readyWithin(this.settings.publishTimeoutMs)) return;
    this.assertOpen();
    throw new WarrenError(ErrorCode.BrokerUnavailable, 'not connected to the broker', { retryable: true });
  }

  /**
   * Stores a payload for a later event ("jobless" publishing): publish an event with `jobId` set to the
   * returned id instead of `data`. The payload lives `claimCheckTtlSec` (or `ttlSec`), scoped to the
   * tenant: an event of another tenant naming the id is dead-lettered as `job_not_found`. Choose a
   * lifetime that covers the time until the event is published plus its delivery.
   */
  async putPayload(tenantId: string, data: unknown, options: { ttlSec?: number } = {}): Promise<string> {
    this.assertOpen();
    if (!isValidId(tenantId))
      throw new WarrenError(ErrorCode.InvalidId, `invalid tenant id: ${String(tenantId)}`);
    const ttlSec = options.ttlSec ?? this.settings.claimCheckTtlSec;
    if (!Number.isInteger(ttlSec) || ttlSec <= 0)
      throw new WarrenError(ErrorCode.Config, `ttlSec must be a positive integer, got ${ttlSec}`);
    let serialised: string | undefined;
    try {
      serialised = JSON.stringify(data ?? null) as string | undefined;
    } catch (error) {
      throw new WarrenError(
        ErrorCode.InvalidEvent,
        `payload: not serialisable as JSON (${errorMessage(error)})`,
      );
    }
    // A bare function or symbol: JSON has nothing for it, and the tab would get null.
    if (serialised === undefined)
      throw new WarrenError(ErrorCode.InvalidEvent, `payload: a ${typeof data} is not a JSON value`);
    return this.bounded(this.payloads.put(tenantId, serialised, ttlSec), 'storing the payload in Redis');
  }

  /** Applies a membership change; resolves once no resolver can use the old membership any more. */
  async applyMembership(change: unknown): Promise<boolean> {
    this.assertOpen();
    const result = membershipChangeSchema.safeParse(change);
    if (!result.success) {
      throw new WarrenError(
        ErrorCode.InvalidMembership,
        `invalid membership change: ${describeIssues(result.error)}`,
      );
    }
    // Refused by Redis if it arrives after this call gives up: never applied later, behind changes made
    // meanwhile (see `applyWithin`).
    return this.bounded(
      this.members.applyWithin(result.data, this.settings.redisTimeoutMs),
      'applying the membership change in Redis',
    );
  }

  addUserToTeam(tenantId: string, userId: string, teamId: string): Promise<boolean> {
    return this.applyMembership({ op: 'add', tenantId, userId, teamId });
  }

  removeUserFromTeam(tenantId: string, userId: string, teamId: string): Promise<boolean> {
    return this.applyMembership({ op: 'remove', tenantId, userId, teamId });
  }

  addUserToGroup(tenantId: string, userId: string, groupId: string): Promise<boolean> {
    return this.applyMembership({ op: 'add', tenantId, userId, groupId });
  }

  removeUserFromGroup(tenantId: string, userId: string, groupId: string): Promise<boolean> {
    return this.applyMembership({ op: 'remove', tenantId, userId, groupId });
  }

  addTeamToGroup(tenantId: string, teamId: string, groupId: string): Promise<boolean> {
    return this.applyMembership({ op: 'add', tenantId, groupId, teamId });
  }

  removeTeamFromGroup(tenantId: string, teamId: string, groupId: string): Promise<boolean> {
    return this.applyMembership({ op: 'remove', tenantId, groupId, teamId });
  }

  /**
   * Revokes the user's tokens issued up to now: every gateway closes the user's open tabs with 4001
   * (`token revoked`), and tabs opening with such a token are closed the same way before their welcome,
   * for `ttlSec` (default 86,400: make it at least your tokens' longest lifetime). A token issued later is
   * accepted, and on 4001 the client asks `getToken` for one: your token endpoint decides whether the user
   * comes back. Tokens without `iat` are refused while the revocation lasts. Resolves once the revocation
   * is stored and the broker has confirmed the gateways' message, with the revocation in force: a
   * revocation stored earlier with a later instant or a longer lifetime keeps them.
   */
  async revokeUser(tenantId: string, userId: string, options: { ttlSec?: number } = {}): Promise<Revocation> {
    this.assertOpen();
    if (!isValidId(tenantId))
      throw new WarrenError(ErrorCode.InvalidId, `invalid tenant id: ${String(tenantId)}`);
    if (!isValidId(userId)) throw new WarrenError(ErrorCode.InvalidId, `invalid user id: ${String(userId)}`);
    const ttlSec = options.ttlSec ?? DEFAULT_REVOCATION_TTL_SEC;
    if (!Number.isInteger(ttlSec) || ttlSec <= 0)
      throw new WarrenError(ErrorCode.Config, `ttlSec must be a positive integer, got ${ttlSec}`);
    // Stored first: a tab whose user key is bound after this reads it; one bound before gets the message.
    const revocation = await this.bounded(
      this.revocations.revoke(tenantId, userId, ttlSec),
      'storing the revocation in Redis',
    );
    // By the user's own key, which every gateway holding the user has bound, whatever the routing mode.
    try {
      await (
        await this.controlPublisher()
      ).publish(this.names.deliveries, userKey(tenantId, userId), Buffer.alloc(0), {
        headers: {
          [DeliveryHeader.Control]: ControlMessage.Revoke,
          [DeliveryHeader.Tenant]: tenantId,
          // Every token: an instant past any `iat` (a header cannot carry Infinity).
          [DeliveryHeader.RevokedAt]: Number.isFinite(revocation.revokedAt)
            ? revocation.revokedAt
            : Number.MAX_SAFE_INTEGER,
        },
        waitForConnectionMs: this.settings.publishTimeoutMs,
        confirmTimeoutMs: this.settings.confirmTimeoutMs,
        failIfBlocked: true,
      });
    } catch (error) {
      // Refused for good: the account's permission (a routing key or exchange it may not write to).
      const refused = isWarrenError(error, ErrorCode.PublishRejected) && !error.retryable;
      const closed = isWarrenError(error, ErrorCode.Closed);
      throw new WarrenError(
        isWarrenError(error) ? error.code : ErrorCode.BrokerUnavailable,
        `the revocation is stored (new connections are refused) but the gateways were not told, so open ` +
          `tabs stay open: ` +
          (refused
            ? `the broker account must be allowed to write to ${this.names.deliveries} (see "Broker permissions")`
            : closed
              ? 'the publisher was closed first; revoke again from one that is open, which is safe'
              : 'revoke again, which is safe') +
          ` (${errorMessage(error)})`,
        { cause: error, retryable: !refused && !closed },
      );
    }
    return revocation;
  }

  /** The revocation notices' publisher (see `controls`), started on first use. */
  private async controlPublisher(): Promise<Publisher> {
    if (this.controls) return this.controls;
    const controls = new Publisher(this.broker, this.logger);
    this.controls = controls;
    await controls.start();
    return controls;
  }

  /** Waits for outstanding confirms, then closes what this publisher opened. A second call waits for the first. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      // Its listener off a Redis client of the caller's, which outlives this publisher.
      this.members.close();
      await Promise.all([this.publisher.close(), this.controls?.close()]);
      await this.broker.close();
      await Promise.all(this.ownRedis.map((client) => closeRedis(client)));
    })();
    return this.closing;
  }
}
