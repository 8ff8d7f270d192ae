import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { BrokerConnection, refusedForGood } from '../../broker/connection.js';
import { exchangeMissing, lostBeforeConfirm, Publisher } from '../../broker/publisher.js';
import {
  checkExchangeOn,
  declareTopologyOn,
  topologyNames,
  type TopologyNames,
} from '../../broker/topology.js';
import { DEFAULTS } from '../../config/schema.js';
import {
  describeIssues,
  membershipChangeSchema,
  modelEventSchema,
  type MembershipChange as ParsedMembershipChange,
  type MembershipChangeInput,
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
import { badOptions, badUrls, warnIfUnread, type PublisherOptions } from './options.js';
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
export const MAX_INLINE_EVENT_BYTES = DEFAULTS.resolverMaxMessageBytes;
/** Room left in an inline event for what the broker adds to it. */
const INLINE_HEADROOM_BYTES = 64;

export type { MembershipChangeInput, ModelEvent, Revocation };
/**
 * A membership change as Warren holds it once parsed, with its `kind`: `applyMembership` refuses that
 * field.
 *
 * @deprecated Write changes as `MembershipChangeInput`.
 */
export type MembershipChange = ParsedMembershipChange;
export type { PublisherOptions } from './options.js';
export type { QueueType } from '../../config/schema.js';
export { ErrorCode, WarrenError } from '../../shared/errors.js';

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
        | 'queueType'
      >
    >,
    private readonly logger: Logger,
  ) {}

  static async connect(options: PublisherOptions = {}): Promise<WarrenPublisher> {
    const logger = options.logger ?? silentLogger();
    const bad = badOptions(options);
    if (bad.length > 0) throw new TypeError(`WarrenPublisher.connect: ${bad.join('; ')}`);
    const urls = badUrls(options);
    if (urls.length > 0)
      throw new WarrenError(ErrorCode.Config, `WarrenPublisher.connect: ${urls.join('; ')}`);
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
    const queueType = options.queueType ?? DEFAULTS.queueType;
    const names = topologyNames(prefix);
    const keys = new Keys(prefix);
    const ownRedis: Redis[] = [];
    const redis = options.redis
      ? withWarrenCommands(options.redis)
      : await createRedis({
          url: options.redisUrl ?? DEFAULTS.redisUrl,
          name: 'warren-publisher',
          urlSetting: 'the `redisUrl` option',
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
          urlSetting: 'the `payloadRedisUrl` option',
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
        : declareTopologyOn(model, names, { queueType }),
    );
    await publisher.start();
    const connectTimeoutMs = options.connectTimeoutMs ?? 30_000;
    const deadline = Date.now() + connectTimeoutMs;
    try {
      await broker.start({ timeoutMs: connectTimeoutMs, giveUpOn: refusedForGood });
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
      await warnIfUnread(broker, names.resolver, prefix, logger, {
        processWarning: !options.logger,
        withinMs: deadline - Date.now(),
      });
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
        queueType,
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
    const body = Buffer.from(await this.eventBody(envelope, data));
    const send = () =>
      this.confirmed((waitForConnectionMs) =>
        this.publisher.publish(this.names.events, `${envelope.tenantId}.${envelope.type}`, body, {
          contentType: 'application/json',
          messageId: envelope.id,
          persistent: true,
          // The broker confirms an event it routed nowhere (the resolver queue deleted): told, not lost.
          mandatory: true,
          waitForConnectionMs,
          confirmTimeoutMs: this.settings.confirmTimeoutMs,
          failIfBlocked: true,
        }),
      );
    try {
      await send();
    } catch (error) {
      // The events exchange deleted: the broker closes the channel (404) instead of returning the event, and
      // every later publish fails the same way until something declares it again.
      const exchangeGone = this.settings.declareTopology && exchangeMissing(error, this.names.events);
      if (!isWarrenError(error, ErrorCode.Unroutable) && !exchangeGone) throw error;
      await this.declareAgain(error);
      // It reached no queue, so sending it once more is not a repeat.
      await send();
    }
  }

  /**
   * A publish, made again when its connection is lost before the broker confirmed it (a broker restart, a
   * network drop), as a publish made while the connection is down waits for it: within `publishTimeoutMs`
   * of the loss. The broker may have had it, so the gateways may get it twice; tabs show each id once.
   */
  private async confirmed(publish: (waitForConnectionMs: number) => Promise<void>): Promise<void> {
    let waitMs = this.settings.publishTimeoutMs;
    let resendUntil: number | undefined;
    for (;;) {
      try {
        return await publish(waitMs);
      } catch (error) {
        if (!lostBeforeConfirm(error) || this.closing) throw error;
        resendUntil ??= Date.now() + this.settings.publishTimeoutMs;
        waitMs = resendUntil - Date.now();
        if (waitMs <= 0) throw error;
      }
    }
  }

  /** The event as published: its data inline, or put in Redis first and named by its job id. */
  private async eventBody(envelope: Omit<ModelEvent, 'data'>, data: unknown): Promise<string> {
    const body = JSON.stringify(envelope);
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
    if (serialised === undefined) return body;
    const bytes = Buffer.byteLength(serialised);
    if (
      bytes <= this.settings.claimCheckBytes &&
      bytes + body.length <= MAX_INLINE_EVENT_BYTES - INLINE_HEADROOM_BYTES
    )
      // Spliced in rather than serialised a second time along with the envelope.
      return `${body.slice(0, -1)},"data":${serialised}}`;
    // Not stored for an event that cannot be published now: a caller retrying through an outage would
    // leave a copy per attempt in Redis for the TTL.
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
    return JSON.stringify({ ...envelope, jobId });
  }

  /**
   * After an event no queue (or no exchange) took: the topology declared again, as on connect, or why it
   * cannot be.
   */
  private async declareAgain(unroutable: WarrenError): Promise<void> {
    const model = this.broker.model;
    if (!this.settings.declareTopology || !model)
      throw new WarrenError(
        ErrorCode.Unroutable,
        `no queue took the event: ${this.names.resolver} is missing or not bound to ${this.names.events} ` +
          '(a resolver, or a publisher connected with declareTopology, declares it)',
        { cause: unroutable, retryable: true },
      );
    try {
      // Bounded as a confirm is: a broker that stopped answering (a resource alarm, a connection gone
      // silent) would otherwise hold the call until the heartbeat gave the connection up.
      await withTimeout(
        declareTopologyOn(model, this.names, { queueType: this.settings.queueType }),
        this.settings.confirmTimeoutMs,
        `declaring ${this.names.resolver} again`,
      );
    } catch (cause) {
      throw new WarrenError(
        ErrorCode.Unroutable,
        `no queue took the event, and declaring ${this.names.resolver} again failed: ${errorMessage(cause)}`,
        // A queue declared with other arguments, or a refused permission, stays so; a lost connection not.
        {
          cause,
          retryable:
            !isWarrenError(cause, ErrorCode.TopologyMismatch) && !/\b(403|406)\b/.test(errorMessage(cause)),
        },
      );
    }
  }

  /**
   * Throws what a publish would now (closed, the broker blocking publishers, no channel within
   * `publishTimeoutMs`) before anything is stored for it.
   */
  private async publishable(): Promise<void> {
    this.assertOpen();
    await this.publisher.whenPublishable(this.settings.publishTimeoutMs);
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

  /**
   * Applies a membership change (`{ op, tenantId }` and two of `userId`, `teamId`, `groupId`); resolves once
   * no resolver can use the old membership any more, with true when it changed the membership and false
   * when it already was so. Rejects with WARREN_ERR_INVALID_MEMBERSHIP, every problem listed, before
   * writing anything if the change is malformed.
   */
  async applyMembership(change: MembershipChangeInput): Promise<boolean> {
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
      await this.confirmed((waitForConnectionMs) =>
        this.controlPublisher().publish(this.names.deliveries, userKey(tenantId, userId), Buffer.alloc(0), {
          headers: {
            [DeliveryHeader.Control]: ControlMessage.Revoke,
            [DeliveryHeader.Tenant]: tenantId,
            // Every token: an instant past any `iat` (a header cannot carry Infinity).
            [DeliveryHeader.RevokedAt]: Number.isFinite(revocation.revokedAt)
              ? revocation.revokedAt
              : Number.MAX_SAFE_INTEGER,
          },
          waitForConnectionMs,
          confirmTimeoutMs: this.settings.confirmTimeoutMs,
          failIfBlocked: true,
        }),
      );
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
  private controlPublisher(): Publisher {
    if (this.controls) return this.controls;
    const controls = new Publisher(this.broker, this.logger);
    this.controls = controls;
    // Not waited for: on a connection that stopped answering, opening the channel waits until the heartbeat
    // gives the connection up (about 30 s; for good with heartbeat=0). The publish waits for the channel
    // within publishTimeoutMs instead, as after a reconnect, and the next connection opens it again.
    controls
      .start()
      .catch((error: unknown) =>
        this.logger.warn({ err: errorMessage(error) }, 'cannot open the revocation notices’ channel'),
      );
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
