import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/shared/logger.js';
import { Keys } from '../../src/store/keys.js';
import { PayloadStore } from '../../src/store/payload-store.js';
import { createRedis, withWarrenCommands } from '../../src/store/redis.js';
import { RevocationStore } from '../../src/store/revocation-store.js';
import { hasRedisServer, SecondRedis } from '../support/second-redis.js';

// A revocation lives under a key with a lifetime, as a payload does: a Redis allowed to evict keys with a
// lifetime (volatile-*) may drop it when full, and a token it refused connects again.

describe.skipIf(!hasRedisServer)('a Redis that may evict revocations', () => {
  it('evicts them when full under volatile-lru, so servers refuse it', async () => {
    const server = await SecondRedis.start(['--maxmemory', '4mb', '--maxmemory-policy', 'volatile-lru']);
    const raw = new Redis({ port: server.port, host: '127.0.0.1' });
    try {
      const redis = withWarrenCommands(raw);
      const keys = new Keys('t-evict');
      const revocations = new RevocationStore(redis, keys);
      await revocations.revoke('acme', 'u42', 86_400);
      expect(await revocations.revokedAt('acme', 'u42')).toBeDefined();
      // Claim-checked payloads fill it, as a busy day would.
      const payloads = new PayloadStore(raw, keys);
      const payload = Buffer.alloc(64 * 1024, 1);
      for (let i = 0; i < 200; i += 1) await payloads.put('acme', payload, 600);
      // The revocation was the least recently used key with a lifetime: gone, its user's old tokens accepted.
      expect(await revocations.revokedAt('acme', 'u42')).toBeUndefined();

      const error = (await createRedis({
        url: server.url(),
        name: 'test-evict',
        logger: silentLogger(),
      }).then(
        (accepted) => (accepted.disconnect(), undefined),
        (e: unknown) => e,
      )) as Error & { code?: string };
      expect(error).toBeInstanceOf(Error);
      expect(error.code).toBe('WARREN_ERR_CONFIG');
      expect(error.message).toMatch(/maxmemory-policy is volatile-lru.*revocations.*noeviction/);
    } finally {
      raw.disconnect();
      server.stop();
    }
  });
});
