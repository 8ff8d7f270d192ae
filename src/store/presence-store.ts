import { LOG_MAX_LEN } from './change-log.js';
import type { Keys } from './keys.js';
import type { WarrenRedis } from './redis.js';

/**
 * Which users of a tenant are online, per gateway node. A user is online while any node has their bit set;
 * a node that stops heartbeating is declared dead after `expiryMs` and its bits stop counting (resolvers
 * check liveness themselves, and whoever notices first cleans the node's keys up).
 */
export class PresenceStore {
  private readonly knownTenants = new Set<string>();

  constructor(
    private readonly redis: WarrenRedis,
    private readonly keys: Keys,
  ) {}

  private async noteTenant(nodeId: string, tenantId: string): Promise<void> {
    const known = `${nodeId}/${tenantId}`;
    if (this.knownTenants.has(known)) return;
    await Promise.all([
      this.redis.sadd(this.keys.nodeTenants(nodeId), tenantId),
      this.redis.sadd(this.keys.tenants(), tenantId),
    ]);
    this.knownTenants.add(known);
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

  /** Returns true when the node was not listed as alive (first beat, or declared dead meanwhile). */
  async heartbeat(nodeId: string): Promise<boolean> {
    return (await this.redis.warrenHeartbeat(this.keys.nodes(), nodeId)) === 1;
  }

  /** Removes everything a node announced, in every tenant. Idempotent. */
  async forgetNode(nodeId: string): Promise<void> {
    const k = this.keys;
    const tenants = await this.redis.smembers(k.nodeTenants(nodeId));
    await Promise.all(
      tenants.map((t) => this.redis.warrenNodeGone(k.online(t, nodeId), k.log(t), k.logSeq(t), nodeId, LOG_MAX_LEN)),
    );
    await this.redis.zrem(k.nodes(), nodeId);
    await this.redis.del(k.nodeTenants(nodeId));
    for (const known of this.knownTenants) if (known.startsWith(`${nodeId}/`)) this.knownTenants.delete(known);
  }

  async liveNodes(expiryMs: number): Promise<string[]> {
    return this.redis.warrenLiveNodes(this.keys.nodes(), expiryMs);
  }

  /** Nodes silent for longer than `expiryMs` (not yet cleaned up). */
  async deadNodes(expiryMs: number): Promise<string[]> {
    return this.redis.warrenDeadNodes(this.keys.nodes(), expiryMs);
  }

  /** Cleans up nodes silent for longer than `expiryMs`; returns them. */
  async sweepDeadNodes(expiryMs: number): Promise<string[]> {
    const dead = await this.redis.warrenDeadNodes(this.keys.nodes(), expiryMs);
    for (const nodeId of dead) await this.forgetNode(nodeId);
    return dead;
  }
}
