import { userKey } from '../protocol/ids.js';
import { errorMessage } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import { PerKeyThrottle } from '../shared/throttle.js';

/**
 * How often each kind of failed presence step is logged: with Redis away or refusing, every user's step and
 * each of its retries fails (every grace period, every beat), and a line for each would bury the log.
 */
const FAILURE_LOG_MS = 10_000;

/** What the registry needs of a tab. */
export interface RegisteredTab {
  readonly id: string;
  readonly tenantId: string;
  readonly userId: string;
  readonly key: string;
  readonly closed: boolean;
}

/** Binds and unbinds a user's routing key to this node's queue. */
export interface KeyBinder {
  bind(key: string): Promise<void>;
  unbind(key: string): Promise<void>;
}

/** Announces a user online/offline on this node. */
export interface PresenceAnnouncer {
  online(tenantId: string, userIds: readonly string[]): Promise<number[]>;
  offline(tenantId: string, bit: number): Promise<void>;
}

export interface RegistryHooks {
  onUsersChanged(count: number): void;
}

export class UserEntry<T extends RegisteredTab> {
  readonly tabs = new Set<T>();
  bound = false;
  /**
   * Its unbind failed (the broker away when the grace period ended): the key may still be bound, so the
   * entry stays until an unbind succeeds, retried once the broker is back and after every grace period.
   */
  stray = false;
  /**
   * Position in the tenant's id map, once announced; kept through the grace period (a reload resumes from
   * the history node-routed deliveries still recorded for the user meanwhile).
   */
  bit: number | undefined;
  /** Announced online (a tab is open). */
  online = false;
  /** Bits this node announced for the user and must still take back (their offline calls failed). */
  readonly offlineDue = new Set<number>();
  /** A repair step is queued (see `ConnectionRegistry.repair`). */
  repairing = false;
  graceTimer: NodeJS.Timeout | undefined;
  /** Serialises this user's bind/unbind/presence steps so they never interleave. */
  chain: Promise<void> = Promise.resolve();
  /**
   * Serialises the broker operations on the user's key (binds and unbinds) among themselves, apart from
   * `chain`: a rebind after a reconnect must keep its order with a release's unbind, without waiting
   * behind presence steps stuck on Redis.
   */
  bindings: Promise<void> = Promise.resolve();

  constructor(
    readonly key: string,
    readonly tenantId: string,
    readonly userId: string,
  ) {}
}

/**
 * user → tabs on this node. The first tab of a user binds `u.<tenant>.<user>` and announces the user online
 * before it may receive; later tabs of that user cost nothing. When the last tab closes the user goes
 * offline at once, but the key stays bound for a grace period, so a page reload costs no bind/unbind.
 */
export class ConnectionRegistry<T extends RegisteredTab> {
  private readonly users = new Map<string, UserEntry<T>>();
  /** tenant → bit → user, for the users held (tabs open or in grace; node-routed deliveries name them by bit). */
  private readonly byBit = new Map<string, Map<number, UserEntry<T>>>();
  private tabCount = 0;
  /** Set by `unbindAll` (the node is draining): no step is scheduled any more. */
  private closed = false;
  // Trailing: failures that stop (Redis back) are still counted in a last line.
  private readonly failures = new PerKeyThrottle(FAILURE_LOG_MS, true);

  constructor(
    private readonly binder: KeyBinder,
    private readonly presence: PresenceAnnouncer,
    private readonly graceMs: number,
    private readonly hooks: RegistryHooks,
    private readonly logger: Logger,
  ) {}

  get size(): number {
    return this.tabCount;
  }

  /** Logs a failed step of a user's, at most once per FAILURE_LOG_MS per kind, with how many failed since. */
  private failed(what: string, error: unknown, key: string): void {
    this.failures.tell(what, 1, (count) => this.logger.warn({ err: errorMessage(error), key, count }, what));
  }

  /** Users held: with a tab open, or in their unbind grace period (their key still bound). */
  get userCount(): number {
    return this.users.size;
  }

  /**
   * Users with a tab open here: online, as `warren status` counts per node. Counted when asked (a
   * heartbeat), not kept: one pass over the users, as every beat's `repair` makes.
   */
  get connectedUserCount(): number {
    let count = 0;
    for (const entry of this.users.values()) if (entry.tabs.size > 0) count += 1;
    return count;
  }

  /** The user's entry if any tab of it is here or its key is still bound. */
  entry(key: string): UserEntry<T> | undefined {
    return this.users.get(key);
  }

  /** This node's users of a tenant (tabs open or in grace), by their bit position in the tenant's id map. */
  usersByBit(tenantId: string): ReadonlyMap<number, UserEntry<T>> | undefined {
    return this.byBit.get(tenantId);
  }

  private setBit(entry: UserEntry<T>, bit: number | undefined): void {
    if (entry.bit !== undefined) {
      const bits = this.byBit.get(entry.tenantId);
      if (bits?.get(entry.bit) === entry) bits.delete(entry.bit);
      if (bits?.size === 0) this.byBit.delete(entry.tenantId);
    }
    entry.bit = bit;
    if (bit === undefined) return;
    let bits = this.byBit.get(entry.tenantId);
    if (!bits) {
      bits = new Map();
      this.byBit.set(entry.tenantId, bits);
    }
    bits.set(bit, entry);
  }

  /** Registers a tab; resolves once its user's key is bound and the user announced online. */
  async add(tab: T): Promise<void> {
    let entry = this.users.get(tab.key);
    if (!entry) {
      entry = new UserEntry<T>(userKey(tab.tenantId, tab.userId), tab.tenantId, tab.userId);
      this.users.set(entry.key, entry);
      this.hooks.onUsersChanged(this.users.size);
    }
    if (entry.graceTimer) {
      clearTimeout(entry.graceTimer);
      entry.graceTimer = undefined;
    }
    entry.tabs.add(tab);
    this.tabCount += 1;
    const ready = this.enqueue(entry, () => this.bringUp(entry));
    try {
      await ready;
    } catch (error) {
      this.remove(tab);
      throw error;
    }
  }

  /** Unregisters a tab (idempotent). */
  remove(tab: T): void {
    const entry = this.users.get(tab.key);
    if (!entry || !entry.tabs.delete(tab)) return;
    this.tabCount -= 1;
    if (entry.tabs.size > 0) return;
    void this.enqueue(entry, () => this.goOffline(entry)).catch(() => {});
    this.releaseLater(entry);
  }

  /** Unbinds the user's key after the grace period, unless a tab comes back first. */
  private releaseLater(entry: UserEntry<T>): void {
    if (this.closed) return;
    entry.graceTimer = setTimeout(() => {
      entry.graceTimer = undefined;
      void this.enqueue(entry, () => this.release(entry)).catch(() => {});
    }, this.graceMs);
    entry.graceTimer.unref();
  }

  /** Runs a broker operation on the user's key after the ones before it (see `UserEntry.bindings`). */
  private onKey(entry: UserEntry<T>, op: () => Promise<void>): Promise<void> {
    const next = entry.bindings.then(op);
    entry.bindings = next.catch(() => {});
    return next;
  }

  private enqueue(entry: UserEntry<T>, step: () => Promise<void>): Promise<void> {
    const next = entry.chain.then(step);
    entry.chain = next.catch(() => {});
    return next;
  }

  private async bringUp(entry: UserEntry<T>): Promise<void> {
    // Draining: its keys are being unbound (`unbindAll`), and its tabs closed.
    if (entry.tabs.size === 0 || this.closed) return;
    if (!entry.bound) {
      try {
        await this.onKey(entry, () => this.binder.bind(entry.key));
      } catch (error) {
        // The broker may have applied it before its reply was lost with the connection, and the queue
        // outlived the cut: unbound when the user goes, like a key whose unbind failed.
        entry.stray = true;
        throw error;
      }
      entry.bound = true;
      entry.stray = false;
    }
    if (!entry.online) await this.announce(entry);
  }

  private async goOffline(entry: UserEntry<T>): Promise<void> {
    if (entry.tabs.size > 0 || !entry.online || entry.bit === undefined) return;
    entry.online = false;
    entry.offlineDue.add(entry.bit);
    try {
      await this.takeBackBit(entry);
    } catch (error) {
      this.failed('presence offline failed; will retry', error, entry.key);
    }
  }

  /**
   * Marks the user offline under the bits it still owes (`offlineDue`); throws, keeping the rest owed, when
   * Redis fails. Left set, a bit would count its holder online here for as long as the node lives:
   * resolvers would keep routing their events to this node, and `warren status` count them.
   */
  private async takeBackBit(entry: UserEntry<T>): Promise<void> {
    for (const bit of [...entry.offlineDue]) {
      // Online under that bit here again (the user came back, or after a failover another user of this
      // node holds it now): it is rightly set.
      if (!this.byBit.get(entry.tenantId)?.get(bit)?.online) await this.presence.offline(entry.tenantId, bit);
      entry.offlineDue.delete(bit);
    }
  }

  private async release(entry: UserEntry<T>): Promise<void> {
    if (entry.tabs.size > 0) return;
    // Both tried, each whatever the other does: Redis away must not keep the key bound, nor the broker
    // away the bit set.
    let failed: unknown;
    if (entry.bound || entry.stray) {
      entry.bound = false;
      // Left bound, the key would draw the user's deliveries to this node's queue for as long as the queue
      // lives: kept as stray until an unbind succeeds (a tab coming back binds it again).
      entry.stray = true;
      try {
        await this.onKey(entry, () => this.binder.unbind(entry.key));
        entry.stray = false;
      } catch (error) {
        failed = error;
      }
    }
    try {
      await this.takeBackBit(entry);
    } catch (error) {
      failed ??= error;
    }
    if (failed !== undefined) {
      // Kept, and tried again once the broker is back (`rebindAll`), on heartbeats (`repair`, the bits)
      // and after every grace period.
      this.failed('releasing a user failed; will retry', failed, entry.key);
      if (entry.tabs.size === 0 && entry.graceTimer === undefined && this.users.get(entry.key) === entry)
        this.releaseLater(entry);
      return;
    }
    if (entry.tabs.size === 0 && entry.graceTimer === undefined && this.users.get(entry.key) === entry) {
      this.users.delete(entry.key);
      this.setBit(entry, undefined);
      this.hooks.onUsersChanged(this.users.size);
    }
  }

  /** Keys bound now (tabs open or in grace). */
  boundKeys(): string[] {
    const keys: string[] = [];
    for (const entry of this.users.values()) if (entry.bound) keys.push(entry.key);
    return keys;
  }

  /**
   * After a reconnect: tries again at once the unbinds that failed while the broker was away, and with
   * `keysLost` (the queue was lost, and its bindings with it) binds every held key again.
   */
  async rebindAll(keysLost: boolean): Promise<void> {
    const entries = [...this.users.values()];
    for (const entry of entries) {
      if (!entry.stray || entry.bound || entry.tabs.size > 0) continue;
      clearTimeout(entry.graceTimer);
      entry.graceTimer = undefined;
      void this.enqueue(entry, () => this.release(entry)).catch(() => {});
    }
    if (!keysLost) return;
    // In each key's own order of broker operations: a release at the end of a grace period must not be
    // overtaken by (or overtake) the bind, or the key could stay bound with no entry left to unbind it.
    const rebind = (e: UserEntry<T>): Promise<void> =>
      this.onKey(e, async () => {
        if (e.bound) await this.binder.bind(e.key);
      });
    // Keys with tabs whose first bind is in flight (not `bound` yet; it may have landed on the queue just
    // before it was lost) are bound again after it, but not waited for: a bind queued behind it waits for
    // the connection this rebind is part of setting up.
    for (const e of entries)
      if (!e.bound && e.tabs.size > 0)
        void rebind(e).catch((error: unknown) =>
          this.logger.warn(
            { err: errorMessage(error), key: e.key },
            'binding again after a queue loss failed',
          ),
        );
    await Promise.all(entries.filter((e) => e.bound).map(rebind));
  }

  /** Announces every user with open tabs online again (after this node had been declared dead). */
  async reannounce(): Promise<void> {
    const byTenant = new Map<string, UserEntry<T>[]>();
    for (const entry of this.users.values()) {
      if (entry.tabs.size === 0) continue;
      const list = byTenant.get(entry.tenantId) ?? [];
      list.push(entry);
      byTenant.set(entry.tenantId, list);
    }
    for (const [tenantId, entries] of byTenant) {
      const bits = await this.presence.online(
        tenantId,
        entries.map((e) => e.userId),
      );
      entries.forEach((e, i) => {
        const bit = bits[i] as number;
        // Released while the announcement was on its way: take back what it just set, unless the user
        // came back meanwhile. Through the new entry's own steps, after its announcement (which may still
        // be on its way, and would otherwise be undone by this offline landing behind it in Redis).
        const current = this.users.get(e.key);
        if (current !== e) {
          if (!current) {
            void this.presence.offline(e.tenantId, bit).catch(() => {});
            return;
          }
          current.offlineDue.add(bit);
          void this.enqueue(current, () => this.takeBackBit(current)).catch(() => {});
          return;
        }
        this.setBit(e, bit);
        e.online = true;
        // Its last tab closed meanwhile (its own offline step may have run before this announcement).
        if (e.tabs.size === 0) void this.enqueue(e, () => this.goOffline(e)).catch(() => {});
      });
    }
  }

  /**
   * Checks every held user's bit against the tenant's id map. A bit never changes unless Redis lost writes
   * (a failover), and then another user may hold it now: deliveries naming that bit must not reach this
   * one. A user whose bit differs or vanished leaves the old bit (offline on this node) and, with a tab
   * open, is announced again under the bit the map gives now. Returns the users found wrong.
   */
  async verifyBits(
    bitsOf: (tenantId: string, userIds: string[]) => Promise<(number | null)[]>,
  ): Promise<string[]> {
    const byTenant = new Map<string, UserEntry<T>[]>();
    for (const entry of this.users.values()) {
      if (entry.bit === undefined) continue;
      const list = byTenant.get(entry.tenantId) ?? [];
      list.push(entry);
      byTenant.set(entry.tenantId, list);
    }
    const wrong: string[] = [];
    for (const [tenantId, entries] of byTenant) {
      // The bits as asked about: while the map is read (one tenant after another), a user's grace may end
      // (its bit released) or a re-announcement may move it. Such a user was not found wrong: compared
      // with what it holds now, it would be, and its tabs and the node's history would hear of a gap.
      const asked = entries.map((e) => e.bit);
      const actual = await bitsOf(
        tenantId,
        entries.map((e) => e.userId),
      );
      entries.forEach((entry, i) => {
        if (entry.bit !== asked[i] || this.users.get(entry.key) !== entry) return;
        if (actual[i] === entry.bit) return;
        wrong.push(entry.key);
        // Off the bit now, not when the user's queued steps (a bind may wait seconds for the broker) let
        // the re-announcement run: until then no node-routed delivery names this user.
        const stale = entry.bit;
        this.setBit(entry, undefined);
        void this.enqueue(entry, () => this.reassign(entry, stale)).catch((error: unknown) =>
          this.failed('re-announcing a user failed', error, entry.key),
        );
      });
    }
    return wrong;
  }

  private async reassign(entry: UserEntry<T>, stale: number | undefined): Promise<void> {
    if (stale !== undefined && entry.online) entry.offlineDue.add(stale);
    entry.online = false;
    // Failing here (Redis away: likely during a failover) leaves the entry for the next beat's `repair`.
    await this.takeBackBit(entry);
    await this.announce(entry);
  }

  /** Announces a user with open tabs online, under the bit the id map gives. */
  private async announce(entry: UserEntry<T>): Promise<void> {
    if (entry.tabs.size === 0) return;
    const [bit] = await this.presence.online(entry.tenantId, [entry.userId]);
    this.setBit(entry, bit);
    entry.online = true;
  }

  /**
   * Finishes what a failed presence step left undone, for every user: a bit still owed back, a user with
   * open tabs not announced (or off every bit since `verifyBits`). Run on every heartbeat; each user's
   * repair waits behind its own queued steps.
   */
  repair(): void {
    if (this.closed) return;
    for (const entry of this.users.values()) {
      const unannounced = entry.bound && entry.tabs.size > 0 && (!entry.online || entry.bit === undefined);
      if (entry.repairing || (entry.offlineDue.size === 0 && !unannounced)) continue;
      entry.repairing = true;
      void this.enqueue(entry, async () => {
        entry.repairing = false;
        await this.takeBackBit(entry);
        if (entry.bound && (!entry.online || entry.bit === undefined)) {
          entry.online = false;
          await this.announce(entry);
        }
      }).catch((error: unknown) => this.failed('presence repair failed; will retry', error, entry.key));
    }
  }

  /** Every open tab (for draining). */
  allTabs(): T[] {
    const tabs: T[] = [];
    for (const entry of this.users.values()) for (const tab of entry.tabs) tabs.push(tab);
    return tabs;
  }

  /** Unbinds every key now, skipping the grace period (draining). */
  async unbindAll(): Promise<void> {
    this.closed = true;
    const entries = [...this.users.values()];
    for (const entry of entries) {
      if (entry.graceTimer) clearTimeout(entry.graceTimer);
      entry.graceTimer = undefined;
    }
    // On the keys' own broker queues, not behind the users' presence steps: with Redis hanging, those wait
    // out its timeout, and the drain would end with every key still bound. Every held key, bound or not as
    // far as the steps queued so far know (unbinding a key that is not bound costs nothing); after any bind
    // in flight on it, and no bind comes after (`bringUp` binds nothing once closed).
    await Promise.all(
      entries.map((entry) =>
        this.onKey(entry, () => this.binder.unbind(entry.key)).then(
          () => (entry.bound = entry.stray = false),
          () => {},
        ),
      ),
    );
    this.users.clear();
    this.byBit.clear();
    this.hooks.onUsersChanged(0);
  }
}
