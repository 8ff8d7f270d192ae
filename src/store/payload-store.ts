import { createHmac, randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { ErrorCode, isWarrenError, WarrenError } from '../shared/errors.js';
import { withTimeout } from '../shared/lifecycle.js';
import type { Keys } from './keys.js';
import { redisReady } from './redis.js';

/**
 * How long a command may take on a payloads' Redis of its own before it counts as failed: a check, and a
 * store (which may carry many megabytes).
 */
const OWN_CHECK_TIMEOUT_MS = 2000;
const OWN_STORE_TIMEOUT_MS = 10_000;

/**
 * Claim-check payloads: stored once per event under a tenant-scoped key with a TTL, fetched by each
 * gateway node once. The job id is random (not guessable); the key also names the tenant, so an event of
 * another tenant that names the id finds nothing.
 */
export class PayloadStore {
  /**
   * `own`: the client is the payloads' own server (claimCheck.redisUrl), not the one memberships and
   * presence live on. Its commands then fail at once while it is away, and after a timeout when it hangs
   * (`bounded`), so that a resolver does not hold other events behind it; on the shared server, whatever
   * waits for it waits for memberships too.
   */
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    readonly own = false,
  ) {}

  static newJobId(): string {
    return randomBytes(16).toString('base64url');
  }

  /**
   * A job id that is the same for the same event and payload under the same secret, and as unguessable as
   * a random one without it: an event claim-checked again (requeued, retried) overwrites its payload
   * instead of storing one more copy for the TTL. The payload is part of it: an event id a service reuses
   * for other data must not get the first payload's id, or a node that cached that payload would write it
   * to the second event's audience.
   */
  static jobIdFor(secret: Buffer, tenantId: string, eventId: string, payload: Buffer): string {
    return createHmac('sha256', secret)
      .update(`${tenantId}\0${eventId}\0`)
      .update(payload)
      .digest()
      .subarray(0, 16)
      .toString('base64url');
  }

  /** Commands of an own server that timed out and have not been answered since. */
  private unanswered = 0;

  /**
   * `command()` on the shared server as it is. On an own one it is not sent unless connected and answering
   * (it would otherwise wait in the client's queue, or behind one the server has not answered), and it
   * fails after `ms`.
   */
  private bounded<T>(command: () => Promise<T>, ms: number, what: string): Promise<T> {
    if (!this.own) return command();
    if (!redisReady(this.redis) || this.unanswered > 0)
      return Promise.reject(
        new WarrenError(ErrorCode.RedisUnavailable, "the payloads' Redis is not connected or not answering", {
          retryable: true,
        }),
      );
    const sent = command();
    return withTimeout(sent, ms, what).catch((error: unknown) => {
      if (isWarrenError(error, ErrorCode.Timeout)) {
        // Hung until it answers this one (or the connection drops and fails it).
        this.unanswered += 1;
        void sent.then(
          () => (this.unanswered -= 1),
          () => (this.unanswered -= 1),
        );
      }
      throw error;
    });
  }

  async put(
    tenantId: string,
    payload: Buffer | string,
    ttlSec: number,
    jobId = PayloadStore.newJobId(),
  ): Promise<string> {
    await this.bounded(
      () => this.redis.set(this.keys.job(tenantId, jobId), payload, 'EX', ttlSec),
      OWN_STORE_TIMEOUT_MS,
      'storing a payload',
    );
    return jobId;
  }

  /**
   * The job ids among `jobIds` that have no payload in `tenantId`. One pipelined round trip for a whole
   * batch: the resolver checks every claim-checked event before routing it, and a round trip per event
   * would cap a resolver at one Redis latency per event.
   */
  async missing(tenantId: string, jobIds: readonly string[]): Promise<Set<string>> {
    if (jobIds.length === 0) return new Set();
    const check = () => {
      const pipeline = this.redis.pipeline();
      for (const jobId of jobIds) pipeline.exists(this.keys.job(tenantId, jobId));
      return pipeline.exec();
    };
    const replies = (await this.bounded(check, OWN_CHECK_TIMEOUT_MS, 'checking payloads')) ?? [];
    const missing = new Set<string>();
    jobIds.forEach((jobId, i) => {
      const [error, count] = replies[i] ?? [new Error('no reply'), 0];
      if (error) throw error;
      if (count !== 1) missing.add(jobId);
    });
    return missing;
  }
}
