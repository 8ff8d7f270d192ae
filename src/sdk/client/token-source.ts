import { ClientErrorCode, WarrenClientError } from './types.js';

/** The claims the client reads from a JWT without verifying it (only the gateway's check counts). */
export interface TokenClaims {
  sub?: string;
  tid?: string;
  /** Seconds since the epoch. */
  exp?: number;
}

/** Decodes a JWT's payload; undefined for anything that is not a readable JWT (an opaque token is fine). */
export function readClaims(token: string): TokenClaims | undefined {
  const part = token.split('.')[1];
  if (!part) return undefined;
  try {
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const binary = atob(base64.padEnd(base64.length + ((4 - (base64.length % 4)) % 4), '='));
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    const value: unknown = JSON.parse(new TextDecoder().decode(bytes));
    if (typeof value !== 'object' || value === null) return undefined;
    const { sub, tid, exp } = value as Record<string, unknown>;
    return {
      ...(typeof sub === 'string' ? { sub } : {}),
      ...(typeof tid === 'string' ? { tid } : {}),
      ...(typeof exp === 'number' ? { exp } : {}),
    };
  } catch {
    return undefined;
  }
}

export type GetToken = () => string | Promise<string>;

/**
 * What a token may hold: the characters of an HTTP token (RFC 9110), which a WebSocket sub-protocol must be.
 * A JWT (base64url parts and dots) always is; whitespace, quotes or non-ASCII make the browser's
 * `new WebSocket` throw before any request, so the gateway could not even log why.
 */
const TOKEN_CHARS = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** Why an attempt got no token, as the client reports it. */
export function tokenError(cause: unknown): WarrenClientError {
  return cause instanceof WarrenClientError
    ? cause
    : new WarrenClientError(ClientErrorCode.Token, `getToken failed: ${causeText(cause)}`, { cause });
}

/** What `getToken` threw or rejected with, in words: the application's reason ("Failed to fetch"). */
function causeText(cause: unknown): string {
  if (cause instanceof Error) return cause.message || cause.name;
  return typeof cause === 'string' && cause !== '' ? cause : 'no reason given';
}

/**
 * Caches the application's token between connections. It is fetched again when the gateway said it was
 * rejected or expired, when the reconnect policy suspects it, or when its own `exp` has passed (reusing an
 * expired token would only buy an HTTP 401 that the browser reports as a bare 1006).
 */
export class TokenSource {
  private token: string | undefined;
  private fetchedAt = 0;

  constructor(
    private readonly getToken: GetToken,
    private readonly now: () => number = () => Date.now(),
  ) {}

  async get(refresh: boolean): Promise<string> {
    const cached = this.token;
    if (cached !== undefined && !refresh && !this.expired(cached)) return cached;
    const given = await this.getToken();
    if (typeof given !== 'string') throw new TypeError('getToken returned no token');
    // A token endpoint read with `response.text()` often ends in a newline.
    const token = given.trim();
    if (token.length === 0) throw new TypeError('getToken returned no token');
    if (!TOKEN_CHARS.test(token))
      throw new WarrenClientError(
        ClientErrorCode.Token,
        'getToken returned a token with characters no JWT has (spaces, quotes, non-ASCII): not sent',
      );
    this.token = token;
    this.fetchedAt = this.now();
    return token;
  }

  /** How long ago the cached token was fetched (Infinity with none). */
  ageMs(): number {
    return this.token === undefined ? Infinity : this.now() - this.fetchedAt;
  }

  /** Drops the cached token: the next `get` asks the application, whatever it is asked with. */
  forget(): void {
    this.token = undefined;
  }

  /**
   * `get`, given up after `ms` (> 0; 0 waits for good): a `getToken` that never settles (a fetch has no
   * timeout of its own) must not hold the client for good. What it gives later is ignored. `signal`
   * (the caller closing) gives it up at once, timer and all.
   */
  getWithin(refresh: boolean, ms: number, signal?: AbortSignal): Promise<string> {
    const token = this.get(refresh);
    if (!(ms > 0) && !signal) return token;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let onAbort: (() => void) | undefined;
    const late = new Promise<never>((_, reject) => {
      if (ms > 0)
        timer = setTimeout(
          () =>
            reject(new WarrenClientError(ClientErrorCode.Token, `getToken did not settle within ${ms} ms`)),
          ms,
        );
      if (!signal) return;
      onAbort = () =>
        reject(new WarrenClientError(ClientErrorCode.Token, 'closed while getToken was pending'));
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    });
    return Promise.race([token, late]).finally(() => {
      clearTimeout(timer);
      if (onAbort) signal?.removeEventListener('abort', onAbort);
    });
  }

  private expired(token: string): boolean {
    const exp = readClaims(token)?.exp;
    return exp !== undefined && exp * 1000 <= this.now();
  }
}
