import { afterEach, describe, expect, inject, it } from 'vitest';
import type { WarrenConfig } from '../../src/config/schema.js';
import type { Gateway } from '../../src/gateway/main.js';
import type { Resolver } from '../../src/resolver/main.js';
import type { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { sleep } from '../../src/shared/lifecycle.js';
import { TcpProxy } from '../support/tcp-proxy.js';
import {
  BrokerProbe,
  connectPublisher,
  counter,
  eventually,
  openTab,
  removeInstallation,
  startTestGateway,
  startTestResolver,
  testConfig,
  testPrefix,
  token,
} from '../support/harness.js';

// A node that cannot keep up (here: cut off from the broker while its queue fills) loses the oldest
// deliveries past gateway.queueMaxLength. The broker drops them; the node must not let its tabs believe
// they missed nothing.

const MAX_LENGTH = 3;

/**
 * A node that reaches the broker through a proxy the test stalls, its queue holding MAX_LENGTH, with a
 * resolver and a service reaching the broker directly; removed after each test.
 */
function stallableInstallation(prefix: string) {
  let proxy: TcpProxy | undefined;
  let gateway: Gateway | undefined;
  let resolver: Resolver | undefined;
  let warren: WarrenPublisher | undefined;

  afterEach(async () => {
    proxy?.flow();
    await removeInstallation(prefix, {
      ...(warren ? { warren } : {}),
      resolvers: [resolver],
      gateways: gateway ? [gateway] : [],
    });
    await proxy?.close();
    proxy = gateway = resolver = warren = undefined;
  });

  return async (
    overrides: {
      gateway?: Partial<WarrenConfig['gateway']>;
      resolver?: Partial<WarrenConfig['resolver']>;
    } = {},
  ) => {
    const config = testConfig(prefix, { resolver: overrides.resolver ?? {} });
    const target = new URL(inject('rabbitmqUrl'));
    proxy = await TcpProxy.toUrl(target);
    gateway = await startTestGateway(
      testConfig(prefix, {
        rabbitmq: { url: proxy.url(target), heartbeatSec: 0 },
        gateway: { queueMaxLength: MAX_LENGTH, prefetch: 1, ...overrides.gateway },
      }),
    );
    resolver = await startTestResolver(config);
    warren = await connectPublisher(config);
    const service = warren;
    /** An event for one user. */
    const publish = (id: string, tenantId = 't1', user = 'ann') =>
      service.publishEvent({ id, tenantId, type: 'note.created', audience: { users: [user] }, data: { id } });
    const routed = (n: number) =>
      eventually(
        async () =>
          (await counter(resolver as Resolver, 'warren_resolver_events_total', { outcome: 'routed' })) === n,
        'every event routed',
      );
    return { proxy, gateway, resolver, publish, routed };
  };
}

describe.each(['nodes', 'users'] as const)(
  'a node whose queue overflows (resolver routing by %s)',
  (routing) => {
    const start = stallableInstallation(testPrefix(`overflow-${routing}`));

    it('tells the tabs of the users it lost deliveries for events_missed, only them, and counts the deliveries', async () => {
      const { proxy, gateway, publish, routed } = await start({ resolver: { routing } });
      const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
      // On the same node, a user of the same tenant and one of another: nothing of theirs is lost.
      const bob = await openTab(gateway.port, await token({ sub: 'bob', tid: 't1' }));
      const carl = await openTab(gateway.port, await token({ sub: 'carl', tid: 't2' }));
      const toCarl = (id: string) => publish(id, 't2', 'carl');
      const offsetOf = (id: string): number | undefined => {
        const event = carl.frames.find((f) => f.type === 'event' && f.id === id);
        return event?.type === 'event' ? event.offset : undefined;
      };
      await publish('before');
      await toCarl('carl-before');
      await eventually(() => ann.eventIds().includes('before'), 'a delivery before');
      await eventually(() => carl.eventIds().includes('carl-before'), 'carl’s delivery before');
      expect(ann.frames.some((f) => f.type === 'error')).toBe(false);

      // Nothing reaches the node now: its queue fills, past MAX_LENGTH the broker drops the oldest.
      proxy.stall();
      const ids = Array.from({ length: 10 }, (_, i) => `e${i}`);
      for (const id of ids) await publish(id);
      // Every event routed (two before, ten now): the queue holds the newest, the rest were dropped (the
      // dropped-deliveries queue hands them to the node's stalled consumer, so only the node can count them).
      await routed(2 + ids.length);
      const probe = await BrokerProbe.open();
      const channel = await probe.model.createChannel();
      try {
        expect((await channel.checkQueue(gateway.queue)).messageCount).toBe(MAX_LENGTH);
      } finally {
        await channel.close();
        await probe.close();
      }

      proxy.flow();
      await eventually(
        () => ann.frames.some((f) => f.type === 'error' && f.code === 'events_missed'),
        'events_missed',
      );
      // The newest were kept, and arrive.
      await eventually(() => ids.slice(-MAX_LENGTH).every((id) => ann.eventIds().includes(id)), 'the newest');
      const lost = ids.filter((id) => !ann.eventIds().includes(id));
      expect(lost.length).toBeGreaterThan(0);
      expect(
        await counter(gateway, 'warren_gateway_dropped_deliveries_total', { reason: 'queue_full' }),
      ).toBe(lost.length);
      // Past the notice window (0.2 s) and then some: a second notice would be there by now.
      await sleep(1000);
      const missed = ann.frames.filter((f) => f.type === 'error' && f.code === 'events_missed');
      // One notice for the run of drops.
      expect(missed).toHaveLength(1);
      // Why, without the node's counts: they span every tenant on it (the metric above has them).
      expect(missed[0]).toMatchObject({
        message: expect.stringContaining("this node's queue was full and the broker dropped deliveries"),
      });
      expect((missed[0] as { message: string }).message).not.toMatch(/\d/);
      // The others are told nothing: a notice would tell them how much the node dropped for someone else.
      for (const tab of [bob, carl]) expect(tab.frames.filter((f) => f.type === 'error')).toEqual([]);
      // Nor by their offsets: another tenant's count takes no step for the gap (its next event comes next
      // in its count), so nothing there says when this node dropped deliveries of t1's.
      await toCarl('carl-after');
      await eventually(() => carl.eventIds().includes('carl-after'), 'carl’s delivery after');
      expect(offsetOf('carl-after')).toBe((offsetOf('carl-before') ?? NaN) + 1);
      for (const tab of [ann, bob, carl]) tab.ws.terminate();
    });
  },
);

describe('a node whose dropped-deliveries queue overflows in its turn', () => {
  const prefix = testPrefix('overflow-lost');
  let proxy: TcpProxy | undefined;
  let gateway: Gateway | undefined;

  afterEach(async () => {
    proxy?.flow();
    await removeInstallation(prefix, { resolvers: [], gateways: gateway ? [gateway] : [] });
    await proxy?.close();
  });

  it('tells every tab events_missed: whom the records it lost were for is unknown', async () => {
    const target = new URL(inject('rabbitmqUrl'));
    proxy = await TcpProxy.toUrl(target);
    gateway = await startTestGateway(
      testConfig(prefix, { rabbitmq: { url: proxy.url(target), heartbeatSec: 0 } }),
    );
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
    const carl = await openTab(gateway.port, await token({ sub: 'carl', tid: 't2' }));
    const dropped = `${gateway.queue}.dropped`;
    const lost = `${dropped}.lost`;

    // The node away while more records of drops (all for ann here) arrive than its dropped queue holds
    // (1,000 ready, past the 100 sent to the stalled node unacked).
    proxy.stall();
    const probe = await BrokerProbe.open();
    const channel = await probe.model.createConfirmChannel();
    try {
      const headers = {
        'x-warren-tenant': 't1',
        'x-death': [{ reason: 'maxlen', queue: gateway.queue, count: 1, 'routing-keys': ['u.t1.ann'] }],
      };
      for (let i = 0; i < 1200; i += 1) channel.sendToQueue(dropped, Buffer.from('{}'), { headers });
      await channel.waitForConfirms();
      await eventually(async () => (await channel.checkQueue(lost)).messageCount === 1, 'a record lost');
    } finally {
      await channel.close();
      await probe.close();
    }

    proxy.flow();
    for (const tab of [ann, carl])
      await eventually(
        () => tab.frames.some((f) => f.type === 'error' && f.code === 'events_missed'),
        'events_missed',
      );
    for (const tab of [ann, carl]) tab.ws.terminate();
  });
});

describe('a draining node whose queue overflows', () => {
  const start = stallableInstallation(testPrefix('overflow-drain'));

  it('tells them also while it drains: its tabs move away (handoff) with no resync of their own', async () => {
    const { proxy, gateway, publish, routed } = await start({
      gateway: { drainWindowMs: 0, handoffMs: 20_000 },
    });
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
    await publish('before');
    await eventually(() => ann.eventIds().includes('before'), 'a delivery before');

    proxy.stall();
    const ids = Array.from({ length: 10 }, (_, i) => `e${i}`);
    for (const id of ids) await publish(id);
    await routed(1 + ids.length);
    // A deploy: the node tells the tab to move, and delivers to it until it has.
    const drained = gateway.drain();
    await eventually(() => ann.frames.some((f) => f.type === 'handoff'), 'told to move');
    proxy.flow();
    await eventually(() => ids.slice(-MAX_LENGTH).every((id) => ann.eventIds().includes(id)), 'the newest');
    // Some were lost before the tab moved: only this node knows, and it must say so.
    await eventually(
      () => ann.frames.some((f) => f.type === 'error' && f.code === 'events_missed'),
      'events_missed while draining',
    );
    await ann.close();
    await drained;
  });
});

describe('a node of a fixed id upgraded over the queues of an earlier release', () => {
  const prefix = testPrefix('overflow-upgrade');
  let gateway: Gateway | undefined;

  afterEach(async () => {
    await removeInstallation(prefix, { resolvers: [], gateways: gateway ? [gateway] : [] });
    const probe = await BrokerProbe.open();
    await probe.deleteExchangesAndQueues(prefix, [`${prefix}.gw.ward-gw`]);
    await probe.close();
  });

  it('starts: the dropped-deliveries queue declared without a dead-letter target is not declared again as is', async () => {
    // As the release before <dropped>.lost left them: the process died, its queues outlived it.
    const dropped = `${prefix}.gw.ward-gw.dropped`;
    const probe = await BrokerProbe.open();
    const channel = await probe.model.createChannel();
    try {
      await channel.assertQueue(dropped, {
        durable: false,
        arguments: {
          'x-expires': 60_000,
          'x-max-length': 1000,
          'x-max-length-bytes': 16 * 1024 * 1024,
          'x-overflow': 'drop-head',
        },
      });
      await channel.assertQueue(`${prefix}.gw.ward-gw`, {
        durable: false,
        arguments: {
          'x-expires': 60_000,
          'x-max-length': 100_000,
          'x-overflow': 'drop-head',
          'x-dead-letter-exchange': '',
          'x-dead-letter-routing-key': dropped,
        },
      });
    } finally {
      await channel.close();
      await probe.close();
    }
    // A mismatch would fail the declaration (PRECONDITION_FAILED) and keep the node from starting.
    gateway = await startTestGateway(testConfig(prefix, { gateway: { id: 'ward-gw' } }));
    const tab = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
    expect(tab.welcome?.userId).toBe('ann');
    tab.ws.terminate();
  });
});
