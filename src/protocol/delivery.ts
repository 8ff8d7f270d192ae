/**
 * Resolver → gateway messages on `<prefix>.deliveries`. The event id travels as the AMQP `messageId`, the
 * event type as `type`, the recipients as the routing key plus the `CC` header. The body is the event's
 * `data` serialised once by the resolver, so a gateway forwards it without parsing; a claim-checked event
 * has an empty body and names its payload in the job header instead.
 */
export const DeliveryHeader = {
  Tenant: 'x-warren-tenant',
  Job: 'x-warren-job',
  /** Set by a resolver on a redelivered event; gateways still deduplicate by event id either way. */
  Redelivered: 'x-warren-redelivered',
} as const;

/** Headers on messages the resolver dead-letters. */
export const DeadLetterHeader = {
  Reason: 'x-warren-reason',
  Code: 'x-warren-code',
  Exchange: 'x-warren-original-exchange',
  RoutingKey: 'x-warren-original-routing-key',
} as const;
