import { errorMessage } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import { LIVENESS_POLL_MS as POLL_MS, type PresenceStore } from '../store/presence-store.js';

const SWEEP_EVERY = 5;

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
    try {
      this.polls += 1;
      if (this.polls % SWEEP_EVERY === 0) {
        const swept = await this.presence.sweepDeadNodes(this.expiryMs);
        if (swept.length > 0) this.logger.info({ nodes: swept }, 'cleaned up dead gateway nodes');
      }
      const dead = new Set(await this.presence.deadNodes(this.expiryMs));
      const changed = dead.size !== this.deadNodes.size || [...dead].some((n) => !this.deadNodes.has(n));
      if (changed) {
        this.deadNodes = dead;
        this.onChange(dead);
      }
    } catch (error) {
      this.logger.warn({ err: errorMessage(error) }, 'node liveness poll failed');
    } finally {
      this.polling = false;
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
