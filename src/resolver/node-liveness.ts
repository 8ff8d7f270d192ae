import { errorMessage } from '../shared/errors.js';
import { withTimeout } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { LIVENESS_POLL_MS as POLL_MS, type PresenceStore } from '../store/presence-store.js';

const SWEEP_EVERY = 5;
const POLL_TIMEOUT_MS = 10_000;

/**
 * Which gateway nodes have stopped heartbeating. Polled every second on Redis's clock; views stop counting
 * a dead node's users at once, and every few polls the dead nodes' keys are cleaned up (idempotent, any
 * resolver or gateway may do it).
 */
export class NodeLiveness {
  private deadNodes: ReadonlySet<string> = new Set();
  private timer: NodeJS.Timeout | undefined;
  private polls = 0;
  /** A poll is running: a slow one (a sweep, Redis slow) is not overlapped, nor its result overwritten late. */
  private polling = false;
  /**
   * Polls failed in a row: the first is logged, and the first to succeed after them, not each one between
   * (with Redis away, one per poll timeout for as long as it is).
   */
  private failures = 0;

  constructor(
    private readonly presence: PresenceStore,
    private readonly expiryMs: number,
    private readonly onChange: (dead: ReadonlySet<string>) => void,
    private readonly logger: Logger,
  ) {}

  get dead(): ReadonlySet<string> {
    return this.deadNodes;
  }

  async start(): Promise<void> {
    await this.poll();
    this.timer = setInterval(() => void this.poll(), POLL_MS);
    this.timer.unref();
  }

  private async poll(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    const poll = (this.polls += 1);
    try {
      // Bounded: a connection that hangs without closing would otherwise hold `polling` set for good.
      await withTimeout(this.check(poll), POLL_TIMEOUT_MS, 'node liveness poll');
      if (this.failures > 0)
        this.logger.info({ failedPolls: this.failures }, 'node liveness poll succeeds again');
      this.failures = 0;
    } catch (error) {
      this.failures += 1;
      if (this.failures === 1)
        this.logger.warn(
          { err: errorMessage(error) },
          'node liveness poll failed; the nodes last known dead stay so until a poll succeeds',
        );
      else
        this.logger.debug(
          { err: errorMessage(error), failedPolls: this.failures },
          'node liveness poll failed',
        );
    } finally {
      this.polling = false;
    }
  }

  private async check(poll: number): Promise<void> {
    if (poll % SWEEP_EVERY === 0) {
      const swept = await this.presence.sweepDeadNodes(this.expiryMs);
      if (swept.length > 0) this.logger.info({ nodes: swept }, 'cleaned up dead gateway nodes');
    }
    const dead = new Set(await this.presence.deadNodes(this.expiryMs));
    // A poll given up on (timed out) that answers after a newer one began: its answer is the older one.
    if (poll !== this.polls) return;
    const changed = dead.size !== this.deadNodes.size || [...dead].some((n) => !this.deadNodes.has(n));
    if (changed) {
      this.deadNodes = dead;
      this.onChange(dead);
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
