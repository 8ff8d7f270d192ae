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

/** RS256 for RSA keys, ES256 for P-256 keys; anything else is refused. */
export function algorithmOf(pem: string): KeyAlgorithm {
  let key;
  try {
    key = createPublicKey(pem);
  } catch {
    throw new Error('holds no PEM public key');
  }
  if (key.asymmetricKeyType === 'rsa') return 'RS256';
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'ES256';
  throw new Error(
    `unsupported key type ${key.asymmetricKeyType ?? 'unknown'} (use RSA for RS256 or P-256 for ES256)`,
  );
}

/** `jwt.jwksFile`: a JSON Web Key Set. */
export function readJwks(path: string): { keys: object[] } {
  const text = readFileSync(path, 'utf8');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new Error('is not JSON');
  }
  const keys = (value as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys)) throw new Error('is not a JWKS (no "keys" array)');
  return { keys: keys as object[] };
}
