/**
 * The last `capacity` event ids seen, so an event shown once is not shown again when it arrives a second
 * time (a resume replay, a relay from another tab, a redelivery). Memory stays bounded: the oldest id is
 * forgotten first. A Set keeps insertion order, so it doubles as the eviction queue.
 */
export class DedupWindow {
  private readonly ids = new Set<string>();

  constructor(private readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1)
      throw new RangeError('capacity must be a positive integer');
  }

  /** True the first time an id is offered (within the window), false for a repeat. */
  admit(id: string): boolean {
    if (this.ids.has(id)) return false;
    this.ids.add(id);
    if (this.ids.size > this.capacity) {
      const oldest = this.ids.values().next().value;
      if (oldest !== undefined) this.ids.delete(oldest);
    }
    return true;
  }

  /** Whether an id is in the window, without offering it. */
  has(id: string): boolean {
    return this.ids.has(id);
  }

  get size(): number {
    return this.ids.size;
  }
}
