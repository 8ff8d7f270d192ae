import type { WarrenConfig } from '../config/load.js';
import { WarrenPublisher } from '../sdk/publisher/index.js';

export interface RevokeOptions {
  tenant: string;
  user: string;
  ttlSec: number;
}

/**
 * `warren revoke`: the publisher SDK's `revokeUser` from the command line: the user's open tabs are closed
 * with 4001 and tokens issued up to now are refused for `ttlSec`. Publishes as a service would, without
 * declaring anything (the gateways have declared the deliveries exchange).
 */
export async function runRevoke(config: Readonly<WarrenConfig>, options: RevokeOptions): Promise<number> {
  const warren = await WarrenPublisher.connect({
    rabbitmqUrl: config.rabbitmq.url,
    redisUrl: config.redis.url,
    redisSocketTimeoutMs: config.redis.socketTimeoutMs,
    prefix: config.prefix,
    declareTopology: false,
    connectTimeoutMs: config.rabbitmq.connectTimeoutMs,
  });
  try {
    await warren.revokeUser(options.tenant, options.user, { ttlSec: options.ttlSec });
  } finally {
    await warren.close();
  }
  const hours = Math.round((options.ttlSec / 3600) * 10) / 10;
  console.log(
    `revoked ${options.user} of ${options.tenant}: the gateways holding them close their open tabs (4001); ` +
      `tokens issued until now are refused for ${options.ttlSec} s (${hours} h)`,
  );
  return 0;
}
