import roaring from 'roaring';
import type { LogEntry } from '../store/change-log.js';
import { bitsOfRedisBitmap } from '../store/bitmap-codec.js';
import type { Keys } from '../store/keys.js';
import type { WarrenRedis } from '../store/redis.js';

const { RoaringBitmap32 } = roaring;
type Bitmap = InstanceType<typeof RoaringBitmap32>;

interface Team {
  direct: Bitmap;
  groups: Set<string>;
}

// Past this many cached teams and groups the cache starts over; they reload on demand.
const MAX_ENTRIES = 200_000;

/**
 * A tenant's memberships as roaring bitmaps, loaded from Redis on first use and then kept exact by the
 * change log: a change for a team or group that is not cached is ignored (it will load fresh). Re-applying
 * an entry already contained in a snapshot is harmless, because every change sets or clears a bit or a set
 * member, so the cache may load a snapshot newer than its log position.
 */
export class MembershipCache {
  private readonly teams = new Map<string, Team>();
  private readonly groups = new Map<string, Bitmap>();

  constructor(
    private readonly redis: WarrenRedis,
    private readonly keys: Keys,
    private readonly tenantId: string,
    /** Teams and groups kept between batches at most. */
    private readonly maxEntries = MAX_ENTRIES,
  ) {}

  get size(): number {
    return this.teams.size + this.groups.size;
  }

  clear(): void {
    this.teams.clear();
    this.groups.clear();
  }

  apply(entry: LogEntry): void {
    const on = entry.c === '1';
    switch (entry.op) {
      case 'tu': {
        const team = this.teams.get(entry.a);
        if (team) setBit(team.direct, Number(entry.b), on);
        break;
      }
      case 'gu': {
        const group = this.groups.get(entry.a);
        if (group) setBit(group, Number(entry.b), on);
        break;
      }
      case 'gt': {
        // a = group, b = team. A newly linked group that is not cached yet is loaded by `ensure`.
        const team = this.teams.get(entry.b);
        if (team && on) team.groups.add(entry.a);
        else if (team) team.groups.delete(entry.a);
        break;
      }
      case 'rl':
        // Partial: the teams and groups a bulk change touched (ids never hold a comma); else everything.
        if (entry.c === 'p') {
          for (const id of entry.a.split(',')) this.teams.delete(id);
          for (const id of entry.b.split(',')) this.groups.delete(id);
        } else this.clear();
        break;
      default:
        break;
    }
  }

  /**
   * Empties the cache if it holds more than its bound. Before a batch's loading, not during it: a batch
   * needing more than the bound would otherwise clear what it had just loaded on every round, and never
   * settle.
   */
  trim(): void {
    if (this.size > this.maxEntries) this.clear();
  }

  /**
   * Loads whatever these teams and groups need that is not cached yet (two round trips at most); resolves
   * to how many it loaded.
   */
  async ensure(teamIds: Iterable<string>, groupIds: Iterable<string>): Promise<number> {
    const k = this.keys;
    const t = this.tenantId;
    const missingTeams = [...new Set(teamIds)].filter((id) => !this.teams.has(id));
    if (missingTeams.length > 0) {
      const pipeline = this.redis.pipeline();
      for (const id of missingTeams) pipeline.getBuffer(k.teamUsers(t, id)).smembers(k.teamGroups(t, id));
      const replies = (await pipeline.exec()) ?? [];
      missingTeams.forEach((id, i) => {
        const [bitsError, bits] = replies[2 * i] ?? [];
        const [groupsError, groups] = replies[2 * i + 1] ?? [];
        if (bitsError || groupsError) throw bitsError ?? groupsError;
        this.teams.set(id, {
          direct: bitmapOf(bits as Buffer | null),
          groups: new Set(groups as string[]),
        });
      });
    }
    const wanted = new Set(groupIds);
    for (const id of new Set(teamIds)) for (const g of this.teams.get(id)?.groups ?? []) wanted.add(g);
    const missingGroups = [...wanted].filter((id) => !this.groups.has(id));
    if (missingGroups.length === 0) return missingTeams.length;
    const pipeline = this.redis.pipeline();
    for (const id of missingGroups) pipeline.getBuffer(k.groupUsers(t, id));
    const replies = (await pipeline.exec()) ?? [];
    missingGroups.forEach((id, i) => {
      const [error, bits] = replies[i] ?? [];
      if (error) throw error;
      this.groups.set(id, bitmapOf(bits as Buffer | null));
    });
    return missingTeams.length + missingGroups.length;
  }

  /**
   * The bitmaps whose union is everyone the teams and groups reach: each team's direct members and the
   * members of every group holding it, plus each group's members. Call `ensure` first.
   */
  parts(teamIds: readonly string[], groupIds: readonly string[]): Bitmap[] {
    const parts: Bitmap[] = [];
    const groups = new Set(groupIds);
    for (const id of teamIds) {
      const team = this.teams.get(id);
      if (!team) throw new Error(`team ${id} not loaded`);
      parts.push(team.direct);
      for (const g of team.groups) groups.add(g);
    }
    for (const id of groups) {
      const group = this.groups.get(id);
      if (!group) throw new Error(`group ${id} not loaded`);
      parts.push(group);
    }
    return parts;
  }
}

function setBit(bitmap: Bitmap, bit: number, on: boolean): void {
  if (on) bitmap.add(bit);
  else bitmap.remove(bit);
}

function bitmapOf(bits: Buffer | null): Bitmap {
  const bitmap = new RoaringBitmap32();
  if (bits) bitmap.addMany(bitsOfRedisBitmap(bits));
  return bitmap;
}
