import { Redis, ReplyError, type ChainableCommander } from 'ioredis';
import { ErrorCode, errorMessage, WarrenError, withoutCredentials } from '../shared/errors.js';
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
  return redis as WarrenRedis;
}

export interface CreateRedisOptions {
  url: string;
  name: string;
  logger: Logger;
  /** Batch commands issued in the same tick into one round trip (presence and payload fetch bursts). */
  autoPipelining?: boolean;
}

/** A client for the process's own use; resolves once connected. */
export async function createRedis(options: CreateRedisOptions): Promise<WarrenRedis> {
  const redis = new Redis(options.url, {
    connectionName: options.name,
    lazyConnect: true,
    enableAutoPipelining: options.autoPipelining ?? false,
    // A master demoted by a failover answers writes with READONLY while the connection stays up:
    // reconnect (to whatever the URL names now) and send the command again.
    reconnectOnError: (error) => (error.message.startsWith('READONLY') ? 2 : false),
    // Commands wait in the offline queue across a reconnect instead of failing at once.
    maxRetriesPerRequest: 20,
  });
  redis.on('error', (error: Error) => options.logger.warn({ err: error.message }, 'redis error'));
  redis.on('reconnecting', () => options.logger.warn('redis reconnecting'));
  try {
    await redis.connect();
  } catch (error) {
    // Not left reconnecting in the background: the caller is told, and can exit.
    redis.disconnect();
    throw new WarrenError(
      ErrorCode.RedisUnavailable,
      `cannot connect to Redis at ${withoutCredentials(options.url)}: ${errorMessage(error)}`,
      { cause: error, retryable: true },
    );
  }
  let policy: string | undefined;
  try {
    const reply = (await redis.config('GET', 'maxmemory-policy')) as string[];
    policy = reply[1];
  } catch (error) {
    // Managed services often rename or refuse CONFIG: nothing to check then.
    options.logger.debug({ err: errorMessage(error) }, 'cannot read the Redis eviction policy');
  }
  const problem = policy === undefined ? undefined : evictionProblem(policy);
  if (problem) {
    redis.disconnect();
    throw new WarrenError(ErrorCode.Config, problem);
  }
  return withWarrenCommands(redis);
}

/**
 * Why Redis under this `maxmemory-policy` must not hold Warren's keys, or undefined. An `allkeys-*` policy
 * evicts any key when memory runs out: an id map or its counter (a user could then be given another
 * user's bit, and with it their memberships), a membership bitmap, a change log. `volatile-*` policies
 * evict only keys with a lifetime (claim-checked payloads, node heartbeats), which Warren survives.
 */
export function evictionProblem(policy: string): string | undefined {
  if (!policy.startsWith('allkeys-')) return undefined;
  return (
    `Redis maxmemory-policy is ${policy}: a full Redis would evict Warren's id maps and memberships, and ` +
    `could give one user another's bit; set it to noeviction (or a volatile-* policy)`
  );
}

/**
 * Error replies that say Redis cannot take commands now (out of memory under `noeviction`, a replica after
 * a failover, loading its data, a script running, a cluster or its replicas down), whatever the command.
 */
const UNAVAILABLE_REPLIES = /^(OOM|READONLY|LOADING|BUSY|MASTERDOWN|CLUSTERDOWN|TRYAGAIN|NOREPLICAS)\b/;

/**
 * Whether Redis refused this very command (a key of the wrong type, a script's own error): trying it again
 * will fail the same way. Not a refusal: a connection problem, or a reply that Redis cannot take any
 * command now (see UNAVAILABLE_REPLIES), which passes once Redis is back.
 */
export function refusedByRedis(error: unknown): boolean {
  return error instanceof ReplyError && !UNAVAILABLE_REPLIES.test((error as Error).message);
}

/** True while the client can run commands. */
export function redisReady(redis: Redis): boolean {
  return redis.status === 'ready';
}
