import { randomBytes } from 'node:crypto';
import type { Keys } from './keys.js';
import type { WarrenRedis } from './redis.js';

/**
 * Claim-check payloads: stored once per event under a tenant-scoped key with a TTL, fetched by each
 * gateway node once. The job id is random (not guessable); the key also names the tenant, so an event of
 * another tenant that names the id finds nothing.
 */
export class PayloadStore {
  constructor(
    private readonly redis: WarrenRedis,
    private readonly keys: Keys,
  ) {}

  static newJobId(): string {
    return randomBytes(16).toString('base64url');
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

  async exists(tenantId: string, jobId: string): Promise<boolean> {
    return (await this.redis.exists(this.keys.job(tenantId, jobId))) === 1;
  }
}
