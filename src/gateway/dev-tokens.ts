import { SignJWT } from 'jose';

export interface DevTokenClaims {
  /** `iss`, set when the gateway requires one (`jwt.issuer`). */
  issuer?: string | undefined;
  /** `aud`, set when the gateway requires one (`jwt.audience`). */
  audience?: string | undefined;
  ttlSec?: number;
}

/** HS256 token for local development: the demo page of `warren dev`, and `warren token`. */
export async function mintDevToken(
  secret: string,
  tenantId: string,
  userId: string,
  { issuer, audience, ttlSec = 3600 }: DevTokenClaims = {},
): Promise<string> {
  const token = new SignJWT({ tid: tenantId })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(userId)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSec);
  // Without them, a gateway configured to require them would refuse every demo token with 401.
  if (issuer !== undefined) token.setIssuer(issuer);
  if (audience !== undefined) token.setAudience(audience);
  return token.sign(new TextEncoder().encode(secret));
}
