import { randomBytes } from 'node:crypto';
import type { ConsumeMessage, Options } from 'amqplib';
import type { Delivery as AmqpDelivery } from '../broker/consumer.js';
import { fieldTableBytes } from '../broker/field-table.js';
import { exchangeMissing, PUBLISH_ID_HEADER, type Publisher } from '../broker/publisher.js';
import type { TopologyNames } from '../broker/topology.js';
import { DeadLetterHeader, RetryHeader } from '../protocol/delivery.js';
import type { MembershipChange, ModelEvent } from '../protocol/schemas.js';
import { ErrorCode, errorMessage, isWarrenError } from '../shared/errors.js';
import { fulfilsWithin, sleep } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { StaleMembershipTerm, type MembershipStore } from '../store/membership-store.js';
import { PayloadStore } from '../store/payload-store.js';
import { deniedByAcl, refusedByRedis } from '../store/redis.js';
import { PerKeyThrottle } from '../shared/throttle.js';
import type { DeliveryPublisher } from './delivery-publisher.js';
import { originOf, parseMessage, type RejectCode } from './message-parser.js';
import type { ResolverMetrics } from './resolver-metrics.js';
import { AudienceRefused, type TenantView } from './tenant-view.js';

export interface WorkerDeps {
  names: TopologyNames;
  publisher: Publisher;
  deliveries: DeliveryPublisher;
  membership: MembershipStore;
  payloads: PayloadStore;
  view: (tenantId: string) => TenantView;
  /** Called between batches, when no view is in use: forgets views past the configured number. */
  trimViews: () => void;
  claimCheck: { bytes: number; ttlSec: number };
  /** Messages larger than this are dead-lettered unread (`too_large`). */
  maxMessageBytes: number;
  metrics: ResolverMetrics;
  logger: Logger;
  /** Declares the shared topology again, on a channel of its own (a queue found missing). */
  redeclare: () => Promise<void>;
  /** The stamp of the Redis server the views are read from (`ServerWatch.stamp`). */
  idMapStamp: () => string | undefined;
  /** Undefined while the Redis server is known; else resolves once it is (`ServerWatch.whenSettled`). */
  serverUnsettled: () => Promise<void> | undefined;
  /** Bytes a message's header table may take (`BrokerConnection.headerBudget`). */
  headerBudget: () => number;
}

interface PendingEvent {
  delivery: AmqpDelivery;
  event: ModelEvent;
}

const MAX_BATCH = 512;
// How long a batch waits for a reconnected Redis to say which server it is, before going back to the queue.
const SETTLE_WAIT_MS = 10_000;
const SYNC_ATTEMPTS = 3;
/**
 * An event its payloads' store failed waits in the retry queue this long the first time, twice as long
 * each time after, up to RETRY_MAX_MS; requeued after REQUEUE_PAUSE_MS where the retry queue cannot take it.
 */
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 8000;
const REQUEUE_PAUSE_MS = 500;

// How often the same tenant's tenant-wide refusal is logged (its events come back one by one for as long).
const REFUSAL_LOG_MS = 10_000;

/** How a tenant's events went back when Redis could not be read: to the queue's head, or the retry queue. */
type SentBack = 'requeued' | 'aside';
// Headers a copy of a message does not keep: those the broker reads to route a publish (`CC` and `BCC`: to
// the default exchange each names a queue, any queue), those it adds when it dead-letters one, and the id
// an earlier copy was published under.
const DROPPED_HEADERS = [
  'CC',
  'BCC',
  PUBLISH_ID_HEADER,
  'x-death',
  'x-first-death-exchange',
  'x-first-death-queue',
  'x-first-death-reason',
  'x-last-death-exchange',
  'x-last-death-queue',
  'x-last-death-reason',
];

/**
 * Turns the resolver queue into deliveries. Messages are taken in batches: one read of each tenant's change
 * log serves every event of the batch, because all of them arrived before the read, so every change
 * applied before they were published is seen. A membership change ends a batch and is applied before the
 * events after it. An event is acked only once every chunk of its deliveries is confirmed (at-least-once);
 * gateways drop the duplicate a redelivery produces.
 */
// Messages remembered as failing at once; more would mean something else is wrong.
const FAILURES_REMEMBERED = 10_000;
/** Between two attempts at a membership change Redis's ACL denies (one error logged each). */
const ACL_WAIT_MS = 2000;
// Attempts at an event whose resolution throws, and at a membership change Redis refuses, before the
// message is dead-lettered (bad input is dead-lettered at once).
const RESOLVE_ATTEMPTS = 2;
const MEMBERSHIP_ATTEMPTS = 5;
// A dead letter (or a copy put aside in the retry queue) waits this long for a publish channel (one being
// reopened) and for its confirm (a broker under a resource alarm confirms nothing), then falls back to a
// plain reject, which loses the reason (a requeue after a pause, for the copy).
const SIDE_PUBLISH_WAIT_MS = 5000;
const SIDE_PUBLISH_CONFIRM_MS = 30_000;
/**
 * Room a copy's header frame keeps beside its header table: its other properties (six short strings of up
 * to 256 bytes, a timestamp, the frame's own fields) and the id a mandatory publish adds.
 */
const COPY_PROPERTIES_BYTES = 2048;
/**
 * Bytes of a dead letter's reason kept (in its header and in the log): with the other headers Warren adds,
 * it fits the smallest frame `rabbitmq.frameMax` allows (8 KiB).
 */
const REASON_BYTES = 2000;

/**
 * Failures per message, counted in this process (the broker's `redelivered` flag cannot tell why a message
 * came back). Bounded: the oldest is forgotten first.
 */
class FailureCounts {
  private readonly counts = new Map<string, number>();

  get(key: string): number {
    return this.counts.get(key) ?? 0;
  }

  /** One more failure of `key`; returns its total. */
  add(key: string): number {
    const total = this.get(key) + 1;
    this.counts.set(key, total);
    if (this.counts.size > FAILURES_REMEMBERED) this.counts.delete(this.counts.keys().next().value as string);
    return total;
  }

  /** Forgets `key` (built only when anything is remembered: this runs for every message that succeeds). */
  forget(key: () => string): void {
    if (this.counts.size > 0) this.counts.delete(key());
  }
}

export class ResolverWorker {
  private readonly queue: AmqpDelivery[] = [];
  private running: Promise<void> | undefined;
  private looping = false;
  private readonly inflight = new Set<Promise<void>>();
  /** Membership messages (by body) that Redis refused. */
  private readonly applyFailures = new FailureCounts();
  /** Events (tenant/id) whose resolution threw. */
  private readonly resolveFailures = new FailureCounts();
  /** Tenant-wide refusals come back with every event of the tenant: told once a while per tenant. */
  private readonly refusalLog = new PerKeyThrottle(REFUSAL_LOG_MS);
  /** Deliveries the broker did not confirm: said once a while, with how many (every event in hand fails). */
  private readonly unconfirmedLog = new PerKeyThrottle(REFUSAL_LOG_MS);
  /** Membership-queue terms taken in this subscription, per tenant (see `MembershipStore.newTerm`). */
  private readonly terms = new Map<string, number>();
  /** Subscriptions to the membership queue so far: a term asked for under an earlier one is not kept. */
  private subscriptions = 0;
  /** The declaration a returned retry copy asked for, while it runs. */
  private redeclaring: Promise<void> | undefined;
  /** Key of this resolver's claim-check job ids: the same event gets the same id on every attempt here. */
  private readonly jobSecret = randomBytes(32);

  constructor(private readonly deps: WorkerDeps) {}

  handle(delivery: AmqpDelivery): void {
    this.queue.push(delivery);
    if (this.looping) return;
    this.looping = true;
    this.running = this.run();
  }

  /** Resolves when everything received so far is processed and settled. */
  async idle(): Promise<void> {
    while (this.looping || this.inflight.size > 0) {
      await this.running;
      await Promise.allSettled([...this.inflight]);
    }
  }

  private async run(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        await this.runBatch().catch((error: unknown) => {
          // Nothing above should throw; if it does, the deliveries it held are requeued by the broker
          // when the channel closes, so log it and keep the loop alive for the next messages.
          this.deps.logger.error({ err: errorMessage(error) }, 'resolver batch failed');
        });
      }
    } finally {
      // Cleared in the same tick the queue is seen empty. amqplib hands over several deliveries in one socket
      // read, and a batch of only dead letters finishes without awaiting: a flag cleared a tick later (in a
      // `.finally` callback) left the next delivery of that read waiting for whatever message came after it.
      this.looping = false;
    }
  }

  private async runBatch(): Promise<void> {
    const events: PendingEvent[] = [];
    let membership: { delivery: AmqpDelivery; change: MembershipChange } | undefined;
    while (this.queue.length > 0 && events.length < MAX_BATCH && !membership) {
      const delivery = this.queue.shift() as AmqpDelivery;
      // Its channel died with a reconnect: the broker has requeued it already.
      if (!delivery.live) continue;
      const parsed = parseMessage(delivery.message, this.deps.names, this.deps.maxMessageBytes);
      if (parsed.kind === 'invalid') this.track(this.deadLetter(delivery, parsed.code, parsed.reason));
      else if (parsed.kind === 'event') events.push({ delivery, event: parsed.event });
      else membership = { delivery, change: parsed.change };
    }
    try {
      if (events.length > 0) await this.resolveBatch(events);
      if (membership) await this.applyMembership(membership.delivery, membership.change);
    } finally {
      // Every tenant's part of the batch has settled, failed or not: no view is in use.
      this.deps.trimViews();
    }
  }

  private track(work: Promise<void>): void {
    this.inflight.add(work);
    // Never an unhandled rejection (it would end the process): the message of failed work is requeued by
    // the broker once its channel goes, or redelivered after a restart.
    void work
      .catch((error: unknown) => this.deps.logger.error({ err: errorMessage(error) }, 'resolver work failed'))
      .finally(() => this.inflight.delete(work));
  }

  /**
   * The membership queue was (re)subscribed: terms taken before may have been superseded by another
   * resolver meanwhile, so each tenant's next change takes a new one.
   */
  membershipSubscribed(): void {
    this.subscriptions += 1;
    this.terms.clear();
  }

  private async applyMembership(delivery: AmqpDelivery, change: MembershipChange): Promise<void> {
    const { tenantId } = change;
    try {
      let term = this.terms.get(tenantId);
      if (term === undefined) {
        const subscription = this.subscriptions;
        term = await this.deps.membership.newTerm(tenantId);
        // The message went back to the broker while the term was being taken (its channel closed, or the
        // queue was subscribed again): another resolver may have applied it, and later changes, since.
        // The term, newer than theirs, is dropped unused; the message comes back if this one still reads.
        if (subscription !== this.subscriptions || !delivery.live) {
          this.deps.logger.warn(
            { tenantId },
            'membership queue lost while taking a term; change not applied',
          );
          delivery.requeue();
          return;
        }
        this.terms.set(tenantId, term);
        // Bounded: a tenant forgotten takes a new term at its next change (one INCR), which is as safe.
        if (this.terms.size > FAILURES_REMEMBERED)
          this.terms.delete(this.terms.keys().next().value as string);
      }
      await this.deps.membership.apply(change, term);
      this.applyFailures.forget(() => delivery.message.content.toString('latin1'));
      this.deps.metrics.memberships.inc();
      delivery.ack();
    } catch (error) {
      if (error instanceof StaleMembershipTerm) {
        // Another resolver has applied this tenant's queue since this one took its term. If this one
        // still holds the message, it comes back and is applied under a new term; if it lost it (cut off),
        // the requeue is a no-op and the other resolver's later changes stand.
        this.terms.delete(tenantId);
        this.deps.logger.warn({ tenantId, term: error.term }, 'membership term superseded; change requeued');
        delivery.requeue();
        return;
      }
      // An ACL denying what the change needs refuses every change alike: they wait until an operator mends
      // it (removals set aside would leave their users members for good, and events still resolved).
      if (deniedByAcl(error)) {
        this.deps.logger.error(
          { err: errorMessage(error), tenantId },
          'Redis’s ACL denies what a membership change needs; changes wait until it is mended',
        );
        this.requeueAfter(delivery, ACL_WAIT_MS);
        return;
      }
      // Redis refusing the change itself (a key of the wrong type, say) is retried a few times, then set
      // aside: one change that can never apply must not hold up every later change of every tenant.
      // Redis unreachable, or unable to take any write now (out of memory, read-only after a failover),
      // is retried for as long as it takes: dropping a removal then would leave the user a member.
      const key = delivery.message.content.toString('latin1');
      const failures = refusedByRedis(error) ? this.applyFailures.add(key) : this.applyFailures.get(key);
      if (failures >= MEMBERSHIP_ATTEMPTS) {
        this.applyFailures.forget(() => key);
        this.track(
          this.deadLetter(
            delivery,
            'apply_failed',
            `not applied after ${failures} attempts: ${errorMessage(error)}`,
          ),
        );
        return;
      }
      this.deps.logger.warn(
        { err: errorMessage(error), failures },
        'membership change not applied; requeued',
      );
      this.requeueAfter(delivery, Math.min(250 * (failures + 1), 2000));
    }
  }

  /**
   * A membership change goes back after a pause, waited out beside the batches rather than in their loop:
   * the events of every tenant go on being resolved meanwhile. The queue's next change still waits (the
   * membership queue's prefetch is one, and this one is not settled until then).
   */
  private requeueAfter(delivery: AmqpDelivery, ms: number): void {
    this.track(sleep(ms).then(() => delivery.requeue()));
  }

  private async resolveBatch(events: PendingEvent[]): Promise<void> {
    const byTenant = new Map<string, PendingEvent[]>();
    for (const pending of events) {
      const list = byTenant.get(pending.event.tenantId) ?? [];
      list.push(pending);
      byTenant.set(pending.event.tenantId, list);
    }
    // Every tenant's part settles before the batch ends: the next batch must not find one still running on
    // the same view (sync and ensure assume one caller at a time).
    const settled = await Promise.allSettled(
      [...byTenant].map(([tenantId, pending]) => this.resolveTenant(tenantId, pending)),
    );
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw failed.reason;
  }

  /**
   * Resolves one tenant's events of a batch, in order. Undefined when each was handled; otherwise Redis
   * could not be read (away or unsettled: `requeued`; refusing what every event of the tenant needs:
   * `aside`, in the retry queue) and the events not yet handled went back that way.
   */
  private async resolveTenant(tenantId: string, pending: PendingEvent[]): Promise<SentBack | undefined> {
    const view = this.deps.view(tenantId);
    let prepared = await this.prepare(view, pending);
    if ('sentBack' in prepared) return prepared.sentBack;
    if ('refused' in prepared) return this.refused(tenantId, pending, prepared.refused);
    for (const [i, item] of pending.entries()) {
      // Until the Redis server is known and the view is read from it, in one loop: a re-read may span
      // another reconnect.
      for (;;) {
        // Reconnected to Redis, and the server there has not yet said who it is: what the view read
        // since may be another server's. Waited for (a change marks the view stale in the same tick).
        const unsettled = this.deps.serverUnsettled();
        if (unsettled) {
          await fulfilsWithin(unsettled, SETTLE_WAIT_MS);
          // Still unknown (Redis away, or the resolver closing): back to the queue, for later or another.
          if (this.deps.serverUnsettled()) {
            this.requeue(pending.slice(i));
            return 'requeued';
          }
          continue;
        }
        // Redis changed under the batch (restart, failover): the rest is resolved against a view
        // built from the server there is now.
        if (!view.isStale) break;
        prepared = await this.prepare(view, pending.slice(i));
        if ('sentBack' in prepared) return prepared.sentBack;
        if ('refused' in prepared) return this.refused(tenantId, pending.slice(i), prepared.refused);
      }
      if (prepared.unchecked && item.event.jobId !== undefined) {
        this.putAside(item.delivery);
      } else if (prepared.missing.has(item)) {
        this.track(
          this.deadLetter(
            item.delivery,
            'job_not_found',
            `job ${item.event.jobId} not found in tenant ${tenantId}`,
          ),
        );
      } else if (!(await this.routeOrRecover(view, item))) {
        // The view was thrown away: the rest of the batch is resolved against a fresh one, never an
        // empty one (which would drop its events as having no recipients).
        const rest = pending.slice(i + 1);
        if (rest.length === 0) break;
        prepared = await this.prepare(view, rest);
        if ('sentBack' in prepared) return prepared.sentBack;
        if ('refused' in prepared) return this.refused(tenantId, rest, prepared.refused);
      }
    }
    return undefined;
  }

  private requeue(pending: readonly PendingEvent[]): void {
    for (const p of pending) p.delivery.requeue();
    this.deps.metrics.events.inc({ outcome: 'requeued' }, pending.length);
  }

  private sendBack(pending: readonly PendingEvent[], how: SentBack): void {
    if (how === 'requeued') this.requeue(pending);
    else for (const p of pending) this.putAside(p.delivery);
  }

  /**
   * Redis refused to read a team or group these events name (a key of the wrong type, say): no wait mends
   * that. Each event is then tried on its own, so one whose audience names the bad key does not hold up the
   * tenant's others; one refused on its own is requeued once, then dead-lettered (`resolve_failed`), not
   * retried forever. Should Redis become unreadable meanwhile, the rest go back to the queue at once rather
   * than each waiting out the retries on its own.
   */
  private async refused(
    tenantId: string,
    pending: PendingEvent[],
    error: unknown,
  ): Promise<SentBack | undefined> {
    if (pending.length > 1) {
      for (const [i, one] of pending.entries()) {
        const sentBack = await this.resolveTenant(tenantId, [one]);
        if (sentBack === undefined) continue;
        this.sendBack(pending.slice(i + 1), sentBack);
        return sentBack;
      }
      return undefined;
    }
    const [item] = pending as [PendingEvent];
    const key = `${tenantId}/${item.event.id}`;
    const failures = this.resolveFailures.add(key);
    this.deps.logger.warn(
      { err: errorMessage(error), tenantId, eventId: item.event.id, failures },
      'Redis refused to read the event’s audience',
    );
    if (failures >= RESOLVE_ATTEMPTS) {
      this.resolveFailures.forget(() => key);
      this.track(
        this.deadLetter(
          item.delivery,
          'resolve_failed',
          `Redis refused to read its audience: ${errorMessage(error)}`,
        ),
      );
      return undefined;
    }
    this.requeue([item]);
    return undefined;
  }

  /**
   * Syncs the view and loads what the batch needs; `sentBack` when Redis failed (events requeued), `refused`
   * when Redis refused to read a team or group the audiences name (nothing requeued: see `refused`). A
   * refusal to read what every event of the tenant needs (its change log, presence, the id map) blames no
   * event, and no wait mends it: the events wait in the retry queue, backing off, and come back until it is
   * mended. Requeued instead, they would come straight back to the head of the queue, pass after pass,
   * filling the prefetch window and holding up every tenant. `missing`:
   * events naming a job that is not there; `unchecked`: the payloads' Redis did not answer (on a server of
   * its own, claimCheck.redisUrl), so the events naming a job wait for it and the others are routed.
   */
  private async prepare(
    view: TenantView,
    pending: PendingEvent[],
  ): Promise<
    { missing: Set<PendingEvent>; unchecked: boolean } | { refused: unknown } | { sentBack: SentBack }
  > {
    for (let attempt = 1; ; attempt += 1) {
      try {
        // Only whether the payload exists: the resolver never reads a claim-checked payload itself. Asked
        // alongside the sync, not after it: one Redis round trip less before the batch is routed.
        const withJob = pending.filter((p) => p.event.jobId !== undefined);
        // Both settle before a retry: a sync still running must not overlap the next one.
        const [missing, synced] = await Promise.allSettled([
          this.deps.payloads.missing(
            view.tenantId,
            withJob.map((p) => p.event.jobId as string),
          ),
          view.sync().then(() => view.prepare(pending.map((p) => p.event.audience))),
        ]);
        if (synced.status === 'rejected') throw synced.reason;
        // An operator told the tenant's state was refused hears that it reads again, and what waited since.
        this.refusalLog.settle(view.tenantId, (events) =>
          this.deps.logger.info(
            { tenantId: view.tenantId, events },
            'Redis reads the tenant’s state again; the events put aside are routed as they come back',
          ),
        );
        // On the shared server the sync would have failed too; retried with it, as before.
        if (missing.status === 'rejected' && !this.deps.payloads.own) throw missing.reason;
        if (missing.status === 'rejected') {
          this.deps.logger.warn(
            { err: errorMessage(missing.reason), tenantId: view.tenantId, events: withJob.length },
            'cannot check claim-checked payloads; their events put aside, the others routed',
          );
          return { missing: new Set(), unchecked: true };
        }
        return {
          missing: new Set(withJob.filter((p) => missing.value.has(p.event.jobId as string))),
          unchecked: false,
        };
      } catch (error) {
        // Not passing (Redis answered, and said no): the caller sorts the events out.
        if (error instanceof AudienceRefused) return { refused: error.cause };
        if (refusedByRedis(error)) {
          this.refusalLog.tell(view.tenantId, pending.length, (events) =>
            this.deps.logger.error(
              { err: errorMessage(error), tenantId: view.tenantId, events },
              'Redis refuses to read the tenant’s state; its events wait in the retry queue',
            ),
          );
          this.sendBack(pending, 'aside');
          return { sentBack: 'aside' };
        }
        if (attempt >= SYNC_ATTEMPTS) {
          this.deps.logger.warn(
            { err: errorMessage(error), tenantId: view.tenantId },
            'cannot sync; requeueing',
          );
          this.requeue(pending);
          return { sentBack: 'requeued' };
        }
        await sleep(100 * attempt);
      }
    }
  }

  /**
   * A resolution that throws is a bug, or state no check foresaw: the tenant's view is rebuilt from Redis
   * and the event requeued once; failing again, it is dead-lettered rather than retried forever, and the
   * batch goes on either way. Returns false when the view was rebuilt.
   */
  private async routeOrRecover(view: TenantView, item: PendingEvent): Promise<boolean> {
    try {
      await this.route(view, item);
      // Resolved after all: a later failure of the same event (redelivered) gets its own retry.
      this.resolveFailures.forget(() => `${item.event.tenantId}/${item.event.id}`);
      return true;
    } catch (error) {
      const { delivery, event } = item;
      this.deps.logger.error(
        { err: errorMessage(error), tenantId: event.tenantId, eventId: event.id },
        'resolution failed; view rebuilt',
      );
      view.invalidate();
      // Remembered here rather than read off `redelivered`: an event redelivered for another reason (a
      // resolver restarted, a sync failed) still gets its one retry on a rebuilt view.
      const key = `${event.tenantId}/${event.id}`;
      if (this.resolveFailures.add(key) >= RESOLVE_ATTEMPTS) {
        this.resolveFailures.forget(() => key);
        this.track(this.deadLetter(delivery, 'resolve_failed', `resolution failed: ${errorMessage(error)}`));
      } else {
        this.deps.metrics.events.inc({ outcome: 'requeued' });
        delivery.requeue();
      }
      return false;
    }
  }

  private async route(view: TenantView, { delivery, event }: PendingEvent): Promise<void> {
    const { metrics } = this.deps;
    // Read in the same tick as the bits: a server change marks the views stale in the tick it changes this.
    const idMap = this.deps.idMapStamp();
    const started = performance.now();
    const recipients = view.resolveBits(event.audience);
    metrics.resolveSeconds.observe((performance.now() - started) / 1000);
    metrics.recipients.observe(recipients.size);
    try {
      if (recipients.size === 0) {
        metrics.events.inc({ outcome: 'no_recipients' });
        delivery.ack();
        return;
      }
      const prepared = await this.body(event, delivery);
      if (!prepared) return;
      const publishing = this.deps.deliveries.publish(
        { eventId: event.id, eventType: event.type, tenantId: event.tenantId, idMap, ...prepared },
        recipients,
        view.online,
      );
      this.track(
        publishing.then(
          (messages) => {
            metrics.deliveries.inc(messages);
            // None: every recipient's node was counted dead while the payload was being stored (the
            // nodes tell their tabs events_missed when they beat again).
            metrics.events.inc({ outcome: messages > 0 ? 'routed' : 'no_recipients' });
            delivery.ack();
            // Confirmed again: what failed since the last warning is said now, and the next failure at once.
            this.unconfirmedLog.settle('deliveries', (events) => {
              if (events > 0)
                this.deps.logger.warn({ events }, 'deliveries confirmed again; more events were requeued');
            });
          },
          (error: unknown) => this.deliveryFailed(delivery, event, error),
        ),
      );
    } finally {
      // Native memory, freed now rather than by the collector (see TenantView.resolveBits). The messages hold
      // their own serialised copies by now.
      recipients.clear();
    }
  }

  /**
   * A delivery the broker did not confirm: requeued after a pause, so that a broker refusing every one (the
   * deliveries exchange deleted: 404) does not have the same event handed back, resolved and refused again
   * in a tight loop. The exchange is not declared again here: it would come back without the gateways'
   * bindings, and the broker would confirm deliveries routed to no one; the gateways declare it and bind
   * again when their connection is made again.
   */
  private async deliveryFailed(delivery: AmqpDelivery, event: ModelEvent, error: unknown): Promise<void> {
    const { logger, metrics } = this.deps;
    this.unconfirmedLog.tell('deliveries', 1, (events) =>
      logger.warn(
        { err: errorMessage(error), eventId: event.id, events },
        'deliveries not confirmed; their events requeued after a pause',
      ),
    );
    await sleep(REQUEUE_PAUSE_MS);
    if (delivery.live) metrics.events.inc({ outcome: 'requeued' });
    delivery.requeue();
  }

  /**
   * The delivery body: `data` inline, or claim-checked above the threshold; undefined when put aside or
   * dead-lettered.
   */
  private async body(
    event: ModelEvent,
    delivery: AmqpDelivery,
  ): Promise<{ body: Buffer; jobId: string | undefined } | undefined> {
    const { claimCheck, metrics } = this.deps;
    if (event.jobId) return { body: Buffer.alloc(0), jobId: event.jobId };
    let body: Buffer;
    try {
      body = Buffer.from(JSON.stringify(event.data ?? null));
    } catch (error) {
      // JSON.parse takes nesting of any depth, JSON.stringify runs out of stack: the event's fault, not the
      // view's, so it is set aside rather than retried on a rebuilt view.
      this.track(
        this.deadLetter(delivery, 'invalid_event', `data cannot be serialised: ${errorMessage(error)}`),
      );
      return undefined;
    }
    if (body.byteLength <= claimCheck.bytes) return { body, jobId: undefined };
    try {
      const jobId = await this.deps.payloads.put(
        event.tenantId,
        body,
        claimCheck.ttlSec,
        PayloadStore.jobIdFor(this.jobSecret, event.tenantId, event.id, body),
      );
      metrics.claimChecked.inc();
      return { body: Buffer.alloc(0), jobId };
    } catch (error) {
      this.deps.logger.warn({ err: errorMessage(error), eventId: event.id }, 'claim check failed; put aside');
      this.putAside(delivery);
      return undefined;
    }
  }

  /**
   * An event its payloads' store failed (that Redis away or full) waits in the retry queue and comes back
   * by itself: the original is acked once the broker has confirmed the copy, so it does not hold a slot of
   * the prefetch window meanwhile, and however many wait, the other events go on being routed. Where the
   * retry queue cannot take it, it is requeued after a pause instead (holding its slot meanwhile).
   */
  private putAside(delivery: AmqpDelivery): void {
    this.track(this.retryLater(delivery));
  }

  private async retryLater(delivery: AmqpDelivery): Promise<void> {
    const { message } = delivery;
    const { names, metrics, logger } = this.deps;
    const before = Number(message.properties.headers?.[RetryHeader.Attempts]);
    const attempts = Number.isSafeInteger(before) && before > 0 ? before + 1 : 1;
    const waitMs = Math.min(RETRY_FIRST_MS * 2 ** Math.min(attempts - 1, 30), RETRY_MAX_MS);
    try {
      const copied = await this.publishCopy(delivery, '', names.resolverRetry, {
        properties: { ...copiedProperties(message), expiration: String(waitMs) },
        headers: { [RetryHeader.Attempts]: attempts },
        // The retry queue gone (deleted by hand): the broker would confirm a copy it routed nowhere.
        mandatory: true,
      });
      if (!copied) return;
      metrics.events.inc({ outcome: 'retried' });
      delivery.ack();
    } catch (error) {
      logger.warn(
        { err: errorMessage(error), eventId: message.properties.messageId as unknown },
        'retry queue did not take an event; requeued after a pause',
      );
      if (isWarrenError(error, ErrorCode.Unroutable)) await this.redeclare();
      await sleep(REQUEUE_PAUSE_MS);
      if (delivery.live) metrics.events.inc({ outcome: 'requeued' });
      delivery.requeue();
    }
  }

  /** Declares the topology again; copies returned together share one declaration. */
  private redeclare(): Promise<void> {
    this.redeclaring ??= this.deps
      .redeclare()
      .catch((error: unknown) =>
        this.deps.logger.warn({ err: errorMessage(error) }, 'cannot declare the topology again'),
      )
      .finally(() => (this.redeclaring = undefined));
    return this.redeclaring;
  }

  /**
   * Publishes a copy of a delivery's message (its headers as `copiedHeaders` keeps them, plus `headers` and
   * where it was first published) and waits for the broker's confirm. A publish channel being reopened is
   * waited for; false, and nothing published, when the delivery's own channel went meanwhile (the broker has
   * requeued it already: a copy would be a second one). The caller settles the delivery.
   */
  private async publishCopy(
    delivery: AmqpDelivery,
    exchange: string,
    routingKey: string,
    copy: { properties: Options.Publish; headers: Record<string, unknown>; mandatory?: boolean },
  ): Promise<boolean> {
    const { message } = delivery;
    const { names, publisher } = this.deps;
    await publisher.readyWithin(SIDE_PUBLISH_WAIT_MS);
    if (!delivery.live) return false;
    const origin = originOf(message, names);
    const own = {
      ...copy.headers,
      [DeadLetterHeader.Exchange]: origin.exchange,
      [DeadLetterHeader.RoutingKey]: origin.routingKey,
    };
    const kept = copiedHeaders(message);
    let headers: Record<string, unknown> = { ...kept, ...own };
    // Headers that filled the frame they came in leave no room for Warren's: a header frame over the
    // negotiated size makes the broker close the whole connection, and the message, redelivered, would close
    // it again, each time taking every other event in hand with it. The copy goes without them.
    if (fieldTableBytes(headers) > this.deps.headerBudget() - COPY_PROPERTIES_BYTES)
      headers = { ...own, [DeadLetterHeader.HeadersDropped]: fieldTableBytes(kept) };
    await publisher.publish(exchange, routingKey, message.content, {
      ...copy.properties,
      headers,
      confirmTimeoutMs: SIDE_PUBLISH_CONFIRM_MS,
      ...(copy.mandatory ? { mandatory: true } : {}),
    });
    return true;
  }

  private async deadLetter(delivery: AmqpDelivery, code: RejectCode, reason: string): Promise<void> {
    const { message } = delivery;
    const { names, metrics, logger } = this.deps;
    const origin = originOf(message, names);
    // Bounded in the log too: a body of a million unknown fields has a reason of ten megabytes.
    const said = utf8Prefix(reason, REASON_BYTES);
    let failed: unknown;
    const copy = () =>
      this.publishCopy(delivery, names.dlx, origin.routingKey, {
        // Everything that says where it came from (correlation id, app, timestamp, encoding…) stays.
        properties: { ...copiedProperties(message), persistent: true },
        headers: { [DeadLetterHeader.Reason]: said, [DeadLetterHeader.Code]: code },
        // The dead-letter queue gone (deleted by hand): the broker would confirm a copy it routed nowhere.
        mandatory: true,
      });
    /** The dead-letter queue or exchange was found missing: a reject would go into nothing too. */
    let queueMissing = false;
    const copied = await copy()
      .catch(async (error: unknown) => {
        // The exchange gone, the broker closes the publish channel rather than return the copy. It is the
        // queues' own dead-letter exchange too: rejected, the message would be dropped. (The deliveries
        // exchange gone, for a publish beside it, is not to be declared here.)
        if (!isWarrenError(error, ErrorCode.Unroutable) && !exchangeMissing(error, names.dlx)) throw error;
        queueMissing = true;
        logger.warn(
          { queue: names.dead, exchange: names.dlx },
          'dead-letter queue or exchange missing; declaring the topology again',
        );
        await this.redeclare();
        return copy();
      })
      .catch((error: unknown) => {
        failed = error;
        return true;
      });
    // A delivery whose channel went (the connection dropped) was requeued by the broker: it is dead-lettered
    // when it comes back, not twice.
    if (!copied) return;
    if (failed !== undefined && queueMissing) {
      // The copy still failed after declaring again (a declaration already under way began before the
      // queue went, or the broker failed it): a reject would go into nothing. It comes back after a pause.
      logger.error(
        { queue: names.dead, code, err: errorMessage(failed) },
        'dead letter not taken after declaring the topology again; message requeued',
      );
      await sleep(REQUEUE_PAUSE_MS);
      delivery.requeue();
      return;
    }
    metrics.deadLetters.inc({ code });
    // An outcome of events only: a membership change set aside shows in dead_letters_total alone.
    if (origin.exchange !== names.membership) metrics.events.inc({ outcome: 'dead_lettered' });
    logger.warn({ code, reason: said, routingKey: origin.routingKey }, 'message dead-lettered');
    if (failed === undefined) {
      delivery.ack();
    } else {
      // The queue's own dead-letter exchange still takes it, without the reason header.
      logger.warn({ err: errorMessage(failed) }, 'dead-letter publish failed; rejecting');
      delivery.reject();
    }
  }
}

/** What a copy keeps of a message's headers: all but DROPPED_HEADERS. */
function copiedHeaders(message: ConsumeMessage): Record<string, unknown> {
  const headers: Record<string, unknown> = { ...(message.properties.headers ?? {}) };
  for (const name of DROPPED_HEADERS) delete headers[name];
  return headers;
}

/**
 * What a copy keeps of a message's properties. Not `userId` (the broker checks it against the connection's
 * own user) nor `expiration` (the copy has its own).
 */
function copiedProperties(message: ConsumeMessage): Options.Publish {
  const p = message.properties;
  const kept: Options.Publish = {
    contentType: p.contentType as string | undefined,
    contentEncoding: p.contentEncoding as string | undefined,
    messageId: p.messageId as string | undefined,
    correlationId: p.correlationId as string | undefined,
    type: p.type as string | undefined,
    appId: p.appId as string | undefined,
    timestamp: p.timestamp as number | undefined,
    priority: p.priority as number | undefined,
    persistent: p.deliveryMode === 2,
  };
  return Object.fromEntries(Object.entries(kept).filter(([, v]) => v !== undefined)) as Options.Publish;
}

/** The longest start of `text` that is at most `bytes` bytes of UTF-8, cut between characters. */
function utf8Prefix(text: string, bytes: number): string {
  if (Buffer.byteLength(text) <= bytes) return text;
  let used = 0;
  let end = 0;
  // By code point: a surrogate pair is one character of four bytes.
  for (const char of text) {
    const size = Buffer.byteLength(char);
    if (used + size > bytes) break;
    used += size;
    end += char.length;
  }
  return text.slice(0, end);
}
