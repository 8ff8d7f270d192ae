/**
 * Remembers which users of this node an event was written to, so an event the resolver publishes twice
 * (it crashed between publishing and acking) is not shown twice. Bounded by the number of (event, user)
 * pairs; the oldest events are forgotten first, long after any redelivery would arrive.
 */
export class RecentDeliveries {
  private readonly events = new Map<string, Set<string>>();
  private pairs = 0;

  constructor(private readonly maxPairs: number) {}

  /** The users an event was already written to here, if any. */
  delivered(eventId: string): ReadonlySet<string> | undefined {
    return this.events.get(eventId);
  }

  record(eventId: string, keys: readonly string[]): void {
    if (keys.length === 0) return;
    let set = this.events.get(eventId);
    if (!set) {
      set = new Set();
      this.events.set(eventId, set);
    }
    for (const key of keys) {
      if (!set.has(key)) {
        set.add(key);
        this.pairs += 1;
      }
    }
    while (this.pairs > this.maxPairs) {
      const oldest = this.events.entries().next().value;
      if (!oldest) break;
      this.events.delete(oldest[0]);
      this.pairs -= oldest[1].size;
    }
  }
}
