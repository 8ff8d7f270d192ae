/** Stable error codes: tests and callers branch on these, never on message text. */
export const ErrorCode = {
  Config: 'WARREN_ERR_CONFIG',
  InvalidEvent: 'WARREN_ERR_INVALID_EVENT',
  InvalidMembership: 'WARREN_ERR_INVALID_MEMBERSHIP',
  InvalidId: 'WARREN_ERR_INVALID_ID',
  BrokerUnavailable: 'WARREN_ERR_BROKER_UNAVAILABLE',
  RedisUnavailable: 'WARREN_ERR_REDIS_UNAVAILABLE',
  /** Redis refused the command itself (a key of the wrong type, a script's error): it fails the same again. */
  RedisRefused: 'WARREN_ERR_REDIS_REFUSED',
  Listen: 'WARREN_ERR_LISTEN',
  PublishNacked: 'WARREN_ERR_PUBLISH_NACKED',
  PublishRejected: 'WARREN_ERR_PUBLISH_REJECTED',
  Unroutable: 'WARREN_ERR_UNROUTABLE',
  Timeout: 'WARREN_ERR_TIMEOUT',
  Closed: 'WARREN_ERR_CLOSED',
  Unauthorized: 'WARREN_ERR_UNAUTHORIZED',
  JobNotFound: 'WARREN_ERR_JOB_NOT_FOUND',
  Import: 'WARREN_ERR_IMPORT',
  /**
   * A queue Warren declares exists with another type or arguments (rabbitmq.queueType changed, or declared
   * by hand): declaring again fails the same way until an operator acts.
   */
  TopologyMismatch: 'WARREN_ERR_TOPOLOGY_MISMATCH',
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export interface WarrenErrorOptions {
  cause?: unknown;
  /** True when trying the same thing again later may succeed (broker down, timeout). */
  retryable?: boolean;
}

export class WarrenError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, options: WarrenErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'WarrenError';
    this.code = code;
    this.retryable = options.retryable ?? false;
  }
}

export function isWarrenError(error: unknown, code?: ErrorCode): error is WarrenError {
  return error instanceof WarrenError && (code === undefined || error.code === code);
}

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Query parameters that carry a secret (ioredis takes `?password=`). */
const SECRET_PARAMS = /([?&](?:password|pass|pwd|auth|token|secret)=)[^&#]*/gi;

/**
 * `text` (a URL, or any value a user set) with credentials masked, so that they never reach an error
 * message or a log: everything between the scheme and the last `@` (a password may hold unencoded `@`
 * or `/`; masking a little too much is the safe side), and secret query parameters.
 */
export function withoutCredentials(text: string): string {
  // The query first: an @ inside a secret parameter must not be taken for the end of the user info.
  let out = text.replace(SECRET_PARAMS, '$1***');
  const at = out.lastIndexOf('@');
  if (at >= 0) {
    const start = /^[a-z][a-z0-9+.-]*:\/\//i.exec(out)?.[0].length ?? 0;
    if (at >= start) out = `${out.slice(0, start)}***${out.slice(at)}`;
  }
  return out;
}
