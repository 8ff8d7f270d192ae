import roaring from 'roaring';

const { RoaringBitmap32 } = roaring;

/** A recipient as the router knows it: its key, and its bit in the tenant's id map once announced. */
export interface Recipient {
  key: string;
  bit: number | undefined;
}

/**
 * Recipients held as bits count this many to one unit of the bound: a roaring bitmap keeps a bit in about
 * two bytes, a key in a set takes some sixty.
 */
const BITS_PER_UNIT = 32;
/** From this many recipients with bits, an event's recipients are kept as a bitmap. */
const BITMAP_FROM = 256;

/** The users one event was written to on this node. */
class Written {
  private readonly keys = new Set<string>();
  private bits: InstanceType<typeof RoaringBitmap32> | undefined;

  has(recipient: Recipient): boolean {
    if (recipient.bit !== undefined && this.bits?.has(recipient.bit)) return true;
    return this.keys.has(recipient.key);
  }

  add(recipients: readonly Recipient[]): void {
    if (!this.bits && recipients.length >= BITMAP_FROM) this.bits = new RoaringBitmap32();
    for (const recipient of recipients) {
      if (this.has(recipient)) continue;
      if (this.bits && recipient.bit !== undefined) this.bits.add(recipient.bit);
      else this.keys.add(recipient.key);
    }
  }

  get units(): number {
    return this.keys.size + Math.ceil((this.bits?.size ?? 0) / BITS_PER_UNIT);
  }
}

/**
 * Remembers which users of this node an event was written to, so an event the resolver publishes twice
 * (it crashed between publishing and acking) is not shown twice. Bounded in units: a user kept by key
 * counts one, users of a large event kept as bits count one per 32, so a node holding thousands of
 * recipients of every broadcast still remembers hundreds of them. The oldest events are forgotten first.
 */
export class RecentDeliveries {
  private readonly events = new Map<string, Written>();
  private units = 0;

  constructor(private readonly maxUnits: number) {}

  /** What an event of the tenant was already written to here, if anything. */
  delivered(tenantId: string, eventId: string): Pick<Written, 'has'> | undefined {
    return this.events.get(`${tenantId}/${eventId}`);
  }

  record(tenantId: string, eventId: string, recipients: readonly Recipient[]): void {
    if (recipients.length === 0) return;
    const id = `${tenantId}/${eventId}`;
    let written = this.events.get(id);
    if (!written) {
      written = new Written();
      this.events.set(id, written);
    }
    const before = written.units;
    written.add(recipients);
    this.units += written.units - before;
    while (this.units > this.maxUnits) {
      const oldest = this.events.entries().next().value;
      if (!oldest) break;
      this.events.delete(oldest[0]);
      this.units -= oldest[1].units;
    }
  }
}
