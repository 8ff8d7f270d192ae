/**
 * Says a thing at most once per interval per key, with how many times it happened since it was last said.
 * Keys kept are bounded: past MAX_KEYS the oldest is forgotten (it is said again next time).
 */
export class PerKeyThrottle {
  private static readonly MAX_KEYS = 10_000;
  private readonly last = new Map<
    string,
    { at: number; untold: number; say?: (count: number) => void; timer?: NodeJS.Timeout }
  >();

  /**
   * `trailing`: what was kept quiet is said at the end of the interval even if nothing happens after it
   * (with the `say` of its last time), so a run of failures that stops is counted whole; otherwise it
   * waits for the next time (or `settle`).
   */
  constructor(
    private readonly intervalMs: number,
    private readonly trailing = false,
  ) {}

  tell(key: string, count: number, say: (count: number) => void): void {
    const now = Date.now();
    const entry = this.last.get(key);
    if (entry && now - entry.at < this.intervalMs) {
      entry.untold += count;
      if (this.trailing) {
        entry.say = say;
        entry.timer ??= setTimeout(() => this.flush(key), entry.at + this.intervalMs - now);
        entry.timer.unref?.();
      }
      return;
    }
    clearTimeout(entry?.timer);
    this.last.delete(key);
    if (this.last.size >= PerKeyThrottle.MAX_KEYS) {
      const oldest = this.last.keys().next();
      if (!oldest.done) {
        clearTimeout(this.last.get(oldest.value)?.timer);
        this.last.delete(oldest.value);
      }
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
    clearTimeout(entry.timer);
    this.last.delete(key);
    say(entry.untold);
  }

  /** The end of a trailing interval: what was kept quiet is said, and starts the next interval. */
  private flush(key: string): void {
    const entry = this.last.get(key);
    if (!entry) return;
    entry.timer = undefined;
    if (entry.untold === 0 || !entry.say) return;
    const { untold, say } = entry;
    entry.at = Date.now();
    entry.untold = 0;
    say(untold);
  }
}
