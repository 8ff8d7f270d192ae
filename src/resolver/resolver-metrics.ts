import { Counter, Gauge, Histogram, type Registry } from '../shared/metrics.js';

export class ResolverMetrics {
  readonly events: Counter<'outcome'>;
  readonly deadLetters: Counter<'code'>;
  readonly memberships: Counter;
  readonly recipients: Histogram;
  readonly resolveSeconds: Histogram;
  readonly deliveries: Counter;
  readonly claimChecked: Counter;
  readonly tenantViews: Gauge;

  constructor(registry: Registry) {
    const r = [registry];
    this.events = new Counter({
      name: 'warren_resolver_events_total',
      help: 'Events handled, by outcome (routed, no_recipients, dead_lettered, requeued, retried: put aside in the retry queue)',
      labelNames: ['outcome'],
      registers: r,
    });
    this.deadLetters = new Counter({
      name: 'warren_resolver_dead_letters_total',
      help: 'Messages sent to the dead-letter queue, by reason code',
      labelNames: ['code'],
      registers: r,
    });
    this.memberships = new Counter({
      name: 'warren_resolver_membership_changes_total',
      help: 'Membership changes applied from the membership exchange',
      registers: r,
    });
    this.recipients = new Histogram({
      name: 'warren_resolver_recipients',
      help: 'Online recipients per event',
      buckets: [0, 1, 10, 100, 1000, 10_000, 100_000],
      registers: r,
    });
    this.resolveSeconds = new Histogram({
      name: 'warren_resolver_resolve_seconds',
      help: 'In-memory audience resolution per event',
      buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01],
      registers: r,
    });
    this.deliveries = new Counter({
      name: 'warren_resolver_delivery_messages_total',
      help: 'Delivery messages (chunks) published',
      registers: r,
    });
    this.tenantViews = new Gauge({
      name: 'warren_resolver_tenant_views',
      help: 'Tenants whose view (online users, cached memberships) this resolver held after its last batch: at most resolver.maxTenantViews',
      registers: r,
    });
    this.claimChecked = new Counter({
      name: 'warren_resolver_claim_checked_total',
      help: 'Inline payloads above the threshold moved to Redis',
      registers: r,
    });
  }
}
