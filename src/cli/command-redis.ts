import type { WarrenConfig } from '../config/schema.js';
import { silentLogger } from '../shared/logger.js';
import { createRedis, evictionProblemOf, type WarrenRedis } from '../store/redis.js';

/**
 * The Redis client of a one-shot command (`status`, `explain`, `members import`): quiet, configured as the
 * servers'. A command that only reads (`readOnly`) runs against a Redis whose eviction policy the servers
 * refuse, saying so on stderr: it is how an operator looks into such an installation.
 */
export async function commandRedis(
  config: Readonly<WarrenConfig>,
  name: string,
  options: { readOnly?: boolean } = {},
): Promise<WarrenRedis> {
  const logger = silentLogger();
  const redis = await createRedis({
    url: config.redis.url,
    urlSetting: 'redis.url (WARREN_REDIS_URL)',
    name,
    logger,
    socketTimeoutMs: config.redis.socketTimeoutMs,
    checkEviction: !options.readOnly,
  });
  if (options.readOnly) {
    const problem = await evictionProblemOf(redis, logger);
    if (problem)
      console.error(
        `${name.replace('-', ' ')}: warning: ${problem} (gateways and resolvers refuse to start)`,
      );
  }
  return redis;
}
