import type { Channel } from 'amqplib';
import { randomBytes } from 'node:crypto';
import { BrokerConnection, refusedForGood } from '../broker/connection.js';
import { Consumer } from '../broker/consumer.js';
import { Publisher } from '../broker/publisher.js';
import { declareTopology, declareTopologyOn, topologyNames } from '../broker/topology.js';
import { ID_MAP_UNSETTLED } from '../protocol/delivery.js';
import { DEFAULTS, type WarrenConfig } from '../config/schema.js';
import { ErrorCode, errorMessage, WarrenError } from '../shared/errors.js';
import { CloseOnce, fulfilsWithin, runSteps } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { createRegistry, type Registry } from '../shared/metrics.js';
import { OpsHttp } from '../shared/ops-http.js';
import { Keys } from '../store/keys.js';
import { MembershipStore } from '../store/membership-store.js';
import { PayloadStore } from '../store/payload-store.js';
import { PresenceStore } from '../store/presence-store.js';
import { closeRedis, createRedisClients, watchServer, redisReady } from '../store/redis.js';
import { DeliveryPublisher } from './delivery-publisher.js';
import { NodeLiveness } from './node-liveness.js';
import { ResolverMetrics } from './resolver-metrics.js';
import { TenantView } from './tenant-view.js';
import { TenantViews } from './tenant-views.js';
import { ResolverWorker } from './worker.js';

export interface ResolverOptions {
  logger: Logger;
}

export interface Resolver {
  readonly id: string;
  readonly metrics: Registry;
  /** The port of `/metrics`, `/healthz`, `/readyz` (`resolver.metricsPort`), if served. */
  readonly metricsPort: number | undefined;
  /** Stops consuming, finishes what it holds, closes its connections. Idempotent. */
  close(): Promise<void>;
}

const CLOSE_TIMEOUT_MS = 15_000;
/** How long closing waits for the work in hand (its deliveries confirmed) before giving it up. */
const IN_FLIGHT_WAIT_MS = 5000;

/** Starts a resolver worker; run several for throughput (they compete on one queue). */
export async function startResolver(
  config: Readonly<WarrenConfig>,
  options: ResolverOptions,
): Promise<Resolver> {
  const id = randomBytes(4).toString('hex');
  const logger = options.logger.child({ component: 'resolver', resolverId: id });
  const names = topologyNames(config.prefix);
  const shared = { queueType: config.rabbitmq.queueType };
  const keys = new Keys(config.prefix);
  const metricsRegistry = createRegistry({ resolver: id });
  const metrics = new ResolverMetrics(metricsRegistry);

  const { redis, payloadRedis } = await createRedisClients({
    url: config.redis.url,
    payloadUrl: config.claimCheck.redisUrl,
    urlSetting: 'redis.url (WARREN_REDIS_URL)',
    name: `warren-resolver-${id}`,
    logger,
    socketTimeoutMs: config.redis.socketTimeoutMs,
  });
  const presence = new PresenceStore(redis, keys);
  // The views are made once `liveness` exists (they start from its dead nodes); nothing asks before.
  const views: TenantViews = new TenantViews(
    (tenantId) => new TenantView(redis, keys, tenantId, liveness.dead, logger),
    config.resolver.maxTenantViews,
    (size) => metrics.tenantViews.set(size),
  );
  const liveness = new NodeLiveness(
    presence,
    config.presence.expiryMs,
    (dead) => {
      for (const view of views.values()) view.setDead(dead);
    },
    logger,
  );
  await liveness.start();
  // Against another server (restart, failover) the views may hold what it never got: each is built afresh,
  // a batch in hand included, before it resolves another event.
  const watch = await watchServer(
    redis,
    () => {
      for (const v of views.values()) v.markStale();
    },
    logger,
  );

  const broker = new BrokerConnection(
    { ...config.rabbitmq, connectionName: `warren-resolver-${id}` },
    logger.child({ part: 'broker' }),
  );
  const publisher = new Publisher(broker, logger);
  const worker = new ResolverWorker({
    names,
    publisher,
    deliveries: new DeliveryPublisher(
      publisher,
      names.deliveries,
      () => broker.headerBudget,
      config.resolver.maxRecipientsPerMessage ??
        (config.resolver.routing === 'users' ? DEFAULTS.maxRecipientsPerMessage : Infinity),
      config.resolver.routing,
    ),
    membership: new MembershipStore(redis, keys),
    payloads: payloadRedis ? new PayloadStore(payloadRedis, keys, true) : new PayloadStore(redis, keys),
    view: (tenantId) => views.get(tenantId),
    trimViews: () => views.trim(),
    claimCheck: config.claimCheck,
    maxMessageBytes: config.resolver.maxMessageBytes,
    metrics,
    logger,
    idMapStamp: () => (watch.settled ? watch.stamp : ID_MAP_UNSETTLED),
    serverUnsettled: () => (watch.settled ? undefined : watch.whenSettled()),
    headerBudget: () => broker.headerBudget,
    redeclare: async () => {
      if (broker.model) await declareTopologyOn(broker.model, names, shared);
    },
  });
  // Before every subscription, not only on connect: a queue deleted under a consumer (an operator, a
  // policy) cancels it, and re-subscribing to a queue that is gone would fail for good.
  const declared = (channel: Channel) => declareTopology(channel, names, shared);
  const consumer = new Consumer(
    broker,
    { queue: names.resolver, prefetch: config.resolver.prefetch, prepare: declared },
    (delivery) => worker.handle(delivery),
    logger,
  );
  // One change at a time: a change that fails is requeued to the head of the queue, and with more in
  // flight a later change could be applied before it.
  const membershipConsumer = new Consumer(
    broker,
    {
      queue: names.memberships,
      prefetch: 1,
      // Every (re)subscription starts new membership terms (see MembershipStore.newTerm).
      prepare: async (channel) => {
        await declared(channel);
        await worker.membershipSubscribed();
      },
    },
    (delivery) => worker.handle(delivery),
    logger,
  );
  let stopping = false;
  const { metricsPort, metricsHost } = config.resolver;
  let http: OpsHttp | undefined;
  /** Undoes a start-up that failed before anything was consumed. */
  const abandon = async (): Promise<void> => {
    // The connection first: its reconnects stop, and its channels end with it.
    await broker.close().catch(() => {});
    await Promise.allSettled([
      consumer.close(),
      membershipConsumer.close(),
      liveness.stop(),
      publisher.close(),
      http?.close(),
    ]);
    watch.stop();
    await Promise.allSettled([closeRedis(redis), payloadRedis && closeRedis(payloadRedis)]);
  };
  if (metricsPort !== undefined) {
    try {
      http = await OpsHttp.start(metricsHost, metricsPort, metricsRegistry, () => {
        const r = {
          broker: broker.connected,
          redis: redisReady(redis),
          // The payloads' own Redis (`claimCheck.redisUrl`), when one is set: reported, not required.
          ...(payloadRedis ? { payloadRedis: redisReady(payloadRedis) } : {}),
          closing: stopping,
        };
        return { ready: r.broker && r.redis && !r.closing, ...r };
      });
    } catch (error) {
      // Before consuming anything: a taken port stops start-up with nothing to undo but what is open.
      await abandon();
      throw new WarrenError(
        ErrorCode.Listen,
        `resolver.metricsPort: cannot listen on ${metricsHost}:${metricsPort} (is another process listening on it?): ${errorMessage(error)}`,
      );
    }
  }
  // First on every connect: dead letters and deliveries may be published before a consumer has declared.
  await broker.onConnect((model) => declareTopologyOn(model, names, shared));
  await publisher.start();
  await consumer.start();
  await membershipConsumer.start();
  try {
    // A password or a permission the broker refuses stops start-up, rather than retrying for good.
    await broker.start({ giveUpOn: refusedForGood });
  } catch (error) {
    await abandon();
    throw error;
  }
  logger.info({ queue: names.resolver, metricsPort: http?.port }, 'resolving');

  const closing = new CloseOnce(CLOSE_TIMEOUT_MS, 'resolver close');
  return {
    id,
    metrics: metricsRegistry,
    metricsPort: http?.port,
    close: () =>
      closing.run(() => {
        stopping = true;
        return runSteps(
          [
            // First: the port is free again even if a later step hangs past the close timeout.
            { name: 'close http', run: async () => http?.close() },
            // Together: on a connection the broker blocks (a resource alarm) each waits out its bound. The
            // membership queue's channel is closed rather than cancelled: the change held goes back ahead
            // of the later ones, which the next resolver would otherwise apply first (a quorum queue hands
            // itself over on the cancel). Applied meanwhile here, it is applied again there: the same.
            {
              name: 'stop consuming',
              run: () => Promise.all([consumer.cancel(), membershipConsumer.closeAtOnce()]),
            },
            // Before waiting for the batch in hand: one waiting for Redis to settle is woken, and requeued.
            { name: 'stop watching the redis server', run: () => watch.stop() },
            {
              name: 'finish in-flight',
              run: async () => {
                if (await fulfilsWithin(worker.idle(), IN_FLIGHT_WAIT_MS)) return;
                // Most likely waiting for confirms that do not come (a broker under a resource alarm reads
                // nothing): the connection is dropped now, which fails them, and its unacked events go back
                // to the queue. Each later step's own wait for that broker (5 s for the publisher, 2 s for
                // the consumers) would otherwise take the close past CLOSE_TIMEOUT_MS, Redis still open.
                logger.warn(
                  { waitedMs: IN_FLIGHT_WAIT_MS },
                  'in-flight work not finished; dropping the broker connection, its events requeued',
                );
                await broker.close();
              },
            },
            { name: 'stop liveness', run: () => liveness.stop() },
            { name: 'close publisher', run: () => publisher.close() },
            {
              name: 'close consumers',
              run: () => Promise.all([consumer.close(), membershipConsumer.close()]),
            },
            { name: 'close broker', run: () => broker.close() },
            { name: 'close redis', run: () => closeRedis(redis) },
            { name: 'close payload redis', run: () => payloadRedis && closeRedis(payloadRedis) },
          ],
          logger,
        );
      }),
  };
}
