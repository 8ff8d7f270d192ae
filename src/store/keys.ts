/**
 * Redis key schema. Every key of a tenant carries the hash tag `{<prefix>:<tenant>}`, so a tenant's keys
 * share one Redis Cluster slot and its Lua scripts and multi-key commands stay legal (DESIGN.md §6).
 * Keys are only ever built from validated ids (no `{`, `}`, `:` inside ids).
 */
export class Keys {
  constructor(readonly prefix: string) {}

  private t(tenantId: string): string {
    return `{${this.prefix}:${tenantId}}`;
  }

  // --- global keys (not tenant-scoped) ---

  /** Sorted set: gateway node id → last heartbeat (Redis time, ms). */
  nodes(): string {
    return `${this.prefix}:nodes`;
  }

  /** Set of tenants a node has (had) users online in, for cleanup when it stops or dies. */
  nodeTenants(nodeId: string): string {
    return `${this.prefix}:node:${nodeId}:tenants`;
  }

  /** Hash of a node's numbers (connections, users), refreshed with each heartbeat. */
  nodeStats(nodeId: string): string {
    return `${this.prefix}:node:${nodeId}:stats`;
  }

  /** String: which process holds a fixed `gateway.id` (the last to start with it), `<generation>:<token>`. */
  nodeOwner(nodeId: string): string {
    return `${this.prefix}:node:${nodeId}:owner`;
  }

  /** Counter: the generation of the latest claim of a fixed `gateway.id`. */
  nodeOwnerGeneration(nodeId: string): string {
    return `${this.prefix}:node:${nodeId}:owner-gen`;
  }

  /** Set of tenants ever seen, for `warren status`. */
  tenants(): string {
    return `${this.prefix}:tenants`;
  }

  // --- per-tenant keys ---

  /** Hash: external user id → dense bit position. */
  ids(tenantId: string): string {
    return `${this.t(tenantId)}:ids`;
  }

  /**
   * Counter: the term of the resolver applying the tenant's membership queue. A resolver takes a new term
   * before its first change of a subscription; changes carrying an older term are refused (a fence).
   */
  membershipTerm(tenantId: string): string {
    return `${this.t(tenantId)}:mterm`;
  }

  /** Hash: bit position → external user id. */
  reverseIds(tenantId: string): string {
    return `${this.t(tenantId)}:rids`;
  }

  /** Counter: next bit position to assign. */
  idSeq(tenantId: string): string {
    return `${this.t(tenantId)}:idseq`;
  }

  /** Bitmap of a team's direct members. */
  teamUsers(tenantId: string, teamId: string): string {
    return `${this.t(tenantId)}:tu:${teamId}`;
  }

  /** Set of groups holding a team. */
  teamGroups(tenantId: string, teamId: string): string {
    return `${this.t(tenantId)}:tg:${teamId}`;
  }

  /** Bitmap of a group's members. */
  groupUsers(tenantId: string, groupId: string): string {
    return `${this.t(tenantId)}:gu:${groupId}`;
  }

  /** Set of teams a group holds. */
  groupTeams(tenantId: string, groupId: string): string {
    return `${this.t(tenantId)}:gt:${groupId}`;
  }

  /** Bitmap of users online on one gateway node. */
  online(tenantId: string, nodeId: string): string {
    return `${this.t(tenantId)}:on:${nodeId}`;
  }

  /** Stream of every membership and presence change, read by resolvers to keep their caches exact. */
  log(tenantId: string): string {
    return `${this.t(tenantId)}:log`;
  }

  /** Counter numbering log entries, so a reader notices entries trimmed away before it read them. */
  logSeq(tenantId: string): string {
    return `${this.t(tenantId)}:logseq`;
  }

  /**
   * String: when the user's tokens were revoked (epoch ms); tokens issued up to then are refused while it
   * lasts (its TTL is the revocation's lifetime).
   */
  revoked(tenantId: string, userId: string): string {
    return `${this.t(tenantId)}:revoked:${userId}`;
  }

  /** A claim-checked payload. */
  job(tenantId: string, jobId: string): string {
    return `${this.t(tenantId)}:job:${jobId}`;
  }
}
