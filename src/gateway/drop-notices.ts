/**
 * Why a delivery for this node was lost: as the dropped-deliveries queue tells it, or dropped by the node
 * itself because its bits came from another Redis server (`IdMapCheck`).
 */
export type DropReason = 'queue_full' | 'rejected' | 'id_map_changed';

/**
 * Why the broker dead-lettered a delivery to the dropped queue, from the headers it added: `maxlen` (the
 * node's queue was full), or a reject by a handler that threw.
 */
export function dropReasonOf(headers: Record<string, unknown> | undefined): DropReason {
  const deaths = headers?.['x-death'];
  const reason =
    headers?.['x-first-death-reason'] ??
    (Array.isArray(deaths) ? (deaths[0] as { reason?: unknown } | undefined)?.reason : undefined);
  return reason === 'maxlen' ? 'queue_full' : 'rejected';
}

/**
 * Gathers the deliveries a node lost over a short window into one notice (`events_missed` to the tabs of the
 * users they were for, or to every tab when one did not say), not one per delivery: a full queue drops them
 * by the hundred. `tell` gets why, for the tabs, without counts (the node's counts span every tenant: a user
 * would learn how much others get), and the same with counts, for the log. Owns its timer; `close` stops it.
 */
export class DropNotices {
  private readonly untold: Record<DropReason, number> = { queue_full: 0, rejected: 0, id_map_changed: 0 };
  /** The users the deliveries of this window were for; undefined once one did not say (everyone). */
  private users: Set<string> | undefined = new Set();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly windowMs: number,
    /** `users`: the keys of the users to tell; undefined for every tab. */
    private readonly tell: (why: string, counted: string, users: ReadonlySet<string> | undefined) => void,
  ) {}

  /** `users`: the keys of the users the lost delivery was for, when known. */
  record(reason: DropReason, users?: ReadonlySet<string>): void {
    if (this.closed) return;
    this.untold[reason] += 1;
    if (users === undefined) this.users = undefined;
    else if (this.users) for (const key of users) this.users.add(key);
    this.timer ??= setTimeout(() => this.flush(), this.windowMs);
  }

  /** Whether a notice on its way (the window not over) is for the user of `key`. */
  pendingFor(key: string): boolean {
    if (this.timer === undefined) return false;
    return this.users === undefined || this.users.has(key);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private flush(): void {
    this.timer = undefined;
    const { queue_full: full, rejected, id_map_changed: stale } = this.untold;
    this.untold.queue_full = 0;
    this.untold.rejected = 0;
    this.untold.id_map_changed = 0;
    const users = this.users;
    this.users = new Set();
    const deliveries = (n: number) => `${n} ${n === 1 ? 'delivery' : 'deliveries'}`;
    const told: string[] = [];
    const counted: string[] = [];
    if (full > 0) {
      told.push("this node's queue was full and the broker dropped deliveries");
      counted.push(`this node's queue was full and the broker dropped ${deliveries(full)}`);
    }
    if (rejected > 0) {
      told.push('this node failed on deliveries');
      counted.push(`this node failed on ${deliveries(rejected)}`);
    }
    if (stale > 0) {
      told.push('deliveries resolved against ids this node could not take as its own were dropped');
      counted.push(
        `${deliveries(stale)} resolved against ids this node could not take as its own were dropped`,
      );
    }
    if (told.length > 0) this.tell(told.join('; '), counted.join('; '), users);
  }
}
