import { describe, expect, it } from 'vitest';
import { TenantView } from '../../src/resolver/tenant-view.js';
import { withWarrenRedis } from '../support/harness.js';

describe('a resolver’s view of a tenant', () => {
  it('keeps nothing of a presence snapshot that failed half-way', async () => {
    await withWarrenRedis('view', async (redis, keys) => {
      // Two nodes: n1 holds alice (bit 0); n2's online key is unreadable as a bitmap, so the snapshot
      // fails after loading n1.
      await redis.zadd(keys.nodes(), 1, 'n1', 2, 'n2');
      await redis.hset(keys.reverseIds('t1'), '0', 'alice');
      await redis.setbit(keys.online('t1', 'n1'), 0, 1);
      await redis.hset(keys.online('t1', 'n2'), 'not', 'a bitmap');
      const view = new TenantView(redis, keys, 't1', new Set());
      await expect(view.sync()).rejects.toThrow(/WRONGTYPE/);

      // Meanwhile alice went offline and n2's key was repaired: the retry sees Redis as it is now.
      await redis.setbit(keys.online('t1', 'n1'), 0, 0);
      await redis.del(keys.online('t1', 'n2'));
      await view.sync();
      expect(view.online.bitmap.toArray()).toEqual([]);
    });
  });
});
