import { CloseCode } from '../../protocol/close-codes.js';

/** Close code the browser reports when a socket failed or dropped without a close frame (e.g. HTTP 401). */
export const ABNORMAL_CLOSURE = 1006;
/** Close code a server uses for "overloaded, try again later". */
const TRY_AGAIN_LATER = 1013;

export interface ReconnectOptions {
  /** Upper bound of the first retry delay; later ones double. Default 500 ms. */
  baseMs: number;
  /** Largest delay between attempts. Default 30 s. */
  capMs: number;
  /**
   * A connection that lived this long after `welcome` counts as healthy: its close starts the backoff over.
   * Shorter-lived ones keep escalating, so a node that accepts and closes at once cannot cause a storm.
   * Default 10 s.
   */
  stableMs: number;
}

export const DEFAULT_RECONNECT: Readonly<ReconnectOptions> = { baseMs: 500, capMs: 30_000, stableMs: 10_000 };

/** What is known about the connection that just ended. */
export interface CloseFacts {
  /** The close code; 1006 when the attempt failed (refused, HTTP 401/503 on upgrade, network). */
  code: number;
  /** Whether this connection got its `welcome`. */
  welcomed: boolean;
  /** Milliseconds between `welcome` and the close (0 if never welcomed). */
  uptimeMs: number;
  /** Consecutive unhealthy closes before this one. */
  attempt: number;
  /** Consecutive attempts that ended before `welcome`, before this one. */
  failuresBeforeWelcome: number;
}

export interface ReconnectPlan {
  delayMs: number;
  /** Call `getToken` again instead of reusing the current token. */
  refreshToken: boolean;
  /** Try another URL of the list: this node is going away or did not answer. */
  nextUrl: boolean;
  /** The `attempt` to pass in the next CloseFacts. */
  attempt: number;
  /** The `failuresBeforeWelcome` to pass in the next CloseFacts. */
  failuresBeforeWelcome: number;
}

/**
 * Full jitter: uniform in [0, min(cap, base·2^(attempt-1))]. Of the jitter schemes it spreads a crowd of
 * clients that lost the same node best, which is the case that matters for a gateway fleet.
 */
export function fullJitter(attempt: number, baseMs: number, capMs: number, random: () => number): number {
  const window = Math.min(capMs, baseMs * 2 ** Math.max(0, attempt - 1));
  return Math.floor(random() * window);
}

/** Decides how to come back after a connection ended. Pure: the caller owns timers and sockets. */
export function planReconnect(
  facts: CloseFacts,
  options: ReconnectOptions,
  random: () => number = Math.random,
): ReconnectPlan {
  const { baseMs, capMs } = options;
  const healthy = facts.welcomed && facts.uptimeMs >= options.stableMs;
  const attempt = (healthy ? 0 : facts.attempt) + 1;
  const failuresBeforeWelcome = facts.welcomed ? 0 : facts.failuresBeforeWelcome + 1;
  const plan = (delayMs: number, refreshToken: boolean, nextUrl: boolean): ReconnectPlan => ({
    delayMs,
    refreshToken,
    nextUrl,
    attempt,
    failuresBeforeWelcome,
  });

  switch (facts.code) {
    case CloseCode.Draining:
    case CloseCode.LifetimeReached:
      // The node asked us to move: go promptly (jittered) to another URL; the node spreads its closes too.
      return plan(fullJitter(attempt, baseMs, capMs, random), false, true);
    case CloseCode.Unauthorized:
      return plan(fullJitter(attempt, baseMs, capMs, random), true, false);
    case CloseCode.TooSlow:
    case CloseCode.RateLimited:
    case CloseCode.MessageTooBig:
    case TRY_AGAIN_LATER: {
      // Coming straight back would repeat what got us closed: wait at least half of a window 8× wider.
      const window = Math.min(capMs, baseMs * 2 ** (attempt + 2));
      return plan(Math.floor(window / 2 + random() * (window / 2)), false, false);
    }
  }
  if (!facts.welcomed) {
    // A browser reports an HTTP 401 on upgrade only as 1006, like a network failure: after two failures in a
    // row, suspect the token too.
    return plan(fullJitter(attempt, baseMs, capMs, random), failuresBeforeWelcome >= 2, true);
  }
  return plan(fullJitter(attempt, baseMs, capMs, random), false, false);
}
