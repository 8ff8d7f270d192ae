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
