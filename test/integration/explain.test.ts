import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, inject, it } from 'vitest';
import { explain } from '../../src/cli/explain.js';
import { MembershipStore } from '../../src/store/membership-store.js';
import { PresenceStore } from '../../src/store/presence-store.js';
import { RevocationStore } from '../../src/store/revocation-store.js';
import { freePort, withWarrenRedis } from '../support/harness.js';
import { hasRedisServer, SecondRedis } from '../support/second-redis.js';
import { WarrenProcess } from '../support/warren-process.js';

// `warren explain`: what an operator asks when a user says they did not get an event.

describe('warren explain', () => {
  it('says whether, and how, a user is reached by an audience, from what Redis holds', async () => {
    await withWarrenRedis('explain', async (redis, keys) => {
      const store = new MembershipStore(redis, keys);
      await store.apply({
        tenantId: 'acme',
        op: 'add',
        kind: 'group-team',
        groupId: 'nurses',
        teamId: 'icu',
      });
      await store.apply({ tenantId: 'acme', op: 'add', kind: 'group-team', groupId: 'night', teamId: 'icu' });
      await store.apply({
        tenantId: 'acme',
        op: 'add',
        kind: 'user-group',
        userId: 'ann',
        groupId: 'nurses',
      });
      await store.apply({ tenantId: 'acme', op: 'add', kind: 'user-team', userId: 'bob', teamId: 'er' });
      const [time] = await redis.time();
      const now = Number(time) * 1000;
      // n1 beats; n2 stopped beating a minute ago (dead, its users not counted).
      await redis.zadd(keys.nodes(), now, 'n1', now - 60_000, 'n2');
      const presence = new PresenceStore(redis, keys);
      const [annBit] = await presence.online('n1', 'acme', ['ann']);
      await presence.online('n2', 'acme', ['bob']);
      const ask = (user: string, teams: string[], groups: string[] = []) =>
        explain(redis, keys, 15_000, { tenant: 'acme', user, teams, groups });

      expect(await ask('ann', ['icu', 'er'], ['nurses'])).toEqual({
        prefix: keys.prefix,
        tenant: 'acme',
        tenantHasData: true,
        user: 'ann',
        bit: annBit,
        reverseName: 'ann',
        nodes: [{ id: 'n1', alive: true }],
        online: true,
        teams: [
          { id: 'icu', direct: false, viaGroups: ['nurses'] },
          { id: 'er', direct: false, viaGroups: [] },
        ],
        groups: [{ id: 'nurses', direct: true, viaGroups: [] }],
        reached: true,
        revoked: null,
      });
      // A member, but held only by a node that stopped beating: not reached.
      expect(await ask('bob', ['er'])).toMatchObject({
        nodes: [{ id: 'n2', alive: false }],
        online: false,
        teams: [{ id: 'er', direct: true, viaGroups: [] }],
        reached: false,
      });
      // Online, but not a member of what was named.
      expect(await ask('ann', ['er'])).toMatchObject({ online: true, reached: false });
      // A bit the reverse map does not name ann for (a partial restore): said, for repair.
      await redis.hdel(keys.reverseIds('acme'), String(annBit));
      expect(await ask('ann', ['icu'])).toMatchObject({ reverseName: null, online: true });
      const unnamed = WarrenProcess.start(['explain', '--tenant', 'acme', '--user', 'ann', '--team', 'icu'], {
        WARREN_PREFIX: keys.prefix,
        WARREN_REDIS_URL: inject('redisUrl'),
      });
      expect(await unnamed.exited).toBe(0);
      expect(unnamed.lines.join('\n')).toContain(
        `the reverse id map names nobody for bit ${annBit}, not ann: a resolver loading the tenant afresh leaves the bit offline; repair it`,
      );
      await redis.hset(keys.reverseIds('acme'), String(annBit), 'ann');
      // Never seen in the tenant: no bit, and nothing else to read.
      expect(await ask('zed', ['icu'])).toMatchObject({
        tenantHasData: true,
        bit: null,
        online: false,
        reached: false,
      });

      // As an operator runs it: words, and the exit code says reached (0) or not (1).
      const env = { WARREN_PREFIX: keys.prefix, WARREN_REDIS_URL: inject('redisUrl') };
      const yes = WarrenProcess.start(['explain', '--tenant', 'acme', '--user', 'ann', '--team', 'icu'], env);
      expect(await yes.exited).toBe(0);
      // Which prefix and Redis were read, first: an answer about the wrong ones reads as one about the user.
      expect(yes.lines[0]).toBe(`Warren explain (prefix ${keys.prefix}, Redis at ${inject('redisUrl')})`);
      expect(yes.lines).toContain('  team icu: via group nurses');
      expect(yes.lines).toContain(
        'An event to team icu reaches ann now (unless the event lists them in exceptUsers).',
      );
      const no = WarrenProcess.start(['explain', '--tenant', 'acme', '--user', 'bob', '--team', 'er'], env);
      expect(await no.exited).toBe(1);
      expect(no.lines).toContain('An event to team er does not reach bob now.');
      expect(no.lines.join('\n')).toContain('offline: no live gateway holds a tab of theirs');
      expect(no.lines.join('\n')).toContain('held by gateways no longer beating, not counted: n2');

      // Revoked (warren revoke): when, and until when its tokens are refused.
      const revokedAt = Date.UTC(2026, 10, 29, 12, 0, 0);
      await new RevocationStore(redis, keys).revoke('acme', 'bob', 3600, revokedAt);
      const revoked = await ask('bob', []);
      expect(revoked.revoked?.at).toBe('2026-11-29T12:00:00.000Z');
      const until = Date.parse(revoked.revoked?.until ?? '');
      expect(until - Date.now()).toBeGreaterThan(3_500_000);
      expect(until - Date.now()).toBeLessThanOrEqual(3_600_000);
      const said = WarrenProcess.start(['explain', '--tenant', 'acme', '--user', 'bob'], env);
      expect(await said.exited).toBe(0);
      expect(said.lines.join('\n')).toMatch(
        /tokens revoked at 2026-11-29T12:00:00.000Z: those issued up to then are refused until 20\d\d-/,
      );
      expect((await ask('ann', [])).revoked).toBeNull();
    });
  });
});

describe('warren explain of a tenant with no data', () => {
  it('says the tenant has no data under the prefix read, not that the user is unknown', async () => {
    await withWarrenRedis('explain-empty', async (redis, keys) => {
      const ask = (tenant: string, user: string) =>
        explain(redis, keys, 15_000, { tenant, user, teams: ['icu'], groups: [] });
      // A wrong prefix (or Redis): nothing of any tenant there.
      expect(await ask('acme-health', 'alice')).toMatchObject({
        prefix: keys.prefix,
        tenantHasData: false,
        bit: null,
        reached: false,
      });
      const env = { WARREN_PREFIX: keys.prefix, WARREN_REDIS_URL: inject('redisUrl') };
      const args = ['explain', '--tenant', 'acme-health', '--user', 'alice', '--team', 'icu'];
      const text = WarrenProcess.start(args, env);
      expect(await text.exited).toBe(1);
      expect(text.lines).toContain(
        `tenant acme-health has no data under prefix ${keys.prefix}: wrong prefix or Redis?`,
      );
      expect(text.lines.join('\n')).not.toContain('alice is unknown');
      const json = WarrenProcess.start([...args, '--json'], env);
      expect(await json.exited).toBe(1);
      expect(JSON.parse(json.lines.join('\n'))).toMatchObject({
        prefix: keys.prefix,
        tenant: 'acme-health',
        tenantHasData: false,
      });

      // A tenant with data, where alice was never seen: that is about alice.
      await new MembershipStore(redis, keys).apply({
        tenantId: 'acme-health',
        op: 'add',
        kind: 'group-team',
        groupId: 'nurses',
        teamId: 'icu',
      });
      expect(await ask('acme-health', 'alice')).toMatchObject({ tenantHasData: true, bit: null });
      const known = WarrenProcess.start(args, env);
      expect(await known.exited).toBe(1);
      expect(known.lines).toContain(
        'alice is unknown in tenant acme-health: never a member of anything, never online.',
      );
      // Only a revocation of the user's tokens (warren revoke) is data too.
      await new RevocationStore(redis, keys).revoke('globex', 'bob', 3600, Date.now());
      expect(await ask('globex', 'bob')).toMatchObject({ tenantHasData: true, bit: null });
    });
  });
});

describe('warren explain that cannot read Redis', () => {
  it('exits 2, not 1: a script must not read an outage as "not reached"', async () => {
    const port = await freePort();
    const args = ['explain', '--tenant', 'acme', '--user', 'ann', '--team', 'icu'];
    const down = WarrenProcess.start(args, {
      WARREN_PREFIX: 't-explain-down',
      WARREN_REDIS_URL: `redis://127.0.0.1:${port}`,
    });
    expect(await down.exited).toBe(2);
    expect(down.lines.join('\n')).toMatch(/^WARREN_ERR_REDIS_UNAVAILABLE: cannot connect to Redis at /);
  });
});

describe.skipIf(!hasRedisServer)('read-only commands against a Redis the servers refuse', () => {
  it('status and explain run, warning, where an import stops', async () => {
    // A full Redis under allkeys-lru would evict id maps: servers refuse it, an operator must still look in.
    const redis = await SecondRedis.start(['--maxmemory', '1gb', '--maxmemory-policy', 'allkeys-lru']);
    let dir: string | undefined;
    try {
      const env = { WARREN_PREFIX: 't-evict', WARREN_REDIS_URL: redis.url() };
      const warning =
        /warning: Redis maxmemory-policy is allkeys-lru.*gateways and resolvers refuse to start/;
      const explained = WarrenProcess.start(['explain', '--tenant', 'acme', '--user', 'ann'], env);
      expect(await explained.exited).toBe(0);
      expect(explained.lines.join('\n')).toMatch(warning);
      expect(explained.lines.join('\n')).toContain('tenant acme has no data under prefix t-evict');
      const status = WarrenProcess.start(['status', '--json'], env);
      expect(await status.exited).toBe(0);
      expect(status.lines.join('\n')).toMatch(warning);
      dir = await mkdtemp(join(tmpdir(), 'warren-evict-'));
      const file = join(dir, 'rows.jsonl');
      await writeFile(file, '{"op":"add","tenantId":"acme","userId":"ann","teamId":"icu"}\n');
      const importing = WarrenProcess.start(['members', 'import', file], env);
      expect(await importing.exited).toBe(78);
      expect(importing.lines.join('\n')).toMatch(/maxmemory-policy is allkeys-lru.*set it to noeviction/);
      expect(importing.lines.join('\n')).not.toContain('warning');
    } finally {
      redis.stop();
      if (dir) await rm(dir, { recursive: true, force: true });
    }
  });
});
