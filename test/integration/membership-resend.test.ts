import { describe, expect, inject, it } from 'vitest';
import { silentLogger } from '../../src/shared/logger.js';
import { MembershipStore } from '../../src/store/membership-store.js';
import { closeRedis, createRedis } from '../../src/store/redis.js';
import { withWarrenRedis } from '../support/harness.js';
import { TcpProxy } from '../support/tcp-proxy.js';

// ioredis sends a command whose answer never came again once it has made a new connection. A membership
// change sent that way may land after others made meanwhile: an add resent after a removal would give the
// removed user back the team's events. A change with a deadline is refused by Redis past it.

describe('a membership change resent after its connection went silent', () => {
  it('is refused by Redis once past its deadline (imports), instead of landing late', async () => {
    await withWarrenRedis('resend', async (direct, keys) => {
      const target = new URL(inject('redisUrl'));
      const proxy = await TcpProxy.toUrl(target);
      const redis = await createRedis({
        url: proxy.url(target),
        name: 'warren-test-resend',
        logger: silentLogger(),
        socketTimeoutMs: 1000,
      });
      try {
        const store = new MembershipStore(redis, keys);
        const add = {
          tenantId: 'acme',
          op: 'add' as const,
          kind: 'user-team' as const,
          userId: 'ann',
          teamId: 'icu',
        };
        // Warm: the clock offset the deadline is set from is measured before the connection goes silent.
        await store.applyBulk('acme', [{ ...add, userId: 'bob' }], 500);
        proxy.blackhole();
        // Sent into the silence; a second later the connection is made again and the batch resent, past
        // its deadline.
        await expect(store.applyBulk('acme', [add], 500)).rejects.toThrow(
          /after its deadline and was refused/,
        );
        const bit = await direct.hget(keys.ids('acme'), 'ann');
        const member =
          bit !== null && (await direct.getbit(keys.teamUsers('acme', 'icu'), Number(bit))) === 1;
        expect(member).toBe(false);
        // The connection made again serves.
        expect(await store.applyBulk('acme', [add], 5000)).toBe(1);
      } finally {
        await closeRedis(redis);
        await proxy.close();
      }
    });
  });
});
