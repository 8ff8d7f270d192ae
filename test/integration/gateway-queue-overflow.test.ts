import { afterEach, describe, expect, inject, it } from 'vitest';
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

describe('a node whose queue overflows', () => {
  const prefix = testPrefix('overflow');
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
  });

  it('tells its tabs events_missed and counts the deliveries the broker dropped', async () => {
    const config = testConfig(prefix);
    const target = new URL(inject('rabbitmqUrl'));
    proxy = await TcpProxy.toUrl(target);
    // The node reaches the broker through the proxy; the resolver and the service directly.
    gateway = await startTestGateway(
      testConfig(prefix, {
        rabbitmq: { url: proxy.url(target), heartbeatSec: 0 },
        gateway: { queueMaxLength: MAX_LENGTH, prefetch: 1 },
      }),
    );
    resolver = await startTestResolver(config);
    warren = await connectPublisher(config);
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
    const publish = (id: string) =>
      (warren as WarrenPublisher).publishEvent({
        id,
        tenantId: 't1',
        type: 'note.created',
        audience: { users: ['ann'] },
        data: { id },
      });
    await publish('before');
    await eventually(() => ann.eventIds().includes('before'), 'a delivery before');
    expect(ann.frames.some((f) => f.type === 'error')).toBe(false);

    // Nothing reaches the node now: its queue fills, past MAX_LENGTH the broker drops the oldest.
    proxy.stall();
    const ids = Array.from({ length: 10 }, (_, i) => `e${i}`);
    for (const id of ids) await publish(id);
    // Every event routed (one before, ten now): the queue holds the newest, the rest were dropped (the
    // dropped-deliveries queue hands them to the node's stalled consumer, so only the node can count them).
    await eventually(
      async () =>
        (await counter(resolver as Resolver, 'warren_resolver_events_total', { outcome: 'routed' })) ===
        1 + ids.length,
      'every event routed',
    );
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
    expect(await counter(gateway, 'warren_gateway_dropped_deliveries_total', { reason: 'queue_full' })).toBe(
      lost.length,
    );
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
  });
});
