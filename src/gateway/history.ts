interface Entry {
  offset: number;
  keys: readonly string[];
  frame: Uint8Array;
  /** What it counts against the byte bound: the frame and its recipient list. */
  cost: number;
}

/**
 * Bytes a recipient key is counted for: the list's slot and, for a key read from a CC header, the string
 * itself. Without it a broadcast to 20,000 local users would cost its frame's few hundred bytes while its
 * key list held far more, and history could grow to hundreds of megabytes inside a 16 MiB bound.
 */
const KEY_BYTES = 32;

/**
 * The node's recent deliveries, for `resume`: a tab that reconnects to the same node (same epoch) gets
 * what was delivered to its user after the offset it last saw, as long as it is still here. Offsets are
 * the node's own delivery sequence, so they mean nothing on another node: there the answer is
 * `resume_unavailable` and the application resynchronises from its API.
 */
export class DeliveryHistory {
  private readonly entries: Entry[] = [];
  private bytes = 0;
  private last = 0;
  /** The highest offset history has dropped or refused to keep; everything above it that was kept is here. */
  private floor = 0;
  /** The offset the node took when it found it had missed deliveries (see `markGap`); 0 if it never did. */
  private gapAt = 0;

  constructor(
    readonly epoch: string,
    private readonly maxEntries: number,
    private readonly maxBytes: number,
  ) {}

  /** The offset of the latest delivery. */
  get offset(): number {
    return this.last;
  }

  /**
   * The node missed deliveries before now (its queue was lost, or its users were counted offline): they
   * never got offsets, so a resume from any offset before here would replay around a gap it cannot see.
   * Takes an offset of its own for the gap and returns it: tabs told of the gap resume from it.
   */
  markGap(): number {
    this.last += 1;
    this.gapAt = this.last;
    this.floor = this.last;
    this.entries.length = 0;
    this.bytes = 0;
    return this.gapAt;
  }

  /** Allocates the next offset (every delivery gets one on arrival, kept in history or not). */
  next(): number {
    this.last += 1;
    return this.last;
  }

  add(offset: number, keys: readonly string[], frame: Uint8Array): void {
    if (this.maxEntries === 0) return;
    // Older than what history has already given up: a resume from before it is refused anyway.
    if (offset <= this.floor) return;
    const cost = frame.byteLength + keys.length * KEY_BYTES;
    if (cost > this.maxBytes) {
      // Not kept, so nothing before it can be replayed without a gap: history starts again after it.
      const last = this.entries.at(-1)?.offset ?? 0;
      this.floor = Math.max(this.floor, offset, last);
      this.entries.length = 0;
      this.bytes = 0;
      return;
    }
    // A claim-checked event keeps the offset it got on arrival but is added once its payload is read,
    // possibly after later ones: entries stay sorted by offset.
    let at = this.entries.length;
    while (at > 0 && (this.entries[at - 1] as Entry).offset > offset) at -= 1;
    this.entries.splice(at, 0, { offset, keys, frame, cost });
    this.bytes += cost;
    while (this.entries.length > this.maxEntries || this.bytes > this.maxBytes) {
      const dropped = this.entries.shift();
      if (!dropped) break;
      this.bytes -= dropped.cost;
      this.floor = Math.max(this.floor, dropped.offset);
    }
  }

  /**
   * Frames delivered to `key` after `offset` up to `upTo` (the offset a reconnected tab was welcomed at:
   * what came later was written to it live), or undefined when history does not reach back that far (or
   * the epoch is another node's).
   */
  since(epoch: string, offset: number, key: string, upTo = this.last): Uint8Array[] | undefined {
    if (epoch !== this.epoch || offset > upTo) return undefined;
    // Deliveries the node never received came before that point, even for a tab that saw the offset
    // before it.
    if (offset < this.gapAt) return undefined;
    if (offset === upTo) return [];
    // Offsets up to the floor may have been dropped (or never kept): from below it there may be a gap.
    if (this.maxEntries === 0 || offset < this.floor) return undefined;
    const frames: Uint8Array[] = [];
    // Entries are sorted by offset: a tab back after a blip looks only at what came since, not at all of
    // history (up to a broadcast's thousands of keys per entry).
    for (let i = this.firstAfter(offset); i < this.entries.length; i += 1) {
      const entry = this.entries[i] as Entry;
      if (entry.offset > upTo) break;
      if (entry.keys.includes(key)) frames.push(entry.frame);
    }
    return frames;
  }

  /** Index of the first entry with an offset above `offset` (binary search). */
  private firstAfter(offset: number): number {
    let low = 0;
    let high = this.entries.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if ((this.entries[mid] as Entry).offset > offset) high = mid;
      else low = mid + 1;
    }
    return low;
  }
}
