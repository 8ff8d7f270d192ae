import { ReplyError } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { evictionProblem, refusedByRedis } from '../../../src/store/redis.js';

describe('refusedByRedis', () => {
  it('tells a command Redis will never take from a Redis that cannot take any now', () => {
    // Retrying these fails the same way: set the change aside after a few attempts.
    expect(
      refusedByRedis(new ReplyError('WRONGTYPE Operation against a key holding the wrong kind of value')),
    ).toBe(true);
    expect(refusedByRedis(new ReplyError('ERR Error running script: user_script:3: bad argument'))).toBe(
      true,
    );
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
    expect(refusedByRedis(new Error('Connection is closed.'))).toBe(false);
  });
});

describe('evictionProblem', () => {
  it('refuses a Redis that may evict any key when full, and names the setting to change', () => {
    for (const policy of ['allkeys-lru', 'allkeys-lfu', 'allkeys-random'])
      expect(evictionProblem(policy), policy).toMatch(/maxmemory-policy is allkeys-.*noeviction/);
    for (const policy of ['noeviction', 'volatile-lru', 'volatile-ttl'])
      expect(evictionProblem(policy), policy).toBeUndefined();
  });
});
