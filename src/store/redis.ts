import { createHash } from 'node:crypto';
import { Redis, ReplyError, type ChainableCommander } from 'ioredis';
import { ErrorCode, errorMessage, WarrenError, withoutCredentials } from '../shared/errors.js';
import { DEFAULTS } from '../config/schema.js';
import { fulfilsWithin, withTimeout } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import {
  APPLY_MEMBERSHIP,
  ASSIGN_IDS,
  DEAD_NODES,
  NODE_DEAD,
  LIVE_NODES,
  NODE_HEARTBEAT,
  PRESENCE_NODE_GONE,
  PRESENCE_OFF,
  PRESENCE_ON,
  REVOKE,
} from './scripts.js';

type Arg = string | number;

/** The Lua scripts as commands (ioredis runs them by SHA and reloads them after a Redis restart). */
export interface WarrenCommands {
  warrenApplyMembership(...args: Arg[]): Promise<number>;
  warrenAssignIds(...args: Arg[]): Promise<number[]>;
  warrenPresenceOn(...args: Arg[]): Promise<number[]>;
  warrenPresenceOff(...args: Arg[]): Promise<number>;
  warrenNodeGone(...args: Arg[]): Promise<number>;
  warrenHeartbeat(...args: Arg[]): Promise<number>;
  warrenDeadNodes(...args: Arg[]): Promise<string[]>;
  warrenNodeDead(...args: Arg[]): Promise<number>;
  warrenLiveNodes(...args: Arg[]): Promise<string[]>;
  warrenRevoke(...args: Arg[]): Promise<[number, number]>;
}

export type WarrenRedis = Redis & WarrenCommands;
export type WarrenPipeline = ChainableCommander & {
  [K in keyof WarrenCommands]: (...args: Arg[]) => WarrenPipeline;
};

/** Adds Warren's scripts to a client (also one handed in by a library user). Returns the same client. */
export function withWarrenCommands(redis: Redis): WarrenRedis {
  const define = (name: keyof WarrenCommands, numberOfKeys: number, lua: string): void => {
    redis.defineCommand(name, { numberOfKeys, lua });
  };
  define('warrenApplyMembership', 6, APPLY_MEMBERSHIP);
  define('warrenAssignIds', 3, ASSIGN_IDS);
  define('warrenPresenceOn', 6, PRESENCE_ON);
  define('warrenPresenceOff', 3, PRESENCE_OFF);
  define('warrenNodeGone', 3, PRESENCE_NODE_GONE);
  define('warrenHeartbeat', 1, NODE_HEARTBEAT);
  define('warrenDeadNodes', 1, DEAD_NODES);
  define('warrenNodeDead', 1, NODE_DEAD);
  define('warrenLiveNodes', 1, LIVE_NODES);
  define('warrenRevoke', 1, REVOKE);
  return redis as WarrenRedis;
}

export interface CreateRedisOptions {
  url: string;
  name: string;
  logger: Logger;
  /** Batch commands issued in the same tick into one round trip (presence and payload fetch bursts). */
  autoPipelining?: boolean;
  /**
   * Refuse a server that may evict any key (`evictionProblem`). Default true; false for a Redis holding
   * only claim-checked payloads, which all have a lifetime and whose loss each delivery reports.
   */
  checkEviction?: boolean;
  /**
   * Drop and make again a connection that sends nothing back for this long while commands wait on it
   * (`redis.socketTimeoutMs`; default 30 s, 0 = never): a peer or a NAT entry gone without a word would
   * otherwise hold every command until the system gives the connection up, minutes later.
   */
  socketTimeoutMs?: number;
  /**
   * Give up when connecting and its checks take longer than this (default: as long as the socket timeout
   * allows): a server that takes the connection and never answers.
   */
  connectTimeoutMs?: number;
  /**
   * Where `url` was set (`redis.url (WARREN_REDIS_URL)`, the SDK's `redisUrl` option): named when the
   * server cannot be reached, as the place to correct it.
   */
  urlSetting?: string;
}

/** How often a Redis connection being made again says that it still is. */
const OUTAGE_REMINDER_MS = 60_000;

/** ioredis's rejection of `connect()` when the socket failed, whatever the reason. */
const CONNECTION_CLOSED = 'Connection is closed.';

/** A client for the process's own use; resolves once connected. */
export async function createRedis(options: CreateRedisOptions): Promise<WarrenRedis> {
  const socketTimeout = options.socketTimeoutMs ?? DEFAULTS.redisSocketTimeoutMs;
  const redis = new Redis(options.url, {
    connectionName: options.name,
    // ioredis destroys the socket, reconnects and sends the commands that got no answer again, as after any
    // lost connection: membership changes carry a deadline (`notAfter`) or a term so that one cannot land
    // after later changes; presence and reads are the same sent twice.
    ...(socketTimeout > 0 ? { socketTimeout } : {}),
    lazyConnect: true,
    enableAutoPipelining: options.autoPipelining ?? false,
    // A master demoted by a failover answers writes with READONLY while the connection stays up: reconnect
    // (to whatever the URL names now). The command fails and its caller retries it; resending it here
    // could loop for good against a URL that stays a replica, or resend half a transaction.
    reconnectOnError: (error) => (error.message.startsWith('READONLY') ? 1 : false),
    // Commands wait in the offline queue across a reconnect instead of failing at once.
    maxRetriesPerRequest: 20,
  });
  /** Why the connection failed: `connect()` itself only says that it closed. */
  let lastError: string | undefined;
  /**
   * The connection was lost and is being made again: since when, how many attempts, when it was last said.
   * One line as it goes, one as it comes back (and a reminder now and then): not two per attempt, which
   * ioredis makes every 2 s for as long as Redis is away.
   */
  let outage: { since: number; attempts: number; saidAt: number } | undefined;
  redis.on('error', (error: Error) => {
    lastError = error.message;
    // Each failed attempt of a reconnect: the lines as it goes and comes back carry the latest.
    if (outage) options.logger.debug({ err: error.message }, 'redis error');
    else options.logger.warn({ err: error.message }, 'redis error');
  });
  redis.on('reconnecting', () => {
    const now = Date.now();
    if (!outage) {
      outage = { since: now, attempts: 1, saidAt: now };
      options.logger.warn({ err: lastError }, 'redis connection lost; reconnecting');
      return;
    }
    outage.attempts += 1;
    if (now - outage.saidAt < OUTAGE_REMINDER_MS) return;
    outage.saidAt = now;
    options.logger.warn(
      { err: lastError, downMs: now - outage.since, attempts: outage.attempts },
      'redis still unreachable; reconnecting',
    );
  });
  redis.on('ready', () => {
    if (!outage) return;
    options.logger.info(
      { downMs: Date.now() - outage.since, attempts: outage.attempts },
      'redis connection restored',
    );
    outage = undefined;
    lastError = undefined;
  });
  const deadline = Date.now() + (options.connectTimeoutMs ?? Infinity);
  const within = <T>(step: Promise<T>): Promise<T> =>
    options.connectTimeoutMs === undefined
      ? step
      : withTimeout(step, Math.max(1, deadline - Date.now()), 'connecting to Redis');
  try {
    await within(redis.connect());
  } catch (error) {
    // Not left reconnecting in the background: the caller is told, and can exit.
    redis.disconnect();
    // ioredis rejects with "Connection is closed." whatever the cause; the socket's error says which.
    const said = errorMessage(error);
    const why =
      lastError === undefined || lastError === said
        ? said
        : said === CONNECTION_CLOSED
          ? lastError
          : `${said} (${lastError})`;
    const where = options.urlSetting ? `, or set ${options.urlSetting} to the server to use` : '';
    throw new WarrenError(
      ErrorCode.RedisUnavailable,
      `cannot connect to Redis at ${withoutCredentials(options.url)}: ${why.replace(/\.+$/, '')}. Check that Redis runs there${where}.`,
      { cause: error, retryable: true },
    );
  }
  // ioredis reports a database the server does not have (`/16` where there are 16) only as an error event
  // and stays on database 0: another installation's, maybe. Asked again here, where it can stop start-up.
  const db = Number(redis.options.db ?? 0);
  if (db !== 0) {
    try {
      await within(redis.select(db));
    } catch (error) {
      redis.disconnect();
      throw new WarrenError(
        ErrorCode.Config,
        `Redis at ${withoutCredentials(options.url)} refuses database ${db}: ${errorMessage(error)}`,
      );
    }
  }
  let problem: string | undefined;
  try {
    problem =
      options.checkEviction === false ? undefined : await within(evictionProblemOf(redis, options.logger));
  } catch (error) {
    redis.disconnect();
    throw new WarrenError(
      ErrorCode.RedisUnavailable,
      `Redis at ${withoutCredentials(options.url)} does not answer: ${errorMessage(error)}`,
      { cause: error, retryable: true },
    );
  }
  if (problem) {
    redis.disconnect();
    throw new WarrenError(ErrorCode.Config, problem);
  }
  return withWarrenCommands(redis);
}

/**
 * A client for a Redis of claim-checked payloads only (`claimCheck.redisUrl`): its eviction policy is not
 * checked, since every payload has a lifetime and a lost one is reported where it is missed.
 */
export function createPayloadRedis(options: Omit<CreateRedisOptions, 'checkEviction'>): Promise<WarrenRedis> {
  return createRedis({ ...options, checkEviction: false });
}

/**
 * A process's Redis clients: the main one, and the payloads' own when `payloadUrl` names a server for them
 * (`claimCheck.redisUrl`; its client is named `<name>-payloads`). Neither is left connected when the other
 * cannot be made.
 */
export async function createRedisClients(
  options: CreateRedisOptions & { payloadUrl: string | undefined },
): Promise<{ redis: WarrenRedis; payloadRedis: WarrenRedis | undefined }> {
  const { payloadUrl, ...main } = options;
  const redis = await createRedis(main);
  if (payloadUrl === undefined) return { redis, payloadRedis: undefined };
  try {
    const payloadRedis = await createPayloadRedis({
      ...main,
      url: payloadUrl,
      name: `${main.name}-payloads`,
      urlSetting: 'claimCheck.redisUrl (WARREN_CLAIM_CHECK_REDIS_URL)',
    });
    return { redis, payloadRedis };
  } catch (error) {
    redis.disconnect();
    throw error;
  }
}

/**
 * `evictionProblem` of a connected server, read in one round trip; undefined when it cannot be read
 * (`CONFIG` refused).
 */
export async function evictionProblemOf(redis: Redis, logger: Logger): Promise<string | undefined> {
  try {
    // The pattern answers maxmemory and maxmemory-policy (and a few more), name, value…
    const reply = (await redis.config('GET', 'maxmemory*')) as string[];
    const settings = new Map<string, string>();
    for (let i = 0; i + 1 < reply.length; i += 2) settings.set(reply[i] as string, reply[i + 1] as string);
    const policy = settings.get('maxmemory-policy');
    return policy === undefined ? undefined : evictionProblem(policy, Number(settings.get('maxmemory') ?? 0));
  } catch (error) {
    // Managed services often rename or refuse CONFIG: nothing to check then.
    logger.debug({ err: errorMessage(error) }, 'cannot read the Redis eviction policy');
    return undefined;
  }
}

/**
 * Why Redis under this `maxmemory-policy` (and `maxmemory`, 0 for none) must not hold Warren's keys, or
 * undefined. Only `noeviction` is safe once memory is limited. An `allkeys-*` policy evicts any key when
 * memory runs out: an id map or its counter (a user could then be given another user's bit, and with it
 * their memberships), a membership bitmap, a change log. A `volatile-*` policy evicts keys with a lifetime,
 * and a user's revocation is one (it lapses with its TTL): evicted, the tokens it refused connect again
 * (`volatile-lru` takes it first, as nothing reads it but a new tab of its user). Payloads that should be
 * evicted before anything is refused go on a Redis of their own (`claimCheck.redisUrl`, any policy).
 */
export function evictionProblem(policy: string, maxmemory: number): string | undefined {
  // Without a memory limit Redis never evicts, whatever the policy says.
  if (policy === 'noeviction' || maxmemory === 0) return undefined;
  const lost = policy.startsWith('volatile-')
    ? "users' revocations (keys with a lifetime), and a revoked token would connect again"
    : "Warren's id maps and memberships, and could give one user another's bit";
  return (
    `Redis maxmemory-policy is ${policy}: a full Redis would evict ${lost}; set it to noeviction ` +
    `(payloads that may be evicted go on a Redis of their own, claimCheck.redisUrl)`
  );
}

/**
 * What an error reply of a command that can never succeed starts with: a key of the wrong type, an error
 * of the command (or of one of Warren's scripts) itself, or an ACL denying the command or a key (a
 * configuration an operator mends; Redis 7 reports a script's denied call as an ERR already).
 */
const PERMANENT_REPLY = /^(WRONGTYPE|ERR|NOPERM)\b/;
/** How long `closeRedis` waits for a QUIT to be answered. */
const QUIT_WAIT_MS = 1000;
/**
 * Replies that say Redis cannot take commands now, whatever the command, and pass once it can: out of
 * memory, a replica after a failover, loading, a script running, a cluster or its replicas down, snapshots
 * failing (MISCONF), too many clients, a password being rotated. Before Redis 7 they come wrapped in an
 * `ERR Error running script …` reply when a script ran into them, hence looked for anywhere.
 */
const UNAVAILABLE_REPLY =
  /\b(OOM|READONLY|LOADING|BUSY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|NOREPLICAS|MISCONF|NOAUTH)\b|max number of clients/;

/**
 * Whether Redis refused this very command (a key of the wrong type, a script's own error): trying it again
 * will fail the same way. Anything else (a connection problem, a reply that Redis cannot take commands
 * now, a reply not known to be permanent) may pass once Redis is back.
 */
export function refusedByRedis(error: unknown): boolean {
  if (!(error instanceof ReplyError)) return false;
  const message = (error as Error).message;
  return PERMANENT_REPLY.test(message) && !UNAVAILABLE_REPLY.test(message);
}

/**
 * Whether an ACL denied the command or a key (`NOPERM`; Redis 7 words a script's denied call as an `ERR`
 * that says so): a refusal for good until an operator mends the ACL, which is not the command's fault.
 */
export function deniedByAcl(error: unknown): boolean {
  if (!(error instanceof ReplyError)) return false;
  const message = (error as Error).message;
  return /^NOPERM\b/.test(message) || /can't run this command|no permissions to access/i.test(message);
}

/**
 * Which server, in which role: its run id changes when it restarts or another server answers (a replica
 * promoted by a failover); its role when a demoted master, still reached at the old address, takes the new
 * master's data. (Not the replication id: a master changes it on its own when its backlog expires.)
 */
async function identityOf(redis: Redis): Promise<string | undefined> {
  let info: string;
  try {
    info = await redis.info();
  } catch (error) {
    // Refused by the server (an ACL, a command renamed away or a proxy that lacks it): it never will
    // answer. The connection, or a server busy, loading or out of memory, is passing, and thrown.
    if (error instanceof ReplyError && !UNAVAILABLE_REPLY.test((error as Error).message)) return undefined;
    throw error;
  }
  const runId = /^run_id:(\S+)/m.exec(info)?.[1];
  const role = /^role:(\S+)/m.exec(info)?.[1];
  return runId && `${runId}/${role ?? ''}`;
}

/** A short digest of a server identity: what node-routed deliveries carry (`DeliveryHeader.IdMap`). */
function stampOf(identity: string | undefined): string | undefined {
  return identity && createHash('sha256').update(identity).digest('base64url').slice(0, 12);
}

/** The stamp of the server `redis` talks to now (undefined where INFO is refused). */
export async function serverStamp(redis: Redis): Promise<string | undefined> {
  return stampOf(await identityOf(redis));
}

export interface ServerWatch {
  /**
   * The stamp of the server (a digest of its identity), undefined where INFO is refused. Bits of an id map
   * are only comparable between processes that read them from the server of the same stamp.
   */
  readonly stamp: string | undefined;
  /**
   * False from a reconnect until the server there has said who it is (or refused INFO): meanwhile what is
   * read from it may come from another server than `stamp` names.
   */
  readonly settled: boolean;
  /** Resolves once `settled` (at once if it is), or on `stop`. */
  whenSettled(): Promise<void>;
  /** Stops watching: unsettled from then on, and a check under way gives up. */
  stop(): void;
}

// Asking a server who it is again after a passing failure: soon, then backing off.
const IDENTITY_RETRY_MS = 100;
const IDENTITY_RETRY_CAP_MS = 2000;
// How long start-up waits for the server to say who it is before going on unsettled.
const FIRST_CHECK_MS = 5000;

/**
 * Calls `changed` when the client, back from a reconnect, talks to another Redis server than before, or to
 * one in another role (`identityOf`: Redis restarted, the URL names a replica promoted by a failover, or
 * the old master was demoted and resynced from a new one). Writes the old server acknowledged may be
 * missing there (an id given out, a change-log entry), so what was read from it is to be read again. Where
 * INFO is refused, every reconnect counts as a change; where it fails for a moment it is asked again.
 * `stamp` and `settled` change in the same tick `changed` runs.
 */
export async function watchServer(
  redis: Redis,
  changed: () => void,
  logger: Pick<Logger, 'warn'>,
): Promise<ServerWatch> {
  let known: string | undefined;
  let stamp: string | undefined;
  let settled = false;
  let checks = 0;
  let stopped = false;
  let waiters: (() => void)[] = [];
  const wake = (): void => {
    const woken = waiters;
    waiters = [];
    for (const resolve of woken) resolve();
  };
  /** No more checks: unsettled for good, and whoever waits is woken to see it. */
  const halt = (): void => {
    stopped = true;
    settled = false;
    redis.off('ready', onReady);
    wake();
  };
  /** Asks until the server answers or refuses; a check begun by a later reconnect supersedes it. */
  const check = async (first: boolean): Promise<void> => {
    const mine = (checks += 1);
    settled = false;
    const current = (): boolean => {
      // The client was closed for good: no answer will come.
      if (redis.status === 'end' && !stopped) halt();
      return mine === checks && !stopped;
    };
    for (let delay = IDENTITY_RETRY_MS; ; delay = Math.min(delay * 2, IDENTITY_RETRY_CAP_MS)) {
      let now: string | undefined;
      try {
        now = await identityOf(redis);
      } catch (error) {
        if (!current()) return;
        logger.warn({ err: errorMessage(error) }, 'cannot ask Redis which server it is; asking again');
        await new Promise((resolve) => setTimeout(resolve, delay).unref());
        if (!current()) return;
        continue;
      }
      if (!current()) return;
      // Where INFO is refused every reconnect counts as a change: nothing tells the server apart.
      const change = !first && (now === undefined || now !== known);
      if (change) {
        logger.warn(
          { before: known, now },
          'redis server changed (restart or failover); re-reading its state',
        );
      }
      known = now;
      stamp = stampOf(now);
      settled = true;
      wake();
      if (change) changed();
      return;
    }
  };
  // Listening first: a reconnect during the first check supersedes it (and, nothing known yet, counts as
  // a change).
  const onReady = (): void => void check(false);
  redis.on('ready', onReady);
  // Not waited for past a bound: a Redis that does not answer now holds up no start-up (unsettled
  // meanwhile, which those who compare stamps take as "cannot tell").
  await fulfilsWithin(check(true), FIRST_CHECK_MS);
  return {
    get stamp() {
      return stamp;
    },
    get settled() {
      return settled;
    },
    whenSettled: () =>
      settled || stopped ? Promise.resolve() : new Promise<void>((resolve) => waiters.push(resolve)),
    stop: halt,
  };
}

/** True while the client can run commands. */
export function redisReady(redis: Redis): boolean {
  return redis.status === 'ready';
}

/**
 * Closes a client of Warren's own: QUIT when connected; otherwise at once (a QUIT would wait in the
 * offline queue for a server that may not come back, and hold up a shutdown or a command's exit).
 */
export async function closeRedis(redis: Redis): Promise<void> {
  // Connected but not answering: not waited for long either.
  const quit = redisReady(redis) ? await fulfilsWithin(redis.quit(), QUIT_WAIT_MS).catch(() => false) : false;
  if (!quit) redis.disconnect();
}
