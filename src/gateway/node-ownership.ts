import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { errorMessage } from '../shared/errors.js';
import { withTimeout } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';

/** How long a check may wait for Redis before the node goes on as the holder (see `held`). */
const CHECK_TIMEOUT_MS = 2000;

// Deleted only by the process that holds it: a later one of the same id keeps its claim.
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

/**
 * Which process holds a fixed `gateway.id`: the last one to start with it. A process starts only while no
 * other reads the id's queue, but one cut off from the broker at that moment (a network split) is not
 * seen; when it comes back, it finds another process's claim here and must not read the queue again (the
 * two would split its deliveries, each missing part of its own tabs').
 */
export class NodeOwnership {
  private readonly token = randomBytes(12).toString('base64url');

  constructor(
    private readonly redis: Redis,
    /** `Keys.nodeOwner(id)`. */
    private readonly key: string,
    private readonly logger: Logger,
  ) {}

  /** Taken at start, once the id's queue was found unread. */
  async claim(): Promise<void> {
    await this.redis.set(this.key, this.token);
  }

  /**
   * Whether no other process has claimed the id since. A claim found missing (Redis restarted empty) is
   * taken again, unless another process takes it first. Where Redis does not answer in time, true: a
   * broker reconnect must not wait on Redis for a case this rare.
   */
  async held(): Promise<boolean> {
    const check = async (): Promise<boolean> => {
      const owner = await this.redis.get(this.key);
      if (owner === this.token) return true;
      if (owner !== null) return false;
      if ((await this.redis.set(this.key, this.token, 'NX')) === 'OK') return true;
      return (await this.redis.get(this.key)) === this.token;
    };
    try {
      return await withTimeout(check(), CHECK_TIMEOUT_MS, 'reading who holds the gateway id');
    } catch (error) {
      this.logger.warn(
        { err: errorMessage(error) },
        'cannot tell whether another process took this gateway id',
      );
      return true;
    }
  }

  /** Given up at drain, unless another process holds the id by then. */
  async release(): Promise<void> {
    await this.redis.eval(RELEASE, 1, this.key, this.token);
  }
}
