import { afterEach, describe, expect, inject, it } from 'vitest';
import type { Resolver } from '../../src/resolver/main.js';
import type { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { Keys } from '../../src/store/keys.js';
import { PresenceStore } from '../../src/store/presence-store.js';
import { createRedis, type WarrenRedis } from '../../src/store/redis.js';
import { silentLogger } from '../../src/shared/logger.js';
import { DeliverySpy } from '../support/delivery-spy.js';
import {
  connectPublisher,
  eventually,
  removeInstallation,
  startTestResolver,
  testConfig,
  testPrefix,
} from '../support/harness.js';

const stats = { connections: 1, users: 1, startedAt: 0 };

// A node declared dead must stop counting in every resolver's views at the next liveness poll (NodeLiveness
// → TenantView.setDead), not only once someone sweeps its keys: the sweep (every fifth poll in a resolver,
// every beat in a gateway) writes a `nd` entry the views also apply, which hides a broken immediate path
// wherever a sweep can run. Here the sweep cannot: the dead node's cleanup is refused by Redis (a tenant it
// announced has a change log of the wrong type), so its keys stay, listed and set, and only the liveness
// path can take its user out.
describe('a gateway node declared dead', () => {
  let redis: WarrenRedis | undefined;
  let resolver: Resolver | undefined;
  let warren: WarrenPublisher | undefined;
  let spy: DeliverySpy | undefined;
  let prefix = '';

  afterEach(async () => {
    await spy?.close();
    await removeInstallation(prefix, { warren, resolvers: [resolver] });
    await redis?.quit();
    spy = resolver = warren = redis = undefined;
  });

  it('stops counting its users in a resolver’s views at its next liveness poll, before any sweep', async () => {
    prefix = testPrefix('liveness');
    const config = testConfig(prefix);
    const keys = new Keys(prefix);
    redis = await createRedis({
      url: inject('redisUrl'),
      name: 'warren-test-liveness',
      logger: silentLogger(),
    });
    const presence = new PresenceStore(redis, keys);
    // Two nodes the test plays: ann's will die, bob's lives on.
    await presence.heartbeat('gw-live', stats, config.presence.expiryMs);
    await presence.heartbeat('gw-dead', stats, config.presence.expiryMs);
    await presence.online('gw-live', 'acme', ['bob']);
    const [annBit] = await presence.online('gw-dead', 'acme', ['ann']);
    // Its cleanup fails before it touches anything: Redis refuses to read its record of tenants.
    await redis.del(keys.nodeTenants('gw-dead'));
    await redis.set(keys.nodeTenants('gw-dead'), 'not a set');
    await expect(presence.forgetNode('gw-dead')).rejects.toThrow(/WRONGTYPE/);

    resolver = await startTestResolver(config);
    spy = await DeliverySpy.start(prefix);
    warren = await connectPublisher(config);
    const audience = { users: ['ann', 'bob'] };
    const recipients = async (id: string): Promise<string[]> => {
      await warren!.publishEvent({ id, tenantId: 'acme', type: 'test.event', audience });
      await eventually(() => spy!.copies(id) > 0, `${id} routed`);
      return spy!.recipients(id);
    };
    // The view of acme is built now, with both nodes alive: only a change of the dead set can alter it.
    expect(await recipients('before')).toEqual(['u.acme.ann', 'u.acme.bob']);

    await presence.heartbeat('gw-live', stats, config.presence.expiryMs);
    // ann's node last beat a minute ago, on Redis's clock: dead by every reader of the list from now on.
    const redisNow = await redis.time();
    await redis.zadd(keys.nodes(), Number(redisNow[0]) * 1000 - 60_000, 'gw-dead');
    let n = 0;
    // One poll is a second; a few of them, a sweep among them, leave room for a loaded machine.
    await eventually(
      async () => (await recipients(`after-${(n += 1)}`)).join() === 'u.acme.bob',
      'ann no longer routed to',
      8000,
    );

    // Nothing was swept meanwhile: the node is still listed, its bitmap still holds ann, and acme's log
    // says nothing of it going.
    expect(await redis.zscore(keys.nodes(), 'gw-dead')).not.toBeNull();
    expect(await redis.getbit(keys.online('acme', 'gw-dead'), annBit!)).toBe(1);
    const log = await redis.xrange(keys.log('acme'), '-', '+');
    expect(log.filter(([, fields]) => fields.includes('nd'))).toEqual([]);
  });
});
