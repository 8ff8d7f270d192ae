import type { WarrenConfig } from '../config/schema.js';
import { withoutCredentials } from '../shared/errors.js';
import { Keys } from '../store/keys.js';
import { PresenceStore } from '../store/presence-store.js';
import { RevocationStore } from '../store/revocation-store.js';
import { closeRedis, type WarrenRedis } from '../store/redis.js';
import { commandRedis } from './command-redis.js';

export interface ExplainOptions {
  tenant: string;
  user: string;
  teams: readonly string[];
  groups: readonly string[];
}

/** How a user stands against one team or group named. */
export interface Standing {
  id: string;
  /** Member directly (a team's direct member, a group's member). */
  direct: boolean;
  /** For a team: the groups holding it that the user belongs to. */
  viaGroups: string[];
}

export interface Explanation {
  /** The key prefix read: a wrong one finds nothing of any tenant. */
  prefix: string;
  tenant: string;
  /**
   * Whether Redis holds anything of the tenant under `prefix`. False: every answer below is about an empty
   * tenant, most likely a wrong prefix or Redis, not about the user.
   */
  tenantHasData: boolean;
  user: string;
  /** The user's bit in the tenant's id map; null when the map has never seen them. */
  bit: number | null;
  /**
   * Whom the reverse id map names for the user's bit: the user, or, after a partial restore or a hand
   * repair, nobody (null) or someone else. Resolvers read it when they load the tenant afresh: such a one
   * then leaves the bit offline (nobody) or routes it as that other user's, while one that learned the
   * bit from the change log routes it as the user's. Either way, worth repairing.
   */
  reverseName: string | null;
  /** Gateway nodes whose presence holds the user's bit, and whether each is alive. */
  nodes: { id: string; alive: boolean }[];
  online: boolean;
  teams: Standing[];
  groups: Standing[];
  /** Whether an event to the teams and groups named (their union) would reach the user now. */
  reached: boolean;
  /**
   * The user's tokens revoked (`warren revoke`): tokens issued up to `at` are refused until `until` (ISO
   * times; `until` null when it never lapses). Their tabs opened with a later token still receive.
   */
  revoked: { at: string; until: string | null } | null;
}

/**
 * Why a user would or would not receive an event: their bit, the nodes announcing them online, and their
 * membership of each team and group named, directly or through a group. Reads Redis only, as resolvers
 * see it (a resolver's cache follows the same state through the change log); writes nothing.
 */
export async function explain(
  redis: WarrenRedis,
  keys: Keys,
  expiryMs: number,
  options: ExplainOptions,
): Promise<Explanation> {
  const { tenant, user } = options;
  const presence = new PresenceStore(redis, keys);
  const [[bit = null], revocation] = await Promise.all([
    presence.bitsOf(tenant, [user]),
    new RevocationStore(redis, keys).revocation(tenant, user),
  ]);
  const iso = (ms: number): string | null => (Number.isFinite(ms) ? new Date(ms).toISOString() : null);
  const none: Explanation = {
    prefix: keys.prefix,
    tenant,
    tenantHasData: bit !== null || revocation !== undefined || (await tenantHasData(redis, keys, tenant)),
    user,
    bit,
    reverseName: null,
    nodes: [],
    online: false,
    teams: options.teams.map((id) => ({ id, direct: false, viaGroups: [] })),
    groups: options.groups.map((id) => ({ id, direct: false, viaGroups: [] })),
    reached: false,
    revoked: revocation
      ? { at: iso(revocation.revokedAt) ?? 'unreadable', until: iso(revocation.lapsesAt) }
      : null,
  };
  // Never a member of anything, never online: nothing else to read.
  if (bit === null) return none;
  const reverseName = await redis.hget(keys.reverseIds(tenant), String(bit));
  // Dead as resolvers judge it (the same script), not by arithmetic of its own here.
  const dead = new Set(await presence.deadNodes(expiryMs));
  const nodes: Explanation['nodes'] = [];
  for (const { nodeId } of await presence.nodes()) {
    if ((await redis.getbit(keys.online(tenant, nodeId), bit)) === 1)
      nodes.push({ id: nodeId, alive: !dead.has(nodeId) });
  }
  const inGroup = async (groupId: string): Promise<boolean> =>
    (await redis.getbit(keys.groupUsers(tenant, groupId), bit)) === 1;
  const teams: Standing[] = [];
  for (const id of options.teams) {
    const direct = (await redis.getbit(keys.teamUsers(tenant, id), bit)) === 1;
    const viaGroups: string[] = [];
    for (const groupId of (await redis.smembers(keys.teamGroups(tenant, id))).sort())
      if (await inGroup(groupId)) viaGroups.push(groupId);
    teams.push({ id, direct, viaGroups });
  }
  const groups: Standing[] = [];
  for (const id of options.groups) groups.push({ id, direct: await inGroup(id), viaGroups: [] });
  const online = nodes.some((n) => n.alive);
  const member = [...teams, ...groups].some((s) => s.direct || s.viaGroups.length > 0);
  return { ...none, reverseName, nodes, online, teams, groups, reached: online && member };
}

/**
 * Every membership change and every user coming online notes the tenant among the prefix's tenants and
 * writes its change log; a user's change also its id map. Any of them is data (one may have been deleted
 * by hand).
 */
async function tenantHasData(redis: WarrenRedis, keys: Keys, tenant: string): Promise<boolean> {
  const [listed, found] = await Promise.all([
    redis.sismember(keys.tenants(), tenant),
    // One slot (the keys share the tenant's hash tag): legal in one EXISTS on a cluster too.
    redis.exists(keys.ids(tenant), keys.idSeq(tenant), keys.log(tenant), keys.logSeq(tenant)),
  ]);
  return listed === 1 || found > 0;
}

function describe(e: Explanation, redisUrl: string): string {
  const lines = [`Warren explain (prefix ${e.prefix}, Redis at ${withoutCredentials(redisUrl)})`, ''];
  if (!e.tenantHasData) {
    lines.push(`tenant ${e.tenant} has no data under prefix ${e.prefix}: wrong prefix or Redis?`);
  } else if (e.bit === null) {
    lines.push(`${e.user} is unknown in tenant ${e.tenant}: never a member of anything, never online.`);
  } else {
    lines.push(`${e.user} of tenant ${e.tenant}: bit ${e.bit}`);
    const alive = e.nodes.filter((n) => n.alive).map((n) => n.id);
    const dead = e.nodes.filter((n) => !n.alive).map((n) => n.id);
    if (e.reverseName !== e.user)
      lines.push(
        `  the reverse id map names ${e.reverseName ?? 'nobody'} for bit ${e.bit}, not ${e.user}: a resolver ` +
          `loading the tenant afresh ${e.reverseName === null ? 'leaves the bit offline' : `routes it as ${e.reverseName}'s`}; repair it`,
      );
    lines.push(
      alive.length > 0
        ? `  online on ${alive.join(', ')}`
        : '  offline: no live gateway holds a tab of theirs (events reach online users only)',
    );
    if (dead.length > 0) lines.push(`  held by gateways no longer beating, not counted: ${dead.join(', ')}`);
    for (const t of e.teams) {
      const how = [t.direct ? 'direct member' : '', ...t.viaGroups.map((g) => `via group ${g}`)].filter(
        Boolean,
      );
      lines.push(`  team ${t.id}: ${how.length > 0 ? how.join(', ') : 'not a member'}`);
    }
    for (const g of e.groups) lines.push(`  group ${g.id}: ${g.direct ? 'member' : 'not a member'}`);
  }
  if (e.revoked)
    lines.push(
      `  tokens revoked at ${e.revoked.at}: those issued up to then are refused ` +
        `${e.revoked.until ? `until ${e.revoked.until}` : 'for good (the revocation has no lifetime)'}`,
    );
  if (e.teams.length + e.groups.length > 0)
    lines.push(
      `An event to ${[...e.teams.map((t) => `team ${t.id}`), ...e.groups.map((g) => `group ${g.id}`)].join(', ')} ` +
        (e.reached
          ? `reaches ${e.user} now (unless the event lists them in exceptUsers).`
          : `does not reach ${e.user} now.`),
    );
  return lines.join('\n');
}

/** `warren explain`: exit 0 when the audience named reaches the user (or none was named), 1 when not. */
export async function runExplain(
  config: Readonly<WarrenConfig>,
  options: ExplainOptions & { json: boolean },
): Promise<number> {
  const redis = await commandRedis(config, 'warren-explain', { readOnly: true });
  try {
    const result = await explain(redis, new Keys(config.prefix), config.presence.expiryMs, options);
    console.log(options.json ? JSON.stringify(result, null, 2) : describe(result, config.redis.url));
    return options.teams.length + options.groups.length === 0 || result.reached ? 0 : 1;
  } finally {
    await closeRedis(redis);
  }
}
