import { withTimeout } from '../shared/lifecycle.js';
import type { Keys } from '../store/keys.js';
import type { Redis } from 'ioredis';

export interface PayloadFetcherOptions {
  /** Bytes the cache may hold. */
  maxBytes: number;
  /** Called for every read from Redis. */
  onFetch(): void;
  /** How long a cached payload may be served (default PAYLOAD_CACHE_MAX_AGE_MS). */
  maxAgeMs?: number;
  /** A read that takes longer fails (the tabs get payload_unavailable) instead of holding its users' events. */
  timeoutMs?: number;
}

interface Cached {
  value: Buffer;
  storedAt: number;
  /** What it counts against the byte bound: the payload, its key and the entry's bookkeeping. */
  cost: number;
}

/**
 * Bytes an entry costs besides its payload and its key's characters: the map's slot, the entry object and
 * the Buffer of its own (measured on Node 22: about 500 bytes an entry of a 1-byte payload and a 60-character
 * key). Without it a budget of payloads of a few bytes each (a service may put any JSON value) would keep
 * entries by the million, each costing the node a hundred times what it counts.
 */
export const PAYLOAD_CACHE_ENTRY_BYTES = 400;

/**
 * How long a cached payload may be served. The cache is there for the copies of one event that reach a
 * node close together (chunks of a long recipient list, a redelivery); keeping health data in memory much
 * longer than that buys little and would outlive a short claim-check TTL by far.
 */
export const PAYLOAD_CACHE_MAX_AGE_MS = 60_000;

/**
 * Claim-check payloads for this node: each job's bytes are read from Redis once however many local tabs
 * receive it. Concurrent requests for one job share a single read, and recent payloads stay in a cache
 * bounded in bytes (least recently used first out) and in age. Entries are keyed by the full
 * tenant-scoped Redis key, so a job id can only ever resolve within the tenant of the event that names
 * it — in Redis and in this cache alike.
 */
export class PayloadFetcher {
  private readonly inflight = new Map<string, Promise<Buffer | undefined>>();
  // A Map iterates in insertion order; re-inserting on every hit makes its first entry the least recent.
  private readonly cache = new Map<string, Cached>();
  private bytes = 0;
  private closed = false;
  // Expired entries are dropped on a timer too, not only when read: payloads are health data, and one
  // nobody asks for again must not stay in memory until the byte bound pushes it out.
  private readonly sweeper: NodeJS.Timeout;
  private readonly maxBytes: number;
  private readonly onFetch: () => void;
  private readonly maxAgeMs: number;
  private readonly timeoutMs: number;

  constructor(
    private readonly redis: Redis,
    private readonly keys: Keys,
    options: PayloadFetcherOptions,
  ) {
    this.maxBytes = options.maxBytes;
    this.onFetch = options.onFetch;
    this.maxAgeMs = options.maxAgeMs ?? PAYLOAD_CACHE_MAX_AGE_MS;
    this.timeoutMs = options.timeoutMs ?? 10_000;
    this.sweeper = setInterval(() => this.sweep(), Math.max(1000, this.maxAgeMs / 4));
    this.sweeper.unref();
  }

  /** Drops every entry older than the maximum age. */
  sweep(): void {
    const now = performance.now();
    for (const [key, entry] of this.cache) if (now - entry.storedAt > this.maxAgeMs) this.forget(key, entry);
  }

  /** Stops the sweeper and empties the cache. */
  close(): void {
    this.closed = true;
    clearInterval(this.sweeper);
    this.cache.clear();
    this.bytes = 0;
  }

  /** Bytes held by the cache now (payloads, keys and bookkeeping). */
  get cachedBytes(): number {
    return this.bytes;
  }

  /** The payload, or undefined when Redis has none (never stored, expired, or another tenant's). */
  get(tenantId: string, jobId: string): Promise<Buffer | undefined> {
    const key = this.keys.job(tenantId, jobId);
    const cached = this.cache.get(key);
    if (cached) {
      this.forget(key, cached);
      if (performance.now() - cached.storedAt <= this.maxAgeMs) {
        this.cache.set(key, cached);
        this.bytes += cached.cost;
        return Promise.resolve(cached.value);
      }
    }
    let pending = this.inflight.get(key);
    if (!pending) {
      this.onFetch();
      pending = withTimeout(this.redis.getBuffer(key), this.timeoutMs, `reading payload ${jobId}`).then(
        (value) => {
          this.inflight.delete(key);
          return value ? this.remember(key, value) : undefined;
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

  /** Caches a payload read (unless closed, or too large); returns the buffer to hand out. */
  private remember(key: string, value: Buffer): Buffer {
    // A read still in flight at close: its payload is handed to its callers, not kept with no sweeper left.
    const cost = value.byteLength + key.length + PAYLOAD_CACHE_ENTRY_BYTES;
    if (this.closed || cost > this.maxBytes) return value;
    const previous = this.cache.get(key);
    if (previous) this.forget(key, previous);
    // A reply that arrived in one socket read is a view of that read's buffer (up to 64 KiB, with other
    // replies in it): kept as it is, it would hold all of it, beyond what `bytes` counts.
    let own = value;
    if (value.byteLength < value.buffer.byteLength) {
      // Not Buffer.from: a small one would land in Node's shared pool, a view again.
      own = Buffer.allocUnsafeSlow(value.byteLength);
      value.copy(own);
    }
    this.cache.set(key, { value: own, storedAt: performance.now(), cost });
    this.bytes += cost;
    while (this.bytes > this.maxBytes) {
      const oldest = this.cache.entries().next().value;
      if (!oldest) break;
      this.forget(oldest[0], oldest[1]);
    }
    return own;
  }

  private forget(key: string, entry: Cached): void {
    this.cache.delete(key);
    this.bytes -= entry.cost;
  }
}
