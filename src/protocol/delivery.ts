/**
 * Resolver → gateway messages on `<prefix>.deliveries`. The event id travels as the AMQP `messageId`, the
 * event type as `type`. Recipients come in one of two forms:
 * - node-routed (what the resolver publishes by default): routed to the gateway nodes that hold recipients
 *   (`n.<nodeId>` as routing key plus `CC`), the recipients themselves as the tenant's user bit positions
 *   in a roaring bitmap (portable format) in the recipients header;
 * - user-routed: the recipients' keys `u.<tenant>.<user>` as the routing key plus the `CC` header.
 * The body is the event's `data` serialised once by the resolver, so a gateway forwards it without parsing;
 * a claim-checked event has an empty body and names its payload in the job header instead.
 */
export const DeliveryHeader = {
  Tenant: 'x-warren-tenant',
  Job: 'x-warren-job',
  /** Node-routed deliveries: the recipients' bit positions in the tenant's id map, a portable roaring bitmap. */
  Recipients: 'x-warren-recipients',
  /**
   * Node-routed deliveries: which Redis server the bits were read from (a digest of its run id and role).
   * A gateway whose bits come from another server (a failover may have given them to other users) drops
   * the delivery rather than decode it. Absent where the resolver cannot read INFO.
   */
  IdMap: 'x-warren-id-map',
  /** Not set by this release's resolvers (gateways deduplicate by event id); kept for clients that read it. */
  Redelivered: 'x-warren-redelivered',
  /**
   * A control message instead of an event: `revoke` (ControlMessage.Revoke), routed by the user's key
   * `u.<tenant>.<user>` to the gateways holding the user, with the tenant header and `RevokedAt`.
   */
  Control: 'x-warren-control',
  /** A `revoke` control message: when the user's tokens were revoked (epoch ms, a number). */
  RevokedAt: 'x-warren-revoked-at',
} as const;

export const ControlMessage = {
  /**
   * The user's tokens issued up to `RevokedAt` are revoked: gateways close the user's tabs opened with
   * them (4001, `token revoked`).
   */
  Revoke: 'revoke',
  /**
   * A gateway checking its own bindings: published by the gateway itself, mandatory, to the deliveries
   * exchange by its node key `n.<nodeId>`. One the broker returns, or one refused for want of the
   * exchange, means the node's bindings are gone (the exchange was deleted). It reaches the node's own
   * queue otherwise, where it is acked and ignored; nobody else acts on it.
   */
  Probe: 'probe',
} as const;

/** Whether a message on the deliveries exchange is a gateway's binding probe (ControlMessage.Probe). */
export function isProbe(headers: Record<string, unknown> | undefined): boolean {
  const raw = headers?.[DeliveryHeader.Control];
  return (Buffer.isBuffer(raw) ? raw.toString() : raw) === ControlMessage.Probe;
}

/**
 * `DeliveryHeader.IdMap` of a delivery resolved while its resolver did not know which Redis server it was
 * reading (reconnected, not yet answered): no gateway takes it.
 */
export const ID_MAP_UNSETTLED = '?';

/**
 * On an event the resolver put aside in `<prefix>.resolver.retry`: how many times so far (also on its dead
 * letter, if it ends as one). The copy also carries `DeadLetterHeader.Exchange` and `RoutingKey`, where it
 * was first published, since it comes back by the default exchange.
 */
export const RetryHeader = {
  Attempts: 'x-warren-attempts',
} as const;

/** Headers on messages the resolver dead-letters. */
export const DeadLetterHeader = {
  Reason: 'x-warren-reason',
  Code: 'x-warren-code',
  Exchange: 'x-warren-original-exchange',
  RoutingKey: 'x-warren-original-routing-key',
  /**
   * On a copy (a dead letter, or an event put aside) that does not keep the original's headers: they would
   * not fit in one header frame with Warren's own. Their size in bytes.
   */
  HeadersDropped: 'x-warren-headers-dropped',
} as const;
