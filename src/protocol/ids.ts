/**
 * Tenant, user, team and group ids: no dots and no wildcards, so a routing key can never be read two ways,
 * and at most 120 characters so `u.<tenant>.<user>` stays under AMQP's 255-byte short-string limit.
 */
export const ID_PATTERN = /^[A-Za-z0-9_-]{1,120}$/;

/** Event ids are the publisher's idempotency keys; they never enter a routing key. */
export const EVENT_ID_PATTERN = /^[A-Za-z0-9_.:-]{1,128}$/;

/** Event types become the second part of the events routing key `<tenantId>.<eventType>`. */
export const EVENT_TYPE_PATTERN = /^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$/;

export function isValidId(value: unknown): value is string {
  return typeof value === 'string' && ID_PATTERN.test(value);
}

/** The literal routing key a gateway binds for a user it holds. */
export function userKey(tenantId: string, userId: string): string {
  return `u.${tenantId}.${userId}`;
}

/**
 * The literal routing key a gateway node binds for itself, for node-routed deliveries. Two segments, so it
 * never matches a user's three-segment key.
 */
export function nodeKey(nodeId: string): string {
  return `n.${nodeId}`;
}

export interface UserKeyParts {
  tenantId: string;
  userId: string;
}

/** Parses `u.<tenant>.<user>`; anything else (wrong shape, invalid id) is `undefined`. */
export function parseUserKey(key: string): UserKeyParts | undefined {
  if (!key.startsWith('u.')) return undefined;
  const dot = key.indexOf('.', 2);
  if (dot < 0) return undefined;
  const tenantId = key.slice(2, dot);
  const userId = key.slice(dot + 1);
  if (!ID_PATTERN.test(tenantId) || !ID_PATTERN.test(userId)) return undefined;
  return { tenantId, userId };
}
