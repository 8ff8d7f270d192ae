import { RefusalReason as TokenRefusal } from './auth.js';
import { Counter, Gauge, Histogram, type Registry } from '../shared/metrics.js';

export type RefusalReason = 'bad_key' | 'tenant_mismatch' | 'identity_mismatch' | 'malformed';

/** `missing`: Redis had no payload (expired, never stored, or another tenant's job id); `fetch_failed`: Redis error. */
export type PayloadUnavailableReason = 'missing' | 'fetch_failed';

/** What operators watch on a gateway node (`GET /metrics`). */
export class GatewayMetrics {
  readonly connections: Gauge;
  readonly usersHeld: Gauge;
  readonly binds: Counter;
  readonly unbinds: Counter;
  readonly deliveries: Counter;
  readonly tabWrites: Counter;
  readonly refused: Counter<'reason'>;
  readonly duplicates: Counter;
  readonly closes: Counter<'code'>;
  readonly authFailures: Counter;
  readonly badFrames: Counter;
  readonly payloadFetches: Counter;
  readonly payloadUnavailable: Counter<'reason'>;
  readonly dropped: Counter<'reason'>;
  readonly welcomeSeconds: Histogram;

  constructor(registry: Registry) {
    const r = [registry];
    this.connections = new Gauge({ name: 'warren_gateway_connections', help: 'Open tabs', registers: r });
    this.usersHeld = new Gauge({
      name: 'warren_gateway_users_bound',
      help: 'Users whose routing key is bound to this node (including those in the unbind grace period)',
      registers: r,
    });
    this.binds = new Counter({
      name: 'warren_gateway_binds_total',
      help: 'Queue binds issued',
      registers: r,
    });
    this.unbinds = new Counter({
      name: 'warren_gateway_unbinds_total',
      help: 'Queue unbinds issued',
      registers: r,
    });
    this.deliveries = new Counter({
      name: 'warren_gateway_deliveries_total',
      help: 'Delivery messages consumed from the node queue',
      registers: r,
    });
    this.tabWrites = new Counter({
      name: 'warren_gateway_tab_writes_total',
      help: 'Frames the delivery path wrote to tabs: events, payload_unavailable and events_missed errors, resume replays',
      registers: r,
    });
    this.refused = new Counter({
      name: 'warren_gateway_refused_total',
      help: 'Recipient keys refused by the defence-in-depth checks',
      labelNames: ['reason'],
      registers: r,
    });
    this.duplicates = new Counter({
      name: 'warren_gateway_duplicates_dropped_total',
      help: 'Redelivered (event, user) pairs not written again',
      registers: r,
    });
    this.closes = new Counter({
      name: 'warren_gateway_closes_total',
      help: 'Connections closed by the gateway, by close code',
      labelNames: ['code'],
      registers: r,
    });
    this.authFailures = new Counter({
      name: 'warren_gateway_auth_failures_total',
      help: 'Tokens refused, by reason: with 401 at the upgrade (malformed, signature, algorithm, expired, claims, identity), or with close code 4001 before the welcome (revoked: issued before the user was revoked)',
      labelNames: ['reason'],
      registers: r,
    });
    // Every reason from the start, at 0: an alert on a rate, or on absent(), sees the series before the
    // first refusal.
    for (const reason of Object.values(TokenRefusal)) this.authFailures.inc({ reason }, 0);
    this.badFrames = new Counter({
      name: 'warren_gateway_bad_frames_total',
      help: 'Bad client frames',
      registers: r,
    });
    this.payloadFetches = new Counter({
      name: 'warren_gateway_payload_fetches_total',
      help: 'Claim-check payloads read from Redis (at most one read per job while cached or in flight)',
      registers: r,
    });
    this.payloadUnavailable = new Counter({
      name: 'warren_gateway_payload_unavailable_total',
      help: 'Claim-checked deliveries whose payload could not be read; their tabs got payload_unavailable',
      labelNames: ['reason'],
      registers: r,
    });
    this.dropped = new Counter({
      name: 'warren_gateway_dropped_deliveries_total',
      help: "Deliveries this node lost, by reason: queue_full (the broker dropped them from the node's full queue, gateway.queueMaxLength), rejected (a delivery handler threw), id_map_changed (resolved against another Redis server's id map than this node's, around a failover); its tabs got events_missed. queue_full and rejected count up to 1,000 between two reads.",
      labelNames: ['reason'],
      registers: r,
    });
    this.welcomeSeconds = new Histogram({
      name: 'warren_gateway_welcome_seconds',
      help: 'Socket open to welcome (bind, presence and the revocation read included)',
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: r,
    });
  }
}
