import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { TokenVerifier } from '../../../src/gateway/auth.js';

// What an operator reads when tokens are refused: fixed words per cause (never text of the token), and
// enough of them to tell a rotated key or a key the gateway cannot use from a forged token.
const dir = mkdtempSync(join(tmpdir(), 'warren-refusals-'));
function jwksOf(...keys: { publicKey: { export(o: { format: 'jwk' }): object } }[]): string {
  const file = join(dir, `jwks-${Math.random().toString(36).slice(2)}.json`);
  writeFileSync(
    file,
    JSON.stringify({
      keys: keys.map((k, i) => ({ ...k.publicKey.export({ format: 'jwk' }), kid: `k${i}` })),
    }),
  );
  return file;
}
const sign = (privateKey: Parameters<SignJWT['sign']>[0], kid?: string) =>
  new SignJWT({ tid: 'acme' })
    .setProtectedHeader({ alg: 'RS256', ...(kid ? { kid } : {}) })
    .setSubject('ann')
    .setExpirationTime('1h')
    .sign(privateKey);
const refusal = (verifier: TokenVerifier, token: string) =>
  verifier.verify(token).then(
    () => undefined,
    (error: { reason?: string; message?: string }) => ({ reason: error.reason, message: error.message }),
  );

describe('token refusals, as logged', () => {
  it('says when no key of the JWKS matches the token (keys rotated), and when the key itself is unusable', async () => {
    const current = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const verifier = await TokenVerifier.create({ jwksFile: jwksOf(current), clockToleranceSec: 5 });
    expect(await refusal(verifier, await sign(current.privateKey, 'k-rotated-away'))).toEqual({
      reason: 'signature',
      message: "invalid token: no key of the JWKS matches the token's kid and alg (keys rotated?)",
    });
    expect(
      await refusal(
        verifier,
        await sign(generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey, 'k0'),
      ),
    ).toEqual({
      reason: 'signature',
      message: 'invalid token: signature verification failed',
    });
    const short = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const weak = await TokenVerifier.create({ jwksFile: jwksOf(short), clockToleranceSec: 5 });
    expect(await refusal(weak, await sign(current.privateKey, 'k0'))).toMatchObject({
      message: expect.stringMatching(/^invalid token: the gateway's key cannot verify it: .*2048/) as unknown,
    });
  });

  it('blames a JWKS key WebCrypto cannot import, and asks for kids when several keys match', async () => {
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const jwk = ec.publicKey.export({ format: 'jwk' });
    // A point off the curve: the file reads as a JWKS, the key does not import.
    const broken = join(dir, 'off-curve.json');
    writeFileSync(
      broken,
      JSON.stringify({ keys: [{ ...jwk, kid: 'k0', x: Buffer.alloc(32, 1).toString('base64url') }] }),
    );
    const offCurve = await TokenVerifier.create({ jwksFile: broken, clockToleranceSec: 5 });
    const esToken = await new SignJWT({ tid: 'acme' })
      .setProtectedHeader({ alg: 'ES256', kid: 'k0' })
      .setSubject('ann')
      .setExpirationTime('1h')
      .sign(ec.privateKey);
    expect(await refusal(offCurve, esToken)).toMatchObject({
      message: expect.stringMatching(/^invalid token: the gateway's key cannot verify it/) as unknown,
    });
    const a = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const b = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const both = await TokenVerifier.create({ jwksFile: jwksOf(a, b), clockToleranceSec: 5 });
    expect(await refusal(both, await sign(a.privateKey))).toEqual({
      reason: 'signature',
      message:
        'invalid token: several keys of the JWKS match the token: it needs a kid, and each key a distinct one',
    });
  });
});
