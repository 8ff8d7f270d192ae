import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { Gateway } from '../../src/gateway/main.js';
import { DeliveryHeader } from '../../src/protocol/delivery.js';
import type { Resolver } from '../../src/resolver/main.js';
import type { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { serverStamp } from '../../src/store/redis.js';
import { ConfirmHoldingProxy } from '../support/confirm-holding-proxy.js';
import { DeliverySpy } from '../support/delivery-spy.js';
import {
  connectPublisher,
  counter,
  eventually,
  openTab,
  startTestGateway,
  startTestResolver,
  testConfig,
  testPrefix,
  token,
  type TestTab,
  removeInstallation,
} from '../support/harness.js';
import { WarrenProcess } from '../support/warren-process.js';

// A resolver process dies after publishing an event's deliveries and before acking the event. The broker
// hands the event to another resolver, which publishes the deliveries again; each tab must still show the
// event once. The crash window is made certain by a proxy that keeps the broker's publisher confirm from
// the doomed resolver: it has published, it waits for the confirm, it is killed with SIGKILL.

describe('a resolver killed between publishing deliveries and acking the event', () => {
  const prefix = testPrefix('redeliver');
  const config = testConfig(prefix);
  const broker = new URL(inject('rabbitmqUrl'));
  const gateways: Gateway[] = [];
  const tabs: { name: string; tab: TestTab }[] = [];
  let proxy: ConfirmHoldingProxy;
  let doomed: WarrenProcess | undefined;
  let survivor: Resolver | undefined;
  let warren: WarrenPublisher;
  let spy: DeliverySpy;

  beforeAll(async () => {
    gateways.push(await startTestGateway(config), await startTestGateway(config));
    spy = await DeliverySpy.start(prefix);
    warren = await connectPublisher(config);
    proxy = await ConfirmHoldingProxy.start(broker);
    const [first, second] = gateways as [Gateway, Gateway];
    for (const [name, gateway, user] of [
      ['ann tab 1 on node 1', first, 'ann'],
      ['ann tab 2 on node 1', first, 'ann'],
      ['ann tab 3 on node 2', second, 'ann'],
      ['bob on node 2', second, 'bob'],
    ] as const) {
      tabs.push({ name, tab: await openTab(gateway.port, await token({ sub: user, tid: 'acme' })) });
    }
  });
  afterAll(async () => {
    for (const { tab } of tabs) tab.ws.terminate();
    await doomed?.kill();
    await proxy.close();
    await spy.close();
    await removeInstallation(prefix, { warren, resolvers: [survivor], gateways });
  });

  it('redelivers the event to another resolver; every tab shows it once', async () => {
    doomed = WarrenProcess.start(['resolver'], {
      WARREN_PREFIX: prefix,
      WARREN_RABBITMQ_URL: proxy.url(broker),
      WARREN_REDIS_URL: inject('redisUrl'),
      WARREN_LOG_LEVEL: 'info',
    });
    const child = doomed;
    await eventually(() => child.logged('resolving') !== undefined, 'the doomed resolver consuming', 20_000);

    const id = 'evt-crash-window';
    const audience = { users: ['ann', 'bob'] };
    await warren.publishEvent({ id, tenantId: 'acme', type: 'note.created', audience, data: { n: 1 } });
    await eventually(() => spy.copies(id) === 1 && proxy.held > 0, 'published, confirm held back');
    // The deliveries are out, so the tabs have it already; the event itself is still unacked.
    await eventually(() => tabs.every(({ tab }) => tab.eventIds().includes(id)), 'first copy on every tab');

    await doomed.kill();
    survivor = await startTestResolver(config);
    await eventually(() => spy.copies(id) === 2, 'the event resolved and published a second time', 20_000);

    // A marker behind the second copy in each node's queue: once it is on a tab, so is anything before it.
    await warren.publishEvent({ id: 'marker', tenantId: 'acme', type: 'test.marker', audience });
    await eventually(() => tabs.every(({ tab }) => tab.eventIds().includes('marker')), 'marker on every tab');
    expect(spy.recipients(id)).toEqual(['u.acme.ann', 'u.acme.ann', 'u.acme.bob', 'u.acme.bob']);
    // Both resolvers stamped their bits with the Redis server they read them from.
    const redis = new Redis(inject('redisUrl'));
    const stamp = await serverStamp(redis).finally(() => redis.disconnect());
    const stamps = spy.messages
      .filter((m) => m.properties.messageId === id)
      .map((m) => String((m.properties.headers ?? {})[DeliveryHeader.IdMap]));
    expect(stamps).toEqual([stamp, stamp]);
    expect(tabs.map(({ name, tab }) => [name, tab.eventIds()])).toEqual(
      tabs.map(({ name }) => [name, [id, 'marker']]),
    );
    // The second copy did reach both nodes, and both dropped it.
    for (const gateway of gateways) {
      expect(await counter(gateway, 'warren_gateway_duplicates_dropped_total')).toBeGreaterThan(0);
    }
  });
});
