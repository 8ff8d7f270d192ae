import type { WarrenConfig } from '../config/schema.js';
import { silentLogger } from '../shared/logger.js';
import { createRedis, type WarrenRedis } from '../store/redis.js';

/** The Redis client of a one-shot command (`status`, `explain`, `members import`): quiet, configured as the servers'. */
export function commandRedis(config: Readonly<WarrenConfig>, name: string): Promise<WarrenRedis> {
  return createRedis({
    url: config.redis.url,
    name,
    logger: silentLogger(),
    socketTimeoutMs: config.redis.socketTimeoutMs,
  });
}
