import { describe, expect, it } from 'vitest';
import { ConnectionRegistry, type RegisteredTab } from '../../../src/gateway/registry.js';
import { userKey } from '../../../src/protocol/ids.js';
import { silentLogger } from '../../../src/shared/logger.js';

// The registry's own collaborators, held in the test's hand: the broker and Redis sides are exercised by
// the integration tests; here a step is made to wait for as long as the test wants.

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve = (): void => {};
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

function tab(id: string, tenantId: string, userId: string): RegisteredTab {
  return { id, tenantId, userId, key: userKey(tenantId, userId), closed: false };
}

describe('ConnectionRegistry.verifyBits', () => {
  it('takes a user off a bit that is no longer theirs at once, even while their steps are queued', async () => {
    const bits = [5, 9];
    const announced: number[] = [];
    const offlineGate = deferred();
    const offline: number[] = [];
    const registry = new ConnectionRegistry<RegisteredTab>(
      { bind: async () => {}, unbind: async () => {} },
      {
        online: async () => {
          const bit = bits.shift() as number;
          announced.push(bit);
          return [bit];
        },
        offline: async (_tenant, bit) => {
          offline.push(bit);
          await offlineGate.promise;
        },
      },
      60_000,
      { onUsersChanged: () => {} },
      silentLogger(),
    );
    const first = tab('t1', 'acme', 'ann');
    await registry.add(first);
    expect(registry.usersByBit('acme')?.get(5)?.userId).toBe('ann');

    // A reload: the old tab's offline step waits on Redis, the new tab's bring-up queues behind it.
    registry.remove(first);
    const second = tab('t2', 'acme', 'ann');
    const adding = registry.add(second);

    // Redis lost writes: bit 5 belongs to someone else now.
    const wrong = await registry.verifyBits(async () => [7]);
    expect(wrong).toEqual([userKey('acme', 'ann')]);
    // Deliveries naming bit 5 must not find ann while her queue is still blocked.
    expect(registry.usersByBit('acme')?.get(5)).toBeUndefined();

    offlineGate.resolve();
    await adding;
    await registry.entry(userKey('acme', 'ann'))?.chain;
    // Re-announced under the bit the map gives now.
    expect(announced).toEqual([5, 9]);
    expect(registry.usersByBit('acme')?.get(9)?.userId).toBe('ann');
    expect(registry.usersByBit('acme')?.get(5)).toBeUndefined();
  });
});
