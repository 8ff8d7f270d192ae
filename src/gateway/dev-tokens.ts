import { SignJWT } from 'jose';

/** HS256 token for local development and the demo page. Never used outside `warren dev`. */
export async function mintDevToken(
  secret: string,
  tenantId: string,
  userId: string,
  ttlSec = 3600,
): Promise<string> {
  return new SignJWT({ tid: tenantId })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(userId)
    .setIssuedAt()
    .setExpirationTime(Math.floor(Date.now() / 1000) + ttlSec)
    .sign(new TextEncoder().encode(secret));
}
