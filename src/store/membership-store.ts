import type { MembershipChange } from '../protocol/schemas.js';
import { ErrorCode, WarrenError } from '../shared/errors.js';
import { LOG_MAX_LEN } from './change-log.js';
import type { Keys } from './keys.js';
import { redisReady, type WarrenRedis } from './redis.js';

/** A membership change refused because another resolver has taken the tenant's queue since. */
export class StaleMembershipTerm extends Error {
  constructor(
    readonly tenantId: string,
    readonly term: number,
  ) {
    super(`membership term ${term} of tenant ${tenantId} is no longer current`);
    this.name = 'StaleMembershipTerm';
  }
}

/** How long a measured clock offset is used, and the slowest round trip one is kept from. */
const CLOCK_KEPT_MS = 60_000;
const CLOCK_MAX_RTT_MS = 50;
/** How far the wall clock may drift from the monotonic one before the offset is measured again. */
const CLOCK_STEP_MS = 250;

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
  /** Connections of `redis` closed since `newTerm` or `applyWithin` was first called. */
  private closes = 0;
  private watching = false;
  private readonly countClose = (): void => {
    this.closes += 1;
  };
  /**
   * Redis's clock minus this host's (ms), when it was measured on both clocks, and on which connection (see
   * `applyWithin`).
   */
  private clock: { offset: number; at: number; monotonicAt: number; closes: number } | undefined;

  constructor(
    private readonly redis: WarrenRedis,
    private readonly keys: Keys,
  ) {}

  /** Stops listening to the client (which may be the caller's, and outlive this store). */
  close(): void {
    this.redis.off('close', this.countClose);
    this.watching = false;
  }

  private async run(
    tenantId: string,
    mode: 'each' | 'bulk',
    changes: readonly ChangeArgs[],
    term?: number,
    notAfter?: number,
  ): Promise<number> {
    const k = this.keys;
    const changed = await this.redis.warrenApplyMembership(
      k.ids(tenantId),
      k.reverseIds(tenantId),
      k.idSeq(tenantId),
      k.log(tenantId),
      k.logSeq(tenantId),
      k.membershipTerm(tenantId),
      `{${k.prefix}:${tenantId}}`,
      LOG_MAX_LEN,
      mode,
      term === undefined ? '' : String(term),
      notAfter === undefined ? '' : String(notAfter),
      ...changes.flat(),
    );
    if (changed === -2) {
      throw new WarrenError(
        ErrorCode.Timeout,
        'the membership change reached Redis after its deadline and was refused there (if an earlier ' +
          'send of it got through before its answer was lost, that one applied it: applying it again is safe)',
        { retryable: true },
      );
    }
    if (changed < 0) throw new StaleMembershipTerm(tenantId, term as number);
    return changed;
  }

  /**
   * `apply`, refused by Redis itself if it arrives after `ms` from now. A call given up after `ms` must not
   * land later: ioredis resends a command whose reply was lost, and sends those queued while it was away,
   * once it reconnects, maybe minutes on, after changes made meanwhile through other clients (a removal
   * the late add would undo). The deadline is set on Redis's clock, from an offset measured with `TIME`
   * and taken at its earliest: a change may be refused a little before `ms`, never applied after it.
   */
  async applyWithin(change: MembershipChange, ms: number): Promise<boolean> {
    const notAfter = await this.deadline(ms);
    await this.redis.sadd(this.keys.tenants(), change.tenantId);
    return (await this.run(change.tenantId, 'each', [toArgs(change)], undefined, notAfter)) > 0;
  }

  /** `ms` from now on Redis's clock, for a script's `notAfter` (see `applyWithin`). */
  private async deadline(ms: number): Promise<number> {
    const started = Date.now();
    const offset = await this.clockOffset();
    return Math.floor(started + ms + offset);
  }

  /**
   * Redis's clock minus this host's, at its smallest given the round trip. Re-measured once a minute, after
   * every reconnect (maybe to another server, with a clock of its own), and when this host's clock has been
   * stepped since (it moved apart from the monotonic clock).
   */
  private async clockOffset(): Promise<number> {
    const now = Date.now();
    const clock = this.clock;
    if (clock && clock.closes === this.closes) {
      const stepped = Math.abs(now - clock.at - (performance.now() - clock.monotonicAt)) > CLOCK_STEP_MS;
      if (!stepped && now - clock.at < CLOCK_KEPT_MS) return clock.offset;
    }
    this.watchCloses();
    const closes = this.closes;
    const [seconds, micros] = await this.redis.time();
    const after = Date.now();
    const offset = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000) - after;
    // Kept only when measured over a quick round trip: a slow one (Redis busy) understates the offset by up
    // to its length, which would shorten every later change's time to arrive.
    if (after - now <= CLOCK_MAX_RTT_MS)
      this.clock = { offset, at: after, monotonicAt: performance.now(), closes };
    return offset;
  }

  /**
   * Applies one change; resolves to whether it altered anything (adding an existing member does not).
   * `term` (from `newTerm`) is for the resolver applying the membership queue: the change is refused with
   * `StaleMembershipTerm` once another resolver has taken a newer term for the tenant.
   */
  async apply(change: MembershipChange, term?: number): Promise<boolean> {
    await this.redis.sadd(this.keys.tenants(), change.tenantId);
    return (await this.run(change.tenantId, 'each', [toArgs(change)], term)) > 0;
  }

  /**
   * Takes a new membership-queue term for the tenant. A change sent to Redis by a resolver that has since
   * lost the queue (cut off, its message given to another resolver) may arrive after the newer changes the
   * other one applied; carrying an older term, it is refused instead of undoing them.
   */
  async newTerm(tenantId: string): Promise<number> {
    // A term must be taken when asked for, never later: ioredis resends, after a reconnect, a command
    // whose reply was lost and one queued while it was offline. Taken late, after another resolver's, it
    // would be the newest and let this resolver re-apply a change the other has since undone.
    if (!redisReady(this.redis)) {
      throw new WarrenError(ErrorCode.RedisUnavailable, 'Redis is not connected: no membership term taken', {
        retryable: true,
      });
    }
    this.watchCloses();
    const closes = this.closes;
    const term = await this.redis.incr(this.keys.membershipTerm(tenantId));
    if (this.closes !== closes) {
      throw new WarrenError(
        ErrorCode.RedisUnavailable,
        'the Redis connection closed while a membership term was taken: it may have been taken late',
        { retryable: true },
      );
    }
    return term;
  }

  private watchCloses(): void {
    if (this.watching) return;
    this.watching = true;
    this.redis.on('close', this.countClose);
  }

  /**
   * Applies many changes of one tenant atomically, logging one bulk entry (resolvers drop their membership
   * caches) instead of one entry per change. For imports. With `withinMs`, refused by Redis if it arrives
   * later than that (as `applyWithin`): a batch whose reply was lost is resent once ioredis reconnects, and
   * without a deadline it could land after a removal made meanwhile and undo it.
   */
  async applyBulk(
    tenantId: string,
    changes: readonly MembershipChange[],
    withinMs?: number,
  ): Promise<number> {
    if (changes.length === 0) return 0;
    // The changes are written under `tenantId` whatever they name: one of another tenant would be applied
    // to this one's users.
    const stranger = changes.find((change) => change.tenantId !== tenantId);
    if (stranger)
      throw new Error(`applyBulk for tenant ${tenantId} got a change of tenant ${stranger.tenantId}`);
    const notAfter = withinMs === undefined ? undefined : await this.deadline(withinMs);
    await this.redis.sadd(this.keys.tenants(), tenantId);
    return this.run(tenantId, 'bulk', changes.map(toArgs), undefined, notAfter);
  }
}
