import type { WarrenConfig } from '../config/load.js';
import { mintDevToken } from '../gateway/dev-tokens.js';
import { ErrorCode, WarrenError } from '../shared/errors.js';

export interface TokenOptions {
  tenant: string;
  user: string;
  ttlSec: number;
}

/**
 * `warren token`: prints a token the configured gateways accept, signed with `jwt.secret` and carrying the
 * `iss` and `aud` they require, for trying an installation out (a compose stack, a staging node) with a raw
 * WebSocket or the client. Applications mint their own; with RS256/ES256 the private key is the identity
 * provider's, not Warren's, so there is nothing here to sign with.
 */
export async function runToken(config: WarrenConfig, options: TokenOptions): Promise<number> {
  const { secret, issuer, audience } = config.jwt;
  if (!secret) {
    throw new WarrenError(
      ErrorCode.Config,
      'warren token signs with jwt.secret (WARREN_JWT_SECRET, HS256), which is not set: set it to the ' +
        'secret your gateways verify with (warren dev prints the one it generates). With ' +
        'WARREN_JWT_PUBLIC_KEY or WARREN_JWT_JWKS_FILE the private key belongs to whoever issues your tokens',
    );
  }
  console.log(
    await mintDevToken(secret, options.tenant, options.user, { issuer, audience, ttlSec: options.ttlSec }),
  );
  return 0;
}
