import roaring from 'roaring';
import { userKey } from '../protocol/ids.js';

const { RoaringBitmap32 } = roaring;
type Bitmap = InstanceType<typeof RoaringBitmap32>;

/** The id map gave a bit already known for one user to another one. */
export class IdMapConflict extends Error {
  constructor(tenantId: string, bit: number) {
    super(`bit ${bit} of tenant ${tenantId} now names another user: the id map changed under this view`);
    this.name = 'IdMapConflict';
  }
}

/**
 * The online users of one tenant, kept per gateway node so that a node declared dead stops counting at
 * once (its bits are kept, not counted, in case it was only paused). Also maps the bits of users seen
 * online to their ids and routing keys, so resolving needs no id lookups.
 */
export class OnlineSet {
  private readonly nodes = new Map<string, Bitmap>();
  private dead: ReadonlySet<string> = new Set();
  private union: Bitmap = new RoaringBitmap32();
  private dirty = false;
  /**
   * user id → bit, for every user some node holds (a dead node's included: it may only have paused). A user
   * no node holds any more is forgotten, so that a tenant's view holds its users online now, not every user
   * ever online while the view was up (about 175 bytes each).
   */
  readonly bitOf = new Map<string, number>();
  /** bit → routing key `u.<tenant>.<user>`, for the same users. */
  readonly keyOf = new Map<number, string>();
  /**
   * user id → the other bits it is held under (rare: the id map gave it a new bit after losing writes, and
   * its gateways move it over one by one), so that `exceptUsers` takes them out too.
   */
  readonly formerBits = new Map<string, number[]>();

  private readonly keyPrefix: string;

  constructor(private readonly tenantId: string) {
    this.keyPrefix = userKey(tenantId, '');
  }

  private node(nodeId: string): Bitmap {
    let bitmap = this.nodes.get(nodeId);
    if (!bitmap) {
      bitmap = new RoaringBitmap32();
      this.nodes.set(nodeId, bitmap);
    }
    return bitmap;
  }

  private learn(bit: number, userId: string): void {
    const known = this.keyOf.get(bit);
    if (known !== undefined) {
      // A bit never changes hands unless Redis lost id-map writes (say, a failover): then nothing this set
      // learned can be trusted, and routing on it could reach the wrong user.
      if (known !== userKey(this.tenantId, userId)) throw new IdMapConflict(this.tenantId, bit);
      return;
    }
    const had = this.bitOf.get(userId);
    if (had !== undefined) {
      const former = this.formerBits.get(userId);
      if (former) former.push(had);
      else this.formerBits.set(userId, [had]);
    }
    this.bitOf.set(userId, bit);
    this.keyOf.set(bit, userKey(this.tenantId, userId));
  }

  on(nodeId: string, bit: number, userId: string): void {
    this.learn(bit, userId);
    this.node(nodeId).add(bit);
    if (!this.dead.has(nodeId)) this.union.add(bit);
  }

  off(nodeId: string, bit: number): void {
    this.nodes.get(nodeId)?.remove(bit);
    let held = false;
    for (const [other, bitmap] of this.nodes) {
      if (!bitmap.has(bit)) continue;
      held = true;
      if (!this.dead.has(other)) return;
    }
    if (!this.dirty) this.union.remove(bit);
    if (!held) this.forget(bit);
  }

  nodeGone(nodeId: string): void {
    const bitmap = this.nodes.get(nodeId);
    if (!bitmap) return;
    this.nodes.delete(nodeId);
    this.dirty = true;
    // Its bits no other node holds, in one native pass: asked bit by bit of every node, a million users over
    // twenty nodes held the event loop for about 180 ms.
    const others = [...this.nodes.values()];
    const orphaned =
      others.length > 0 ? RoaringBitmap32.andNot(bitmap, RoaringBitmap32.orMany(others)) : bitmap;
    for (const bit of orphaned) this.forget(bit);
  }

  /** No node holds `bit` any more: its user's mapping goes (or falls back to a bit still held). */
  private forget(bit: number): void {
    const key = this.keyOf.get(bit);
    if (key === undefined) return;
    this.keyOf.delete(bit);
    const userId = key.slice(this.keyPrefix.length);
    const former = this.formerBits.get(userId);
    if (this.bitOf.get(userId) === bit) {
      // Every former bit left is still held (each is dropped from the list when it is not): the last one
      // the user had becomes theirs again.
      const last = former?.pop();
      if (last === undefined) this.bitOf.delete(userId);
      else this.bitOf.set(userId, last);
    } else if (former) {
      const at = former.indexOf(bit);
      if (at >= 0) former.splice(at, 1);
    }
    if (former && former.length === 0) this.formerBits.delete(userId);
  }

  /**
   * Snapshot load of one node's bits with their user ids. A bit without an id (the reverse map lost it: a
   * partial restore, a hand repair) is left offline: with node routing nothing else would stop it being
   * delivered to, and `exceptUsers`, which names users, could not take it out. Returns how many were left.
   */
  load(nodeId: string, bits: Uint32Array, userIds: readonly (string | null)[]): number {
    let unknown = 0;
    bits.forEach((bit, i) => {
      const userId = userIds[i];
      if (userId) this.learn(bit, userId);
      else unknown += 1;
    });
    this.node(nodeId).addMany(unknown === 0 ? bits : bits.filter((_, i) => Boolean(userIds[i])));
    this.dirty = true;
    return unknown;
  }

  /** Tells the set which nodes are dead now; recomputes the union only when one of its nodes changed. */
  setDead(dead: ReadonlySet<string>): void {
    let changed = false;
    for (const nodeId of this.nodes.keys()) if (dead.has(nodeId) !== this.dead.has(nodeId)) changed = true;
    this.dead = dead;
    if (changed) this.dirty = true;
  }

  /** The routing keys of `bits`, all of them online users. */
  keysOf(bits: Bitmap): string[] {
    const values = bits.toUint32Array();
    const keys: string[] = new Array(values.length);
    for (let i = 0; i < values.length; i += 1) {
      const bit = values[i] as number;
      const key = this.keyOf.get(bit);
      // Every online bit was learned with its id; a miss would be a bug, never a reason to guess.
      if (key === undefined) throw new Error(`online bit ${bit} of tenant ${this.tenantId} has no user id`);
      keys[i] = key;
    }
    return keys;
  }

  /** The live nodes holding any of `bits`. */
  nodesHolding(bits: Bitmap): string[] {
    const nodes: string[] = [];
    for (const [nodeId, bitmap] of this.nodes) {
      if (!this.dead.has(nodeId) && bits.intersects(bitmap)) nodes.push(nodeId);
    }
    return nodes;
  }

  /** Online users (bits) now. */
  get bitmap(): Bitmap {
    if (this.dirty) {
      const live = [...this.nodes].filter(([nodeId]) => !this.dead.has(nodeId)).map(([, b]) => b);
      this.union = live.length > 0 ? RoaringBitmap32.orMany(live) : new RoaringBitmap32();
      this.dirty = false;
    }
    return this.union;
  }
}
