import { randomBytes } from 'node:crypto';
import type { TemplatedApp } from 'uWebSockets.js';
import { BindingPool } from '../broker/binding-pool.js';
import { BrokerConnection, refusedForGood } from '../broker/connection.js';
import { Consumer } from '../broker/consumer.js';
import { Publisher } from '../broker/publisher.js';
import {
  declareDroppedQueue,
  declareGatewayQueue,
  declareTopology,
  declareTopologyOn,
  exchangeExists,
  lostQueueOf,
  queueConsumers,
  queueExists,
  topologyNames,
} from '../broker/topology.js';
import { HANDOFF_CLOSE_CHECK_MS } from '../config/load.js';
import type { WarrenConfig } from '../config/schema.js';
import { CloseCode } from '../protocol/close-codes.js';
import { ID_MAP_UNSETTLED, isProbe } from '../protocol/delivery.js';
import { nodeKey, parseUserKey } from '../protocol/ids.js';
import { Keys } from '../store/keys.js';
import { LIVENESS_POLL_MS, PresenceStore } from '../store/presence-store.js';
import { RevocationStore } from '../store/revocation-store.js';
import { closeRedis, createRedisClients, redisReady, watchServer, type ServerWatch } from '../store/redis.js';
import { ErrorCode, errorMessage, WarrenError } from '../shared/errors.js';
import { OpsHttp } from '../shared/ops-http.js';
import { CloseOnce, fulfilsWithin, runSteps, sleep, withTimeout, type Step } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { createRegistry, type Registry } from '../shared/metrics.js';
import { BindingCheck } from './binding-check.js';
import { BlockingTokenVerifier } from './blocking-verifier.js';
import { DeliveryRouter, type UserTarget } from './delivery-router.js';
import { DropNotices, dropReasonOf } from './drop-notices.js';
import { eventsMissedFrame } from './frames.js';
import { GatewayMetrics } from './gateway-metrics.js';
import { DeliveryHistory } from './history.js';
import { PayloadFetcher } from './payload-fetcher.js';
import { RecentDeliveries } from './recent-deliveries.js';
import { ConnectionRegistry } from './registry.js';
import { endIfRevoked, type Tab } from './tab.js';
import { NodeOwnership } from './node-ownership.js';
import { isReady, WsServer, type Readiness } from './ws-server.js';

// Deliveries dropped for the id map are told to the tabs in one notice per this long at most.
const ID_MAP_NOTICE_MS = 5000;
/**
 * Reads of the revocations a node may have missed, each given so long, before it closes its tabs instead
 * (with the waits between them, about 14 s at most).
 */
const REVOCATION_READ_ATTEMPTS = 5;
/** Each read is given this long, plus REVOCATION_READ_MS_PER_USER for each user held (about 4 µs each here). */
const REVOCATION_READ_TIMEOUT_MS = 2000;
const REVOCATION_READ_MS_PER_USER = 0.02;
/** While the node's queue overflows, every revocation is read again at most this often. */
const REVOCATION_REREAD_MS = 5000;
// A start-up refused after it connected closes what it opened within this long.
const STARTUP_CLEANUP_MS = 5000;
// The dropped-deliveries queue is read for a count only; one notice to the tabs covers the drops of this
// long.
const DROPPED_PREFETCH = 100;
const DROPPED_NOTICE_MS = 200;
/**
 * How long a probe is given to come through the node's queue before a moved tab's close; the drain's
 * configuration rule leaves room for it (config/load.ts).
 */
const QUEUE_PROBE_TIMEOUT_MS = HANDOFF_CLOSE_CHECK_MS;

export interface GatewayOptions {
  logger: Logger;
  /** Extra HTTP routes (used by `warren dev` for the demo page). */
  routes?: (app: TemplatedApp) => void;
  /**
   * Called when the node stops on its own: another process started with its fixed `gateway.id` while it was
   * cut off from the broker. It has stopped reading the queue (the other process's now) and closed its tabs
   * (4100); `close()` it and exit. Without it, the node stays up with no tabs and not ready.
   */
  onFatal?: (error: WarrenError) => void;
}

/** A running gateway node. */
export interface Gateway {
  readonly nodeId: string;
  readonly port: number;
  /** The port of `/metrics` when served on one of its own (`gateway.metricsPort`). */
  readonly metricsPort: number | undefined;
  readonly queue: string;
  readonly metrics: Registry;
  /** Open tabs on this node. */
  readonly connections: number;
  /** Stop accepting, close tabs with 4100 over the drain window, unbind, delete the queue. */
  drain(): Promise<void>;
  /** Drain (if not done) then close every connection. Idempotent and bounded by drainTimeoutMs. */
  close(): Promise<void>;
}

/** Whether `host` listens on the loopback interface only. */
function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^(::ffff:)?127\./.test(host);
}

/** Starts a gateway node: connects to Redis and RabbitMQ, then listens. */
export async function startGateway(
  config: Readonly<WarrenConfig>,
  options: GatewayOptions,
): Promise<Gateway> {
  const g = config.gateway;
  const nodeId = g.id ?? randomBytes(6).toString('hex');
  const logger = options.logger.child({ component: 'gateway', nodeId });
  const names = topologyNames(config.prefix);
  const shared = { queueType: config.rabbitmq.queueType };
  const queue = names.gatewayQueue(nodeId);
  const droppedQueue = names.gatewayDropped(nodeId);
  const lostQueue = lostQueueOf(droppedQueue);
  const keys = new Keys(config.prefix);

  const metricsRegistry = createRegistry({ node: nodeId });
  const metrics = new GatewayMetrics(metricsRegistry);
  const verifier = await BlockingTokenVerifier.start(config.jwt, logger);
  // Payloads on a Redis of their own when one is named: their megabytes then never queue ahead of the
  // presence and membership commands on the same server.
  let clients: Awaited<ReturnType<typeof createRedisClients>>;
  try {
    clients = await createRedisClients({
      url: config.redis.url,
      payloadUrl: config.claimCheck.redisUrl,
      urlSetting: 'redis.url (WARREN_REDIS_URL)',
      name: `warren-gateway-${nodeId}`,
      logger,
      socketTimeoutMs: config.redis.socketTimeoutMs,
      autoPipelining: true,
    });
  } catch (error) {
    // Nothing of a failed start left running in a process that goes on (a library user's); the error
    // reported is the one that stopped it.
    await verifier.close().catch(() => {});
    throw error;
  }
  const { redis, payloadRedis } = clients;
  const presence = new PresenceStore(redis, keys);
  const revocations = new RevocationStore(redis, keys);
  const broker = new BrokerConnection(
    { ...config.rabbitmq, connectionName: `warren-gateway-${nodeId}` },
    logger.child({ part: 'broker' }),
  );
  const pool = new BindingPool(
    broker,
    g.bindChannels,
    { onBind: () => metrics.binds.inc(), onUnbind: () => metrics.unbinds.inc() },
    logger,
  );
  /** Who holds a fixed id: this process until another starts with it (see NodeOwnership). */
  const ownership =
    g.id === undefined
      ? undefined
      : new NodeOwnership(redis, [keys.nodeOwner(nodeId), keys.nodeOwnerGeneration(nodeId)], logger);
  const supersededError = new WarrenError(
    ErrorCode.Config,
    `gateway.id ${nodeId}: another process started with this id while this one was cut off from the ` +
      `broker and reads ${queue} now; this one closes its tabs (4100) and stops (give each process an id of its own, or none)`,
  );
  /** Set once another process holds the id: the queue is not read again. */
  let superseded = false;
  /** While starting, fails start-up; once the server exists, closes the tabs and tells `onFatal`. */
  let stopSuperseded = (): void => refuseStart(supersededError);
  /** Found that another process holds the id: the node stops (start-up fails, if it was starting). */
  const idLost = (): void => {
    superseded = true;
    stopSuperseded();
  };
  /**
   * Whether this process still holds its id (always, for a random one); when not, the node stops. A check
   * Redis answers too late stops it then (NodeOwnership.held).
   */
  const holdsId = async (): Promise<boolean> => {
    if (!ownership) return true;
    if (!superseded && (await ownership.held(idLost))) return true;
    idLost();
    return false;
  };
  const registry = new ConnectionRegistry<Tab>(
    // Once another process holds the id, its queue's bindings and the id's presence are that process's:
    // nothing here touches them (closing this node's tabs would take its users offline there).
    {
      bind: async (key) => (superseded ? undefined : pool.bind(queue, names.deliveries, key)),
      unbind: async (key) => (superseded ? undefined : pool.unbind(queue, names.deliveries, key)),
    },
    {
      online: async (tenantId, userIds) => {
        // Failed, as with Redis away: the registry tries again later, by then this node is closed.
        if (superseded) throw supersededError;
        return presence.online(nodeId, tenantId, userIds);
      },
      offline: async (tenantId, bit) => (superseded ? undefined : presence.offline(nodeId, tenantId, bit)),
    },
    g.unbindGraceMs,
    { onUsersChanged: (n) => metrics.usersHeld.set(n) },
    logger,
  );
  const history = new DeliveryHistory(
    // New with every start (a node of a fixed id starts its offsets again), and random: a start time in it
    // would tell every tab when the node started.
    `${nodeId}.${randomBytes(6).toString('hex')}`,
    g.historyEvents,
    g.historyBytes,
    undefined,
    g.resumeWindowMs,
  );
  const payloads = new PayloadFetcher(payloadRedis ?? redis, keys, {
    maxBytes: g.payloadCacheBytes,
    onFetch: () => metrics.payloadFetches.inc(),
    timeoutMs: g.payloadFetchTimeoutMs,
  });
  /** The Redis server this node reads and announces on (set once presence starts). */
  const redisServer: { watch?: ServerWatch } = {};
  /**
   * False from a Redis server change until this node has announced its users on the new server: its bits
   * may then be the old server's, and no node-routed delivery can be decoded against them.
   */
  let bitsCurrent = true;
  let warnedUnstamped = false;
  const router = new DeliveryRouter(
    registry,
    new RecentDeliveries(g.dedupKeys),
    history,
    payloads,
    metrics,
    logger,
    g.lineLimit,
    {
      accepts: (stamp) => {
        const { watch } = redisServer;
        // Before presence starts the node holds no user: there is nothing to decode.
        if (!watch) return true;
        if (!bitsCurrent || !watch.settled || stamp === ID_MAP_UNSETTLED) return false;
        // This node cannot read INFO: nothing to compare with.
        if (watch.stamp === undefined) return true;
        if (stamp === undefined && !warnedUnstamped) {
          // Its resolver cannot (INFO refused to its Redis user): its bits may be another server's, and
          // this node cannot tell, so they are not decoded. Said once; every drop is counted.
          warnedUnstamped = true;
          logger.error(
            'node-routed deliveries arrive without the id-map stamp (can every resolver run INFO on Redis?); dropped',
          );
        }
        return stamp === watch.stamp;
      },
      dropped: () => {
        metrics.dropped.inc({ reason: 'id_map_changed' });
        idMapNotices.record('id_map_changed');
      },
    },
  );
  /**
   * The node missed deliveries while tabs were connected (deliveries it never received, so no offset and no
   * history shows the hole): no resume may reach back across it, and every open tab is told to
   * resynchronise from the application.
   */
  /** `users`: only their tabs are told (undefined: every tab). */
  const eventsMissed = (why: string, counted = why, users?: ReadonlySet<string>): void => {
    // Lost deliveries none of whose recipients is held here (they left since, or it was no event): no
    // tab missed anything, and no resume need be refused.
    if (users?.size === 0) {
      logger.warn(`${counted}; none was for a user held here`);
      return;
    }
    // Only those users' tenants: another tenant's count stepping over the gap would tell its users when
    // this node lost deliveries of someone else's.
    history.markGap(users && [...users].flatMap((key) => parseUserKey(key)?.tenantId ?? []));
    // Tabs not welcomed yet get a welcome offset past the gap.
    const tabs = registry.allTabs().filter((tab) => tab.ready && (users === undefined || users.has(tab.key)));
    // At the gap's offset in each tenant's own count.
    const frames = new Map<string, Buffer>();
    for (const tab of tabs) {
      let frame = frames.get(tab.tenantId);
      if (frame === undefined) {
        frame = Buffer.from(
          eventsMissedFrame(
            `${why}; events may have been missed: resynchronise`,
            history.offset(tab.tenantId),
          ),
        );
        frames.set(tab.tenantId, frame);
      }
      // Behind what the writer still holds back for the tab: the notice does not overtake it. (Claim-checked
      // events still being read for the user come after it; the client keeps the highest offset it saw.)
      router.writeTo(tab, [frame]);
    }
    logger.warn({ tabs: tabs.length }, `${counted}; tabs told to resynchronise`);
  };
  /**
   * Closes every tab here whose token a revocation in Redis covers: for when the node may have missed a
   * revocation's message (its queue lost, or messages dropped while it was away). Read again on failure; if Redis cannot answer,
   * the tabs are closed (1013: they reconnect, and are checked then) rather than written to unchecked.
   */
  const closeRevoked = async (): Promise<void> => {
    for (let attempt = 1; ; attempt += 1) {
      const tabs = registry.allTabs().filter((tab) => !tab.closed);
      const users = [...new Map(tabs.map((tab) => [tab.key, tab])).values()];
      try {
        // Bounded: while it runs every tab of the node waits (the client's own retries would take minutes).
        const read = await withTimeout(
          revocations.revokedAtMany(users),
          REVOCATION_READ_TIMEOUT_MS + users.length * REVOCATION_READ_MS_PER_USER,
          'reading revocations',
        );
        const at = new Map(read.map((t, i) => [users[i]?.key, t]));
        let closed = 0;
        for (const tab of tabs) if (endIfRevoked(tab, at.get(tab.key))) closed += 1;
        if (closed > 0) logger.info({ tabs: closed }, 'tabs closed: their user’s tokens were revoked');
        return;
      } catch (error) {
        if (attempt >= REVOCATION_READ_ATTEMPTS) {
          logger.error(
            { err: errorMessage(error), tabs: tabs.length },
            'cannot read revocations the node may have missed; closing its tabs (1013) rather than write to them unchecked',
          );
          for (const tab of tabs) tab.end(1013, 'try again later');
          return;
        }
        logger.warn({ err: errorMessage(error), attempt }, 'cannot read revocations; trying again');
        await sleep(250 * 2 ** (attempt - 1));
      }
    }
  };
  /**
   * Deliveries held back since the queue was declared again (a reconnect: its messages may have been
   * dropped while the node was away, a revocation's among them; or the queue was lost), until the
   * revocations are read.
   */
  let pausedForRecovery = false;
  /**
   * Declarations of the queue since the first: a read that began before the latest must not end the
   * pause (what the latest reconnect may have missed is read by the rebind that follows it).
   */
  let recoveries = 0;
  let queueDeclared = false;
  /** Stops start-up with what a connect found that no retry can mend. */
  let refuseStart: (error: Error) => void = () => {};
  const startRefused = new Promise<never>((_, reject) => (refuseStart = reject));
  startRefused.catch(() => {});
  /**
   * Times the queue was found lost, and the latest loss after which every held key was bound again and
   * the tabs told, by the rebind started after it (an earlier one finishing first must not tell them while
   * the latest is still binding). A queue that outlived a drop still has every binding confirmed before
   * it: binding thousands of keys again would keep the node unready for seconds, for nothing.
   */
  let queueLosses = 0;
  let lossesRebound = 0;
  /** What the latest loss was: told to the tabs with `events_missed`. */
  let lossWhy = 'the node queue was lost';
  /**
   * Set when the binding check found the node's bindings gone while its queue stayed (the deliveries
   * exchange deleted): the consumer is set up again, declaring the exchange, and every key bound again.
   */
  let bindingsLost = false;
  /**
   * Revocations whose message the node may have missed (dropped from its full queue while it was away, or
   * lost with the queue): read from Redis now that every key is bound (one written after this read comes
   * as a message), before anything more is written to its tabs.
   */
  const readMissedRevocations = async (losses: number, recovery: number): Promise<void> => {
    const current = (): boolean => pausedForRecovery && losses === queueLosses && recovery === recoveries;
    if (!current()) return;
    await closeRevoked();
    if (!current()) return;
    pausedForRecovery = false;
    router.resume();
  };
  /** Returns whether the held keys were bound again. */
  const rebind = async (): Promise<boolean> => {
    const losses = queueLosses;
    const recovery = recoveries;
    const keysLost = losses !== lossesRebound;
    await registry.rebindAll(keysLost);
    // Told once, by the rebind of the latest loss (an earlier one finishing first must not).
    if (keysLost && losses === queueLosses) {
      lossesRebound = losses;
      eventsMissed(lossWhy);
    }
    await readMissedRevocations(losses, recovery);
    return keysLost;
  };
  const consumer = new Consumer(
    broker,
    {
      queue,
      prefetch: g.prefetch,
      // Bound before consuming: node-routed deliveries reach the node by its own key.
      prepare: async (channel, model) => {
        // A fixed id (gateway.id) may find the queue of an earlier process of that id, still bound with
        // its users' keys: nothing here would ever unbind them. The node starts from an empty queue.
        if (!queueDeclared && g.id !== undefined) {
          const readers = await queueConsumers(model, queue);
          // Read by a live process (one that died is no reader once the broker sees its connection gone):
          // taking its queue would split its deliveries between the two, its tabs missing half unawares.
          // Start-up stops: retried, this would take the queue the moment that process's reader blinks.
          if (readers !== undefined && readers > 0) {
            const error = new WarrenError(
              ErrorCode.Config,
              `gateway.id ${g.id}: a running gateway of that id reads ${queue}; each process needs an id of its own (or none)`,
            );
            refuseStart(error);
            throw error;
          }
          if (readers !== undefined) await channel.deleteQueue(queue);
          // What that process's queue dropped is not this one's to report (a queue that is not there is
          // no error to delete).
          await channel.deleteQueue(droppedQueue);
          await channel.deleteQueue(lostQueue);
          await ownership?.claim();
        }
        // Back after a drop, the id may be another process's: the queue is its, and so is the presence.
        if (queueDeclared && !(await holdsId())) throw supersededError;
        // Gone since the last declaration (deleted, expired during a long outage, a broker restart): what
        // was routed to it meanwhile is lost. The first declaration of the process has nothing to lose.
        if (queueDeclared) {
          recoveries += 1;
          // Nothing more is written to tabs before the revocations sent meanwhile are read (rebind).
          if (!pausedForRecovery) {
            pausedForRecovery = true;
            router.pause();
          }
        }
        const unbound = bindingsLost;
        // The exchange may be gone too: its node key is bound below.
        if (unbound) await declareTopology(channel, names, shared);
        // A queue that outlived a drop keeps its node key bound, unless the exchange was deleted meanwhile
        // (and maybe declared again): bound again here, that would hide the loss from the probe the
        // reconnect sends (below), and the node would never bind its users' keys again.
        let bindNodeKey = !queueDeclared || unbound;
        if (queueDeclared) {
          // A probe may also have found the bindings gone with the queue itself: told as what it was.
          const queueLost = !(await queueExists(model, queue));
          if (queueLost || unbound) {
            queueLosses += 1;
            lossWhy = queueLost ? 'the node queue was lost' : 'the node’s bindings were lost';
          }
          bindNodeKey ||= queueLost;
          if (unbound) bindingsLost = false;
        }
        await declareGatewayQueue(channel, queue, {
          maxLength: g.queueMaxLength,
          dropped: droppedQueue,
          ...(bindNodeKey ? { nodeBinding: { exchange: names.deliveries, key: nodeKey(nodeId) } } : {}),
        });
        queueDeclared = true;
      },
      // The queue may have been deleted under the consumer, and its user bindings with it.
      resubscribed: async () => void (await rebind()),
    },
    (delivery) => router.handle(delivery),
    logger,
  );

  let draining = false;
  /** Set by the drain's last step, after which the node writes nothing more to its presence. */
  let presenceGone = false;
  // Lost deliveries (dropped by the broker from a full queue, or rejected by a handler that threw: both are
  // dead-lettered to the dropped queue) are told to the tabs, a run of them in one notice.
  // Also while draining: its tabs are told to move (`handoff`) and do so without a resync of their own, so
  // what this node lost before they left is said here or nowhere. Not once superseded: the queues, and
  // what they lose, are the other process's.
  const tellTabs = (why: string, counted: string, users: ReadonlySet<string> | undefined): void => {
    if (!superseded) eventsMissed(why, counted, users);
  };
  const dropNotices = new DropNotices(DROPPED_NOTICE_MS, tellTabs);
  /**
   * A revocation whose message the node's full queue dropped: the user it names is read in Redis, and what
   * Redis holds is applied (the message's own headers could be anyone's word; see droppedRevocation).
   */
  const closeRevokedUser = async (user: UserTarget): Promise<void> => {
    try {
      const [at] = await withTimeout(
        revocations.revokedAtMany([user]),
        REVOCATION_READ_TIMEOUT_MS,
        'reading a revocation',
      );
      router.closeRevoked(user.key, at);
    } catch (error) {
      const tabs = [...(registry.entry(user.key)?.tabs ?? [])].filter((tab) => !tab.closed);
      logger.error(
        { err: errorMessage(error), tabs: tabs.length },
        'cannot read a revocation whose message was dropped; closing its user’s tabs (1013) rather than write to them unchecked',
      );
      for (const tab of tabs) tab.end(1013, 'try again later');
    }
  };
  /**
   * The dropped queue holds only so much itself: under sustained overflow a revocation's dead letter may be
   * lost there too. So while drops come, every revocation is read again, at most once per
   * REVOCATION_REREAD_MS, deliveries going on meanwhile (held back, an overflowing node would only fall
   * further behind).
   */
  let rereadTimer: NodeJS.Timeout | undefined;
  let lastReread = Number.NEGATIVE_INFINITY;
  // Also while draining: its tabs are still written to while they move (handoff), for up to
  // drainWindowMs + handoffMs. Not once superseded (it writes to no tab) or closed.
  const rereadRevocations = (): void => {
    if (rereadTimer || superseded || presenceGone) return;
    rereadTimer = setTimeout(
      () => {
        rereadTimer = undefined;
        if (superseded || presenceGone) return;
        lastReread = Date.now();
        void closeRevoked();
      },
      Math.max(0, lastReread + REVOCATION_REREAD_MS - Date.now()),
    );
    rereadTimer.unref();
  };
  // Drops for the id map gathered over a longer window: while a node cannot verify its bits it drops every
  // node-routed delivery, and its tabs are told every few seconds, not five times a second.
  const idMapNotices = new DropNotices(ID_MAP_NOTICE_MS, tellTabs);
  const droppedConsumer = new Consumer(
    broker,
    {
      queue: droppedQueue,
      prefetch: DROPPED_PREFETCH,
      prepare: async (channel) => {
        if (superseded) throw supersededError;
        await declareDroppedQueue(channel, droppedQueue);
      },
    },
    (delivery) => {
      delivery.ack();
      // A binding probe pushed out of the full queue: no event was lost with it.
      if (isProbe(delivery.message.properties.headers)) return;
      const reason = dropReasonOf(delivery.message.properties.headers);
      metrics.dropped.inc({ reason });
      dropNotices.record(reason, router.droppedRecipients(delivery.message.properties.headers ?? {}));
      // It may have been a revocation's message: acted on here, as Redis has it.
      const revoked = router.droppedRevocation(delivery.message.properties.headers ?? {});
      if (revoked) void closeRevokedUser(revoked);
      if (reason === 'queue_full') rereadRevocations();
    },
    logger,
  );
  // The dropped queue full in its turn (the node away through more than 1,000 drops, or 16 MiB of them):
  // whom the records it lost were for is unknown, so every tab is told, and every revocation read again.
  const lostConsumer = new Consumer(
    broker,
    {
      queue: lostQueue,
      prefetch: 1,
      prepare: async (channel) => {
        if (superseded) throw supersededError;
        await declareDroppedQueue(channel, droppedQueue);
      },
    },
    (delivery) => {
      delivery.ack();
      dropNotices.record('queue_full');
      rereadRevocations();
    },
    logger,
  );

  // Order matters on every (re)connect: topology, queue + consumer, bind channels (usable from then on:
  // a tab arriving earlier, after a broker restart, would bind to a queue not declared yet), then re-bind
  // held users.
  await broker.onConnect(async (model) => {
    // Back after a drop, the deliveries exchange gone meanwhile took the node's bindings with it: declared
    // here, it would look as if nothing had happened. Found now, the node binds everything again at once
    // (the probe after the reconnect finds it too, but later, deliveries going nowhere meanwhile).
    if (queueDeclared && !(await exchangeExists(model, names.deliveries))) bindingsLost = true;
    await declareTopologyOn(model, names, shared);
  });
  await consumer.start();
  await pool.start();
  await droppedConsumer.start();
  await lostConsumer.start();
  const probes = new Publisher(broker, logger);
  await probes.start();
  const bindingCheck = new BindingCheck(
    probes,
    {
      exchange: names.deliveries,
      nodeKey: nodeKey(nodeId),
      periodMs: config.presence.heartbeatMs,
      // A recovery under way binds everything again itself.
      skip: () => draining || superseded || pausedForRecovery || !broker.connected,
      lost: (why) => {
        logger.warn(
          { exchange: names.deliveries, why },
          'the node’s bindings are gone (was the exchange deleted?): declaring it and binding every held user again',
        );
        bindingsLost = true;
        consumer.restart('the node’s bindings were lost');
      },
    },
    logger,
  );
  await broker.onConnect(async () => {
    // Back on a queue that outlived the drop (no loss found): its bindings are checked now, not a heartbeat
    // later, as the exchange may have been deleted meanwhile. Found gone, the consumer is set up again
    // (binding everything, and telling the tabs).
    if (recoveries > 0 && queueLosses === lossesRebound && !draining && !superseded)
      await bindingCheck.probe(true);
    const keysHeld = registry.boundKeys().length;
    if ((await rebind()) && keysHeld > 0)
      logger.info({ users: keysHeld }, 're-bound held users after reconnect');
  });
  try {
    await Promise.race([broker.start({ giveUpOn: refusedForGood }), startRefused]);
  } catch (error) {
    // Nothing of the refused start left retrying in the background, nor holding its connections: the
    // connection first (its reconnects stop, its channels end with it), then what used it, bounded.
    await broker.close().catch(() => {});
    await fulfilsWithin(
      Promise.allSettled([
        consumer.close(),
        droppedConsumer.close(),
        lostConsumer.close(),
        pool.close(),
        bindingCheck.close(),
        closeRedis(redis),
        payloadRedis && closeRedis(payloadRedis),
        verifier.close(),
      ]),
      STARTUP_CLEANUP_MS,
    );
    payloads.close();
    history.close();
    throw error;
  }

  let firstBeat = true;
  /**
   * Whether what an earlier process of this id left in the presence is cleared (see below). Until it is,
   * every beat tries again first: left, its users' bits would count them online for as long as this node
   * beats, with no tab anywhere. A random id has no earlier process (clearing late would only take this
   * node's users offline for a beat and tell their tabs `events_missed`).
   */
  let earlierPresenceCleared = g.id === undefined;
  const clearEarlierPresence = async (): Promise<void> => {
    await presence.forgetNode(nodeId);
    earlierPresenceCleared = true;
  };
  let reannounceDue = false;
  /** Why the node's tabs are to be told `events_missed` (resolvers may have counted its users offline). */
  let missedWhy: string | undefined;
  let missedTimer: NodeJS.Timeout | undefined;
  let beating = false;
  /** A beat was asked for while one ran (Redis changed under it): run another when it ends. */
  let beatAgain = false;
  /** Counts Redis server changes: a re-announcement that began before the latest one does not count. */
  let serverGeneration = 0;
  /** `serverGeneration` when the last beat that landed was sent. */
  let beatServerGeneration = 0;
  const startedAt = Date.now();
  /** `again`: if a beat is running, run another after it (the interval's ticks just skip). */
  const beat = async (again = false): Promise<void> => {
    // The drain forgot the node's presence: a beat now would bring it back. Until then it beats, also
    // while its tabs are being closed: silent for longer than the expiry, it would be counted dead and
    // its open tabs would get nothing more.
    if (presenceGone) return;
    // A beat slower than the interval (Redis slow or away) is not overlapped by the next one.
    if (beating) {
      if (again) beatAgain = true;
      return;
    }
    beating = true;
    try {
      // Another process that took the id while this one was cut off from the broker: found here within a
      // beat, before this node writes the id's presence (its closing tabs would take that one's users
      // offline there), whether or not the broker is back.
      if (!(await holdsId())) return;
      // Cleared late, it took this node off the list and its users' bits with it: the beat below finds it
      // unlisted and announces them again.
      if (!earlierPresenceCleared) await clearEarlierPresence();
      // Users with a tab open: those in their unbind grace period are offline, and counted in no tenant.
      const stats = { connections: registry.size, users: registry.connectedUserCount, startedAt };
      const generationBeaten = serverGeneration;
      const { returned: unknown, silentMs } = await presence.heartbeat(
        nodeId,
        stats,
        config.presence.expiryMs,
      );
      // The drain forgot the node's presence meanwhile: nothing more is written for it.
      if (presenceGone) return;
      // Silent for longer than the expiry on Redis's clock (Redis away or slow, the event loop stalled):
      // resolvers stopped counting this node's users as soon as they saw it, swept or not, and resolved
      // events without them.
      const declaredDead = unknown && !firstBeat;
      // Not listed yet, and holding users: the first beat failed (Redis away at start) and tabs came
      // meanwhile. A resolver that built a tenant view then read only the listed nodes' users.
      const unlisted = unknown && firstBeat && registry.userCount > 0;
      if (declaredDead) missedWhy ??= 'this node had been declared dead';
      else if (unlisted) missedWhy ??= 'this node was not yet counted when its users came';
      else if (!firstBeat && silentMs >= config.presence.expiryMs)
        missedWhy ??= `this node could not beat for ${silentMs} ms and may have been counted dead`;
      // The first beat on another server (restarted empty, failed over): unlisted there because that server
      // never had it, not because anyone declared it dead; the change itself is logged where it is seen.
      const onNewServer = beatServerGeneration !== generationBeaten;
      beatServerGeneration = generationBeaten;
      if (declaredDead || unlisted) {
        logger.warn(
          declaredDead && onNewServer
            ? 'this node is not listed on the new Redis server; announcing its users again'
            : declaredDead
              ? 'this node had been declared dead; announcing its users again'
              : 'this node is counted only now; announcing its users again',
        );
        reannounceDue = true;
      }
      firstBeat = false;
      // Until it has succeeded: the next beat finds the node known again and would not ask.
      if (reannounceDue) {
        const generation = serverGeneration;
        await registry.reannounce();
        // Redis changed during it: part of it went to the server that is gone; the next beat does it again.
        if (generation === serverGeneration) reannounceDue = false;
        if (presenceGone) return;
      }
      if (missedWhy !== undefined) {
        const why = missedWhy;
        missedWhy = undefined;
        // Told once every resolver counts the users again (one liveness poll, and the batch in hand):
        // events resolved before that are covered by this resynchronisation too.
        clearTimeout(missedTimer);
        missedTimer = setTimeout(() => {
          if (!superseded) eventsMissed(why);
        }, 2 * LIVENESS_POLL_MS);
        missedTimer.unref();
      }
      const verifying = serverGeneration;
      const wrong = await registry.verifyBits((tenantId, userIds) => presence.bitsOf(tenantId, userIds));
      // Every held bit, those of users in their grace period too, now agrees with the server there is.
      if (!reannounceDue && verifying === serverGeneration) bitsCurrent = true;
      if (wrong.length > 0) {
        logger.error(
          { users: wrong.slice(0, 20), count: wrong.length },
          'id map changed under held users; announced again',
        );
        // Their events went to bits that were no longer theirs until now: told on the next beat, as above.
        missedWhy ??= 'the id map changed under users held here';
      }
      // Presence steps that failed since (Redis away) are done now that Redis answers again.
      registry.repair();
      await presence.sweepDeadNodes(config.presence.expiryMs);
    } catch (error) {
      logger.warn({ err: errorMessage(error) }, 'presence heartbeat failed');
    } finally {
      beating = false;
      if (beatAgain) {
        beatAgain = false;
        void beat();
      }
    }
  };
  // A node started under a fixed id (gateway.id) may follow a process of that id that died holding users
  // less than presence.expiryMs ago: their bits would stay set under a node that beats again, online
  // for good. Its presence starts empty (for a random id there is nothing to clear).
  if (!earlierPresenceCleared)
    try {
      await clearEarlierPresence();
    } catch (error) {
      // Redis away at start: the node is not kept from starting; its readiness reports Redis meanwhile, and
      // its beats try again.
      logger.warn(
        { err: errorMessage(error), nodeId },
        'could not clear an earlier presence of this node id; trying again on every beat',
      );
    }
  await beat();
  const heartbeat = setInterval(() => void beat(), config.presence.heartbeatMs);
  bindingCheck.start();
  // Another Redis server (restart, failover) may lack what this node wrote to the old one (its users'
  // presence, the tenants it announced them in) and may have given a held user's bit to someone else:
  // announce every user again and check every bit now, not a heartbeat later, and tell the tabs.
  redisServer.watch = await watchServer(
    redis,
    () => {
      serverGeneration += 1;
      bitsCurrent = false;
      presence.forgetKnownTenants(nodeId);
      reannounceDue = true;
      missedWhy = 'Redis changed (restart or failover) and may have lost what this node had announced';
      void beat(true);
    },
    logger,
  );
  heartbeat.unref();

  /** `/metrics` and the health checks on a port of their own (`gateway.metricsPort`), once listening. */
  let opsHttp: OpsHttp | undefined;
  const readiness = (): Readiness => ({
    broker: broker.connected,
    redis: redisReady(redis),
    ...(payloadRedis ? { payloadRedis: redisReady(payloadRedis) } : {}),
    tokens: verifier.available,
    consuming: consumer.currentChannel !== undefined && !pausedForRecovery,
    draining,
  });
  /**
   * Whether every delivery routed to the node so far has reached it: a probe published to its own key now
   * comes back through its queue in time (behind them all). No when it does not (the node behind its queue,
   * cut off from the broker, the queue full). Each caller gets a probe sent after its call (a delivery
   * routed before it must count); callers meanwhile share the next one (a drain closes thousands of tabs).
   */
  const probeThroughQueue = async (): Promise<boolean> => {
    if (superseded || !broker.connected) return false;
    const id = randomBytes(9).toString('base64url');
    const arrived = router.whenProbe(id);
    try {
      const sent = bindingCheck.publishProbe({ messageId: id });
      await withTimeout(
        Promise.all([sent, arrived]),
        QUEUE_PROBE_TIMEOUT_MS,
        'a probe through the node queue',
      );
      return true;
    } catch {
      return false;
    } finally {
      router.forgetProbe(id);
    }
  };
  let probing: Promise<boolean> | undefined;
  let nextProbe: Promise<boolean> | undefined;
  const caughtUp = (): Promise<boolean> => {
    if (!probing) {
      probing = probeThroughQueue().finally(() => (probing = undefined));
      return probing;
    }
    nextProbe ??= probing.then(() => {
      nextProbe = undefined;
      return caughtUp();
    });
    return nextProbe;
  };
  /**
   * `caughtUp`, as one wait of at most QUEUE_PROBE_TIMEOUT_MS for each caller: one joining a probe on its
   * way waits for it and then its own, up to twice as long, and a moved client keeps the old connection
   * only a little past the `closeInMs` it was given (the SDK's LEFT_GRACE_MS), then closes it itself:
   * the events_missed of a close that comes later reaches no one.
   */
  const caughtUpWithin = (): Promise<boolean> =>
    withTimeout(caughtUp(), QUEUE_PROBE_TIMEOUT_MS, 'the node catching up with its queue').catch(() => false);
  /**
   * Before a tab told to move is closed: its client, welcomed elsewhere, takes the close for the end of
   * what this node had for it, routed before its new node bound the user. If some may still be on their
   * way here (the node behind its queue, cut off from it, or reading a payload for the user), or a notice
   * of lost ones is, the tab is told events_missed first, for its client to resynchronise.
   */
  const tellIfBehind = async (tab: Tab): Promise<void> => {
    // A notice of lost deliveries still in its window would come after the close.
    const told = dropNotices.pendingFor(tab.key) || idMapNotices.pendingFor(tab.key);
    // Held looked at again once the probe is back: a claim-checked delivery that reached the node ahead
    // of it may still be having its payload read (the probe proves it arrived, not that it was written),
    // and frames of a large fan-out may still be waiting for their slice of a turn (lost with the close).
    const behind = (): boolean => router.holdsFor(tab.key) || router.heldFor(tab).bytes > 0;
    if (!told && !behind() && (await caughtUpWithin()) && !behind()) return;
    const missed =
      'this node had not delivered everything routed to it when the connection moved away; resynchronise';
    tab.write(eventsMissedFrame(missed, history.offset(tab.tenantId)), CloseCode.TooSlow);
  };
  const server = new WsServer({
    beforeHandoffClose: tellIfBehind,
    nodeId,
    verifier,
    registry,
    revocations,
    history,
    router,
    metrics,
    metricsRegistry,
    metricsElsewhere: g.metricsPort !== undefined,
    limits: g,
    readiness,
    logger,
    ...(options.routes ? { routes: options.routes } : {}),
  });

  /** `handoffMs`: each tab is told to move that long before its close (see Tab.handOff). */
  const closeTabs = async (windowMs: number, handoffMs: number): Promise<void> => {
    const tabs = registry.allTabs();
    await Promise.all(
      tabs.map(async (tab) => {
        // Spread the reconnect wave so the surviving nodes are not hit all at once.
        await sleep(Math.random() * windowMs);
        await tab.handOff('draining', CloseCode.Draining, handoffMs, tellIfBehind);
      }),
    );
  };

  stopSuperseded = () => {
    if (draining) return;
    // Not ready, no tab notices, no presence: the id's presence is the other process's now.
    draining = true;
    presenceGone = true;
    logger.error({ queue, tabs: registry.size }, supersededError.message);
    server.stopAccepting();
    // The queue and the dropped-deliveries queue are the other process's: read no more of them.
    void consumer.cancel();
    void droppedConsumer.cancel();
    void lostConsumer.cancel();
    // At once after the window: nothing more reaches the tabs here (the queue is the other process's).
    void closeTabs(g.drainWindowMs, 0).then(() => {
      try {
        options.onFatal?.(supersededError);
      } catch (error) {
        logger.error({ err: errorMessage(error) }, 'onFatal threw');
      }
    });
  };
  // Found while the node was starting, before there was a server to stop.
  if (superseded) stopSuperseded();

  const drainOnce = new CloseOnce(g.drainTimeoutMs, 'gateway drain');
  const drain = (): Promise<void> =>
    drainOnce.run(async () => {
      draining = true;
      logger.info({ tabs: registry.size, users: registry.userCount }, 'draining');
      await runSteps(
        [
          {
            // Stopped while cut off from the broker, the node may not have seen another process take its
            // id: checked before its tabs close, as their users may be online in the id's presence there.
            name: 'check the id is still this process’s',
            run: async () => void (await holdsId()),
          },
          { name: 'stop accepting', run: () => server.stopAccepting() },
          { name: 'close tabs', run: () => closeTabs(g.drainWindowMs, g.handoffMs) },
          { name: 'cancel consumer', run: () => consumer.cancel() },
          { name: 'cancel dropped-deliveries consumer', run: () => droppedConsumer.cancel() },
          { name: 'cancel lost-records consumer', run: () => lostConsumer.cancel() },
          ...nodeCleanup(),
        ],
        logger,
      );
      logger.info('drained');
    });
  /**
   * Unbind, delete the queues, forget the presence and give the id up; each skipped once another process
   * holds the id (they are its now), also when that is found while the drain runs.
   */
  const nodeCleanup = (): Step[] =>
    [
      { name: 'unbind', run: () => registry.unbindAll() },
      {
        name: 'delete queue',
        run: async () => {
          const channel = await broker.model?.createChannel();
          if (!channel) return;
          await channel.deleteQueue(queue);
          await channel.deleteQueue(droppedQueue);
          await channel.deleteQueue(lostQueue);
          await channel.close();
        },
      },
      {
        name: 'forget presence',
        run: async () => {
          presenceGone = true;
          // Redis away: not waited for, which would hold the drain for the rest of its bound (and the
          // process past an orchestrator's grace period) for keys that look after themselves: resolvers
          // stop counting the node's users within presence.expiryMs, and the next sweep, by any process,
          // removes them (a beat waiting in the client's queue is dropped when the client closes).
          if (!redisReady(redis)) {
            logger.warn('Redis is away: this node’s presence is left to expire and be swept');
            return;
          }
          // A beat under way would list the node again after it is forgotten.
          while (beating) await sleep(10);
          await presence.forgetNode(nodeId);
        },
      },
      { name: 'give the id up', run: () => ownership?.release() },
    ].map((step) => ({ ...step, run: () => (superseded ? undefined : step.run()) }));

  const closeOnce = new CloseOnce(g.drainTimeoutMs + 5000, 'gateway close');
  const close = (): Promise<void> =>
    closeOnce.run(async () => {
      try {
        await drain();
      } catch (error) {
        logger.warn({ err: errorMessage(error) }, 'drain did not finish');
      }
      clearInterval(heartbeat);
      clearTimeout(missedTimer);
      clearTimeout(rereadTimer);
      dropNotices.close();
      idMapNotices.close();
      await runSteps(
        [
          { name: 'close sockets', run: () => server.close() },
          { name: 'close metrics listener', run: () => opsHttp?.close() },
          { name: 'close consumer', run: () => consumer.close() },
          { name: 'close dropped-deliveries consumer', run: () => droppedConsumer.close() },
          { name: 'close lost-records consumer', run: () => lostConsumer.close() },
          { name: 'close bind channels', run: () => pool.close() },
          { name: 'stop checking bindings', run: () => bindingCheck.close() },
          { name: 'close broker', run: () => broker.close() },
          { name: 'stop watching the redis server', run: () => redisServer.watch?.stop() },
          { name: 'close redis', run: () => closeRedis(redis) },
          { name: 'close payload redis', run: () => payloadRedis && closeRedis(payloadRedis) },
          { name: 'drop cached payloads', run: () => payloads.close() },
          { name: 'drop delivery history', run: () => history.close() },
          { name: 'stop token worker', run: () => verifier.close() },
        ],
        logger,
      );
      logger.info('closed');
    });

  let port: number;
  try {
    port = await server.listen(g.host, g.port, g.reusePort);
    if (g.metricsPort !== undefined) {
      opsHttp = await OpsHttp.start(g.metricsHost, g.metricsPort, metricsRegistry, () => {
        const r = readiness();
        return { ready: isReady(r), ...r };
      }).catch((error: unknown) => {
        throw new WarrenError(
          ErrorCode.Listen,
          `gateway.metricsPort: cannot listen on ${g.metricsHost}:${g.metricsPort} (is another process listening on it?): ${errorMessage(error)}`,
        );
      });
    }
  } catch (error) {
    // Not left heartbeating, bound and connected: `warren status` would show a node nobody can reach.
    // The listen error is the one to report, even if closing is slow or fails.
    await close().catch((closeError: unknown) =>
      logger.warn({ err: errorMessage(closeError) }, 'close after a failed listen did not finish'),
    );
    throw error;
  }
  logger.info({ port, queue, ...(opsHttp ? { metricsPort: opsHttp.port } : {}) }, 'listening');
  // Said once at start: the node's figures span every tenant on it, and the tabs' port is public.
  if (g.metricsPort === undefined && !isLoopback(g.host))
    logger.warn(
      { port },
      '/metrics is served on the tabs’ port: keep it from browsers at the proxy, or set gateway.metricsPort',
    );

  return {
    nodeId,
    port,
    metricsPort: opsHttp?.port,
    queue,
    metrics: metricsRegistry,
    get connections() {
      return registry.size;
    },
    drain,
    close,
  };
}
