import { createPublicKey } from 'node:crypto';
import { readFileSync } from 'node:fs';

/**
 * Reading the keys a gateway verifies tokens with, shared by the configuration check (which reports what
 * is wrong with them before anything starts) and the verifier (which uses them). Errors say what is wrong
 * with the key or file, without naming the configuration key.
 */

export type KeyAlgorithm = 'RS256' | 'ES256';

/** `jwt.publicKey`: the PEM itself, or the path of a file holding it. */
export function readPem(value: string): string {
  return value.includes('-----BEGIN') ? value : readFileSync(value, 'utf8');
}

/**
 * The key as SPKI PEM (what jose imports; a certificate or a PKCS#1 key is converted) and its algorithm:
 * RS256 for RSA keys, ES256 for P-256 keys. A private key is refused: a gateway only verifies.
 */
export function publicKeyOf(pem: string): { spki: string; alg: KeyAlgorithm } {
  if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(pem))
    throw new Error('holds a private key: give the gateway the public key only');
  let key;
  try {
    key = createPublicKey(pem);
  } catch {
    throw new Error('holds no PEM public key');
  }
  const spki = String(key.export({ type: 'spki', format: 'pem' }));
  if (key.asymmetricKeyType === 'rsa') return { spki, alg: 'RS256' };
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1')
    return { spki, alg: 'ES256' };
  throw new Error(
    `unsupported key type ${key.asymmetricKeyType ?? 'unknown'} (use RSA for RS256 or P-256 for ES256)`,
  );
}

/** JWK members of a private RSA or EC key (`d` and RSA's factors) or of a symmetric one (`k`). */
const PRIVATE_JWK_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k'];

/** `jwt.jwksFile`: a JSON Web Key Set of public keys. */
export function readJwks(path: string): { keys: object[] } {
  const text = readFileSync(path, 'utf8');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error('is not JSON');
  }
  const keys = (value as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys) || keys.length === 0)
    throw new Error('is not a JWKS (no "keys" array, or an empty one)');
  if (
    !keys.every(
      (k) => typeof k === 'object' && k !== null && typeof (k as { kty?: unknown }).kty === 'string',
    )
  )
    throw new Error('is not a JWKS (every key needs a "kty")');
  // Private or symmetric members: the issuer's signing key, which a gateway must not hold (and which jose
  // would refuse at the first token, after the gateway said it was ready).
  const secretMember = (k: object) => PRIVATE_JWK_MEMBERS.find((member) => member in k);
  const leaking = keys.map((k: object, i) => [i, secretMember(k)] as const).find(([, member]) => member);
  if (leaking)
    throw new Error(
      `key ${leaking[0]} holds "${leaking[1]}", part of a private or secret key: give the gateway the public keys only`,
    );
  return { keys: keys as object[] };
}
