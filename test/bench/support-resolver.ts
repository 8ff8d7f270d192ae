import { BrokerConnection } from '../../src/broker/connection.js';
import { Consumer } from '../../src/broker/consumer.js';
import { Publisher } from '../../src/broker/publisher.js';
import { declareTopology, topologyNames } from '../../src/broker/topology.js';
import type { WarrenConfig } from '../../src/config/schema.js';
import { DeliveryPublisher } from '../../src/resolver/delivery-publisher.js';
import type { Resolver } from '../../src/resolver/main.js';
import { NodeLiveness } from '../../src/resolver/node-liveness.js';
import { ResolverMetrics } from '../../src/resolver/resolver-metrics.js';
import { TenantView } from '../../src/resolver/tenant-view.js';
import { ResolverWorker } from '../../src/resolver/worker.js';
import { CloseOnce, runSteps } from '../../src/shared/lifecycle.js';
import type { Logger } from '../../src/shared/logger.js';
import { createRegistry } from '../../src/shared/metrics.js';
import { Keys } from '../../src/store/keys.js';
import { MembershipStore } from '../../src/store/membership-store.js';
import { PayloadStore } from '../../src/store/payload-store.js';
import { PresenceStore } from '../../src/store/presence-store.js';
import { createRedis } from '../../src/store/redis.js';

/**
 * The resolver of src/resolver/main.ts wired the same way, except that it publishes one message per
 * recipient: its DeliveryPublisher gets a header budget of 0, so `chunkKeys` puts every key in a chunk of
 * its own (routing key only, no CC). Same worker, same resolution, same confirms: the only difference from
 * Warren is the number of AMQP messages, which is what the throughput bench compares. Keep it in step with
 * startResolver.
 */
export async function startPerRecipientResolver(
  config: Readonly<WarrenConfig>,
  logger: Logger,
): Promise<Resolver> {
  const id = 'per-recipient';
  const names = topologyNames(config.prefix);
  const keys = new Keys(config.prefix);
  const metricsRegistry = createRegistry({ resolver: id });
  const metrics = new ResolverMetrics(metricsRegistry);
  const redis = await createRedis({ url: config.redis.url, name: `warren-bench-resolver-${id}`, logger });
  const views = new Map<string, TenantView>();
  const liveness = new NodeLiveness(
    new PresenceStore(redis, keys),
    config.presence.expiryMs,
    (dead) => {
      for (const view of views.values()) view.setDead(dead);
    },
    logger,
  );
  await liveness.start();
  const view = (tenantId: string): TenantView => {
    let v = views.get(tenantId);
    if (!v) {
      v = new TenantView(redis, keys, tenantId, liveness.dead);
      views.set(tenantId, v);
    }
    return v;
  };
  const broker = new BrokerConnection(
    { ...config.rabbitmq, connectionName: `warren-bench-resolver-${id}` },
    logger,
  );
  const publisher = new Publisher(broker, logger);
  const worker = new ResolverWorker({
    names,
    publisher,
    deliveries: new DeliveryPublisher(publisher, names.deliveries, () => 0),
    membership: new MembershipStore(redis, keys),
    payloads: new PayloadStore(redis, keys),
    view,
    claimCheck: config.claimCheck,
    metrics,
    logger,
  });
  const consumer = new Consumer(
    broker,
    { queue: names.resolver, prefetch: config.resolver.prefetch },
    (delivery) => worker.handle(delivery),
    logger,
  );
  await broker.onConnect(async (model) => {
    const channel = await model.createChannel();
    await declareTopology(channel, names);
    await channel.close();
  });
  await publisher.start();
  await consumer.start();
  await broker.start();
  const closing = new CloseOnce(15_000, 'bench resolver close');
  return {
    id,
    metrics: metricsRegistry,
    close: () =>
      closing.run(() =>
        runSteps(
          [
            { name: 'stop consuming', run: () => consumer.cancel() },
            { name: 'finish in-flight', run: () => worker.idle() },
            { name: 'stop liveness', run: () => liveness.stop() },
            { name: 'close publisher', run: () => publisher.close() },
            { name: 'close consumer', run: () => consumer.close() },
            { name: 'close broker', run: () => broker.close() },
            { name: 'close redis', run: async () => void (await redis.quit()) },
          ],
          logger,
        ),
      ),
  };
}
