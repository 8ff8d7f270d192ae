import { createHmac, randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Keys } from './keys.js';

/**
 * Claim-check payloads: stored once per event under a tenant-scoped key with a TTL, fetched by each
 * gateway node once. The job id is random (not guessable); the key also names the tenant, so an event of
 * another tenant that names the id finds nothing.
 */
export class PayloadStore {
  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
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

  /** Connected now: a check while it is not would wait in the client's queue for it to come back. */
  get reachable(): boolean {
    return this.redis.status === 'ready';
  }

  async put(
    tenantId: string,
    payload: Buffer | string,
    ttlSec: number,
    jobId = PayloadStore.newJobId(),
  ): Promise<string> {
    await this.redis.set(this.keys.job(tenantId, jobId), payload, 'EX', ttlSec);
    return jobId;
  }

  /**
   * The job ids among `jobIds` that have no payload in `tenantId`. One pipelined round trip for a whole
   * batch: the resolver checks every claim-checked event before routing it, and a round trip per event
   * would cap a resolver at one Redis latency per event.
   */
  async missing(tenantId: string, jobIds: readonly string[]): Promise<Set<string>> {
    if (jobIds.length === 0) return new Set();
    const pipeline = this.redis.pipeline();
    for (const jobId of jobIds) pipeline.exists(this.keys.job(tenantId, jobId));
    const replies = (await pipeline.exec()) ?? [];
    const missing = new Set<string>();
    jobIds.forEach((jobId, i) => {
      const [error, count] = replies[i] ?? [new Error('no reply'), 0];
      if (error) throw error;
      if (count !== 1) missing.add(jobId);
    });
    return missing;
  }
}
