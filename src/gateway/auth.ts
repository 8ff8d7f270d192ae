import {
  createLocalJWKSet,
  importSPKI,
  jwtVerify,
  type JSONWebKeySet,
  type JWTVerifyGetKey,
  type JWTVerifyOptions,
  type CryptoKey,
} from 'jose';
import { isValidId } from '../protocol/ids.js';
import { ErrorCode, WarrenError, errorMessage } from '../shared/errors.js';
import { publicKeyOf, readJwks, readPem } from '../shared/jwt-keys.js';

export interface Identity {
  userId: string;
  tenantId: string;
  /** Token expiry, epoch milliseconds. */
  expiresAt: number;
  /**
   * The earliest the token may have been issued, epoch milliseconds: its `iat` less the clock tolerance
   * (`jwt.clockToleranceSec`, for the issuer's clock running ahead); undefined without `iat`, or with one
   * later than that (see `verify`). A revocation of the user refuses tokens issued up to its instant, and
   * a token without `iat` while it lasts.
   */
  issuedAt?: number | undefined;
}

export interface JwtSettings {
  secret?: string | undefined;
  publicKey?: string | undefined;
  jwksFile?: string | undefined;
  issuer?: string | undefined;
  audience?: string | undefined;
  clockToleranceSec: number;
}

type Key = Uint8Array | CryptoKey | JWTVerifyGetKey;

/**
 * Why a token was refused, for the refusal metric's `reason` label and the log: a bounded set, so that
 * an operator sees at a glance whether tokens expire, are signed with another key, or name a subject the
 * gateway cannot take.
 */
export const RefusalReason = {
  /** No token, or not a compact signed JWT at all. */
  Malformed: 'malformed',
  /** Signed with another key, or by a key the JWKS file does not hold. */
  Signature: 'signature',
  /** Signed with an algorithm the configured key does not allow (`none` included). */
  Algorithm: 'algorithm',
  Expired: 'expired',
  /** `iss`, `aud`, `nbf`, `iat` or a required claim (`exp`, `sub`) missing or not as configured. */
  Claims: 'claims',
  /** `sub` or `tid` is not a valid id (`^[A-Za-z0-9_-]{1,120}$`). */
  Identity: 'identity',
  /**
   * Issued before the user was revoked (`revokeUser`, `warren revoke`): found after the upgrade, so the
   * socket is closed with 4001 before its welcome instead of refused with 401.
   */
  Revoked: 'revoked',
} as const;
export type RefusalReason = (typeof RefusalReason)[keyof typeof RefusalReason];

/** A token the gateway does not accept (HTTP 401). */
export class TokenRefused extends WarrenError {
  constructor(
    readonly reason: RefusalReason,
    message: string,
    options: { cause?: unknown } = {},
  ) {
    super(ErrorCode.Unauthorized, message, options);
  }
}

/** jose's error codes, by the reason they mean. */
function reasonOf(error: unknown): RefusalReason {
  switch ((error as { code?: unknown }).code) {
    case 'ERR_JWT_EXPIRED':
      return RefusalReason.Expired;
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
      return RefusalReason.Claims;
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
      return RefusalReason.Algorithm;
    case 'ERR_JOSE_NOT_SUPPORTED':
      // A `crit` header naming extensions nothing here knows is a malformed token, not a wrong algorithm.
      return /Extension Header Parameter/.test(errorMessage(error))
        ? RefusalReason.Malformed
        : RefusalReason.Algorithm;
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
    case 'ERR_JWKS_NO_MATCHING_KEY':
    case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS':
      return RefusalReason.Signature;
    default:
      return RefusalReason.Malformed;
  }
}

/**
 * What the log says of jose's refusal: its own text only where it names a claim (a fixed text); otherwise
 * a fixed one per reason, as some of jose's messages quote the token's header (a `crit` name, say), which
 * anyone may fill.
 */
function describeRefusal(error: unknown, reason: RefusalReason): string {
  switch (reason) {
    case RefusalReason.Expired:
    case RefusalReason.Claims:
      return errorMessage(error).slice(0, 120);
    case RefusalReason.Algorithm:
      return 'algorithm not allowed';
    case RefusalReason.Signature:
      switch ((error as { code?: unknown }).code) {
        case 'ERR_JWKS_NO_MATCHING_KEY':
          return "no key of the JWKS matches the token's kid and alg (keys rotated?)";
        case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS':
          return 'several keys of the JWKS match the token: it needs a kid, and each key a distinct one';
        default:
          return 'signature verification failed';
      }
    default:
      // Not jose's own refusal of the token (none of its string codes: a TypeError of a key check, or
      // WebCrypto's DOMException importing a JWKS key): the configured key is at fault, and its message
      // names it, not the token.
      return typeof (error as { code?: unknown }).code !== 'string'
        ? `the gateway's key cannot verify it: ${errorMessage(error).slice(0, 200)}`
        : 'not a well-formed JWT for this gateway';
  }
}

/** `run`'s result, or its error as a configuration error naming `key`. */
function asConfig<T>(key: string, run: () => T): T {
  try {
    return run();
  } catch (error) {
    throw new WarrenError(ErrorCode.Config, `${key}: ${errorMessage(error)}`, { cause: error });
  }
}

/**
 * Verifies the tokens tabs connect with: signature with the one configured key and algorithm family (a
 * token signed any other way, `alg: none` included, is refused), `exp` required, `sub` and `tid` must be
 * valid ids. Identity comes from here only, never from a client frame.
 */
export class TokenVerifier {
  private constructor(
    private readonly key: Key,
    private readonly options: JWTVerifyOptions,
  ) {}

  private get toleranceSec(): number {
    return Number(this.options.clockTolerance ?? 0);
  }

  static async create(settings: JwtSettings): Promise<TokenVerifier> {
    const base: JWTVerifyOptions = {
      clockTolerance: settings.clockToleranceSec,
      requiredClaims: ['exp', 'sub'],
      ...(settings.issuer ? { issuer: settings.issuer } : {}),
      ...(settings.audience ? { audience: settings.audience } : {}),
    };
    if (settings.secret) {
      // Imported once: given the raw bytes, jose imports the key again on every verify (60-80 µs of CPU per
      // token against 20-60 µs with the imported key, 20,000 verifies each on a loaded 2-core machine).
      const key = await crypto.subtle.importKey(
        'raw',
        new TextEncoder().encode(settings.secret),
        { name: 'HMAC', hash: 'SHA-256' },
        false,
        ['verify'],
      );
      return new TokenVerifier(key, { ...base, algorithms: ['HS256'] });
    }
    if (settings.publicKey) {
      const source = settings.publicKey;
      const { spki, alg } = asConfig('jwt.publicKey', () => publicKeyOf(readPem(source)));
      return new TokenVerifier(await importSPKI(spki, alg), { ...base, algorithms: [alg] });
    }
    if (settings.jwksFile) {
      const file = settings.jwksFile;
      const jwks = asConfig('jwt.jwksFile', () => createLocalJWKSet(readJwks(file) as JSONWebKeySet));
      return new TokenVerifier(jwks, { ...base, algorithms: ['RS256', 'ES256'] });
    }
    throw new WarrenError(ErrorCode.Config, 'jwt: no verification key configured');
  }

  async verify(token: string | undefined): Promise<Identity> {
    if (!token) throw new TokenRefused(RefusalReason.Malformed, 'missing token');
    let payload;
    try {
      ({ payload } = await jwtVerify(token, this.key as Uint8Array, this.options));
    } catch (error) {
      const reason = reasonOf(error);
      throw new TokenRefused(reason, `invalid token: ${describeRefusal(error, reason)}`, { cause: error });
    }
    const { sub, tid, exp, iat } = payload as { sub?: unknown; tid?: unknown; exp?: unknown; iat?: unknown };
    // The value is not logged (a user's id); the rule is, as ids from identity providers often break it
    // (`auth0|…`, an email address): map them to ids of this form when minting Warren's tokens.
    if (!isValidId(sub))
      throw new TokenRefused(
        RefusalReason.Identity,
        'token `sub` is not a valid user id (^[A-Za-z0-9_-]{1,120}$)',
      );
    if (!isValidId(tid))
      throw new TokenRefused(
        RefusalReason.Identity,
        'token `tid` is not a valid tenant id (^[A-Za-z0-9_-]{1,120}$)',
      );
    if (typeof exp !== 'number') throw new TokenRefused(RefusalReason.Claims, 'token has no numeric `exp`');
    // The clock tolerance is for `nbf` and `iat`, not for `exp`: a socket closes with 4001 when its token
    // expires, so one opened on an expired token would get a welcome (its user bound and announced online,
    // deliveries written to it) and be closed in the same breath.
    if (exp * 1000 <= Date.now()) throw new TokenRefused(RefusalReason.Expired, 'token expired');
    // jose has checked that an `iat` present is a number, not that it is past. One still ahead of the
    // gateway's clock less the tolerance (an issuer's clock far ahead, an `iat` written in ms) says nothing
    // of when the token was issued: taken at its word, no revocation made before that instant would cover
    // the token (a tab open on it would stay open, and a stolen copy minted before the revocation would
    // connect after it). Taken as no `iat`: refused while any revocation of its user lasts.
    const earliest = typeof iat === 'number' ? (iat - this.toleranceSec) * 1000 : undefined;
    const issuedAt = earliest !== undefined && earliest <= Date.now() ? earliest : undefined;
    return { userId: sub, tenantId: tid, expiresAt: exp * 1000, issuedAt };
  }
}
