import type { Keys } from './keys.js';
import type { WarrenRedis } from './redis.js';

/** How long a revocation lasts unless told (`revokeUser`'s `ttlSec`, `warren revoke --ttl`). */
export const DEFAULT_REVOCATION_TTL_SEC = 86_400;

/** A revocation in force: tokens issued up to `revokedAt` are refused until `lapsesAt` (epoch ms). */
export interface Revocation {
  /** Infinity where every token is refused (a value not written by Warren is stored). */
  revokedAt: number;
  /** Infinity for a revocation without a lifetime (written by hand, not by Warren). */
  lapsesAt: number;
}

/** When a revocation with `leftMs` to live lapses; -1: written without a lifetime, it never does. */
function lapse(leftMs: number): number {
  return leftMs >= 0 ? Date.now() + leftMs : Number.POSITIVE_INFINITY;
}

/** A user's tokens revoked at `revokedAt` (epoch ms): is a token issued at `issuedAt` (epoch ms) refused? */
export function revokes(revokedAt: number, issuedAt: number | undefined): boolean {
  // Without `iat` nothing tells it from a token issued before: refused while the revocation lasts.
  return issuedAt === undefined || issuedAt <= revokedAt;
}

/**
 * Revoked users: per user, the instant their tokens were revoked, kept for the revocation's lifetime. A
 * gateway reads it for every new tab after the tab's user key is bound (see `WsServer.open`), and a
 * revocation is written here before the gateways holding the user are told: so a tab either finds it, or
 * was bound before it was written and gets the gateways' message.
 */
export class RevocationStore {
  constructor(
    private readonly redis: WarrenRedis,
    private readonly keys: Keys,
  ) {}

  /**
   * Records the revocation; returns the revocation in force: its instant is `at`, or Redis's clock when
   * the write lands by default (one clock for every service and operator revoking, whatever theirs say),
   * or a later instant already stored; its lifetime is `ttlSec` or what is left of the stored one,
   * whichever is longer.
   */
  async revoke(tenantId: string, userId: string, ttlSec: number, at?: number): Promise<Revocation> {
    const key = this.keys.revoked(tenantId, userId);
    const [revokedAt, ms] = await this.redis.warrenRevoke(key, ttlSec, at === undefined ? '' : at);
    // -1: a value Warren did not write is stored, read as revoking every token (`parsed`).
    const instant = Number(revokedAt);
    return { revokedAt: instant < 0 ? Number.POSITIVE_INFINITY : instant, lapsesAt: lapse(Number(ms)) };
  }

  /** When the user's tokens were revoked, if a revocation lasts. */
  async revokedAt(tenantId: string, userId: string): Promise<number | undefined> {
    return parsed(await this.redis.get(this.keys.revoked(tenantId, userId)));
  }

  /** The revocation lasting for the user, if any: its instant and when it lapses (epoch ms). */
  async revocation(tenantId: string, userId: string): Promise<Revocation | undefined> {
    const key = this.keys.revoked(tenantId, userId);
    const [[, value] = [], [, ttlMs] = []] = (await this.redis.multi().get(key).pttl(key).exec()) ?? [];
    const revokedAt = parsed(value as string | null | undefined);
    if (revokedAt === undefined) return undefined;
    return { revokedAt, lapsesAt: lapse(Number(ttlMs)) };
  }

  /** `revokedAt` for many users in one round trip, in the order given. */
  async revokedAtMany(
    users: readonly { tenantId: string; userId: string }[],
  ): Promise<(number | undefined)[]> {
    if (users.length === 0) return [];
    const pipeline = this.redis.pipeline();
    for (const { tenantId, userId } of users) pipeline.get(this.keys.revoked(tenantId, userId));
    const results = (await pipeline.exec()) ?? [];
    return users.map((_, i) => {
      const [error, value] = results[i] ?? [new Error('no reply')];
      if (error) throw error;
      return parsed(value as string | null);
    });
  }
}

/** What Warren writes: a whole number of ms, up to 15 digits (the REVOKE script's own test). */
const WARREN_INSTANT = /^\d{1,15}$/;

function parsed(value: string | null | undefined): number | undefined {
  if (value === null || value === undefined) return undefined;
  // Anything else was not written by Warren: taken as a revocation of every token, the safe reading, as the
  // script takes it. Number() would read '' as 0, '-1', '0x1f' or '1e1' as instants long past, refusing no
  // token while a revocation reports every one refused.
  return WARREN_INSTANT.test(value) ? Number(value) : Number.POSITIVE_INFINITY;
}
