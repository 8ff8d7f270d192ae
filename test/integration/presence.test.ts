import { Redis } from 'ioredis';
import { describe, expect, inject, it } from 'vitest';
import { declareGatewayQueue, declareTopology, topologyNames } from '../../src/broker/topology.js';
import { startResolver, type Resolver } from '../../src/resolver/main.js';
import type { Gateway } from '../../src/gateway/main.js';
import { Keys } from '../../src/store/keys.js';
import { PresenceStore } from '../../src/store/presence-store.js';
import { TenantView } from '../../src/resolver/tenant-view.js';
import { withWarrenCommands } from '../../src/store/redis.js';
import {
  BrokerProbe,
  cleanRedis,
  connectPublisher,
  counter,
  eventually,
  removeInstallation,
  testLogger,
  openTab,
  startTestGateway,
  testConfig,
  testPrefix,
  token,
  withWarrenRedis,
} from '../support/harness.js';
import { TcpProxy } from '../support/tcp-proxy.js';

const EXPIRY_MS = 15_000;
const stats = { connections: 1, users: 1, startedAt: 0 };

describe('presence of gateway nodes in Redis', () => {
  it('a node started under the id of one that died holding users does not keep them online or bound', async () => {
    await withWarrenRedis('presence-restart', async (redis, keys) => {
      // The process that had the id: it announced ann and bob, bound their keys, then died without
      // cleaning up.
      const before = new PresenceStore(redis, keys);
      await before.heartbeat('ward-gw', stats, EXPIRY_MS);
      await before.online('ward-gw', 'acme', ['ann', 'bob']);
      expect(await before.onlineCount('acme', ['ward-gw'])).toBe(2);
      const names = topologyNames(keys.prefix);
      const probe = await BrokerProbe.open();
      const channel = await probe.model.createChannel();
      await declareTopology(channel, names, { queueType: 'classic' });
      await declareGatewayQueue(channel, names.gatewayQueue('ward-gw'), {
        maxLength: 1000,
        dropped: names.gatewayDropped('ward-gw'),
      });
      await channel.bindQueue(names.gatewayQueue('ward-gw'), names.deliveries, 'u.acme.ann');
      await channel.close();
      expect(await probe.routes(keys.prefix, 'u.acme.ann')).toBe(true);

      // Its successor starts within the expiry, under the same id, and beats at once.
      const gateway = await startTestGateway(testConfig(keys.prefix, { gateway: { id: 'ward-gw' } }));
      try {
        expect(gateway.nodeId).toBe('ward-gw');
        expect(await before.onlineCount('acme', ['ward-gw'])).toBe(0);
        // Nothing in the new process knows ann's key: it would never be unbound.
        expect(await probe.routes(keys.prefix, 'u.acme.ann')).toBe(false);
      } finally {
        await gateway.close();
        await probe.deleteExchangesAndQueues(keys.prefix, [gateway.queue]);
        await probe.close();
      }
    });
  });

  it('forgetting a node whose record of tenants was lost still takes its users offline', async () => {
    await withWarrenRedis('presence-lost-record', async (redis, keys) => {
      const before = new PresenceStore(redis, keys);
      await before.heartbeat('ward-gw', stats, EXPIRY_MS);
      await before.online('ward-gw', 'acme', ['ann']);
      // A resolver's view, up while the node held ann.
      const upBefore = new TenantView(redis, keys, 'acme', new Set());
      await upBefore.sync();
      expect(upBefore.resolveBits({ users: ['ann'] }).size).toBe(1);
      // The record of the tenants the node announced users in is lost (deleted by hand, or the node's
      // announcement landing just after a sweep read it), then the node is forgotten: by a sweep, or by
      // the next process of its fixed id, which beats on.
      await redis.del(keys.nodeTenants('ward-gw'));
      const after = new PresenceStore(redis, keys);
      await after.forgetNode('ward-gw');
      await after.heartbeat('ward-gw', stats, EXPIRY_MS);
      // ann has no tab anywhere: she counts online in no view, old or new, nor in `warren status`.
      await upBefore.sync();
      expect(upBefore.resolveBits({ users: ['ann'] }).size).toBe(0);
      const fresh = new TenantView(redis, keys, 'acme', new Set());
      await fresh.sync();
      expect(fresh.resolveBits({ users: ['ann'] }).size).toBe(0);
      expect(await after.onlineCount('acme', ['ward-gw'])).toBe(0);
      expect(await redis.exists(keys.online('acme', 'ward-gw'))).toBe(0);
    });
  });

  it('an offline landing after the node’s presence was forgotten leaves no key behind', async () => {
    await withWarrenRedis('presence-late-off', async (redis, keys) => {
      const store = new PresenceStore(redis, keys);
      await store.heartbeat('gone-gw', stats, EXPIRY_MS);
      await store.online('gone-gw', 'acme', ['ann']);
      // Forgotten (a drain's last step, or a sweep), then a tab's offline step, held up behind its user's
      // bind, lands: a node id that never beats again would keep a zeroed bitmap of up to bit/8 bytes, for
      // good.
      await store.forgetNode('gone-gw');
      await store.offline('gone-gw', 'acme', 80_000);
      expect(await redis.exists(keys.online('acme', 'gone-gw'))).toBe(0);
      // Still cleared where the node's bitmap is there.
      const [bit] = await store.online('gone-gw', 'acme', ['ann']);
      await store.offline('gone-gw', 'acme', bit as number);
      expect(await store.onlineCount('acme', ['gone-gw'])).toBe(0);
    });
  });

  it('clears what a dead process of its id left in the presence on a later beat when it could not at start', async () => {
    await withWarrenRedis('presence-restart-late', async (redis, keys) => {
      // The process that had the id announced ann and bob, then died without cleaning up.
      const before = new PresenceStore(redis, keys);
      await before.heartbeat('ward-gw2', stats, EXPIRY_MS);
      await before.online('ward-gw2', 'acme', ['ann', 'bob']);
      // Its successor cannot clear them at start, as with Redis away then: the tenant's change log is
      // unwritable, which fails the clearing script.
      await redis.del(keys.log('acme'));
      await redis.hset(keys.log('acme'), 'not', 'a stream');
      const gateway = await startTestGateway(
        testConfig(keys.prefix, { gateway: { id: 'ward-gw2' }, presence: { heartbeatMs: 200 } }),
      );
      try {
        expect(await before.onlineCount('acme', ['ward-gw2'])).toBe(2);
        // A user of another tenant comes to the new process meanwhile.
        const tab = await openTab(gateway.port, await token({ sub: 'cat', tid: 'zeta' }));
        expect(await before.onlineCount('zeta', ['ward-gw2'])).toBe(1);
        // Redis answers again: a beat clears them. Otherwise ann and bob count online for as long as the
        // new process beats, with no tab anywhere.
        await redis.del(keys.log('acme'));
        await eventually(
          async () => (await before.onlineCount('acme', ['ward-gw2'])) === 0,
          'the dead process’s users offline',
          5000,
        );
        // Cleared with them, the new process's own user is announced again.
        await eventually(
          async () => (await before.onlineCount('zeta', ['ward-gw2'])) === 1,
          'cat online again',
          5000,
        );
        expect(await before.onlineCount('acme', ['ward-gw2'])).toBe(0);
        tab.ws.terminate();
      } finally {
        await gateway.close();
        const probe = await BrokerProbe.open();
        await probe.deleteExchangesAndQueues(keys.prefix, [gateway.queue]);
        await probe.close();
      }
    });
  });

  /**
   * A gateway of a prefix of its own, beating every 100 ms and counted dead after 600 ms, that reaches Redis
   * through a proxy of the test's; everything it made is removed after `run`.
   */
  async function behindRedisProxy(
    name: string,
    redis: { socketTimeoutMs?: number },
    run: (gateway: Gateway, proxy: TcpProxy) => Promise<void>,
  ): Promise<void> {
    const prefix = testPrefix(name);
    const target = new URL(inject('redisUrl'));
    const proxy = await TcpProxy.toUrl(target);
    const gateway = await startTestGateway(
      testConfig(prefix, {
        redis: { url: proxy.url(target), ...redis },
        presence: { heartbeatMs: 100, expiryMs: 600 },
      }),
    );
    try {
      await run(gateway, proxy);
    } finally {
      proxy.flow();
      await gateway.close();
      const probe = await BrokerProbe.open();
      await probe.deleteExchangesAndQueues(prefix, [gateway.queue]);
      await probe.close();
      await proxy.close();
      await cleanRedis(prefix);
    }
  }

  it('tells its tabs to resynchronise after it could not beat for longer than the expiry, swept or not', async () => {
    await behindRedisProxy('presence-silent', {}, async (gateway, proxy) => {
      const tab = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
      // Redis hangs for longer than the expiry: resolvers stop counting ann while the node cannot beat.
      // Nobody sweeps the node (there is no other one), so its next beat finds it still listed.
      proxy.stall();
      await new Promise((r) => setTimeout(r, 1000));
      proxy.flow();
      await eventually(
        () => tab.frames.some((f) => f.type === 'error' && f.code === 'events_missed'),
        'events_missed',
      );
      expect(tab.closeCode).toBeUndefined();
      tab.ws.terminate();
    });
  });

  it('makes its Redis connection again when the one it has goes silent without closing', async () => {
    await behindRedisProxy('presence-blackhole', { socketTimeoutMs: 1000 }, async (gateway, proxy) => {
      const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
      const before = proxy.connections;
      // The connection goes quiet for good (its NAT entry dropped, say): nothing ever comes back on it.
      proxy.blackhole();
      await eventually(() => proxy.connections > before, 'a new connection', 10_000);
      // Ready once the new connection is (until then upgrades get 503, as while Redis is away).
      await eventually(
        async () => (await fetch(`http://127.0.0.1:${gateway.port}/readyz`)).status === 200,
        'ready again',
        10_000,
      );
      // Served again: a new user is announced (presence, on Redis) and welcomed.
      const bob = await openTab(gateway.port, await token({ sub: 'bob', tid: 't1' }));
      expect(bob.welcome?.userId).toBe('bob');
      // ann's tab was told it may have missed events while the node could not beat.
      await eventually(
        () => ann.frames.some((f) => f.type === 'error' && f.code === 'events_missed'),
        'events_missed',
      );
      for (const tab of [ann, bob]) tab.ws.terminate();
    });
  });

  it('announces its users again when its first beat failed and tabs came before it was counted', async () => {
    const prefix = testPrefix('presence-unlisted');
    const keys = new Keys(prefix);
    const redis = new Redis(inject('redisUrl'));
    // The list of nodes unreadable as one: the node's first beat fails, as with Redis away at start.
    await redis.hset(keys.nodes(), 'not', 'a sorted set');
    const config = testConfig(prefix, { presence: { heartbeatMs: 3000 } });
    const gateway = await startTestGateway(config);
    const warren = await connectPublisher(config);
    let resolver: Resolver | undefined;
    try {
      const tab = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
      await redis.del(keys.nodes());
      // A resolver builds t1's view before the node's next beat lists it: ann is not in it.
      resolver = await startResolver(config, { logger: testLogger(config) });
      const event = (id: string) => ({ id, tenantId: 't1', type: 'x', audience: { users: ['ann'] } });
      await warren.publishEvent(event('before'));
      const started = resolver;
      await eventually(
        async () =>
          (await counter(started, 'warren_resolver_events_total', { outcome: 'no_recipients' })) === 1,
        'the first event resolved without ann',
      );
      // The next beat lists the node, which announces ann again: the view learns of her, and the tab is
      // told it may have missed events.
      await eventually(
        () => tab.frames.some((f) => f.type === 'error' && f.code === 'events_missed'),
        'events_missed',
        10_000,
      );
      await warren.publishEvent(event('after'));
      await eventually(() => tab.eventIds().includes('after'), 'the event after the beat');
      expect(tab.eventIds()).toEqual(['after']);
      tab.ws.terminate();
    } finally {
      redis.disconnect();
      await removeInstallation(prefix, { warren, resolvers: [resolver], gateways: [gateway] });
    }
  }, 30_000);

  it('keeps beating while a drain closes its tabs over a window longer than the expiry', async () => {
    const prefix = testPrefix('presence-drain');
    const expiryMs = 1000;
    const gateway = await startTestGateway(
      testConfig(prefix, {
        presence: { heartbeatMs: 200, expiryMs },
        gateway: { drainWindowMs: 3000, drainTimeoutMs: 10_000 },
      }),
    );
    const redis = new Redis(inject('redisUrl'));
    try {
      const presence = new PresenceStore(withWarrenCommands(redis), new Keys(prefix));
      const tabs = await Promise.all(
        Array.from({ length: 20 }, async () => openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }))),
      );
      let drained = false;
      const drainStarted = Date.now();
      const drain = gateway.drain().then(() => (drained = true));
      // While any tab is still open, resolvers must go on counting the node (and so ann) alive.
      let openWhileDead = 0;
      // Checks with tabs still open once the drain has lasted longer than the expiry: the case in question
      // (however many checks a loaded machine gets through).
      let checksPastExpiry = 0;
      while (!drained) {
        const dead = await presence.deadNodes(expiryMs);
        const open = tabs.filter((t) => t.closeCode === undefined).length;
        if (!drained && dead.includes(gateway.nodeId) && open > 0) openWhileDead = open;
        if (open > 0 && Date.now() - drainStarted > expiryMs + 200) checksPastExpiry += 1;
        await new Promise((r) => setTimeout(r, 100));
      }
      await drain;
      expect(checksPastExpiry).toBeGreaterThan(0);
      expect(openWhileDead).toBe(0);
      for (const tab of tabs) expect(await tab.closed).toBe(4100);
    } finally {
      redis.disconnect();
      await removeInstallation(prefix, { gateways: [gateway] });
    }
  }, 30_000);

  it('counts a tenant’s online users over several nodes with reads only (a replica, a full Redis)', async () => {
    await withWarrenRedis('presence-count', async (redis, keys) => {
      const presence = new PresenceStore(redis, keys);
      await presence.online('n1', 'acme', ['ann', 'bob']);
      await presence.online('n2', 'acme', ['bob', 'cy']);
      await presence.online('n2', 'globex', ['dee']);
      // A user allowed to read and nothing else: a write (BITOP into a scratch key) would be refused.
      const user = `warren-test-ro-${process.pid}`;
      await redis.call('ACL', 'SETUSER', user, 'on', '>ro-secret', '~*', '+@read', '+@connection');
      const url = new URL(inject('redisUrl'));
      url.username = user;
      url.password = 'ro-secret';
      const readOnly = new Redis(url.toString());
      try {
        await expect(readOnly.set(keys.nodes(), 'x')).rejects.toThrow(/NOPERM/);
        const counted = new PresenceStore(withWarrenCommands(readOnly), keys);
        expect(await counted.onlineCount('acme', ['n1', 'n2'])).toBe(3);
        expect(await counted.onlineCount('acme', ['n2', 'gone'])).toBe(2);
        expect(await counted.onlineCount('globex', ['n1', 'n2'])).toBe(1);
        expect(await counted.onlineCount('acme', [])).toBe(0);
      } finally {
        readOnly.disconnect();
        await redis.call('ACL', 'DELUSER', user);
      }
    });
  });

  it('never hands out a bit another user holds, even when the id counter was lost', async () => {
    await withWarrenRedis('presence-idseq', async (redis, keys) => {
      const store = new PresenceStore(redis, keys);
      await store.heartbeat('n1', stats, EXPIRY_MS);
      expect(await store.online('n1', 'acme', ['ann', 'bob'])).toEqual([0, 1]);
      // The counter is gone (evicted, or Redis restored from an older copy); the maps are intact.
      await redis.del(keys.idSeq('acme'));
      expect(await store.online('n1', 'acme', ['cat'])).toEqual([2]);
      expect(await store.online('n1', 'acme', ['dan'])).toEqual([3]);
      expect(await redis.hgetall(keys.reverseIds('acme'))).toEqual({
        0: 'ann',
        1: 'bob',
        2: 'cat',
        3: 'dan',
      });
      // The reverse map is lost as well: the ids listed still say which bits are taken.
      await redis.del(keys.idSeq('acme'), keys.reverseIds('acme'));
      expect(await store.online('n1', 'acme', ['eve'])).toEqual([4]);
      expect(await redis.hgetall(keys.reverseIds('acme'))).toEqual({ 4: 'eve' });
      // A second loss, after the first left gaps: the id map lost ann and bob, who came back under new bits
      // (5, 6), leaving bits 0 and 1 unlisted; then the counter and the reverse map went again. Bits above
      // the count of users listed are in use too.
      await redis.hdel(keys.ids('acme'), 'ann', 'bob');
      expect(await store.online('n1', 'acme', ['ann', 'bob'])).toEqual([5, 6]);
      await redis.del(keys.idSeq('acme'), keys.reverseIds('acme'));
      expect(await store.online('n1', 'acme', ['fay', 'gus'])).toEqual([7, 8]);
      const bits = Object.values(await redis.hgetall(keys.ids('acme')));
      expect(new Set(bits).size).toBe(bits.length);
    });
  });

  it('the dead-node sweep spares a node that beat again after the list of dead nodes was read', async () => {
    await withWarrenRedis('presence-sweep', async (redis, keys) => {
      const store = new PresenceStore(redis, keys);
      await store.heartbeat('n1', stats, EXPIRY_MS);
      await store.online('n1', 'acme', ['ann']);
      // Silent for a minute: listed as dead.
      await redis.zadd(keys.nodes(), Date.now() - 60_000, 'n1');
      expect(await store.deadNodes(EXPIRY_MS)).toEqual(['n1']);

      // Back before the sweeper got to it (a long pause, say), with a new user. Still listed, but it can
      // tell from the beat how long resolvers had counted it dead.
      const back = await store.heartbeat('n1', stats, EXPIRY_MS);
      expect(back.returned).toBe(false);
      expect(back.silentMs).toBeGreaterThanOrEqual(59_000);
      await store.online('n1', 'acme', ['bob']);
      expect(await store.forgetIfDead('n1', EXPIRY_MS)).toBe(false);
      expect(await store.onlineCount('acme', ['n1'])).toBe(2);

      // Silent again, for real this time.
      await redis.zadd(keys.nodes(), Date.now() - 60_000, 'n1');
      expect(await store.sweepDeadNodes(EXPIRY_MS)).toEqual(['n1']);
      expect(await store.onlineCount('acme', ['n1'])).toBe(0);
      // Off the list: its next beat counts as a return, so it would announce its users again.
      expect((await store.heartbeat('n1', stats, EXPIRY_MS)).returned).toBe(true);
    });
  });
});
