import type { WarrenConfig } from '../config/load.js';
import { WarrenPublisher } from '../sdk/publisher/index.js';
import { ErrorCode, WarrenError, isWarrenError } from '../shared/errors.js';
import { closeRedis, type WarrenRedis } from '../store/redis.js';
import type { Revocation } from '../store/revocation-store.js';
import { commandRedis } from './command-redis.js';

export interface RevokeOptions {
  tenant: string;
  user: string;
  ttlSec: number;
}

/** An operator revoking in a hurry must not take a failed connect for a revocation in force. */
function nothingRevoked(error: unknown): unknown {
  const unreachable =
    isWarrenError(error, ErrorCode.BrokerUnavailable) || isWarrenError(error, ErrorCode.RedisUnavailable);
  if (!unreachable) return error;
  const mend = error.code === ErrorCode.BrokerUnavailable ? ' (rabbitmq.url, WARREN_RABBITMQ_URL)' : '';
  return new WarrenError(
    error.code,
    `${error.message.replace(/\.$/, '')}. Nothing was revoked: run warren revoke again once it answers${mend}`,
    { cause: error, retryable: error.retryable },
  );
}

/**
 * `warren revoke`: the publisher SDK's `revokeUser` from the command line: the user's open tabs are closed
 * with 4001 and tokens issued up to now are refused for `ttlSec`. Publishes as a service would, without
 * declaring anything (the gateways have declared the deliveries exchange).
 */
export async function runRevoke(config: Readonly<WarrenConfig>, options: RevokeOptions): Promise<number> {
  // Made here, not by the SDK: a Redis that does not answer is then told as the setting an operator
  // mends (redis.url, WARREN_REDIS_URL), not as the SDK's `redisUrl` option.
  let redis: WarrenRedis;
  try {
    redis = await commandRedis(config, 'warren-revoke');
  } catch (error) {
    throw nothingRevoked(error);
  }
  let revocation: Revocation;
  try {
    const warren = await WarrenPublisher.connect({
      rabbitmqUrl: config.rabbitmq.url,
      redis,
      prefix: config.prefix,
      declareTopology: false,
      connectTimeoutMs: config.rabbitmq.connectTimeoutMs,
    }).catch((error: unknown) => {
      throw nothingRevoked(error);
    });
    try {
      revocation = await warren.revokeUser(options.tenant, options.user, { ttlSec: options.ttlSec });
    } finally {
      await warren.close();
    }
  } finally {
    // Handed to the SDK, which closes only the clients it made.
    await closeRedis(redis);
  }
  const { revokedAt, lapsesAt } = revocation;
  // An earlier revocation with a later instant or a longer lifetime keeps them: what is in force is told.
  const until = Number.isFinite(lapsesAt)
    ? `until ${new Date(lapsesAt).toISOString()}`
    : 'for good (the revocation has no lifetime)';
  const which = Number.isFinite(revokedAt)
    ? `tokens issued up to ${new Date(revokedAt).toISOString()}`
    : 'all their tokens (a revocation not written by Warren was in force)';
  console.log(
    `revoked ${options.user} of ${options.tenant}: the gateways holding them close their open tabs (4001); ` +
      `${which} are refused ${until}`,
  );
  return 0;
}
