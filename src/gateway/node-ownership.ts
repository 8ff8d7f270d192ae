import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { errorMessage } from '../shared/errors.js';
import { withTimeout } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';

/** How long a check may wait for Redis before the node goes on as the holder (see `held`). */
const CHECK_TIMEOUT_MS = 2000;

// A claim is `<generation>:<token>`; each start takes the next generation, at least Redis's clock in ms, so
// that a start after Redis lost the counter (restarted empty) still outranks every earlier one. KEYS: owner,
// generation counter. ARGV: token. Returns the generation taken.
const CLAIM = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local g = redis.call('INCR', KEYS[2])
if g < now then
  g = now
  redis.call('SET', KEYS[2], string.format('%d', g))
end
redis.call('SET', KEYS[1], string.format('%d', g) .. ':' .. ARGV[1])
return g
`;

// Whether the claim of generation ARGV[1] with token ARGV[2] still holds: 0 when a claim of the same or a
// later generation by another process is stored. An older claim (Redis restored from a copy taken before
// this one's) or none (Redis restarted empty) is replaced by this one, the counter moved past it.
const HELD = `
local owner = redis.call('GET', KEYS[1])
local mine = ARGV[1] .. ':' .. ARGV[2]
if owner == mine then return 1 end
local g = owner and tonumber(string.match(owner, '^(%d+):'))
if g and g >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], mine)
if (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], ARGV[1])
end
return 1
`;

// Deleted only by the process that holds it: a later one of the same id keeps its claim.
const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`;

/**
 * Which process holds a fixed `gateway.id`: the last one to start with it. A process starts only while no
 * other reads the id's queue, but one cut off from the broker at that moment (a network split) is not
 * seen; when it comes back, it finds a later claim here and must not read the queue again (the two would
 * split its deliveries, each missing part of its own tabs'), nor write the id's presence.
 */
export class NodeOwnership {
  private readonly token = randomBytes(12).toString('base64url');
  private generation = 0;

  constructor(
    private readonly redis: Redis,
    /** `Keys.nodeOwner(id)` and `Keys.nodeOwnerGeneration(id)`. */
    private readonly keys: readonly [owner: string, generation: string],
    private readonly logger: Logger,
  ) {}

  /** Taken at start, once the id's queue was found unread. */
  async claim(): Promise<void> {
    this.generation = Number(await this.redis.eval(CLAIM, 2, ...this.keys, this.token));
  }

  /**
   * Whether no process has claimed the id since this one did. A claim found missing or older (Redis
   * restarted empty, or restored from an earlier copy) is taken again. Where Redis does not answer in
   * time, true (a broker reconnect must not wait on Redis for a case this rare), and `lostLate` is called
   * if the answer, when it comes, is no.
   */
  async held(lostLate?: () => void): Promise<boolean> {
    // Not claimed (yet): nothing to have lost.
    if (this.generation === 0) return true;
    const held = this.redis.eval(HELD, 2, ...this.keys, this.generation, this.token);
    try {
      return Number(await withTimeout(held, CHECK_TIMEOUT_MS, 'reading who holds the gateway id')) === 1;
    } catch (error) {
      held.then(
        (answer) => Number(answer) === 1 || lostLate?.(),
        () => {},
      );
      this.logger.warn(
        { err: errorMessage(error) },
        'cannot tell whether another process took this gateway id',
      );
      return true;
    }
  }

  /** Given up at drain, unless another process holds the id by then. */
  async release(): Promise<void> {
    await this.redis.eval(RELEASE, 1, this.keys[0], `${this.generation}:${this.token}`);
  }
}
