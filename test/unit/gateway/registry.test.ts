import { describe, expect, it, vi } from 'vitest';
import { ConnectionRegistry, type KeyBinder, type RegisteredTab } from '../../../src/gateway/registry.js';
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

/** A registry with the test's binder; presence always answers bit 1. */
function registryWith1(binder: KeyBinder, graceMs: number): ConnectionRegistry<RegisteredTab> {
  return new ConnectionRegistry<RegisteredTab>(
    binder,
    { online: async () => [1], offline: async () => {} },
    graceMs,
    { onUsersChanged: () => {} },
    silentLogger(),
  );
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

describe('ConnectionRegistry.verifyBits while users leave', () => {
  it('does not count a user whose bit was released while the map was read as found wrong', async () => {
    const registry = new ConnectionRegistry<RegisteredTab>(
      { bind: async () => {}, unbind: async () => {} },
      { online: async () => [4], offline: async () => {} },
      0,
      { onUsersChanged: () => {} },
      silentLogger(),
    );
    const ann = tab('t1', 'acme', 'ann');
    await registry.add(ann);
    const read = deferred();
    const checking = registry.verifyBits(async () => {
      await read.promise;
      return [4];
    });
    // Her last tab closes and the grace (0 here) ends while the id map is being read.
    registry.remove(ann);
    // Released before the read ends (otherwise her bit still matches, and nothing here is checked).
    await eventually(() => registry.entry(userKey('acme', 'ann')) === undefined);
    read.resolve();
    expect(await checking).toEqual([]);
  });
});

describe('ConnectionRegistry: an unbind that fails', () => {
  function registryWith(unbind: (key: string) => Promise<void>, graceMs: number) {
    const binds: string[] = [];
    const registry = registryWith1(
      {
        bind: async (key) => {
          binds.push(key);
        },
        unbind,
      },
      graceMs,
    );
    return { registry, binds };
  }
  const key = userKey('acme', 'ann');

  it('keeps the key and unbinds it after another grace period', async () => {
    const attempts: string[] = [];
    const { registry } = registryWith(async (k) => {
      attempts.push(k);
      if (attempts.length === 1) throw new Error('broker not connected');
    }, 20);
    const first = tab('t1', 'acme', 'ann');
    await registry.add(first);
    registry.remove(first);

    await eventually(() => attempts.length === 1);
    // Still held: the key may still draw the user's deliveries to this node.
    expect(registry.entry(key)).toBeDefined();
    await eventually(() => attempts.length === 2);
    await eventually(() => registry.entry(key) === undefined);
    expect(registry.userCount).toBe(0);
  });

  it('tries again at once when the broker is back, without binding the key again', async () => {
    vi.useFakeTimers();
    try {
      let fail = true;
      const attempts: string[] = [];
      const { registry, binds } = registryWith(async (k) => {
        attempts.push(k);
        if (fail) throw new Error('broker not connected');
      }, 60_000);
      const first = tab('t1', 'acme', 'ann');
      await registry.add(first);
      registry.remove(first);
      await vi.advanceTimersByTimeAsync(60_000);
      await registry.entry(key)?.chain;
      expect(attempts).toEqual([key]);

      // The broker is back long before the next grace period would try again.
      fail = false;
      await registry.rebindAll(true);
      await registry.entry(key)?.chain;
      expect(registry.entry(key)).toBeUndefined();
      expect(attempts).toEqual([key, key]);
      expect(binds).toEqual([key]);
    } finally {
      vi.useRealTimers();
    }
  });

  it('binds the key again for a user who comes back before the retry', async () => {
    const { registry, binds } = registryWith(async () => {
      throw new Error('broker not connected');
    }, 20);
    const first = tab('t1', 'acme', 'ann');
    await registry.add(first);
    registry.remove(first);
    await eventually(() => registry.entry(key)?.stray === true);

    // The failed unbind may have reached the broker after all: the returning user is bound again.
    await registry.add(tab('t2', 'acme', 'ann'));
    expect(binds).toEqual([key, key]);
    expect(registry.entry(key)?.stray).toBe(false);
  });
});

describe('ConnectionRegistry: a bind that fails', () => {
  it('unbinds the key when the user goes: the broker may have bound it before the reply was lost', async () => {
    const ops: string[] = [];
    const registry = registryWith1(
      {
        bind: async (k) => {
          ops.push(`bind ${k}`);
          throw new Error('connection closed');
        },
        unbind: async (k) => void ops.push(`unbind ${k}`),
      },
      20,
    );
    const key = userKey('acme', 'ann');
    await expect(registry.add(tab('t1', 'acme', 'ann'))).rejects.toThrow('connection closed');
    await eventually(() => registry.entry(key) === undefined);
    expect(ops).toEqual([`bind ${key}`, `unbind ${key}`]);
  });
});

async function eventually(check: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('ConnectionRegistry: presence steps that fail', () => {
  function flaky() {
    const calls: string[] = [];
    let failures = 0;
    const bits = new Map<string, number>();
    const presence = {
      online: async (_tenant: string, userIds: readonly string[]) => {
        calls.push(`online ${userIds.join()}`);
        if (failures > 0 && failures--) throw new Error('redis away');
        return userIds.map((u) => bits.get(u) ?? 0);
      },
      offline: async (_tenant: string, bit: number) => {
        calls.push(`offline ${bit}`);
        if (failures > 0 && failures--) throw new Error('redis away');
      },
    };
    const registry = new ConnectionRegistry<RegisteredTab>(
      { bind: async () => {}, unbind: async () => {} },
      presence,
      60_000,
      { onUsersChanged: () => {} },
      silentLogger(),
    );
    return { registry, calls, bits, fail: (n: number) => (failures = n) };
  }
  const key = userKey('acme', 'ann');
  const settled = (registry: ConnectionRegistry<RegisteredTab>) => registry.entry(key)?.chain;
  /** Ann (bit 5) opens a tab and closes it, and Redis fails the offline call. */
  async function leavesWhileRedisFails(): Promise<ReturnType<typeof flaky>> {
    const setup = flaky();
    setup.bits.set('ann', 5);
    const first = tab('t1', 'acme', 'ann');
    await setup.registry.add(first);
    setup.fail(1);
    setup.registry.remove(first);
    await settled(setup.registry);
    return setup;
  }

  it('takes a bit back on a later repair when marking the user offline failed', async () => {
    const { registry, calls } = await leavesWhileRedisFails();
    expect(calls).toEqual(['online ann', 'offline 5']);

    registry.repair();
    await settled(registry);
    expect(calls).toEqual(['online ann', 'offline 5', 'offline 5']);
    // Nothing owed any more: a further repair does nothing.
    registry.repair();
    await settled(registry);
    expect(calls).toHaveLength(3);
  });

  it('does not take the bit back from a user who came back before the repair', async () => {
    const { registry, calls } = await leavesWhileRedisFails();
    await registry.add(tab('t2', 'acme', 'ann'));

    registry.repair();
    await settled(registry);
    expect(calls).toEqual(['online ann', 'offline 5', 'online ann']);
    expect(registry.usersByBit('acme')?.get(5)?.online).toBe(true);
  });

  it('announces again a user whose move to a new bit failed half-way, instead of leaving them off every bit', async () => {
    const { registry, calls, bits, fail } = flaky();
    bits.set('ann', 5);
    await registry.add(tab('t1', 'acme', 'ann'));

    // Redis lost writes (a failover): ann's bit is 9 now, and Redis fails the first step of the move.
    bits.set('ann', 9);
    fail(1);
    expect(await registry.verifyBits(async () => [9])).toEqual([key]);
    await settled(registry);
    expect(registry.usersByBit('acme')?.get(9)).toBeUndefined();
    // The next beat finds ann off every bit and her tab open.
    expect(await registry.verifyBits(async () => [9])).toEqual([]);

    registry.repair();
    await settled(registry);
    expect(calls).toEqual(['online ann', 'offline 5', 'offline 5', 'online ann']);
    expect(registry.usersByBit('acme')?.get(9)?.userId).toBe('ann');
    expect(registry.entry(key)?.online).toBe(true);
  });
});

describe('ConnectionRegistry: steps that race', () => {
  const key = userKey('acme', 'ann');

  it('binds again on a reconnect before a grace period’s unbind, never after it', async () => {
    vi.useFakeTimers();
    try {
      const ops: string[] = [];
      let slowBind: (() => void) | undefined;
      const registry = registryWith1(
        {
          bind: (k) => {
            ops.push(`bind ${k}`);
            // The rebind after a reconnect is slow (its channel is busy); the first bind is not.
            if (ops.length === 1) return Promise.resolve();
            return new Promise<void>((resolve) => (slowBind = resolve));
          },
          unbind: async (k) => void ops.push(`unbind ${k}`),
        },
        1000,
      );
      const first = tab('t1', 'acme', 'ann');
      await registry.add(first);
      registry.remove(first);
      const rebinding = registry.rebindAll(true);
      // The grace period ends while the rebind is on its way.
      await vi.advanceTimersByTimeAsync(1000);
      expect(ops).toEqual([`bind ${key}`, `bind ${key}`]);
      slowBind?.();
      await rebinding;
      await registry.entry(key)?.chain;
      // The unbind came last: the key is not left bound with nothing here to unbind it.
      expect(ops).toEqual([`bind ${key}`, `bind ${key}`, `unbind ${key}`]);
      expect(registry.entry(key)).toBeUndefined();
    } finally {
      vi.useRealTimers();
    }
  });

  for (const when of ['has been answered', 'is still on its way'])
    it(`leaves a user who came back online when a re-announcement made before they left answers late, after their own announcement ${when}`, async () => {
      // Redis as the node's bitmap: a call takes effect when sent (in the order sent, as on one
      // connection); its answer may come later, when the test says.
      const online = new Set<number>();
      const answers: (() => void)[] = [];
      let holdAnswers = false;
      const registry = new ConnectionRegistry<RegisteredTab>(
        { bind: async () => {}, unbind: async () => {} },
        {
          online: async (_tenant, users) => {
            online.add(5);
            if (holdAnswers) await new Promise<void>((resolve) => answers.push(resolve));
            return users.map(() => 5);
          },
          offline: async (_tenant, bit) => void online.delete(bit),
        },
        10,
        { onUsersChanged: () => {} },
        silentLogger(),
      );
      const first = tab('t1', 'acme', 'ann');
      await registry.add(first);
      // The node was declared dead: the re-announcement's answer is slow.
      holdAnswers = true;
      const reannouncing = registry.reannounce();
      // Meanwhile the tab closes, the grace period ends, the user is released; then comes back.
      registry.remove(first);
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(registry.entry(key)).toBeUndefined();
      holdAnswers = when === 'is still on its way';
      const adding = registry.add(tab('t2', 'acme', 'ann'));
      if (when === 'has been answered') await adding;
      // Sent, whether answered or not.
      await new Promise((resolve) => setTimeout(resolve, 0));
      expect(answers).toHaveLength(when === 'has been answered' ? 1 : 2);
      // The re-announcement answers, then (if it was held) the return's own announcement.
      answers.shift()?.();
      await reannouncing;
      answers.shift()?.();
      await adding;
      await registry.entry(key)?.chain;
      expect(registry.entry(key)?.online).toBe(true);
      expect([...online]).toEqual([5]);
    });

  it('schedules nothing more once draining, even when a release in flight fails', async () => {
    vi.useFakeTimers();
    try {
      let failUnbind: ((error: Error) => void) | undefined;
      const registry = registryWith1(
        {
          bind: async () => {},
          unbind: () => new Promise<void>((_, reject) => (failUnbind = reject)),
        },
        1000,
      );
      const first = tab('t1', 'acme', 'ann');
      await registry.add(first);
      registry.remove(first);
      await vi.advanceTimersByTimeAsync(1000);
      // The release's unbind is in flight when the drain starts.
      expect(failUnbind).toBeDefined();
      const draining = registry.unbindAll();
      failUnbind?.(new Error('broker gone'));
      await vi.advanceTimersByTimeAsync(0);
      failUnbind?.(new Error('broker gone'));
      await draining;
      registry.repair();
      expect(vi.getTimerCount()).toBe(0);
    } finally {
      vi.useRealTimers();
    }
  });

  it('takes back every bit it owes, not only the last', async () => {
    const bits = new Map([['ann', 5]]);
    const offline: number[] = [];
    let failing = 0;
    const registry = new ConnectionRegistry<RegisteredTab>(
      { bind: async () => {}, unbind: async () => {} },
      {
        online: async (_t, userIds) => userIds.map((u) => bits.get(u) as number),
        offline: async (_t, bit) => {
          offline.push(bit);
          if (failing > 0 && failing--) throw new Error('redis away');
        },
      },
      60_000,
      { onUsersChanged: () => {} },
      silentLogger(),
    );
    failing = 1;
    const first = tab('t1', 'acme', 'ann');
    await registry.add(first);
    registry.remove(first);
    await registry.entry(key)?.chain;
    // Redis comes and goes (a failover): the map changed, ann's bit is 9 now; bit 5 is still owed.
    bits.set('ann', 9);
    failing = 100;
    expect(await registry.verifyBits(async () => [9])).toEqual([key]);
    await registry.entry(key)?.chain;
    failing = 0;
    const second = tab('t2', 'acme', 'ann');
    await registry.add(second);
    await registry.entry(key)?.chain;
    // Gone again while Redis fails again: bit 9 is owed too.
    failing = 100;
    registry.remove(second);
    await registry.entry(key)?.chain;

    failing = 0;
    offline.length = 0;
    registry.repair();
    await registry.entry(key)?.chain;
    expect(offline.sort()).toEqual([5, 9]);
  });
});

describe('ConnectionRegistry: the broker side does not wait for Redis', () => {
  it('binds again after a reconnect while a presence step of the user hangs on Redis', async () => {
    const binds: string[] = [];
    const registry = new ConnectionRegistry<RegisteredTab>(
      { bind: async (k) => void binds.push(k), unbind: async () => {} },
      // Redis hangs: the offline step of a closing tab never returns.
      { online: async () => [1], offline: () => new Promise<void>(() => {}) },
      60_000,
      { onUsersChanged: () => {} },
      silentLogger(),
    );
    const first = tab('t1', 'acme', 'ann');
    await registry.add(first);
    registry.remove(first);
    const outcome = await Promise.race([
      registry.rebindAll(true).then(() => 'rebound'),
      new Promise((r) => setTimeout(() => r('stuck behind Redis'), 500)),
    ]);
    expect(outcome).toBe('rebound');
    expect(binds).toEqual([userKey('acme', 'ann'), userKey('acme', 'ann')]);
  });

  it('unbinds at the end of the grace period even when Redis fails the offline call', async () => {
    vi.useFakeTimers();
    try {
      const unbinds: string[] = [];
      const registry = new ConnectionRegistry<RegisteredTab>(
        { bind: async () => {}, unbind: async (k) => void unbinds.push(k) },
        {
          online: async () => [1],
          offline: async () => {
            throw new Error('redis away');
          },
        },
        1000,
        { onUsersChanged: () => {} },
        silentLogger(),
      );
      const first = tab('t1', 'acme', 'ann');
      await registry.add(first);
      registry.remove(first);
      await vi.advanceTimersByTimeAsync(1000);
      expect(unbinds).toEqual([userKey('acme', 'ann')]);
      // Kept for its bit, which is still owed.
      expect(registry.entry(userKey('acme', 'ann'))?.offlineDue.has(1)).toBe(true);
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('ConnectionRegistry.rebindAll after the queue was lost', () => {
  it('binds again a key whose first bind was in flight when the queue went', async () => {
    const gate = deferred();
    const binds: string[] = [];
    let first = true;
    const registry = registryWith1(
      {
        bind: async (key) => {
          binds.push(key);
          // The first bind lands on the queue just before it is deleted, and answers afterwards.
          if (first) {
            first = false;
            await gate.promise;
          }
        },
        unbind: async () => {},
      },
      60_000,
    );
    const adding = registry.add(tab('t1', 'acme', 'ann'));
    await vi.waitFor(() => expect(binds).toHaveLength(1));
    // The queue is found lost while that bind is still unanswered.
    const rebinding = registry.rebindAll(true);
    gate.resolve();
    await adding;
    await rebinding;
    await vi.waitFor(() => expect(binds).toEqual([userKey('acme', 'ann'), userKey('acme', 'ann')]));
  });
});
