/**
 * Says a thing at most once per interval per key, with how many times it happened since it was last said.
 * Keys kept are bounded: past MAX_KEYS the oldest is forgotten (it is said again next time).
 */
export class PerKeyThrottle {
  private static readonly MAX_KEYS = 10_000;
  private readonly last = new Map<string, { at: number; untold: number }>();

  constructor(private readonly intervalMs: number) {}

  tell(key: string, count: number, say: (count: number) => void): void {
    const now = Date.now();
    const entry = this.last.get(key);
    if (entry && now - entry.at < this.intervalMs) {
      entry.untold += count;
      return;
    }
    this.last.delete(key);
    if (this.last.size >= PerKeyThrottle.MAX_KEYS) {
      const oldest = this.last.keys().next();
      if (!oldest.done) this.last.delete(oldest.value);
    }
    this.last.set(key, { at: now, untold: 0 });
    say(count + (entry?.untold ?? 0));
  }

  /**
   * The thing has stopped happening for `key`: if it was told, `say` hears how many times it happened
   * since it was last said (0 when none), and the next time is said at once. Not told, nothing is said.
   */
  settle(key: string, say: (untold: number) => void): void {
    const entry = this.last.get(key);
    if (!entry) return;
    this.last.delete(key);
    say(entry.untold);
  }
}
