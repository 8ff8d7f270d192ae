/**
 * A seeded PRNG (mulberry32) for property tests: small, and good enough to pick cases, so a failing run can
 * be replayed from its seed.
 */
export class Rng {
  constructor(private state: number) {}
  next(): number {
    this.state = (this.state + 0x6d2b79f5) | 0;
    let t = Math.imul(this.state ^ (this.state >>> 15), 1 | this.state);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }
  /** Up to `max` distinct items. */
  some<T>(items: readonly T[], max: number): T[] {
    const n = this.int(max + 1);
    const out = new Set<T>();
    while (out.size < Math.min(n, items.length)) out.add(this.pick(items));
    return [...out];
  }
}
