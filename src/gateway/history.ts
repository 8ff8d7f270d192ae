interface Entry {
  tenant: string;
  offset: number;
  keys: readonly string[];
  /** Undefined once older than the history's maximum age (see `sweep`). */
  frame: Uint8Array | undefined;
  /** What it counts against the byte bound: the frame and its recipient list. */
  cost: number;
  /** When it was kept (ms, on the history's monotonic clock). */
  at: number;
}

/** A tenant's own offsets on this node. */
interface TenantOffsets {
  /** The offset of its latest delivery. */
  last: number;
  /** The highest offset history has dropped or refused to keep; everything above it that was kept is here. */
  floor: number;
  /** The offset it took when the node found it had missed deliveries (see `markGap`); 0 if it never did. */
  gapAt: number;
}

/**
 * Bytes a recipient key is counted for besides its characters: the list's slot and the string's header.
 * Measured on Node 20 for keys decoded from a header, as with user routing: 44 bytes a key of 10
 * characters, 164 of 130, 284 of 250. (Node routing names keys the registry holds anyway: counted all the
 * same, the bound errs on the safe side.) Without it a broadcast to 20,000 local users would cost its
 * frame's few hundred bytes while its key list held far more, and history could grow to hundreds of
 * megabytes inside a 16 MiB bound.
 */
const KEY_OVERHEAD_BYTES = 34;

function costOf(frame: Uint8Array, keys: readonly string[]): number {
  let cost = frame.byteLength;
  for (const key of keys) cost += KEY_OVERHEAD_BYTES + key.length;
  return cost;
}

/**
 * The node's recent deliveries, for `resume`: a tab that reconnects to the same node (same epoch) gets
 * what was delivered to its user after the offset it last saw, as long as it is still here. Offsets are
 * the node's own sequence of its deliveries to each tenant, so they mean nothing on another node: there
 * the answer is `resume_unavailable` and the application resynchronises from its API.
 *
 * Each tenant counts its own: tabs see offsets in every event frame and welcome, and one node-wide count
 * would tell a user of one tenant how much the node delivered to the others, and when (a ward's burst of
 * alerts in another hospital is health data too). The bounds are the node's, over all tenants; a tenant
 * once seen keeps its few numbers for the node's lifetime (a count started again would let a cursor from
 * before pass events it never saw).
 */
export class DeliveryHistory {
  /** In arrival order across tenants, each tenant's entries sorted by its offsets. */
  private readonly entries: Entry[] = [];
  private bytes = 0;
  private readonly tenants = new Map<string, TenantOffsets>();
  private readonly sweeper: NodeJS.Timeout | undefined;

  constructor(
    readonly epoch: string,
    private readonly maxEntries: number,
    private readonly maxBytes: number,
    // Monotonic: a wall clock stepped back would keep old deliveries replayable for as long.
    private readonly now: () => number = () => performance.now(),
    /**
     * How long a frame is kept (`gateway.resumeWindowMs`): a resume never replays one older (see `since`),
     * and frames are health data. Swept on a timer, as a quiet node adds nothing that would push them out.
     */
    private readonly maxAgeMs = Number.POSITIVE_INFINITY,
  ) {
    if (Number.isFinite(maxAgeMs)) {
      this.sweeper = setInterval(() => this.sweep(), Math.max(1000, maxAgeMs / 4));
      this.sweeper.unref();
    }
  }

  /** Bytes the history holds now: its frames and recipient lists. */
  get heldBytes(): number {
    return this.bytes;
  }

  /**
   * Lets go of the frames kept longer ago than the maximum age. Their entries stay, offsets and keys only:
   * a resume reaching back to one is refused, as it was while the frame was there.
   */
  sweep(): void {
    const oldest = this.now() - this.maxAgeMs;
    // Not in `at` order (a claim-checked entry goes before later ones of its tenant): every entry is looked at.
    for (const entry of this.entries) {
      if (entry.frame === undefined || entry.at >= oldest) continue;
      this.bytes -= entry.frame.byteLength;
      entry.cost -= entry.frame.byteLength;
      entry.frame = undefined;
    }
  }

  /** Stops the sweeper and drops every frame. */
  close(): void {
    clearInterval(this.sweeper);
    this.entries.length = 0;
    this.bytes = 0;
  }

  private of(tenant: string): TenantOffsets {
    let offsets = this.tenants.get(tenant);
    if (!offsets) {
      offsets = { last: 0, floor: 0, gapAt: 0 };
      this.tenants.set(tenant, offsets);
    }
    return offsets;
  }

  /** The offset of the tenant's latest delivery. */
  offset(tenant: string): number {
    return this.of(tenant).last;
  }

  /**
   * The node missed deliveries before now (its queue was lost, or its users were counted offline): they
   * never got offsets, so a resume from any offset before here would replay around a gap it cannot see.
   * Every tenant takes an offset of its own for the gap (`offset(tenant)` after this): tabs told of the
   * gap resume from it. `tenants`: only theirs, when the node knows whom it missed deliveries for; the
   * others' counts take no step, which would tell their users when the node lost another tenant's.
   */
  markGap(tenants?: Iterable<string>): void {
    if (tenants === undefined) {
      for (const offsets of this.tenants.values()) this.gap(offsets);
      this.entries.length = 0;
      this.bytes = 0;
      return;
    }
    for (const tenant of new Set(tenants)) {
      this.gap(this.of(tenant));
      this.forget(tenant);
    }
  }

  private gap(offsets: TenantOffsets): void {
    offsets.last += 1;
    offsets.gapAt = offsets.last;
    offsets.floor = offsets.last;
  }

  /** Allocates the tenant's next offset (every delivery gets one on arrival, kept in history or not). */
  next(tenant: string): number {
    const offsets = this.of(tenant);
    offsets.last += 1;
    return offsets.last;
  }

  add(tenant: string, offset: number, keys: readonly string[], frame: Uint8Array): void {
    if (this.maxEntries === 0) return;
    const offsets = this.of(tenant);
    // Older than what history has already given up: a resume from before it is refused anyway.
    if (offset <= offsets.floor) return;
    const cost = costOf(frame, keys);
    if (cost > this.maxBytes) {
      // Not kept, so nothing of the tenant's before it can be replayed without a gap: its history starts
      // again after it.
      let last = 0;
      for (const entry of this.entries) if (entry.tenant === tenant) last = Math.max(last, entry.offset);
      offsets.floor = Math.max(offsets.floor, offset, last);
      this.forget(tenant);
      return;
    }
    // A claim-checked event keeps the offset it got on arrival but is added once its payload is read,
    // possibly after later ones of its tenant: it goes before them, so each tenant's entries stay sorted.
    let at = this.entries.length;
    for (let i = this.entries.length - 1; i >= 0; i -= 1) {
      const entry = this.entries[i] as Entry;
      if (entry.tenant !== tenant) continue;
      if (entry.offset < offset) break;
      at = i;
    }
    this.entries.splice(at, 0, { tenant, offset, keys, frame, cost, at: this.now() });
    this.bytes += cost;
    while (this.entries.length > this.maxEntries || this.bytes > this.maxBytes) {
      // The oldest of its tenant's too (see above).
      const dropped = this.entries.shift();
      if (!dropped) break;
      this.bytes -= dropped.cost;
      const owner = this.of(dropped.tenant);
      owner.floor = Math.max(owner.floor, dropped.offset);
    }
  }

  /** Drops the tenant's entries. */
  private forget(tenant: string): void {
    let kept = 0;
    for (const entry of this.entries) {
      if (entry.tenant === tenant) this.bytes -= entry.cost;
      else this.entries[kept++] = entry;
    }
    this.entries.length = kept;
  }

  /**
   * Frames delivered to `key` (a user of `tenant`) after `offset` up to `upTo` (the offset a reconnected tab
   * was welcomed at: what came later was written to it live), or undefined when that cannot be told in full:
   * another epoch, a gap, entries dropped, or a delivery to this user in that span kept longer ago than the
   * maximum age (`gateway.resumeWindowMs`). A cursor so old is no reconnect, and a user who has lost access
   * since must not pull those events into a new connection; deliveries to other users do not count (a user
   * with no events of their own for a while still resumes after a blip).
   */
  since(
    epoch: string,
    tenant: string,
    offset: number,
    key: string,
    upTo = this.offset(tenant),
  ): Uint8Array[] | undefined {
    if (epoch !== this.epoch || offset > upTo) return undefined;
    const offsets = this.of(tenant);
    // Deliveries the node never received came before that point, even for a tab that saw the offset
    // before it.
    if (offset < offsets.gapAt) return undefined;
    if (offset === upTo) return [];
    // Offsets up to the floor may have been dropped (or never kept): from below it there may be a gap.
    if (this.maxEntries === 0 || offset < offsets.floor) return undefined;
    const frames: Uint8Array[] = [];
    const oldest = this.now() - this.maxAgeMs;
    for (const entry of this.entries) {
      if (entry.tenant !== tenant || entry.offset <= offset || entry.offset > upTo) continue;
      if (!entry.keys.includes(key)) continue;
      if (entry.at < oldest || entry.frame === undefined) return undefined;
      frames.push(entry.frame);
    }
    return frames;
  }
}
