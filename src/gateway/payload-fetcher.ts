import type { Keys } from '../store/keys.js';
import type { WarrenRedis } from '../store/redis.js';

export interface PayloadCounters {
  onFetch(): void;
}

/**
 * Claim-check payloads for this node: each job's bytes are read from Redis once however many local tabs
 * receive it. Concurrent requests for one job share a single read, and recent payloads stay in a cache
 * bounded in bytes (least recently used first out). Keys are tenant-scoped, so a job id can only ever
 * resolve within the tenant of the event that names it.
 */
export class PayloadFetcher {
  private readonly inflight = new Map<string, Promise<Buffer | undefined>>();
  private readonly cache = new Map<string, Buffer>();
  private bytes = 0;

  constructor(
    private readonly redis: WarrenRedis,
    private readonly keys: Keys,
    private readonly maxBytes: number,
    private readonly counters: PayloadCounters,
  ) {}

  get(tenantId: string, jobId: string): Promise<Buffer | undefined> {
    const key = this.keys.job(tenantId, jobId);
    const cached = this.cache.get(key);
    if (cached) {
      this.cache.delete(key);
      this.cache.set(key, cached);
      return Promise.resolve(cached);
    }
    let pending = this.inflight.get(key);
    if (!pending) {
      this.counters.onFetch();
      pending = this.redis.getBuffer(key).then(
        (value) => {
          this.inflight.delete(key);
          if (value) this.remember(key, value);
          return value ?? undefined;
        },
        (error: unknown) => {
          this.inflight.delete(key);
          throw error;
        },
      );
      this.inflight.set(key, pending);
    }
    return pending;
  }

  private remember(key: string, value: Buffer): void {
    if (value.byteLength > this.maxBytes) return;
    this.cache.set(key, value);
    this.bytes += value.byteLength;
    while (this.bytes > this.maxBytes) {
      const oldest = this.cache.entries().next().value;
      if (!oldest) break;
      this.cache.delete(oldest[0]);
      this.bytes -= oldest[1].byteLength;
    }
  }
}
