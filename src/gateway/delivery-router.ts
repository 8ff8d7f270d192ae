import roaring from 'roaring';
import type { Delivery } from '../broker/consumer.js';
import { ControlMessage, DeliveryHeader, isProbe } from '../protocol/delivery.js';
import { FrameErrorCode } from '../protocol/frames.js';
import { isValidId, nodeKey, parseUserKey, userKey } from '../protocol/ids.js';
import { JOB_ID_PATTERN } from '../protocol/schemas.js';
import { errorMessage } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import { encodeFrame, eventFrame } from './frames.js';
import type { GatewayMetrics, PayloadUnavailableReason, RefusalReason } from './gateway-metrics.js';
import type { DeliveryHistory } from './history.js';
import type { PayloadFetcher } from './payload-fetcher.js';
import { isPortableBitmap } from './portable-bitmap.js';
import type { RecentDeliveries } from './recent-deliveries.js';
import type { ConnectionRegistry, UserEntry } from './registry.js';
import { SlicedWriter } from './sliced-writer.js';
import { endIfRevoked, type Tab } from './tab.js';

const { RoaringBitmap32 } = roaring;
/** What every node's key starts with (`n.`). */
const NODE_KEY_PREFIX = nodeKey('');

/** A user named by its key, `u.<tenant>.<user>`. */
export interface UserTarget {
  key: string;
  tenantId: string;
  userId: string;
}

interface Target {
  key: string;
  /** The user's bit in the tenant's id map, when announced (how the dedup window keeps large events). */
  bit: number | undefined;
  tabs: Tab[];
}

/**
 * A delivery's place in one user's line: its frame and tabs once known. A claim-checked delivery takes its
 * place when it arrives and is filled in once its payload is read.
 */
interface Place {
  /** The delivery's offset on this node, given on arrival: lines are written out in offset order. */
  offset: number;
  ready: boolean;
  frame?: Uint8Array;
  tabs?: Tab[];
  /** Queued behind an earlier place of its user (counted against the node's line limit). */
  queued?: boolean;
  /** Its delivery's ack, held while the lines were over their limit: released once every place is written. */
  held?: HeldAck;
}

/** An ack held until `left` reaches zero: one for each queued place, one for the delivery's own work. */
interface HeldAck {
  left: number;
  delivery: Pick<Delivery, 'ack'>;
}

const release = (held: HeldAck): void => {
  if (--held.left === 0) held.delivery.ack();
};

/**
 * The routing key and the CC header's keys, each once (a key named twice is one recipient, whose tabs get
 * the event once); an entry that is not a string is undefined (refused later).
 */
function recipientKeys(routingKey: string, cc: unknown): (string | undefined)[] {
  if (!Array.isArray(cc)) return [routingKey];
  const keys = new Set<string | undefined>([routingKey]);
  const refused: undefined[] = [];
  for (const raw of cc as unknown[]) {
    const key = Buffer.isBuffer(raw) ? raw.toString() : raw;
    if (typeof key === 'string') keys.add(key);
    else refused.push(undefined);
  }
  return [...keys, ...refused];
}

/**
 * The keys of this node's users among a node-routed delivery's recipients: users of the delivery's tenant
 * held here whose bit is in the bitmap. Walks whichever side is smaller. Undefined when the header is not
 * a well-formed bitmap. `bits` is scratch space, overwritten by each call (one bitmap per router, not one per
 * delivery).
 */
function localKeysByBit(
  header: unknown,
  local: ReadonlyMap<number, UserEntry<Tab>> | undefined,
  bits: InstanceType<typeof RoaringBitmap32>,
): string[] | undefined {
  if (!Buffer.isBuffer(header) || header.length === 0) return undefined;
  // Checked before roaring reads it: CRoaring trusts what the bytes say of their own shape, and one whose
  // counts disagree with its bits corrupts the node's memory when listed.
  if (!isPortableBitmap(header)) return undefined;
  try {
    bits.deserialize(header, 'portable');
  } catch {
    return undefined;
  }
  const keys: string[] = [];
  if (!local) return keys;
  if (bits.size <= local.size) {
    for (const bit of bits.toUint32Array()) {
      const entry = local.get(bit);
      if (entry) keys.push(entry.key);
    }
  } else {
    for (const [bit, entry] of local) if (bits.has(bit)) keys.push(entry.key);
  }
  return keys;
}

/**
 * Whether a delivery's routing key is one a resolver publishes it with: a node's key when node-routed, a
 * user key of its own tenant when user-routed. The routing key is what the broker checked against the
 * publisher's topic permission; the keys in CC are not checked (RabbitMQ before 4.0), so an account
 * confined to one tenant's user keys (as the README gives a service that revokes users) could otherwise
 * name another tenant in the headers and reach that tenant's tabs through CC.
 */
function routedAsPublished(routingKey: string, tenantId: string, byBit: boolean): boolean {
  if (byBit) return routingKey.startsWith(NODE_KEY_PREFIX);
  return parseUserKey(routingKey)?.tenantId === tenantId;
}

/** Whether node-routed bits read from the Redis server of a stamp are this node's bits. */
export interface IdMapCheck {
  /** `stamp`: the delivery's `DeliveryHeader.IdMap`, undefined when it has none. */
  accepts(stamp: string | undefined): boolean;
  /** A delivery was dropped for its stamp (its users are told they missed events). */
  dropped(): void;
}

const ANY_ID_MAP: IdMapCheck = { accepts: () => true, dropped: () => {} };

/**
 * Writes each delivery of the node's queue to the local tabs of its recipients, and to no other tab.
 * Recipients are the users of the delivery's tenant whose bits are in the recipients header (node-routed),
 * or the routing key plus the CC header (user-routed). Before writing, every key is checked again
 * (defence in depth; the resolver already decided): it must parse as `u.<tenant>.<user>`, its tenant must
 * be the delivery's tenant, and each tab's token must name that same tenant and user.
 */
export class DeliveryRouter {
  private readonly writer = new SlicedWriter((tabs) => this.metrics.tabWrites.inc(tabs));
  private readonly recipientBits = new RoaringBitmap32();
  /**
   * Per user key, while a claim-checked delivery to that user is having its payload read: the deliveries
   * to the user that arrived from then on, in order. Each user sees events in the order the node received
   * them; users with nothing being read (the usual case) are written to at once.
   */
  private readonly lines = new Map<string, Place[]>();
  /** Places queued behind an earlier one, over all lines. */
  private queued = 0;
  /** Callers holding deliveries back (`pause`); while any does, deliveries wait in `waiting`, unacked. */
  private pauses = 0;
  /** Probes waited for, by message id (see `whenProbe`). */
  private readonly probesAwaited = new Map<string, () => void>();
  private waiting: Delivery[] = [];

  constructor(
    private readonly registry: ConnectionRegistry<Tab>,
    private readonly recent: RecentDeliveries,
    private readonly history: DeliveryHistory,
    private readonly payloads: PayloadFetcher,
    private readonly metrics: GatewayMetrics,
    private readonly logger: Logger,
    /**
     * Places the lines may hold queued before deliveries queuing more are no longer acked until written:
     * under it a slow payload read holds up only its own users; over it (Redis stalled, say) the prefetch
     * window fills and the node stops taking deliveries instead of piling them up in memory.
     */
    private readonly lineLimit = Number.POSITIVE_INFINITY,
    /**
     * Node-routed deliveries name users by bits of an id map that a Redis failover may have reassigned: one
     * whose bits come from another server than this node's (a backlog from before the failover, a resolver
     * that has not noticed it yet) would reach whoever holds those bits here now, and is dropped.
     */
    private readonly idMap: IdMapCheck = ANY_ID_MAP,
  ) {}

  /** Whether a node-routed delivery's bits are this node's bits. */
  private bitsAreOurs(stamp: unknown): boolean {
    if (stamp === undefined) return this.idMap.accepts(undefined);
    const text = Buffer.isBuffer(stamp) ? stamp.toString() : stamp;
    return typeof text === 'string' && this.idMap.accepts(text);
  }

  /**
   * Holds every delivery back until `resume`d as many times: they wait here in arrival order, unacked, so
   * the node's prefetch window bounds them. For when the node may have missed a revocation (its queue lost
   * or overflowing) and reads them from Redis before writing anything more to its tabs.
   */
  pause(): void {
    this.pauses += 1;
  }

  resume(): void {
    if (this.pauses === 0 || --this.pauses > 0) return;
    const waiting = this.waiting;
    this.waiting = [];
    for (const delivery of waiting) {
      // One whose channel closed while it waited was requeued by the broker, and comes again.
      if (!delivery.live) continue;
      try {
        this.handle(delivery);
      } catch (error) {
        // As the consumer does with a handler that throws: rejected (dead-lettered), not left holding a
        // prefetch slot, and the rest still handled.
        this.logger.error(
          { err: errorMessage(error), messageId: delivery.message.properties.messageId },
          'delivery handler threw; message rejected',
        );
        delivery.reject();
      }
    }
  }

  handle(delivery: Delivery): void {
    if (this.pauses > 0) {
      this.waiting.push(delivery);
      return;
    }
    const { message } = delivery;
    const headers = message.properties.headers ?? {};
    if (headers[DeliveryHeader.Control] !== undefined) return this.control(delivery, headers);
    this.metrics.deliveries.inc();
    const tenantId: unknown = headers[DeliveryHeader.Tenant];
    const eventId: unknown = message.properties.messageId;
    const eventType: unknown = message.properties.type;
    const jobId: unknown = headers[DeliveryHeader.Job];
    const byBit = headers[DeliveryHeader.Recipients];
    if (
      !isValidId(tenantId) ||
      typeof eventId !== 'string' ||
      typeof eventType !== 'string' ||
      (jobId !== undefined && (typeof jobId !== 'string' || !JOB_ID_PATTERN.test(jobId)))
    ) {
      this.refuse('malformed', 1);
      this.logger.error(
        { routingKey: message.fields.routingKey },
        'delivery without tenant, id or type, or with a malformed job id, dropped',
      );
      delivery.ack();
      return;
    }
    if (!routedAsPublished(message.fields.routingKey, tenantId, byBit !== undefined)) {
      this.refuse('tenant_mismatch', 1);
      this.logger.error(
        { routingKey: message.fields.routingKey, tenantId, eventId },
        'delivery whose routing key is not its tenant’s (nor, node-routed, a node’s) refused',
      );
      delivery.ack();
      return;
    }
    const stamp: unknown = headers[DeliveryHeader.IdMap];
    if (byBit !== undefined && !this.bitsAreOurs(stamp)) {
      this.idMap.dropped();
      delivery.ack();
      return;
    }
    // Decoded once: for a claim-checked event the keys are looked at before and after the fetch.
    const keys =
      byBit === undefined
        ? recipientKeys(message.fields.routingKey, headers['CC'])
        : localKeysByBit(byBit, this.registry.usersByBit(tenantId), this.recipientBits);
    if (keys === undefined) {
      this.refuse('malformed', 1);
      this.logger.error(
        { routingKey: message.fields.routingKey, eventId },
        'unreadable recipients header, dropped',
      );
      delivery.ack();
      return;
    }
    if (jobId === undefined) {
      const targets = this.targets(tenantId, eventId, keys);
      if (targets.length === 0) return delivery.ack();
      const offset = this.history.next(tenantId);
      const frame = this.record(tenantId, eventId, eventType, message.content, targets, offset);
      this.send(frame, offset, targets, delivery);
      return;
    }
    // Its local recipients (tabs open or in grace) take their places in line now, and the event its
    // offset: each tab sees offsets increase, so a resume from the last one seen misses nothing.
    // A user of another tenant is refused now, and takes no place: its line would hold its own tenant's
    // deliveries behind this one, and welcome its new tabs at this tenant's offsets.
    const ours = this.withoutStrays(tenantId, eventId, keys);
    const local = new Set<string>();
    for (const key of ours) if (key !== undefined && this.registry.entry(key)) local.add(key);
    // No local tab among the recipients (they left since the resolver looked): no reason to read Redis,
    // and no offset taken (as inline: offsets count deliveries to this node's tabs).
    if (local.size === 0) {
      delivery.ack();
      return;
    }
    const offset = this.history.next(tenantId);
    const places = new Map<string, Place>();
    const behind: Place[] = [];
    for (const key of local) {
      const place: Place = { offset, ready: false };
      places.set(key, place);
      const line = this.lines.get(key);
      if (line) {
        line.push(place);
        behind.push(place);
      } else this.lines.set(key, [place]);
    }
    // Acked once read and filled in; and, if it queued over the limit, once its queued places are written.
    const held = this.hold(behind, delivery);
    // Deliveries to other users go on while the payload is read. Recipients are worked out once it is
    // here, so tabs that closed meanwhile are skipped and a copy of the same event that arrived meanwhile
    // (a redelivery) finds this one recorded and is not written twice.
    // Acked however it ends: a throw after the fetch must neither leave the message holding a prefetch
    // slot nor become an unhandled rejection (which would end the process).
    let fetching: Promise<Uint8Array | undefined>;
    try {
      fetching = this.payloads.get(tenantId, jobId);
    } catch (error) {
      this.fill(places, [], undefined);
      throw error;
    }
    // Node-routed, the recipients are bits: a user moved off one while the payload was read (the heartbeat
    // found the id map changed after a failover) must not get the event meant for the bit's new holder,
    // nor anyone, once this node's bits come from another server than the delivery's.
    const stillHeld = (): readonly (string | undefined)[] => {
      if (byBit === undefined) return ours;
      if (!this.bitsAreOurs(stamp)) {
        this.idMap.dropped();
        return [];
      }
      const now = new Set(localKeysByBit(byBit, this.registry.usersByBit(tenantId), this.recipientBits));
      return ours.filter((key) => key !== undefined && now.has(key));
    };
    void fetching
      .then(
        (payload) => {
          const targets = this.targets(tenantId, eventId, stillHeld());
          if (!payload)
            return this.fill(
              places,
              targets,
              this.unavailable(tenantId, eventId, jobId, offset, targets, 'missing'),
            );
          const frame =
            targets.length > 0
              ? this.record(tenantId, eventId, eventType, payload, targets, offset)
              : undefined;
          this.fill(places, targets, frame);
        },
        (error: unknown) => {
          const targets = this.targets(tenantId, eventId, stillHeld());
          const detail = errorMessage(error);
          this.fill(
            places,
            targets,
            this.unavailable(tenantId, eventId, jobId, offset, targets, 'fetch_failed', detail),
          );
        },
      )
      .catch((error: unknown) => {
        this.logger.error({ err: errorMessage(error), eventId, jobId }, 'claim-checked delivery failed');
        // Never left holding its users' lines.
        this.fill(places, [], undefined);
      })
      .finally(() => release(held));
  }

  /**
   * A control message (DeliveryHeader.Control). `revoke` closes, with 4001, the tabs here of the one user
   * its routing key names, of the tenant both the key and the tenant header name, whose tokens were issued
   * up to the revocation (a tab opened since with a new token stays). Tabs still waiting for their welcome
   * are closed too: their user's key was bound before the revocation was written, or they find it in
   * Redis themselves. Anything else is refused as malformed. Acked either way, never retried.
   */
  private control(delivery: Delivery, headers: Record<string, unknown>): void {
    if (isProbe(headers)) this.probeArrived(delivery.message.properties.messageId);
    this.applyControl(delivery.message.fields.routingKey, headers);
    delivery.ack();
  }

  /**
   * Resolves once the probe of message id `id` comes through the node's queue: every delivery the queue
   * held before it has been taken by then (the queue is in order, and held back while paused, the probe
   * waits with the rest), though a claim-checked one may still be having its payload read (`holdsFor`).
   * `forgetProbe` when given up.
   */
  whenProbe(id: string): Promise<void> {
    return new Promise((resolve) => this.probesAwaited.set(id, resolve));
  }

  forgetProbe(id: string): void {
    this.probesAwaited.delete(id);
  }

  private probeArrived(id: unknown): void {
    if (typeof id !== 'string') return;
    this.probesAwaited.get(id)?.();
    this.probesAwaited.delete(id);
  }

  /**
   * The user a revocation's message names when the node's full queue dropped it (dead-lettered to its
   * dropped queue) before the node took it; undefined for anything else. Its routing key there is the
   * dropped queue's; the one it was published with is in `x-death`, a header its publisher can write too
   * (RabbitMQ keeps an entry that names the same queue and reason, routing keys and all): a service allowed
   * only its own tenant's keys could name another tenant's user. So what it names is only where to look:
   * the node acts on the revocation Redis holds for that user (`closeRevoked`), never on the message's word.
   */
  droppedRevocation(headers: Record<string, unknown>): UserTarget | undefined {
    if (headers[DeliveryHeader.Control] === undefined) return undefined;
    const deaths = headers['x-death'];
    // The most recent first: it was dropped here once (a dropped queue's messages are not dead-lettered).
    const death: unknown = Array.isArray(deaths) ? deaths[0] : undefined;
    const keys = (death as { 'routing-keys'?: unknown } | undefined)?.['routing-keys'];
    const key: unknown = Array.isArray(keys) ? keys[0] : undefined;
    return this.revocationOf(
      Buffer.isBuffer(key) ? key.toString() : typeof key === 'string' ? key : '',
      headers,
    );
  }

  /**
   * The keys of this node's users a dropped delivery was for (the node's queue was full, or a handler
   * threw), so that only their tabs are told they missed events, not every tab of every tenant here (which
   * would tell each user how much the node dropped for the others). Undefined when the message does not
   * say (every tab is told). A control message carried no event: nobody.
   *
   * The keys come from `x-death`, which a message's publisher can write too (RabbitMQ keeps an entry that
   * names the same queue and reason): only keys of the delivery's own tenant count, so a forged list can
   * only tell that tenant's users of a loss they did not have, or leave its own recipients untold.
   */
  droppedRecipients(headers: Record<string, unknown>): ReadonlySet<string> | undefined {
    if (headers[DeliveryHeader.Control] !== undefined) return new Set();
    const tenantId: unknown = headers[DeliveryHeader.Tenant];
    if (!isValidId(tenantId)) return undefined;
    const byBit = headers[DeliveryHeader.Recipients];
    if (byBit !== undefined) {
      // Bits read from another Redis server mean other users here: everyone is told.
      if (!this.bitsAreOurs(headers[DeliveryHeader.IdMap])) return undefined;
      const keys = localKeysByBit(byBit, this.registry.usersByBit(tenantId), this.recipientBits);
      return keys && new Set(keys);
    }
    const deaths = headers['x-death'];
    const death: unknown = Array.isArray(deaths) ? deaths[0] : undefined;
    const keys = (death as { 'routing-keys'?: unknown } | undefined)?.['routing-keys'];
    if (!Array.isArray(keys)) return undefined;
    const local = new Set<string>();
    for (const raw of keys as unknown[]) {
      const key = Buffer.isBuffer(raw) ? raw.toString() : raw;
      if (typeof key !== 'string' || parseUserKey(key)?.tenantId !== tenantId) continue;
      if (this.registry.entry(key)) local.add(key);
    }
    return local;
  }

  private applyControl(routingKey: string, headers: Record<string, unknown>): void {
    const user = this.revocationOf(routingKey, headers);
    if (user) this.closeRevoked(user.key, Number(headers[DeliveryHeader.RevokedAt]));
  }

  /** The user a revocation's message names, or undefined (counted and logged) for anything else. */
  private revocationOf(routingKey: string, headers: Record<string, unknown>): UserTarget | undefined {
    // The node's own check of its bindings (BindingCheck): it got here, so they are there.
    if (isProbe(headers)) return undefined;
    const raw = headers[DeliveryHeader.Control];
    const kind = Buffer.isBuffer(raw) ? raw.toString() : raw;
    const at = Number(headers[DeliveryHeader.RevokedAt]);
    const user = parseUserKey(routingKey);
    if (
      kind !== ControlMessage.Revoke ||
      !Number.isFinite(at) ||
      user === undefined ||
      user.tenantId !== headers[DeliveryHeader.Tenant]
    ) {
      this.refuse('malformed', 1);
      this.logger.error(
        { routingKey, control: typeof kind === 'string' ? kind.slice(0, 40) : typeof kind },
        'control message not understood, dropped',
      );
      return undefined;
    }
    return { key: routingKey, tenantId: user.tenantId, userId: user.userId };
  }

  /**
   * Closes, with 4001, the tabs here of the user of `key` (a user key) whose tokens were issued up to
   * `revokedAt`; none when it is undefined.
   */
  closeRevoked(key: string, revokedAt: number | undefined): void {
    const user = parseUserKey(key);
    if (user === undefined) return;
    let closed = 0;
    for (const tab of [...(this.registry.entry(key)?.tabs ?? [])])
      if (tab.tenantId === user.tenantId && tab.userId === user.userId && endIfRevoked(tab, revokedAt))
        closed += 1;
    if (closed > 0) this.logger.info({ tabs: closed }, 'tabs closed: their user’s tokens were revoked');
  }

  /**
   * Counts places queued behind earlier ones against the line limit, and returns the delivery's ack with
   * one count for the caller's own work: while the lines are over their limit, the queued places hold it
   * too, so the delivery keeps its prefetch slot until they are written.
   */
  private hold(behind: readonly Place[], delivery: Pick<Delivery, 'ack'>): HeldAck {
    const held: HeldAck = { left: 1, delivery };
    this.queued += behind.length;
    const over = this.queued > this.lineLimit;
    for (const place of behind) {
      place.queued = true;
      if (over) {
        place.held = held;
        held.left += 1;
      }
    }
    return held;
  }

  /** A place leaves its line (written, or found empty). */
  private letThrough(place: Place): void {
    if (place.queued) this.queued -= 1;
    if (place.held) release(place.held);
  }

  /**
   * The offset to welcome a new tab of `key` at. Everything to the user up to it is in history (a resume
   * from it misses nothing); what is still in the user's line (behind a claim-checked payload being read)
   * has higher offsets and reaches the tab live once it is `adopt`ed. Welcoming at the node's latest
   * offset instead would let a tab's cursor pass an event that is recorded only later, when its payload
   * arrives: a resume from that cursor would never replay it.
   */
  welcomeOffset(tenantId: string, key: string): number {
    const line = this.lines.get(key);
    return line ? (line[0] as Place).offset - 1 : this.history.offset(tenantId);
  }

  /**
   * Writes `frames` to one tab, in order, behind whatever is still waiting for it, sharing the per-turn
   * slice with live deliveries (every replayed byte counts, small frames too): a wave of tabs resuming with
   * megabytes of history each does not stall the node (its other deliveries, pings and heartbeat) while it
   * is copied into their sockets.
   */
  writeTo(tab: Tab, frames: readonly Uint8Array[]): void {
    this.writer.writeAll(tab, frames);
  }

  /**
   * Whether deliveries for the user are still on their way to its tabs here: held back while paused, or in
   * its line (a claim-checked payload being read, or an earlier one's).
   */
  holdsFor(key: string): boolean {
    return this.pauses > 0 || this.lines.has(key);
  }

  /** Bytes held back for a tab by the per-turn slice, not yet in its socket, and the largest frame. */
  heldFor(tab: Tab): { bytes: number; largest: number } {
    return this.writer.held(tab);
  }

  /**
   * A tab just welcomed (ready): it gets what is in its user's line with the user's other tabs. Deliveries
   * still being read pick it up when they are filled; those already filled, or queued behind, take it now.
   */
  adopt(tab: Tab): void {
    const line = this.lines.get(tab.key);
    if (!line) return;
    for (const place of line) if (place.tabs && !place.tabs.includes(tab)) place.tabs.push(tab);
  }

  /** The keys less those of users held here of another tenant than the delivery's, each refused. */
  private withoutStrays(
    tenantId: string,
    eventId: string,
    keys: readonly (string | undefined)[],
  ): readonly (string | undefined)[] {
    // Every key held here is a well-formed user key (the registry holds only those): a prefix says whose.
    const ours = userKey(tenantId, '');
    const stray = (key: string | undefined): key is string =>
      key !== undefined && !key.startsWith(ours) && this.registry.entry(key) !== undefined;
    if (!keys.some(stray)) return keys;
    return keys.filter((key) => {
      if (!stray(key)) return true;
      this.strayRecipient(key, tenantId, eventId);
      return false;
    });
  }

  private strayRecipient(key: string, tenantId: string, eventId: string): void {
    this.refuse('tenant_mismatch', 1);
    this.logger.error({ key, tenantId, eventId }, 'recipient outside the delivery tenant refused');
  }

  private targets(tenantId: string, eventId: string, keys: readonly (string | undefined)[]): Target[] {
    const already = this.recent.delivered(tenantId, eventId);
    const targets: Target[] = [];
    for (const key of keys) {
      if (key === undefined) {
        this.refuse('bad_key', 1);
        continue;
      }
      const entry = this.registry.entry(key);
      if (!entry) continue;
      const parts = parseUserKey(key);
      if (!parts) {
        this.refuse('bad_key', 1);
        continue;
      }
      if (parts.tenantId !== tenantId) {
        this.strayRecipient(key, tenantId, eventId);
        continue;
      }
      if (already?.has({ key, bit: entry.bit })) {
        this.metrics.duplicates.inc();
        continue;
      }
      const tabs: Tab[] = [];
      for (const tab of entry.tabs) {
        if (!tab.ready || tab.closed) continue;
        if (tab.tenantId !== parts.tenantId || tab.userId !== parts.userId) {
          this.refuse('identity_mismatch', 1);
          continue;
        }
        tabs.push(tab);
      }
      targets.push({ key, bit: entry.bit, tabs });
    }
    return targets;
  }

  /** The event's frame, with its offset; recorded as delivered to the targets (for dedup and resume). */
  private record(
    tenantId: string,
    eventId: string,
    eventType: string,
    data: Uint8Array,
    targets: Target[],
    offset: number,
  ): Uint8Array {
    const frame = eventFrame(eventId, eventType, offset, data);
    const keys = targets.map((target) => target.key);
    // Recorded before the last slice is written: a redelivery meanwhile must not write it again.
    this.recent.record(tenantId, eventId, targets);
    this.history.add(tenantId, offset, keys, frame);
    return frame;
  }

  /**
   * Writes a frame to the targets' tabs now, or behind what is still in line for their user. The delivery
   * is acked at once, or, while the lines are over their limit, once none of its places waits any more (see
   * `hold`).
   */
  private send(
    frame: Uint8Array,
    offset: number,
    targets: readonly Target[],
    delivery: Pick<Delivery, 'ack'>,
  ): void {
    const now: Tab[] = [];
    // Only when a recipient has a line (rare): the usual delivery allocates nothing for it.
    let behind: Place[] | undefined;
    for (const target of targets) {
      const line = this.lines.get(target.key);
      if (line) {
        const place: Place = { offset, ready: true, frame, tabs: target.tabs };
        line.push(place);
        (behind ??= []).push(place);
      } else for (const tab of target.tabs) now.push(tab);
    }
    if (now.length > 0) this.writer.write(now, frame);
    if (!behind) return delivery.ack();
    // Its own count last: no line can release it before every place is queued.
    release(this.hold(behind, delivery));
  }

  /**
   * Fills in a claim-checked delivery's places (`frame` for its targets; nothing for recipients that
   * turned out not to be written to), then writes whatever is at the head of those users' lines. Targets
   * that had no place (their first tab came after the delivery did) get the frame with the others.
   */
  private fill(
    places: ReadonlyMap<string, Place>,
    targets: readonly Target[],
    frame: Uint8Array | undefined,
  ): void {
    const latecomers: Tab[] = [];
    if (frame) {
      for (const target of targets) {
        const place = places.get(target.key);
        if (place) {
          place.frame = frame;
          place.tabs = target.tabs;
        } else {
          latecomers.push(...target.tabs);
        }
      }
    }
    const batches = new Map<Uint8Array, { offset: number; tabs: Tab[] }>();
    for (const [key, place] of places) {
      place.ready = true;
      const line = this.lines.get(key);
      if (!line) continue;
      while (line.length > 0 && (line[0] as Place).ready) {
        const head = line.shift() as Place;
        this.letThrough(head);
        if (!head.frame || !head.tabs) continue;
        const batch = batches.get(head.frame);
        if (batch) batch.tabs.push(...head.tabs);
        else batches.set(head.frame, { offset: head.offset, tabs: [...head.tabs] });
      }
      if (line.length === 0) this.lines.delete(key);
    }
    if (frame && latecomers.length > 0) {
      const batch = batches.get(frame);
      if (batch) batch.tabs.push(...latecomers);
      else batches.set(frame, { offset: (places.values().next().value as Place).offset, tabs: latecomers });
    }
    // One write per frame, in offset (arrival) order: every user's line is in that order, so each tab
    // gets its frames in it too, whichever line a frame was first met in.
    const ordered = [...batches].sort(([, a], [, b]) => a.offset - b.offset);
    for (const [batchFrame, { tabs }] of ordered) this.writer.write(tabs, batchFrame);
  }

  /**
   * Counts and logs a payload that could not be read; returns the error frame for the targets' tabs, and
   * keeps it in history at the event's offset: a tab of theirs that was reconnecting (between a reload's
   * two pages, say) gets it with its resume, instead of a silent gap at that offset. A payload gone
   * (`missing`) is recorded as the event's delivery: a second copy of the event (the resolver published it
   * twice) would find it gone too, and writes no second error. A read that failed (Redis timed out or
   * refused) is not: a later copy may read the payload, and the client shows that event (it keeps the ids
   * it was told payload_unavailable of apart from the events it showed).
   */
  private unavailable(
    tenantId: string,
    eventId: string,
    jobId: string,
    offset: number,
    targets: Target[],
    reason: PayloadUnavailableReason,
    detail?: string,
  ): Uint8Array {
    this.metrics.payloadUnavailable.inc({ reason });
    const tabs = targets.flatMap((target) => target.tabs);
    const frame = encodeFrame({
      type: 'error',
      code: FrameErrorCode.PayloadUnavailable,
      message: `the payload of event ${eventId} is no longer available`,
      id: eventId,
    });
    this.logger.error(
      { tenantId, eventId, jobId, reason, tabs: tabs.length, ...(detail ? { err: detail } : {}) },
      'claim-checked payload unavailable; tabs sent payload_unavailable',
    );
    const bytes = Buffer.from(frame);
    if (reason === 'missing') this.recent.record(tenantId, eventId, targets);
    if (targets.length > 0)
      this.history.add(
        tenantId,
        offset,
        targets.map((target) => target.key),
        bytes,
      );
    return bytes;
  }

  private refuse(reason: RefusalReason, count: number): void {
    this.metrics.refused.inc({ reason }, count);
  }
}
