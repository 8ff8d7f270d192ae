import { ReplyError } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { deniedByAcl, evictionProblem, refusedByRedis } from '../../../src/store/redis.js';

describe('deniedByAcl', () => {
  it('tells an ACL’s denial, of a command or of a script’s call, from the command’s own refusal', () => {
    for (const message of [
      "NOPERM this user has no permissions to run the 'incr' command",
      'NOPERM this user has no permissions to access one of the keys used as arguments',
      "ERR The user executing the script can't run this command or subcommand script: f_1a2b, on @user_script:3.",
    ])
      expect(deniedByAcl(new ReplyError(message)), message).toBe(true);
    for (const message of [
      'WRONGTYPE Operation against a key holding the wrong kind of value',
      'ERR Error running script: user_script:3: bad argument',
      'OOM command not allowed when used memory',
    ])
      expect(deniedByAcl(new ReplyError(message)), message).toBe(false);
    expect(deniedByAcl(new Error('NOPERM not a reply'))).toBe(false);
  });
});

describe('refusedByRedis', () => {
  it('tells a command Redis will never take from a Redis that cannot take any now', () => {
    // Retrying these fails the same way: set the change aside after a few attempts.
    expect(
      refusedByRedis(new ReplyError('WRONGTYPE Operation against a key holding the wrong kind of value')),
    ).toBe(true);
    expect(refusedByRedis(new ReplyError('ERR Error running script: user_script:3: bad argument'))).toBe(
      true,
    );
    // An ACL that denies a command or key Warren needs: a configuration to mend, not a wait.
    for (const message of [
      "NOPERM this user has no permissions to run the 'incr' command",
      'NOPERM this user has no permissions to access one of the keys used as arguments',
    ])
      expect(refusedByRedis(new ReplyError(message)), message).toBe(true);
    // These pass once Redis is back (memory freed, failover done, data loaded): retry for as long as it takes.
    for (const message of [
      "OOM command not allowed when used memory > 'maxmemory'.",
      "READONLY You can't write against a read only replica.",
      'LOADING Redis is loading the dataset in memory',
      'BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.',
      'MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to no.',
      'CLUSTERDOWN The cluster is down',
      'TRYAGAIN Multiple keys request during rehashing of slot',
      'NOREPLICAS Not enough good replicas to write.',
    ])
      expect(refusedByRedis(new ReplyError(message)), message).toBe(false);
    // Also when a script ran into them before Redis 7, which wrapped them in its own error.
    for (const message of [
      'MISCONF Redis is configured to save RDB snapshots, but it is currently not able to persist on disk.',
      'ERR max number of clients reached',
      'NOAUTH Authentication required.',
      'ERR Error running script (call to f_1a2b): @user_script:12: -OOM command not allowed when used memory',
      "ERR Error running script (call to f_1a2b): @user_script:12: -READONLY You can't write against a read only replica.",
      // Not known to be permanent: retried rather than set aside.
      'SOMETHINGNEW cannot do that now',
    ])
      expect(refusedByRedis(new ReplyError(message)), message).toBe(false);
    expect(refusedByRedis(new Error('Connection is closed.'))).toBe(false);
  });
});

describe('evictionProblem', () => {
  it('refuses a Redis that may evict any key when full, and names the setting to change', () => {
    const gib = 1 << 30;
    for (const policy of ['allkeys-lru', 'allkeys-lfu', 'allkeys-random'])
      expect(evictionProblem(policy, gib), policy).toMatch(/maxmemory-policy is allkeys-.*noeviction/);
    // Keys with a lifetime include revocations: evicted, a revoked token connects again.
    for (const policy of ['volatile-lru', 'volatile-lfu', 'volatile-random', 'volatile-ttl'])
      expect(evictionProblem(policy, gib), policy).toMatch(
        /maxmemory-policy is volatile-.*revocations.*noeviction/,
      );
    expect(evictionProblem('noeviction', gib)).toBeUndefined();
    // No memory limit: nothing is ever evicted.
    expect(evictionProblem('allkeys-lru', 0)).toBeUndefined();
  });
});
