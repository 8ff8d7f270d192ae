import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { Keys } from '../../src/store/keys.js';
import roaring from 'roaring';
import { DeliveryHeader } from '../../src/protocol/delivery.js';
import { nodeKey } from '../../src/protocol/ids.js';
import { createRedis, serverStamp, watchServer } from '../../src/store/redis.js';
import { silentLogger } from '../../src/shared/logger.js';
import {
  BrokerProbe,
  counter,
  eventually,
  openTab,
  removeInstallation,
  startTestGateway,
  testConfig,
  testPrefix,
  token,
} from '../support/harness.js';
import { hasRedisServer, SecondRedis } from '../support/second-redis.js';
import { TcpProxy } from '../support/tcp-proxy.js';

/**
 * A Redis failover behind one address, played with a second Redis server of the machine's own (an empty
 * one: every write of the first is "lost") and a proxy the test points at either.
 */

// The second server is this machine's own redis-server; where there is none (services in containers only),
// these tests cannot play a failover and are skipped.

describe.skipIf(!hasRedisServer)('a Redis server changing behind its address', () => {
  const main = new URL(inject('redisUrl'));
  let second: SecondRedis;
  beforeAll(async () => {
    second = await SecondRedis.start();
  });
  afterAll(() => second?.stop());

  /**
   * A gateway reaching Redis through a proxy the test can point at the second, emptied server; `original`
   * and `fresh` talk to the two servers directly.
   */
  async function failoverStage(name: string) {
    const prefix = testPrefix(name);
    const proxy = await TcpProxy.toUrl(main);
    const gateway = await startTestGateway(
      testConfig(prefix, {
        redis: { url: proxy.url(main) },
        presence: { heartbeatMs: 60_000, expiryMs: 180_000 },
      }),
    );
    const fresh = second.client();
    await fresh.flushall();
    const original = new Redis(inject('redisUrl'));
    return {
      prefix,
      keys: new Keys(prefix),
      proxy,
      gateway,
      fresh,
      original,
      /** The proxy's connections go to the second server from now on. */
      failOver: () => {
        proxy.retarget('127.0.0.1', second.port);
        proxy.cut();
      },
      close: async () => {
        fresh.disconnect();
        original.disconnect();
        await removeInstallation(prefix, { gateways: [gateway] });
        await proxy.close();
      },
    };
  }

  it('is told apart from a reconnect to the same server', async () => {
    const proxy = await TcpProxy.toUrl(main);
    const redis = await createRedis({
      url: proxy.url(main),
      name: 'warren-test-watch',
      logger: silentLogger(),
    });
    let changes = 0;
    const watch = await watchServer(redis, () => (changes += 1), silentLogger());
    const first = watch.stamp;
    expect(first).toMatch(/^[\w-]{12}$/);
    // The watcher's INFO goes first on the new connection: once this one answers, it has decided.
    const reconnected = async () => {
      await new Promise((resolve) => redis.once('ready', resolve));
      await redis.info('server');
    };
    try {
      let back = reconnected();
      proxy.cut();
      await back;
      expect(changes).toBe(0);
      expect(watch.stamp).toBe(first);

      back = reconnected();
      proxy.retarget('127.0.0.1', second.port);
      proxy.cut();
      await back;
      expect(changes).toBe(1);
      expect(watch.settled).toBe(true);
      expect(watch.stamp).toMatch(/^[\w-]{12}$/);
      expect(watch.stamp).not.toBe(first);
    } finally {
      watch.stop();
      redis.disconnect();
      await proxy.close();
    }
  });

  it.each(['everything', 'presence'] as const)(
    'a gateway announces its users on the new server at once, not a heartbeat later (lost: %s)',
    async (lost) => {
      const stage = await failoverStage('redis-change');
      const { keys, gateway, fresh, original } = stage;
      try {
        const tab = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
        expect(await fresh.hget(keys.ids('t1'), 'ann')).toBeNull();

        if (lost === 'presence') {
          // The replica got the node's heartbeat and ann's id, but not her presence.
          const bit = await original.hget(keys.ids('t1'), 'ann');
          await fresh.zadd(keys.nodes(), Date.now(), gateway.nodeId);
          await fresh.hset(keys.ids('t1'), 'ann', String(bit));
          await fresh.hset(keys.reverseIds('t1'), String(bit), 'ann');
        }
        stage.failOver();
        const online = async () => {
          const bit = await fresh.hget(keys.ids('t1'), 'ann');
          return bit !== null && (await fresh.getbit(keys.online('t1', gateway.nodeId), Number(bit))) === 1;
        };
        await eventually(online, 'ann announced', 5_000);
        // Resolvers may have resolved events without ann meanwhile: the tab is told to resynchronise.
        await eventually(
          () => tab.frames.some((f) => f.type === 'error' && f.code === 'events_missed'),
          'events_missed',
        );
        tab.ws.terminate();
      } finally {
        await stage.close();
      }
    },
  );

  it('a gateway drops node-routed deliveries resolved against the old server, whose bits are now others’', async () => {
    const stage = await failoverStage('redis-change-bits');
    const { prefix, keys, gateway, fresh, original } = stage;
    const probe = await BrokerProbe.open();
    try {
      const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
      const annBit = Number(await original.hget(keys.ids('t1'), 'ann'));
      const oldServer = await serverStamp(original);
      // The promoted replica lost ann's id and gave her bit to dave, a user of the same node.
      await fresh.hset(keys.ids('t1'), 'dave', String(annBit));
      await fresh.hset(keys.reverseIds('t1'), String(annBit), 'dave');
      const dave = await openTab(gateway.port, await token({ sub: 'dave', tid: 't1' }));
      stage.failOver();
      await eventually(
        () => dave.frames.some((f) => f.type === 'error' && f.code === 'events_missed'),
        'the node announced again on the new server',
      );
      expect(Number(await fresh.hget(keys.ids('t1'), 'dave'))).toBe(annBit);
      const newServer = await serverStamp(fresh);
      expect(newServer).not.toBe(oldServer);

      // Resolved for ann before the failover (still in the node's queue, or from a resolver that has not
      // noticed it yet), then one resolved on the new server for dave: the same bit.
      const forBit = (stamp: string | undefined) => ({
        [DeliveryHeader.Recipients]: new roaring.RoaringBitmap32([annBit]).serialize('portable'),
        [DeliveryHeader.IdMap]: stamp,
      });
      await probe.deliver(
        prefix,
        [nodeKey(gateway.nodeId)],
        { id: 'for-ann', tenantId: 't1' },
        forBit(oldServer),
      );
      await probe.deliver(
        prefix,
        [nodeKey(gateway.nodeId)],
        { id: 'for-dave', tenantId: 't1' },
        forBit(newServer),
      );
      await eventually(() => dave.eventIds().includes('for-dave'), 'dave’s event');
      expect(dave.eventIds()).toEqual(['for-dave']);
      expect(ann.eventIds()).toEqual([]);
      expect(
        await counter(gateway, 'warren_gateway_dropped_deliveries_total', { reason: 'id_map_changed' }),
      ).toBe(1);
      ann.ws.terminate();
      dave.ws.terminate();
    } finally {
      await probe.close();
      await stage.close();
    }
  });
});
