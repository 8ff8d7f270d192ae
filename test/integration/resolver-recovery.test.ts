import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import type { Gateway } from '../../src/gateway/main.js';
import type { Resolver } from '../../src/resolver/main.js';
import { OnlineSet } from '../../src/resolver/online-set.js';
import type { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { Keys } from '../../src/store/keys.js';
import {
  BrokerProbe,
  capturingLogger,
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
import { TcpProxy } from '../support/tcp-proxy.js';

// A resolution that throws (a bug, state no check foresaw) must not wedge the resolver or loop forever:
// the event is retried once from a rebuilt view, then dead-lettered with the reason, and the events after
// it are resolved as usual. The fault is put in by the test: turning ann's bit into her routing key throws
// (user routing maps bits back to keys), as it would if the view had lost her id. Redis itself can no
// longer cause that: a snapshot leaves offline any bit whose id is missing.

describe('a resolution that fails', () => {
  const prefix = testPrefix('recovery');
  const config = testConfig(prefix, { resolver: { routing: 'users' } });
  let gateway: Gateway;
  let resolver: Resolver | undefined;
  let warren: WarrenPublisher;
  let probe: BrokerProbe;
  let redis: Redis;
  const tabs: TestTab[] = [];
  let faulty: { mockRestore(): void } | undefined;

  beforeAll(async () => {
    gateway = await startTestGateway(config);
    warren = await connectPublisher(config);
    probe = await BrokerProbe.open();
    redis = new Redis(inject('redisUrl'));
  });
  afterAll(async () => {
    faulty?.mockRestore();
    for (const tab of tabs) tab.ws.terminate();
    await redis.quit();
    await probe.close();
    await removeInstallation(prefix, { warren, resolvers: [resolver], gateways: [gateway] });
  });

  it('is retried once, then dead-lettered with its reason, and the next event is resolved', async () => {
    await warren.addUserToTeam('acme', 'ann', 'icu');
    await warren.addUserToTeam('acme', 'bob', 'icu');
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 'acme' }));
    const bob = await openTab(gateway.port, await token({ sub: 'bob', tid: 'acme' }));
    tabs.push(ann, bob);
    const keys = new Keys(prefix);
    const annBit = Number(await redis.hget(keys.ids('acme'), 'ann'));
    const keysOf = OnlineSet.prototype.keysOf;
    faulty = vi.spyOn(OnlineSet.prototype, 'keysOf').mockImplementation(function (this: OnlineSet, bits) {
      if (bits.has(annBit)) throw new Error(`injected fault: no key for bit ${annBit}`);
      return keysOf.call(this, bits);
    });

    const dead = await probe.deadLetters(prefix);
    const channel = await probe.model.createChannel();
    // Queued before the resolver starts: it takes `first` alone, and the two others as one batch while
    // resolving it. The event after the failing one must be resolved against the rebuilt view, not the
    // emptied one.
    await warren.publishEvent({ id: 'first', tenantId: 'acme', type: 'note', audience: { users: ['bob'] } });
    await warren.publishEvent({
      id: 'poisoned',
      tenantId: 'acme',
      type: 'note',
      audience: { teams: ['icu'] },
    });
    await warren.publishEvent({ id: 'after', tenantId: 'acme', type: 'note', audience: { users: ['bob'] } });
    // Handed out once and returned, as when a resolver stops with them unacked: all three now arrive
    // marked redelivered, and the failing one must still get its retry on a rebuilt view.
    const queue = `${prefix}.resolver`;
    await eventually(async () => (await channel.checkQueue(queue)).messageCount === 3, 'three queued');
    for (let i = 0; i < 3; i += 1) await channel.get(queue, { noAck: false });
    channel.nackAll(true);
    resolver = await startTestResolver(config);
    await eventually(() => dead.length === 1, 'the failing event dead-lettered');
    await eventually(() => bob.eventIds().includes('after'), 'the next event delivered');

    const headers = dead[0]?.properties.headers ?? {};
    expect(dead[0]?.properties.messageId).toBe('poisoned');
    expect(headers['x-warren-code']).toBe('resolve_failed');
    expect(await counter(resolver, 'warren_resolver_events_total', { outcome: 'requeued' })).toBe(1);
    expect(String(headers['x-warren-reason'])).toContain('injected fault');
    // Nothing half-resolved reached anyone.
    expect(ann.eventIds()).toEqual([]);
    expect(bob.eventIds()).toEqual(['first', 'after']);
    await channel.close();
  });
});

describe('a resolver whose queue is deleted under it', () => {
  const prefix = testPrefix('recovery-queue');
  const config = testConfig(prefix);
  let gateway: Gateway;
  let resolver: Resolver;
  let warren: WarrenPublisher;
  let probe: BrokerProbe;

  beforeAll(async () => {
    gateway = await startTestGateway(config);
    resolver = await startTestResolver(config);
    warren = await connectPublisher(config);
    probe = await BrokerProbe.open();
  });
  afterAll(async () => {
    await probe.close();
    await removeInstallation(prefix, { warren, resolvers: [resolver], gateways: [gateway] });
  });

  it('declares it again, bound as before, and resolves what is published to it', async () => {
    await warren.addUserToTeam('acme', 'ann', 'icu');
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 'acme' }));
    try {
      const channel = await probe.model.createChannel();
      await channel.deleteQueue(`${prefix}.resolver`);
      await channel.close();
      // Events published before it is back are unroutable and gone: publish until one arrives.
      let n = 0;
      await eventually(async () => {
        n += 1;
        await warren.publishEvent({
          id: `after-${n}`,
          tenantId: 'acme',
          type: 'note',
          audience: { teams: ['icu'] },
        });
        await new Promise((r) => setTimeout(r, 100));
        return ann.events().length > 0;
      }, 'an event resolved after the queue was deleted');
    } finally {
      ann.ws.terminate();
    }
  });
});

describe('a resolver closing while the broker stops answering (as under a resource alarm)', () => {
  it('goes through every step, bounded, and leaves no connection open', async () => {
    const prefix = testPrefix('recovery-close');
    const target = new URL(inject('rabbitmqUrl'));
    const proxy = await TcpProxy.toUrl(target);
    try {
      const resolver = await startTestResolver(testConfig(prefix, { rabbitmq: { url: proxy.url(target) } }));
      expect(proxy.open).toBeGreaterThan(0);
      proxy.stall();
      // Neither the cancels nor the channel closes are ever answered: each step waits out its bound, and
      // the close ends with the connection torn down, not rejected by its overall timeout half-way.
      await resolver.close();
      proxy.flow();
      await eventually(() => proxy.open === 0, 'the broker connection closed');
    } finally {
      proxy.flow();
      await proxy.close();
      await removeInstallation(prefix, {});
    }
  }, 40_000);
});

describe('a resolver closing while the broker reads nothing from it (a resource alarm)', () => {
  it('gives up the deliveries it waits to have confirmed, and still closes everything within its bound', async () => {
    const prefix = testPrefix('recovery-close-alarm');
    const config = testConfig(prefix);
    const target = new URL(inject('rabbitmqUrl'));
    const proxy = await TcpProxy.toUrl(target);
    const gateway = await startTestGateway(config);
    const warren = await connectPublisher(config);
    const probe = await BrokerProbe.open();
    const resolver = await startTestResolver(testConfig(prefix, { rabbitmq: { url: proxy.url(target) } }));
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 'acme' }));
    try {
      await warren.addUserToTeam('acme', 'ann', 'icu');
      // The broker still delivers to the resolver, and reads nothing back: its delivery is never confirmed.
      proxy.stallToServer();
      await warren.publishEvent({
        id: 'e-held',
        tenantId: 'acme',
        type: 'note',
        audience: { teams: ['icu'] },
      });
      await eventually(
        async () => (await probe.channel.checkQueue(`${prefix}.resolver`)).messageCount === 0,
        'the event handed to the resolver',
      );
      // Resolved: its delivery is published in the same turn, and waits for a confirm that cannot come.
      await eventually(
        async () => (await counter(resolver, 'warren_resolver_recipients')) > 0,
        'the event resolved',
      );
      const started = Date.now();
      // Rejected by its overall timeout (15 s) if a step waits for the confirm.
      await resolver.close();
      expect(Date.now() - started).toBeLessThan(15_000);
      await eventually(() => proxy.open === 0, 'the broker connection dropped');
      // The broker's side of it gone too: the event it held goes back to the queue, for another resolver.
      proxy.cut();
      await eventually(
        async () => (await probe.channel.checkQueue(`${prefix}.resolver`)).messageCount === 1,
        'the event back in the queue',
      );
    } finally {
      ann.ws.terminate();
      proxy.flow();
      await probe.close();
      await proxy.close();
      await removeInstallation(prefix, { warren, resolvers: [resolver], gateways: [gateway] });
    }
  }, 40_000);
});

describe('a resolver whose deliveries exchange is deleted under it', () => {
  it('requeues the event after a pause, not in a tight loop, and loses nothing until the gateways bind again', async () => {
    const prefix = testPrefix('recovery-deliveries');
    const config = testConfig(prefix);
    const broker = new URL(inject('rabbitmqUrl'));
    // The gateway's broker connection through a proxy of the test's own: cut, it is made again.
    const proxy = await TcpProxy.toUrl(broker);
    const gateway = await startTestGateway(testConfig(prefix, { rabbitmq: { url: proxy.url(broker) } }));
    const log = capturingLogger('warn');
    const resolver = await startTestResolver(config, log.logger);
    const warren = await connectPublisher(config);
    const probe = await BrokerProbe.open();
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 'acme' }));
    try {
      await warren.addUserToTeam('acme', 'ann', 'icu');
      const channel = await probe.model.createChannel();
      await channel.deleteExchange(`${prefix}.deliveries`);
      await channel.close();
      await warren.publishEvent({
        id: 'e-gone',
        tenantId: 'acme',
        type: 'note',
        audience: { teams: ['icu'] },
      });
      const requeued = () => counter(resolver, 'warren_resolver_events_total', { outcome: 'requeued' });
      await eventually(async () => (await requeued()) > 0, 'the event requeued');
      // Each pause is 0.5 s: a few more requeues in the next 1.5 s, not thousands.
      await new Promise((resolve) => setTimeout(resolve, 1500));
      expect(await requeued()).toBeLessThan(10);
      // Not declared again without the gateways' bindings (its deliveries would be confirmed, to no one).
      expect(await probe.exchangeExists(`${prefix}.deliveries`)).toBe(false);
      // The gateway's connection made again: it declares the exchange and binds again; the event arrives.
      proxy.cut();
      await eventually(
        () => ann.eventIds().includes('e-gone'),
        'the event delivered once the gateway is back',
      );
      // Said once when it began, and once it ended with how many more were requeued: not once per requeue.
      const said = log.lines.filter((l) => /^deliveries (not )?confirmed/.test(String(l['msg'])));
      const total = await counter(resolver, 'warren_resolver_events_total', { outcome: 'requeued' });
      expect(said.map((l) => [l['msg'], l['events']])).toEqual([
        ['deliveries not confirmed; their events requeued after a pause', 1],
        ['deliveries confirmed again; more events were requeued', total - 1],
      ]);
    } finally {
      ann.ws.terminate();
      await probe.close();
      await removeInstallation(prefix, { warren, resolvers: [resolver], gateways: [gateway] });
      await proxy.close();
    }
  });
});
