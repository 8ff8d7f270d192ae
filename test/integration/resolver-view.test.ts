import { describe, expect, it } from 'vitest';
import type { Audience, MembershipChange } from '../../src/protocol/schemas.js';
import { MembershipCache } from '../../src/resolver/membership-cache.js';
import { TenantView } from '../../src/resolver/tenant-view.js';
import type { Logger } from '../../src/shared/logger.js';
import type { Keys } from '../../src/store/keys.js';
import { MembershipStore } from '../../src/store/membership-store.js';
import { RELOAD_NAMED } from '../../src/store/scripts.js';
import { PresenceStore } from '../../src/store/presence-store.js';
import type { WarrenRedis } from '../../src/store/redis.js';
import { withWarrenRedis } from '../support/harness.js';

/**
 * A view of tenant t1 where user u, online on node n1, is a member as `change` says, loaded for `audience`
 * (which reaches u, as checked here).
 */
async function viewWithMember(
  redis: WarrenRedis,
  keys: Keys,
  change: MembershipChange,
  audience: Audience,
): Promise<{ store: MembershipStore; view: TenantView }> {
  const store = new MembershipStore(redis, keys);
  await store.apply(change);
  await redis.zadd(keys.nodes(), 1, 'n1');
  const [bit] = await new PresenceStore(redis, keys).online('n1', 't1', ['u']);
  const view = new TenantView(redis, keys, 't1', new Set());
  await view.sync();
  await view.prepare([audience]);
  expect(view.resolveBits(audience).toArray()).toEqual([bit]);
  return { store, view };
}

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

  it('leaves offline an online bit whose user id is missing, so no routing can reach it', async () => {
    await withWarrenRedis('view-unknown', async (redis, keys) => {
      // alice (bit 0) is online as her gateway recorded her; bit 1 is online with no reverse id entry (a
      // partial restore): nobody could name it in exceptUsers, and node routing would deliver to it.
      await redis.zadd(keys.nodes(), 1, 'n1');
      await new PresenceStore(redis, keys).online('n1', 't1', ['alice']);
      await redis.setbit(keys.online('t1', 'n1'), 1, 1);
      await redis.setbit(keys.teamUsers('t1', 'icu'), 0, 1);
      await redis.setbit(keys.teamUsers('t1', 'icu'), 1, 1);
      const logged: unknown[] = [];
      const logger = { error: (fields: unknown) => logged.push(fields) } as unknown as Logger;
      const view = new TenantView(redis, keys, 't1', new Set(), logger);
      await view.sync();
      await view.prepare([{ teams: ['icu'] }]);
      expect(view.online.bitmap.toArray()).toEqual([0]);
      expect(view.resolveBits({ teams: ['icu'] }).toArray()).toEqual([0]);
      expect(logged).toEqual([{ tenantId: 't1', node: 'n1', unknown: 1 }]);
    });
  });

  it('keeps what a batch loaded over the cache’s bound until the batch is done, so it settles', async () => {
    await withWarrenRedis('view-bound', async (redis, keys) => {
      const store = new MembershipStore(redis, keys);
      for (const team of ['a', 'b', 'c']) {
        await store.apply({ tenantId: 't1', op: 'add', kind: 'user-team', userId: 'u', teamId: team });
      }
      // A bound of 2 entries; the batch needs 3 teams.
      const cache = new MembershipCache(redis, keys, 't1', 2);
      cache.trim();
      expect(await cache.ensure(['a', 'b', 'c'], [])).toBe(3);
      // The next round of the same batch finds them all: nothing to load, the batch is ready.
      expect(await cache.ensure(['a', 'b', 'c'], [])).toBe(0);
      // Between batches the cache goes back under its bound.
      cache.trim();
      expect(cache.size).toBe(0);
    });
  });

  it('never resolves with a team loaded after changes that a cached group has not seen yet', async () => {
    await withWarrenRedis('view-mix', async (redis, keys) => {
      const change = { tenantId: 't1' } as const;
      const { store, view } = await viewWithMember(
        redis,
        keys,
        { ...change, op: 'add', kind: 'user-group', userId: 'u', groupId: 'g' },
        { groups: ['g'] },
      );

      // Between the batch's sync and the loading of team t, u leaves g and then g joins t. u was never
      // reachable from t; the cached g has not seen u leave, the freshly loaded t already holds g.
      const { pipeline } = redis;
      let first = true;
      redis.pipeline = ((...args: Parameters<WarrenRedis['pipeline']>) => {
        const p = pipeline.apply(redis, args);
        if (!first) return p;
        first = false;
        const exec = p.exec.bind(p);
        p.exec = (async () => {
          await store.apply({ ...change, op: 'remove', kind: 'user-group', userId: 'u', groupId: 'g' });
          await store.apply({ ...change, op: 'add', kind: 'group-team', groupId: 'g', teamId: 't' });
          return exec();
        }) as typeof p.exec;
        return p;
      }) as WarrenRedis['pipeline'];
      await view.sync();
      await view.prepare([{ teams: ['t'] }]);
      expect(first).toBe(false);
      expect(view.resolveBits({ teams: ['t'] }).toArray()).toEqual([]);
    });
  });

  it('drops what it cached when a bulk change failed half-way, after Redis had applied part of it', async () => {
    await withWarrenRedis('view-bulk-half', async (redis, keys) => {
      const { store, view } = await viewWithMember(
        redis,
        keys,
        { tenantId: 't1', op: 'add', kind: 'user-team', userId: 'u', teamId: 't' },
        { teams: ['t'] },
      );
      // Team `broken` has a key of the wrong type: the batch fails there, after u left t.
      await redis.hset(keys.teamUsers('t1', 'broken'), 'not', 'a bitmap');
      await expect(
        store.applyBulk('t1', [
          { tenantId: 't1', op: 'remove', kind: 'user-team', userId: 'u', teamId: 't' },
          { tenantId: 't1', op: 'add', kind: 'user-team', userId: 'v', teamId: 'broken' },
        ]),
      ).rejects.toThrow(/WRONGTYPE/);
      expect(await redis.getbit(keys.teamUsers('t1', 't'), 0)).toBe(0);
      await view.sync();
      await view.prepare([{ teams: ['t'] }]);
      expect(view.resolveBits({ teams: ['t'] }).toArray()).toEqual([]);
    });
  });

  it('drops what it cached when a single change was half written (a group joining a team)', async () => {
    await withWarrenRedis('view-each-half', async (redis, keys) => {
      const { store, view } = await viewWithMember(
        redis,
        keys,
        { tenantId: 't1', op: 'add', kind: 'user-group', userId: 'u', groupId: 'g' },
        { groups: ['g'] },
      );
      await view.prepare([{ teams: ['t'] }]);
      expect(view.resolveBits({ teams: ['t'] }).toArray()).toEqual([]);
      // g's list of teams takes t, the reverse list of t cannot: the change fails after its first write.
      await redis.hset(keys.teamGroups('t1', 't'), 'not', 'a set');
      await expect(
        store.apply({ tenantId: 't1', op: 'add', kind: 'group-team', groupId: 'g', teamId: 't' }),
      ).rejects.toThrow(/WRONGTYPE/);
      expect(await redis.smembers(keys.groupTeams('t1', 'g'))).toEqual(['t']);
      // The view no longer trusts what it cached of g and t: it holds what Redis holds, whatever that is.
      await redis.del(keys.teamGroups('t1', 't'));
      await redis.sadd(keys.teamGroups('t1', 't'), 'g');
      await view.sync();
      await view.prepare([{ teams: ['t'] }]);
      expect(view.resolveBits({ teams: ['t'] }).toArray()).toHaveLength(1);
    });
  });

  it('applies nothing, membership or presence, while the change log cannot take the entry saying so', async () => {
    await withWarrenRedis('view-log-refused', async (redis, keys) => {
      const { store, view } = await viewWithMember(
        redis,
        keys,
        { tenantId: 't1', op: 'add', kind: 'user-team', userId: 'u', teamId: 't' },
        { teams: ['t'] },
      );
      // The log turns into a key of the wrong type, then its counter does: each moved aside, put back after.
      const presence = new PresenceStore(redis, keys);
      const leave = { tenantId: 't1', op: 'remove', kind: 'user-team', userId: 'u', teamId: 't' } as const;
      for (const key of [keys.log('t1'), keys.logSeq('t1')]) {
        await redis.rename(key, `${key}:saved`);
        await redis.hset(key, 'not', 'a log');
        await expect(store.apply(leave)).rejects.toThrow(/WRONGTYPE.*nothing applied/);
        await expect(presence.online('n1', 't1', ['v'])).rejects.toThrow(/WRONGTYPE.*nothing applied/);
        await expect(presence.offline('n1', 't1', 0)).rejects.toThrow(/WRONGTYPE.*nothing applied/);
        await redis.del(key);
        await redis.rename(`${key}:saved`, key);
      }
      // Nothing landed: u is still in t and online, v never came online.
      expect(await redis.getbit(keys.teamUsers('t1', 't'), 0)).toBe(1);
      expect(await redis.getbit(keys.online('t1', 'n1'), 0)).toBe(1);
      expect(await redis.hget(keys.ids('t1'), 'v')).toBeNull();
      // Applied once the log is mended, and logged: the view that cached u in t hears it.
      expect(await store.apply(leave)).toBe(true);
      await view.sync();
      await view.prepare([{ teams: ['t'] }]);
      expect(view.resolveBits({ teams: ['t'] }).toArray()).toEqual([]);
    });
  });

  it('reloads only the teams and groups a bulk change touched, or everything past RELOAD_NAMED of them', async () => {
    await withWarrenRedis('view-bulk-named', async (redis, keys) => {
      const { store, view } = await viewWithMember(
        redis,
        keys,
        { tenantId: 't1', op: 'add', kind: 'user-team', userId: 'u', teamId: 't' },
        { teams: ['t'] },
      );
      await view.prepare([{ teams: ['other'], groups: ['g'] }]);
      expect(view.members.size).toBe(3);
      // An import's batch: u leaves t, and joins g.
      await store.applyBulk('t1', [
        { tenantId: 't1', op: 'remove', kind: 'user-team', userId: 'u', teamId: 't' },
        { tenantId: 't1', op: 'add', kind: 'user-group', userId: 'u', groupId: 'g' },
      ]);
      const [[, fields] = ['', []]] = (await redis.xrevrange(keys.log('t1'), '+', '-', 'COUNT', 1)) as [
        string,
        string[],
      ][];
      expect(fields.slice(2)).toEqual(['o', 'rl', 'a', 't', 'b', 'g', 'c', 'p']);
      await view.sync();
      // `other` is kept; t and g are read again, as Redis holds them now.
      expect(view.members.size).toBe(1);
      await view.prepare([{ teams: ['t'] }, { groups: ['g'] }]);
      expect(view.resolveBits({ teams: ['t'] }).toArray()).toEqual([]);
      expect(view.resolveBits({ groups: ['g'] }).toArray()).toHaveLength(1);

      // Too many to name: everything goes.
      const many = Array.from({ length: RELOAD_NAMED + 1 }, (_, i) => ({
        tenantId: 't1',
        op: 'add' as const,
        kind: 'user-team' as const,
        userId: 'v',
        teamId: `team-${i}`,
      }));
      await store.applyBulk('t1', many);
      await view.sync();
      expect(view.members.size).toBe(0);
    });
  });

  it('starts over when entries it never read are gone from the end of the log, with no entry after them', async () => {
    await withWarrenRedis('view-log-emptied', async (redis, keys) => {
      const { store, view } = await viewWithMember(
        redis,
        keys,
        { tenantId: 't1', op: 'add', kind: 'user-team', userId: 'u', teamId: 't' },
        { teams: ['t'] },
      );
      // u leaves t; then the log is emptied from outside before this view read the entry saying so.
      await store.apply({ tenantId: 't1', op: 'remove', kind: 'user-team', userId: 'u', teamId: 't' });
      await redis.xtrim(keys.log('t1'), 'MAXLEN', 0);
      await view.sync();
      await view.prepare([{ teams: ['t'] }]);
      expect(view.resolveBits({ teams: ['t'] }).toArray()).toEqual([]);
      // And settles there: the next change is read as the next entry, not taken for another gap.
      await store.apply({ tenantId: 't1', op: 'add', kind: 'user-team', userId: 'u', teamId: 't' });
      await view.sync();
      await view.prepare([{ teams: ['t'] }]);
      expect(view.resolveBits({ teams: ['t'] }).toArray()).toHaveLength(1);
    });
  });

  it('starts over when entries it never read were trimmed from the log, with entries after them', async () => {
    await withWarrenRedis('view-log-gap', async (redis, keys) => {
      const { store, view } = await viewWithMember(
        redis,
        keys,
        { tenantId: 't1', op: 'add', kind: 'user-team', userId: 'u', teamId: 't' },
        { teams: ['t'] },
      );
      // u leaves t, then another change follows. The log loses the removal before this view read it (a
      // busy tenant's log past its length, this resolver busy with other tenants meanwhile): it reads the
      // later entry only, and must not take it as the next one after what it has.
      await store.apply({ tenantId: 't1', op: 'remove', kind: 'user-team', userId: 'u', teamId: 't' });
      await store.apply({ tenantId: 't1', op: 'add', kind: 'user-team', userId: 'v', teamId: 'other' });
      await redis.xtrim(keys.log('t1'), 'MAXLEN', 1);
      expect(await redis.xlen(keys.log('t1'))).toBe(1);
      await view.sync();
      await view.prepare([{ teams: ['t'] }]);
      expect(view.resolveBits({ teams: ['t'] }).toArray()).toEqual([]);
    });
  });

  it('keeps a tenant’s change log an hour at most, and no log at all for a tenant idle that long', async () => {
    await withWarrenRedis('view-log-age', async (redis, keys) => {
      // A log whose first 150 entries are from 1970 (ids are Redis's clock in ms), as an idle tenant's would
      // look to the next change: a membership change appends, and the old entries go with it.
      for (let i = 1; i <= 150; i += 1) await redis.xadd(keys.log('t1'), `1-${i}`, 's', i, 'o', 'rl');
      await redis.set(keys.logSeq('t1'), 150);
      const store = new MembershipStore(redis, keys);
      await store.apply({ tenantId: 't1', op: 'add', kind: 'user-team', userId: 'u', teamId: 't' });
      // Trimmed by whole nodes of the stream (100 entries each, `~`): the first hundred at least.
      expect(await redis.xlen(keys.log('t1'))).toBeLessThanOrEqual(51);
      // And the log expires an hour after its last entry, the counter staying for readers to see the gap.
      const ttl = await redis.pttl(keys.log('t1'));
      expect(ttl).toBeGreaterThan(3_500_000);
      expect(ttl).toBeLessThanOrEqual(3_600_000);
      expect(await redis.pttl(keys.logSeq('t1'))).toBe(-1);
      // Presence writes the same way.
      await redis.zadd(keys.nodes(), 1, 'n1');
      await new PresenceStore(redis, keys).online('n1', 't2', ['u']);
      expect(await redis.pttl(keys.log('t2'))).toBeGreaterThan(3_500_000);
      // A view that last read the log before it expired (u online, a member of t) starts over from what
      // Redis holds: u has left t meanwhile.
      const { view } = await viewWithMember(
        redis,
        keys,
        { tenantId: 't1', op: 'add', kind: 'user-team', userId: 'u', teamId: 't' },
        { teams: ['t'] },
      );
      await store.apply({ tenantId: 't1', op: 'remove', kind: 'user-team', userId: 'u', teamId: 't' });
      await redis.del(keys.log('t1'));
      await view.sync();
      await view.prepare([{ teams: ['t'] }]);
      expect(view.resolveBits({ teams: ['t'] }).toArray()).toEqual([]);
    });
  });

  it('leaves out every bit a user excepted was seen online under, when the id map gave them a new one', async () => {
    await withWarrenRedis('view-except-two-bits', async (redis, keys) => {
      const { store, view } = await viewWithMember(
        redis,
        keys,
        { tenantId: 't1', op: 'add', kind: 'user-team', userId: 'u', teamId: 't' },
        { teams: ['t'] },
      );
      const first = Number(await redis.hget(keys.ids('t1'), 'u'));
      // The id map lost u's entry and gave u bit 5 (a failover that lost writes); u's tab on another node
      // is announced under it while u's first bit is still online on n1. Both are in team t.
      await redis.hset(keys.ids('t1'), 'u', '5');
      await store.apply({ tenantId: 't1', op: 'add', kind: 'user-team', userId: 'u', teamId: 't' });
      await redis.zadd(keys.nodes(), 1, 'n2');
      expect(await new PresenceStore(redis, keys).online('n2', 't1', ['u'])).toEqual([5]);
      await view.sync();
      await view.prepare([{ teams: ['t'] }]);
      expect(view.resolveBits({ teams: ['t'] }).toArray()).toEqual([first, 5]);
      expect(view.resolveBits({ teams: ['t'], exceptUsers: ['u'] }).toArray()).toEqual([]);
    });
  });

  it('counts a half-written change as one when it is applied again once Redis is mended', async () => {
    await withWarrenRedis('view-half-mended', async (redis, keys) => {
      const store = new MembershipStore(redis, keys);
      const join = { tenantId: 't1', op: 'add', kind: 'group-team', groupId: 'g', teamId: 't' } as const;
      await redis.hset(keys.teamGroups('t1', 't'), 'not', 'a set');
      await expect(store.apply(join)).rejects.toThrow(/WRONGTYPE/);
      await redis.del(keys.teamGroups('t1', 't'));
      // g's side was written the first time, t's only now: a change, logged for resolvers.
      expect(await store.apply(join)).toBe(true);
      expect(await redis.smembers(keys.teamGroups('t1', 't'))).toEqual(['g']);
    });
  });

  it('once marked stale (Redis changed under it), starts over from what Redis holds now', async () => {
    await withWarrenRedis('view-stale', async (redis, keys) => {
      const { view } = await viewWithMember(
        redis,
        keys,
        { tenantId: 't1', op: 'add', kind: 'user-team', userId: 'u', teamId: 't' },
        { teams: ['t'] },
      );

      // The new server never got u's membership (nor a log entry saying so).
      await redis.del(keys.teamUsers('t1', 't'));
      view.markStale();
      expect(view.isStale).toBe(true);
      await view.sync();
      await view.prepare([{ teams: ['t'] }]);
      expect(view.isStale).toBe(false);
      expect(view.resolveBits({ teams: ['t'] }).toArray()).toEqual([]);
    });
  });
});
