import roaring from 'roaring';
import { bitsOfRedisBitmap } from './bitmap-codec.js';
import { LOG_MAX_LEN } from './change-log.js';
import type { Keys } from './keys.js';
import type { WarrenRedis } from './redis.js';

export interface NodeStats {
  connections: number;
  /** Users with a tab open on the node; not those whose key it keeps bound through their grace period. */
  users: number;
  startedAt: number;
}

/**
 * How often resolvers read which nodes are alive (see NodeLiveness): a node that beats again is counted
 * again by every resolver within this, plus the batch it was resolving.
 */
export const LIVENESS_POLL_MS = 1000;

/** Tenants asked about per round trip when a node's cleanup looks for bitmaps its record does not name. */
const TENANT_SCAN_COUNT = 1000;

/**
 * Which users of a tenant are online, per gateway node. A user is online while any node has their bit set;
 * a node that stops heartbeating is declared dead after `expiryMs` and its bits stop counting (resolvers
 * check liveness themselves, and whoever notices first cleans the node's keys up).
 */
export class PresenceStore {
  private readonly knownTenants = new Set<string>();
  /** Counts `forgetKnownTenants`: a record written before the latest one is not trusted. */
  private generation = 0;

  constructor(
    private readonly redis: WarrenRedis,
    private readonly keys: Keys,
  ) {}

  private async noteTenant(nodeId: string, tenantId: string): Promise<void> {
    const known = `${nodeId}/${tenantId}`;
    if (this.knownTenants.has(known)) return;
    const generation = this.generation;
    await Promise.all([
      this.redis.sadd(this.keys.nodeTenants(nodeId), tenantId),
      this.redis.sadd(this.keys.tenants(), tenantId),
    ]);
    // Forgotten meanwhile (Redis changed): the write may have gone to the server that is gone.
    if (generation === this.generation) this.knownTenants.add(known);
  }

  /** Marks users online on `nodeId`; returns their bit positions in the tenant's id map. */
  async online(nodeId: string, tenantId: string, userIds: readonly string[]): Promise<number[]> {
    await this.noteTenant(nodeId, tenantId);
    const k = this.keys;
    return this.redis.warrenPresenceOn(
      k.ids(tenantId),
      k.reverseIds(tenantId),
      k.idSeq(tenantId),
      k.online(tenantId, nodeId),
      k.log(tenantId),
      k.logSeq(tenantId),
      nodeId,
      LOG_MAX_LEN,
      ...userIds,
    );
  }

  /** The users' bits in the tenant's id map now (null where a user has none). */
  async bitsOf(tenantId: string, userIds: readonly string[]): Promise<(number | null)[]> {
    if (userIds.length === 0) return [];
    const raw = await this.redis.hmget(this.keys.ids(tenantId), ...userIds);
    return raw.map((bit) => (bit === null ? null : Number(bit)));
  }

  async offline(nodeId: string, tenantId: string, bit: number): Promise<void> {
    const k = this.keys;
    await this.redis.warrenPresenceOff(
      k.online(tenantId, nodeId),
      k.log(tenantId),
      k.logSeq(tenantId),
      nodeId,
      LOG_MAX_LEN,
      bit,
    );
  }

  /**
   * Records that the node is alive, with its current numbers for `warren status`. `returned`: the node was
   * not listed as alive (first beat, or declared dead and cleaned up meanwhile); else `silentMs`, the time
   * since its previous beat landed, on Redis's clock (over the expiry, resolvers counted its users offline
   * whether or not anyone cleaned it up).
   */
  async heartbeat(
    nodeId: string,
    stats: NodeStats,
    ttlMs: number,
  ): Promise<{ returned: boolean; silentMs: number }> {
    const statsKey = this.keys.nodeStats(nodeId);
    const [since] = await Promise.all([
      this.redis.warrenHeartbeat(this.keys.nodes(), nodeId),
      this.redis
        .multi()
        .hset(statsKey, { connections: stats.connections, users: stats.users, startedAt: stats.startedAt })
        .pexpire(statsKey, ttlMs)
        .exec(),
    ]);
    // Declared dead and forgotten (by whichever process swept it): the tenants it announced must be
    // recorded again as its users are re-announced, or a real death later would leave their bits behind.
    const returned = since < 0;
    if (returned) this.forgetKnownTenants(nodeId);
    return { returned, silentMs: Math.max(0, since) };
  }

  /** Records of which tenants the node announced users in are written again on their next announcement. */
  forgetKnownTenants(nodeId: string): void {
    this.generation += 1;
    for (const known of this.knownTenants)
      if (known.startsWith(`${nodeId}/`)) this.knownTenants.delete(known);
  }

  async nodeStats(nodeId: string): Promise<NodeStats | undefined> {
    const raw = await this.redis.hgetall(this.keys.nodeStats(nodeId));
    if (!raw['connections']) return undefined;
    return {
      connections: Number(raw['connections']),
      users: Number(raw['users']),
      startedAt: Number(raw['startedAt']),
    };
  }

  /** Every node that heartbeats or did, with its last beat on Redis's clock. */
  async nodes(): Promise<{ nodeId: string; lastBeat: number }[]> {
    const flat = await this.redis.zrange(this.keys.nodes(), '0', '-1', 'WITHSCORES');
    const out: { nodeId: string; lastBeat: number }[] = [];
    for (let i = 0; i + 1 < flat.length; i += 2)
      out.push({ nodeId: flat[i] as string, lastBeat: Number(flat[i + 1]) });
    return out;
  }

  /** Users of a tenant online on any of `nodeIds`, counted once however many nodes hold them. */
  async onlineCount(tenantId: string, nodeIds: readonly string[]): Promise<number> {
    if (nodeIds.length === 0) return 0;
    // Read and joined here, not with BITOP into a scratch key: `warren status` must work against a
    // replica, or a Redis too full to take a write, when it is most needed.
    const bitmaps = await Promise.all(
      nodeIds.map((n) => this.redis.getBuffer(this.keys.online(tenantId, n))),
    );
    const online = new roaring.RoaringBitmap32();
    for (const bitmap of bitmaps) if (bitmap) online.addMany(bitsOfRedisBitmap(bitmap));
    return online.size;
  }

  /** Removes everything a node announced, in every tenant. Idempotent. */
  async forgetNode(nodeId: string): Promise<void> {
    const k = this.keys;
    const tenants = await this.redis.smembers(k.nodeTenants(nodeId));
    const recorded = new Set(tenants);
    const unrecorded = await this.unrecordedTenants(nodeId, recorded);
    await Promise.all(
      [...tenants, ...unrecorded].map((t) =>
        this.redis.warrenNodeGone(k.online(t, nodeId), k.log(t), k.logSeq(t), nodeId, LOG_MAX_LEN),
      ),
    );
    // Only the tenants cleaned up here: one the node announced meanwhile (it was alive after all) stays.
    if (tenants.length > 0) await this.redis.srem(k.nodeTenants(nodeId), ...tenants);
    await this.redis.del(k.nodeStats(nodeId));
    // Last: a node that beats while it is being cleaned up is still listed then, so its beat does not
    // count as a return; off the list now, its next beat does, and it announces its users and their
    // tenants again (had the list gone first, a tenant it recorded in between would be removed above
    // while the node believed it recorded).
    await this.redis.zrem(k.nodes(), nodeId);
    this.forgetKnownTenants(nodeId);
  }

  /**
   * Tenants where the node holds users that its record does not name: the record lost (deleted by hand),
   * or an announcement whose record was read by a cleanup just before it landed (the record cached as
   * written, so not written again). Left, those bits would count their users online with no tab anywhere:
   * for good in every resolver view that saw them (nothing logs the node gone there), and again for new
   * views and `warren status` once a process of the same fixed id beats. Found by looking for the node's
   * bitmap in every tenant ever seen: a cleanup is rare, and one round trip per page of tenants.
   */
  private async unrecordedTenants(nodeId: string, recorded: ReadonlySet<string>): Promise<string[]> {
    const found: string[] = [];
    let cursor = '0';
    do {
      const [next, page] = await this.redis.sscan(this.keys.tenants(), cursor, 'COUNT', TENANT_SCAN_COUNT);
      cursor = next;
      const candidates = page.filter((t) => !recorded.has(t));
      if (candidates.length === 0) continue;
      const pipeline = this.redis.pipeline();
      for (const t of candidates) pipeline.exists(this.keys.online(t, nodeId));
      const replies = (await pipeline.exec()) ?? [];
      candidates.forEach((t, i) => {
        const [error, exists] = replies[i] ?? [];
        if (error) throw error;
        if (exists === 1) found.push(t);
      });
    } while (cursor !== '0');
    return [...new Set(found)];
  }

  async liveNodes(expiryMs: number): Promise<string[]> {
    return this.redis.warrenLiveNodes(this.keys.nodes(), expiryMs);
  }

  /** Nodes silent for longer than `expiryMs` (not yet cleaned up). */
  async deadNodes(expiryMs: number): Promise<string[]> {
    return this.redis.warrenDeadNodes(this.keys.nodes(), expiryMs);
  }

  /**
   * Cleans up the node if it is still silent for longer than `expiryMs` (it may have beaten since a list of
   * dead nodes was read); returns whether it did.
   */
  async forgetIfDead(nodeId: string, expiryMs: number): Promise<boolean> {
    if ((await this.redis.warrenNodeDead(this.keys.nodes(), expiryMs, nodeId)) !== 1) return false;
    await this.forgetNode(nodeId);
    return true;
  }

  /** Cleans up nodes silent for longer than `expiryMs`; returns them. */
  async sweepDeadNodes(expiryMs: number): Promise<string[]> {
    const swept: string[] = [];
    for (const nodeId of await this.redis.warrenDeadNodes(this.keys.nodes(), expiryMs))
      if (await this.forgetIfDead(nodeId, expiryMs)) swept.push(nodeId);
    return swept;
  }
}
