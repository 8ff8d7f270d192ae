import { describe, expect, it } from 'vitest';
import { Keys } from '../../../src/store/keys.js';
import { MembershipStore } from '../../../src/store/membership-store.js';
import type { WarrenRedis } from '../../../src/store/redis.js';

describe('MembershipStore.applyBulk', () => {
  it('refuses a change of another tenant before writing anything', async () => {
    // No Redis behind it: the refusal comes before any command.
    const store = new MembershipStore({} as WarrenRedis, new Keys('warren'));
    const changes = [
      { op: 'add' as const, kind: 'user-team' as const, tenantId: 'acme', userId: 'ann', teamId: 'icu' },
      { op: 'add' as const, kind: 'user-team' as const, tenantId: 'globex', userId: 'bob', teamId: 'icu' },
    ];
    await expect(store.applyBulk('acme', changes)).rejects.toThrow('got a change of tenant globex');
  });
});
