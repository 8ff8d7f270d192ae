/**
 * "Full jitter" exponential backoff: a uniform draw in [0, min(cap, base·2^(attempt-1))]. Of the jitter
 * schemes it spreads simultaneous reconnects best, which is what matters when a whole fleet of clients or
 * nodes loses the same broker at once.
 */
export function fullJitterDelay(
  attempt: number,
  baseMs: number,
  capMs: number,
  random = Math.random,
): number {
  const exp = Math.min(capMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.floor(random() * exp);
}

/** A value spread uniformly over ±fraction around `value` (for lifetimes and drain windows). */
export function jitter(value: number, fraction: number, random = Math.random): number {
  return value * (1 - fraction + 2 * fraction * random());
}

/**
 * Retries of one thing (re-subscribing, reopening a channel): at most one pending at a time, each after a
 * growing full-jitter delay above `baseMs` (never at once: when a whole connection is going, its channels
 * close just before it is seen gone). Timers never keep the process alive.
 */
export class RetrySchedule {
  private pending = false;
  private attempts = 0;

  constructor(
    private readonly baseMs: number,
    private readonly capMs: number,
  ) {}

  /** Runs `attempt` after the next delay, with its number (1 for the first since `reset`); false if one is pending. */
  schedule(attempt: (n: number) => void): boolean {
    if (this.pending) return false;
    this.pending = true;
    this.attempts += 1;
    const n = this.attempts;
    const delay = this.baseMs + fullJitterDelay(n, this.baseMs, this.capMs);
    setTimeout(() => {
      this.pending = false;
      attempt(n);
    }, delay).unref();
    return true;
  }

  /** It worked: the next retry starts from the short delay again. */
  reset(): void {
    this.attempts = 0;
  }
}
