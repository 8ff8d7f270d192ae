import type { MembershipChange } from '../protocol/schemas.js';
import { LOG_MAX_LEN } from './change-log.js';
import type { Keys } from './keys.js';
import type { WarrenRedis } from './redis.js';

type ChangeArgs = [kind: 'tu' | 'gu' | 'gt', op: 0 | 1, a: string, b: string];

function toArgs(change: MembershipChange): ChangeArgs {
  const op = change.op === 'add' ? 1 : 0;
  switch (change.kind) {
    case 'user-team':
      return ['tu', op, change.teamId, change.userId];
    case 'user-group':
      return ['gu', op, change.groupId, change.userId];
    case 'group-team':
      return ['gt', op, change.groupId, change.teamId];
  }
}

/**
 * Memberships in Redis, the source of truth (DESIGN.md §4): team → direct members (bitmap), group →
 * members (bitmap), group ↔ teams (sets both ways). Changes are applied by Lua together with their change
 * log entry, so once `apply` returns, no resolver can resolve a later event with the old membership.
 */
export class MembershipStore {
  constructor(
    private readonly redis: WarrenRedis,
    private readonly keys: Keys,
  ) {}

  private run(tenantId: string, mode: 'each' | 'bulk', changes: readonly ChangeArgs[]): Promise<number> {
    const k = this.keys;
    return this.redis.warrenApplyMembership(
      k.ids(tenantId),
      k.reverseIds(tenantId),
      k.idSeq(tenantId),
      k.log(tenantId),
      k.logSeq(tenantId),
      `{${k.prefix}:${tenantId}}`,
      LOG_MAX_LEN,
      mode,
      ...changes.flat(),
    );
  }

  /** Applies one change; resolves to whether it altered anything (adding an existing member does not). */
  async apply(change: MembershipChange): Promise<boolean> {
    await this.redis.sadd(this.keys.tenants(), change.tenantId);
    return (await this.run(change.tenantId, 'each', [toArgs(change)])) > 0;
  }

  /**
   * Applies many changes of one tenant atomically, logging one bulk entry (resolvers drop their membership
   * caches) instead of one entry per change. For imports.
   */
  async applyBulk(tenantId: string, changes: readonly MembershipChange[]): Promise<number> {
    if (changes.length === 0) return 0;
    await this.redis.sadd(this.keys.tenants(), tenantId);
    return this.run(tenantId, 'bulk', changes.map(toArgs));
  }
}
