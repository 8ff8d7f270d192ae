import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { startGateway, type Gateway } from '../../src/gateway/main.js';
import type { WarrenError } from '../../src/shared/errors.js';
import { sleep } from '../../src/shared/lifecycle.js';
import { Keys } from '../../src/store/keys.js';
import {
  BrokerProbe,
  cleanRedis,
  counter,
  eventually,
  openTab,
  startTestGateway,
  testConfig,
  testLogger,
  testPrefix,
  token,
  type TestTab,
} from '../support/harness.js';
import { AmqpMethods } from '../support/amqp-methods.js';
import { TcpProxy } from '../support/tcp-proxy.js';

describe('bindings: once per user, grace on reload, again after a reconnect, gone after drain', () => {
  let prefix: string;
  let gateway: Gateway | undefined;
  let probe: BrokerProbe | undefined;
  let proxy: TcpProxy | undefined;
  let tabs: TestTab[] = [];

  afterEach(async () => {
    for (const tab of tabs) tab.ws.terminate();
    tabs = [];
    await gateway?.close();
    await probe?.deleteExchangesAndQueues(prefix, gateway ? [gateway.queue] : []);
    await probe?.close();
    await proxy?.close();
    if (prefix) await cleanRedis(prefix);
    gateway = probe = proxy = undefined;
  });

  async function open(port: number, tid: string, sub: string): Promise<TestTab> {
    const tab = await openTab(port, await token({ sub, tid }));
    tabs.push(tab);
    return tab;
  }

  it('binds once per user, and a reload inside the grace period makes no bind or unbind', async () => {
    prefix = testPrefix('grace');
    // The gateway reaches the broker through a proxy that reads what it sends: the broker operations
    // themselves are counted, not the gateway's account of them.
    const target = new URL(inject('rabbitmqUrl'));
    proxy = await TcpProxy.toUrl(target);
    const sent = new AmqpMethods();
    proxy.tapClient(() => sent.reader());
    gateway = await startTestGateway(
      testConfig(prefix, { gateway: { unbindGraceMs: 2000 }, rabbitmq: { url: proxy.url(target) } }),
    );
    probe = await BrokerProbe.open();
    // Start-up's own: the topology (which removes a binding of older releases) and the node key.
    const atStart = { binds: sent.count('queue.bind'), unbinds: sent.count('queue.unbind') };
    const binds = (): number => sent.count('queue.bind') - atStart.binds;
    const unbinds = (): number => sent.count('queue.unbind') - atStart.unbinds;
    expect(atStart.binds).toBeGreaterThan(0);

    await open(gateway.port, 't1', 'A');
    await open(gateway.port, 't1', 'A');
    expect(binds()).toBe(1);
    expect(await counter(gateway, 'warren_gateway_binds_total')).toBe(1);

    // A reload: every tab of the user closes and one comes back within the grace period.
    for (const tab of tabs.splice(0)) await tab.close();
    const reloaded = await open(gateway.port, 't1', 'A');
    await probe.deliver(prefix, ['u.t1.A'], { id: 'after-reload', tenantId: 't1' });
    await eventually(() => reloaded.eventIds().includes('after-reload'), 'reloaded tab receives');
    expect(reloaded.eventIds()).toEqual(['after-reload']);
    expect(binds()).toBe(1);
    expect(unbinds()).toBe(0);

    // Past the grace period with no tab, the key is unbound: exactly one unbind, and nothing routes there.
    await reloaded.close();
    tabs = [];
    await eventually(() => unbinds() === 1, 'unbind after grace', 5000);
    await eventually(async () => !(await probe!.routes(prefix, 'u.t1.A')), 'nothing routes there', 5000);
    expect(unbinds()).toBe(1);
    expect(binds()).toBe(1);
    expect(await counter(gateway, 'warren_gateway_unbinds_total')).toBe(1);
  });

  it('re-declares its queue and re-binds every held user after the broker connection drops', async () => {
    prefix = testPrefix('reconnect');
    const target = new URL(inject('rabbitmqUrl'));
    proxy = await TcpProxy.toUrl(target);
    gateway = await startTestGateway(testConfig(prefix, { rabbitmq: { url: proxy.url(target) } }));
    probe = await BrokerProbe.open();

    const a = await open(gateway.port, 't1', 'A');
    const b = await open(gateway.port, 't1', 'B');
    const c = await open(gateway.port, 't2', 'C');
    await probe.deliver(prefix, ['u.t1.A', 'u.t1.B', 'u.t2.C'], { id: 'before', tenantId: 't1' });
    await eventually(() => a.eventIds().includes('before') && b.eventIds().includes('before'), 'before');

    // Take the broker away, and while the node is cut off delete its queue (bindings go with it), as a
    // broker restart would: only re-declaring and re-binding brings the deliveries back.
    proxy.refuse();
    proxy.cut();
    expect(await probe.queueExists(gateway.queue)).toBe(true);
    const ch = await probe.model.createChannel();
    await ch.deleteQueue(gateway.queue);
    await ch.close();
    expect(await probe.routes(prefix, 'u.t1.A')).toBe(false);
    proxy.accept();

    await eventually(() => probe!.routes(prefix, 'u.t1.A'), 'A bound again', 15_000);
    await eventually(() => probe!.routes(prefix, 'u.t2.C'), 'C bound again', 15_000);
    await probe.deliver(prefix, ['u.t1.A', 'u.t1.B'], { id: 'after', tenantId: 't1' });
    await probe.deliver(prefix, ['u.t2.C'], { id: 'after-c', tenantId: 't2' });
    await eventually(
      () =>
        a.eventIds().includes('after') && b.eventIds().includes('after') && c.eventIds().includes('after-c'),
      'the same tabs receive after the reconnect',
    );
    // The same sockets: none of them was closed or reconnected.
    for (const tab of [a, b, c]) expect(tab.closeCode).toBeUndefined();
    expect(proxy.connections).toBeGreaterThanOrEqual(2);
  });

  /**
   * A node of a fixed id reaching the broker through a proxy the test cuts (a network split), and what it
   * was told when it stopped on its own.
   */
  async function cutOffNode(id: string, heartbeatMs = 5000) {
    const target = new URL(inject('rabbitmqUrl'));
    proxy = await TcpProxy.toUrl(target);
    const config = testConfig(prefix, {
      gateway: { id, drainWindowMs: 0 },
      presence: { heartbeatMs, expiryMs: 3 * heartbeatMs },
    });
    const stopped: WarrenError[] = [];
    const node = await startGateway(
      { ...config, rabbitmq: { ...config.rabbitmq, url: proxy.url(target) } },
      { logger: testLogger(config), onFatal: (error) => stopped.push(error) },
    );
    probe = await BrokerProbe.open();
    const split = async (): Promise<void> => {
      proxy!.refuse();
      proxy!.cut();
      await eventually(
        async () => (await probe!.channel.checkQueue(node.queue)).consumerCount === 0,
        'the broker sees the cut-off reader gone',
      );
    };
    return { node, config, stopped, split };
  }

  /** Runs `use` with a Redis client and the test's keys. */
  async function inRedis<T>(use: (redis: Redis, keys: Keys) => Promise<T>): Promise<T> {
    const redis = new Redis(inject('redisUrl'));
    try {
      return await use(redis, new Keys(prefix));
    } finally {
      redis.disconnect();
    }
  }

  /** Whether the id's presence counts the user online (their bit set in the node's online bitmap). */
  function countedOnline(tenantId: string, userId: string, nodeId: string): Promise<boolean> {
    return inRedis(async (redis, keys) => {
      const bit = await redis.hget(keys.ids(tenantId), userId);
      return bit !== null && (await redis.getbit(keys.online(tenantId, nodeId), Number(bit))) === 1;
    });
  }

  it('stops when another process took its fixed gateway.id while it was cut off, and leaves that one whole', async () => {
    prefix = testPrefix('id-taken');
    const { node: cutOff, config, stopped, split } = await cutOffNode('gw-fixed');
    try {
      const old = await open(cutOff.port, 't1', 'A');
      await split();
      // The new process holds A too, in another tab, and B.
      gateway = await startTestGateway(config);
      const currentA = await open(gateway.port, 't1', 'A');
      const currentB = await open(gateway.port, 't1', 'B');
      proxy!.accept();

      // Back, it finds the id taken: its tabs move on (4100), it tells its owner, and reads nothing.
      expect(await old.closed).toBe(4100);
      await eventually(() => stopped.length === 1, 'onFatal');
      expect(stopped[0]?.message).toMatch(/gateway\.id gw-fixed: another process started with this id/);
      // It takes no new tab either (it stopped accepting, as a drain does).
      await expect(openTab(cutOff.port, await token({ sub: 'C', tid: 't1' }))).rejects.toThrow();
      // The new process alone reads the queues: every delivery reaches its tabs.
      for (let i = 0; i < 20; i += 1)
        await probe!.deliver(prefix, ['u.t1.A', 'u.t1.B'], { id: `e${i}`, tenantId: 't1' });
      await eventually(
        () => currentA.eventIds().length === 20 && currentB.eventIds().length === 20,
        'all 20 at the new process’s tabs',
      );
      expect((await probe!.channel.checkQueue(gateway.queue)).consumerCount).toBe(1);
      expect((await probe!.channel.checkQueue(`${gateway.queue}.dropped`)).consumerCount).toBe(1);
      expect((await probe!.channel.checkQueue(`${gateway.queue}.dropped.lost`)).consumerCount).toBe(1);
      // Its tab of A closing did not take A offline there.
      expect(await countedOnline('t1', 'A', 'gw-fixed')).toBe(true);

      // Closing the old one leaves the queue, the bindings and the presence of the new one as they are.
      await cutOff.close();
      expect(await probe!.queueExists(gateway.queue)).toBe(true);
      expect(await probe!.routes(prefix, 'u.t1.A')).toBe(true);
      expect(await countedOnline('t1', 'A', 'gw-fixed')).toBe(true);
      expect(await countedOnline('t1', 'B', 'gw-fixed')).toBe(true);
      await probe!.deliver(prefix, ['u.t1.A'], { id: 'after', tenantId: 't1' });
      await eventually(() => currentA.eventIds().includes('after'), 'still delivered after it closed');
      expect(currentA.closeCode).toBeUndefined();
    } finally {
      await cutOff.close();
    }
  });

  it('closed while still cut off, after another process took its id, it leaves that one whole too', async () => {
    prefix = testPrefix('id-taken-closed');
    const { node: cutOff, config, split } = await cutOffNode('gw-fixed');
    try {
      await open(cutOff.port, 't1', 'A');
      await split();
      gateway = await startTestGateway(config);
      await open(gateway.port, 't1', 'A');
      await open(gateway.port, 't1', 'B');
      // Stopped before it could reach the broker again: it never saw the other process.
      await cutOff.close();
      expect(await probe!.queueExists(gateway.queue)).toBe(true);
      // Its tab of A closed without taking A offline where the other process holds A too.
      expect(await countedOnline('t1', 'A', 'gw-fixed')).toBe(true);
      expect(await countedOnline('t1', 'B', 'gw-fixed')).toBe(true);
      const listed = await inRedis((redis, keys) => redis.zscore(keys.nodes(), 'gw-fixed'));
      expect(listed).not.toBeNull();
    } finally {
      await cutOff.close();
    }
  });

  it('finds out at its next heartbeat, still cut off from the broker, and takes no one offline there', async () => {
    prefix = testPrefix('id-taken-beat');
    const { node: cutOff, config, stopped, split } = await cutOffNode('gw-fixed', 200);
    try {
      const old = await open(cutOff.port, 't1', 'A');
      await split();
      // Redis lost the claim and its counter meanwhile (restarted empty): the new start still outranks it.
      await inRedis((redis, keys) =>
        redis.del(keys.nodeOwner('gw-fixed'), keys.nodeOwnerGeneration('gw-fixed')),
      );
      gateway = await startTestGateway(config);
      const current = await open(gateway.port, 't1', 'A');
      // The broker stays out of reach: Redis alone tells it.
      expect(await old.closed).toBe(4100);
      await eventually(() => stopped.length === 1, 'onFatal');
      expect(await countedOnline('t1', 'A', 'gw-fixed')).toBe(true);
      proxy!.accept();
      for (let i = 0; i < 20; i += 1)
        await probe!.deliver(prefix, ['u.t1.A'], { id: `e${i}`, tenantId: 't1' });
      await eventually(() => current.eventIds().length === 20, 'all 20 at the new process’s tab');
      expect((await probe!.channel.checkQueue(gateway.queue)).consumerCount).toBe(1);
    } finally {
      await cutOff.close();
    }
  });

  it('goes on after a reconnect when Redis holds an older claim of its id (restored from an earlier copy)', async () => {
    prefix = testPrefix('id-restored');
    const { node, stopped, split } = await cutOffNode('gw-fixed');
    gateway = node;
    const tab = await open(node.port, 't1', 'A');
    // A predecessor's claim, from before this process started (its generation is lower).
    await inRedis(async (redis, keys) => {
      const generation = Number(await redis.get(keys.nodeOwnerGeneration('gw-fixed')));
      await redis.set(keys.nodeOwner('gw-fixed'), `${generation - 1}:predecessor`);
    });
    await split();
    proxy!.accept();
    await eventually(
      async () => (await probe!.channel.checkQueue(node.queue)).consumerCount === 1,
      'reading its queue again',
    );
    await probe!.deliver(prefix, ['u.t1.A'], { id: 'after', tenantId: 't1' });
    await eventually(() => tab.eventIds().includes('after'), 'delivered after the reconnect');
    expect(tab.closeCode).toBeUndefined();
    expect(stopped).toEqual([]);
  });

  it('binds nothing again when its queue outlived the dropped broker connection', async () => {
    prefix = testPrefix('reconnect-kept');
    const target = new URL(inject('rabbitmqUrl'));
    proxy = await TcpProxy.toUrl(target);
    gateway = await startTestGateway(testConfig(prefix, { rabbitmq: { url: proxy.url(target) } }));
    probe = await BrokerProbe.open();
    const a = await open(gateway.port, 't1', 'A');
    const c = await open(gateway.port, 't2', 'C');
    expect(await counter(gateway, 'warren_gateway_binds_total')).toBe(2);

    proxy.cut();
    await eventually(() => proxy!.connections >= 2, 'the node reconnecting');
    // Ready once every step of the reconnect (a rebind included) has run.
    const ready = async () => (await fetch(`http://127.0.0.1:${gateway!.port}/readyz`)).status === 200;
    await eventually(ready, 'ready again');
    expect(await probe.queueExists(gateway.queue)).toBe(true);
    expect(await counter(gateway, 'warren_gateway_binds_total')).toBe(2);
    // The bindings the queue kept still route to the same tabs.
    await probe.deliver(prefix, ['u.t1.A'], { id: 'after', tenantId: 't1' });
    await probe.deliver(prefix, ['u.t2.C'], { id: 'after-c', tenantId: 't2' });
    await eventually(() => a.eventIds().includes('after') && c.eventIds().includes('after-c'), 'after');
    expect(await counter(gateway, 'warren_gateway_binds_total')).toBe(2);
    for (const tab of [a, c]) expect(tab.closeCode).toBeUndefined();
  });

  it('unbinds a key whose grace period ended while the broker was away, once the broker is back', async () => {
    prefix = testPrefix('stray');
    const target = new URL(inject('rabbitmqUrl'));
    proxy = await TcpProxy.toUrl(target);
    gateway = await startTestGateway(
      testConfig(prefix, { rabbitmq: { url: proxy.url(target) }, gateway: { unbindGraceMs: 200 } }),
    );
    probe = await BrokerProbe.open();
    const a = await open(gateway.port, 't1', 'A');
    await a.close();
    tabs = [];
    proxy.refuse();
    proxy.cut();

    // The grace period (200 ms) ends with the broker away: the unbind fails, at once or with the cut
    // connection, and the key is still bound.
    await sleep(1000);
    expect(await probe.routes(prefix, 'u.t1.A')).toBe(true);

    proxy.accept();
    await eventually(async () => !(await probe!.routes(prefix, 'u.t1.A')), 'A unbound', 15_000);
  });

  it('subscribes again, re-declares its queue and re-binds its users when the queue is deleted under it', async () => {
    prefix = testPrefix('cancelled');
    gateway = await startTestGateway(testConfig(prefix));
    probe = await BrokerProbe.open();
    const a = await open(gateway.port, 't1', 'A');
    await probe.deliver(prefix, ['u.t1.A'], { id: 'before', tenantId: 't1' });
    await eventually(() => a.eventIds().includes('before'), 'before');

    // The connection stays up: the broker only cancels the node's consumer (an operator deleting the
    // queue, a queue lost with a cluster node).
    const ch = await probe.model.createChannel();
    await ch.deleteQueue(gateway.queue);
    await ch.close();
    expect(await probe.routes(prefix, 'u.t1.A')).toBe(false);

    await eventually(() => probe!.routes(prefix, 'u.t1.A'), 'A bound again', 15_000);
    await probe.deliver(prefix, ['u.t1.A'], { id: 'after', tenantId: 't1' });
    await eventually(() => a.eventIds().includes('after'), 'the same tab receives again');
    expect(a.eventIds()).toEqual(['before', 'after']);
    expect(a.closeCode).toBeUndefined();
    // What was routed while the queue was gone is lost: the tab is told to resynchronise, once.
    expect(a.frames.filter((f) => f.type === 'error').map((f) => f.type === 'error' && f.code)).toEqual([
      'events_missed',
    ]);
  });

  describe('binds its users again when the deliveries exchange is deleted under its queue', () => {
    // The broker tells no queue that its bindings went with an exchange: the node's probe finds it.
    const heartbeatMs = 300;

    async function deleteDeliveriesExchange(redeclare: boolean): Promise<TestTab> {
      prefix = testPrefix(redeclare ? 'exchange-again' : 'exchange-gone');
      gateway = await startTestGateway(testConfig(prefix, { presence: { heartbeatMs, expiryMs: 3000 } }));
      probe = await BrokerProbe.open();
      const a = await open(gateway.port, 't1', 'A');
      await probe.deliver(prefix, ['u.t1.A'], { id: 'before', tenantId: 't1' });
      await eventually(() => a.eventIds().includes('before'), 'before');

      const ch = await probe.model.createChannel();
      await ch.deleteExchange(`${prefix}.deliveries`);
      // As a resolver reconnecting would: the exchange is back, with no binding on it.
      if (redeclare) await ch.assertExchange(`${prefix}.deliveries`, 'topic', { durable: true });
      await ch.close();
      return a;
    }

    async function receivesAgain(a: TestTab): Promise<void> {
      await eventually(() => probe!.routes(prefix, 'u.t1.A'), 'A bound again', 10_000);
      await probe!.deliver(prefix, ['u.t1.A'], { id: 'after', tenantId: 't1' });
      await eventually(() => a.eventIds().includes('after'), 'the same tab receives again');
      expect(a.eventIds()).toEqual(['before', 'after']);
      expect(a.closeCode).toBeUndefined();
      // What was routed while the bindings were gone is lost: the tab is told to resynchronise, once (a
      // second notice, from a rebind finishing after the first, would come a little later).
      await eventually(() => a.frames.some((f) => f.type === 'error'), 'events_missed');
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(a.frames.filter((f) => f.type === 'error').map((f) => f.type === 'error' && f.code)).toEqual([
        'events_missed',
      ]);
    }

    it('declared again by another process', async () => {
      const a = await deleteDeliveriesExchange(true);
      await receivesAgain(a);
      // Its probes reached its own queue all along, and were neither written to the tab nor counted lost,
      // refused or delivered.
      expect(await counter(gateway!, 'warren_gateway_dropped_deliveries_total')).toBe(0);
      expect(await counter(gateway!, 'warren_gateway_refused_total')).toBe(0);
      expect(await counter(gateway!, 'warren_gateway_deliveries_total')).toBe(2);
    });

    it('declared by nobody: the node declares it', async () => {
      const a = await deleteDeliveriesExchange(false);
      await eventually(() => probe!.exchangeExists(`${prefix}.deliveries`), 'declared again', 10_000);
      await receivesAgain(a);
    });
  });

  it.each([
    ['declared again by another process', true],
    ['still missing', false],
  ])(
    'finds its bindings lost with the exchange (%s) when its broker connection drops before its next probe',
    async (_, redeclare) => {
      // Its queue outlives the drop; the exchange, deleted and declared again meanwhile, took every binding
      // with it. Binding its node key again on the reconnect must not hide that from the probe.
      prefix = testPrefix('exchange-reconnect');
      const target = new URL(inject('rabbitmqUrl'));
      proxy = await TcpProxy.toUrl(target);
      gateway = await startTestGateway(
        testConfig(prefix, {
          rabbitmq: { url: proxy.url(target) },
          // No periodic probe comes first.
          presence: { heartbeatMs: 60_000, expiryMs: 120_000 },
        }),
      );
      probe = await BrokerProbe.open();
      const a = await open(gateway.port, 't1', 'A');
      await probe.deliver(prefix, ['u.t1.A'], { id: 'before', tenantId: 't1' });
      await eventually(() => a.eventIds().includes('before'), 'before');

      const ch = await probe.model.createChannel();
      await ch.deleteExchange(`${prefix}.deliveries`);
      if (redeclare) await ch.assertExchange(`${prefix}.deliveries`, 'topic', { durable: true });
      await ch.close();
      proxy.cut();

      // Still missing, the node declares it as it connects again.
      await eventually(() => probe!.exchangeExists(`${prefix}.deliveries`), 'the exchange there', 10_000);
      // Its user's key bound again, and the tab told what was routed meanwhile went nowhere.
      await eventually(() => probe!.routes(prefix, 'u.t1.A'), 'A bound again', 10_000);
      await eventually(() => a.frames.some((f) => f.type === 'error'), 'events_missed');
      await probe.deliver(prefix, ['u.t1.A'], { id: 'after', tenantId: 't1' });
      await eventually(() => a.eventIds().includes('after'), 'the same tab receives again');
      expect(a.closeCode).toBeUndefined();
      // Told once: a second notice, from a rebind finishing after the first, would be here by now.
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(a.frames.filter((f) => f.type === 'error').map((f) => f.type === 'error' && f.code)).toEqual([
        'events_missed',
      ]);
    },
  );

  it('drains: tabs get 4100, then the node’s queue and bindings are gone', async () => {
    prefix = testPrefix('drain');
    gateway = await startTestGateway(testConfig(prefix, { gateway: { drainWindowMs: 300 } }));
    probe = await BrokerProbe.open();
    const a = await open(gateway.port, 't1', 'A');
    const b = await open(gateway.port, 't1', 'B');
    expect(await probe.routes(prefix, 'u.t1.A')).toBe(true);

    await gateway.drain();
    expect(await a.closed).toBe(4100);
    expect(await b.closed).toBe(4100);
    expect(await probe.queueExists(gateway.queue)).toBe(false);
    expect(await probe.routes(prefix, 'u.t1.A')).toBe(false);
    expect(await probe.routes(prefix, 'u.t1.B')).toBe(false);
    expect(await counter(gateway, 'warren_gateway_unbinds_total')).toBe(2);
  });
});

describe('a drain while Redis hangs', () => {
  it('still unbinds its users and deletes its queue: they need only the broker', async () => {
    const prefix = testPrefix('drain-redis-stall');
    const target = new URL(inject('redisUrl'));
    const proxy = await TcpProxy.toUrl(target);
    const gateway = await startTestGateway(
      testConfig(prefix, {
        redis: { url: proxy.url(target) },
        gateway: { drainWindowMs: 0, drainTimeoutMs: 4000 },
      }),
    );
    const probe = await BrokerProbe.open();
    try {
      await openTab(gateway.port, await token({ sub: 'A', tid: 't1' }));
      await openTab(gateway.port, await token({ sub: 'B', tid: 't1' }));
      expect(await probe.routes(prefix, 'u.t1.A')).toBe(true);
      // Redis hangs (a failover, a partition) as the node is told to drain: the tabs' offline steps wait.
      proxy.stall();
      await gateway.close();
      expect(await probe.routes(prefix, 'u.t1.A')).toBe(false);
      expect(await probe.routes(prefix, 'u.t1.B')).toBe(false);
      expect(await probe.queueExists(gateway.queue)).toBe(false);
    } finally {
      proxy.flow();
      await probe.deleteExchangesAndQueues(prefix, [gateway.queue]);
      await probe.close();
      await proxy.close();
      await cleanRedis(prefix);
    }
  });
});

describe('a drain while the broker hangs', () => {
  it('closes its tabs with 4100 and gives up within gateway.drainTimeoutMs', async () => {
    const prefix = testPrefix('drain-broker-stall');
    const target = new URL(inject('rabbitmqUrl'));
    const proxy = await TcpProxy.toUrl(target);
    const gateway = await startTestGateway(
      testConfig(prefix, {
        rabbitmq: { url: proxy.url(target) },
        gateway: { drainWindowMs: 0, drainTimeoutMs: 2000 },
      }),
    );
    const probe = await BrokerProbe.open();
    try {
      const tab = await openTab(gateway.port, await token({ sub: 'A', tid: 't1' }));
      // The broker reads nothing more (a resource alarm, a partition): the unbind and the queue's deletion
      // wait for good. An orchestrator's stop must not.
      proxy.stall();
      const started = Date.now();
      await expect(gateway.drain()).rejects.toThrow(/gateway drain timed out after 2000 ms/);
      expect(Date.now() - started).toBeLessThan(4000);
      expect(await tab.closed).toBe(4100);
    } finally {
      // The broker answers again: the close ends, and what the drain left is cleaned up.
      proxy.flow();
      await gateway.close();
      await probe.deleteExchangesAndQueues(prefix, [gateway.queue]);
      await probe.close();
      await proxy.close();
      await cleanRedis(prefix);
    }
  });
});
