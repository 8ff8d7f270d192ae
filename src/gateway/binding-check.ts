import type { Publisher } from '../broker/publisher.js';
import { isNotFound } from '../broker/topology.js';
import { ControlMessage, DeliveryHeader } from '../protocol/delivery.js';
import { ErrorCode, WarrenError, errorMessage } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';

export interface BindingCheckOptions {
  /** `<prefix>.deliveries`. */
  exchange: string;
  /** The node's own key, `n.<nodeId>`, bound to its queue whenever the queue is declared. */
  nodeKey: string;
  periodMs: number;
  /** Whether to skip this period's probe (draining, the queue being set up again, the broker away). */
  skip: () => boolean;
  /** The probe found the node's bindings gone, for the reason given. */
  lost: (why: string) => void;
}

/**
 * Deleting the deliveries exchange deletes every binding to it, and the broker tells no queue: a node
 * whose queue outlived it would get nothing more, while resolvers' deliveries, once the exchange is
 * declared again, are confirmed to them as routed nowhere. So every period the node publishes a probe
 * (ControlMessage.Probe) by its own key, mandatory: the broker returns it when the node key's binding is
 * gone, and refuses it (404) when the exchange is. Either way the node's bindings are lost.
 */
export class BindingCheck {
  private timer: NodeJS.Timeout | undefined;
  private probing = false;

  constructor(
    private readonly publisher: Publisher,
    private readonly options: BindingCheckOptions,
    private readonly logger: Logger,
  ) {}

  start(): void {
    this.timer = setInterval(() => void this.probe(), this.options.periodMs);
    this.timer.unref();
  }

  /**
   * One probe (none while one is on its way); resolves once it is confirmed, returned or failed. `now`: also
   * while `skip` says to wait (a reconnect under way, which asks for it).
   */
  async probe(now = false): Promise<void> {
    if (this.probing || (!now && this.options.skip())) return;
    this.probing = true;
    try {
      await this.publishProbe({ confirmTimeoutMs: this.options.periodMs });
    } catch (error) {
      const why = lostBecause(error);
      // Skipped since (a drain, a recovery under way): what it found is that one's to mend.
      if (why !== undefined && (now || !this.options.skip())) this.options.lost(why);
      else if (why === undefined)
        this.logger.debug({ err: errorMessage(error) }, 'binding probe not confirmed; trying next period');
    } finally {
      this.probing = false;
    }
  }

  /**
   * Publishes a probe by the node's own key, mandatory: confirmed once routed to its queue (where the node
   * acks and ignores it), returned when nothing is bound by that key. Not waited for under a resource
   * alarm (`failIfBlocked`): the connection coming back declares the queue and its bindings anyway.
   * `messageId` names it, for a caller that waits for it to come through the queue.
   */
  publishProbe(options: { messageId?: string; confirmTimeoutMs?: number } = {}): Promise<void> {
    return this.publisher.publish(this.options.exchange, this.options.nodeKey, Buffer.alloc(0), {
      mandatory: true,
      headers: { [DeliveryHeader.Control]: ControlMessage.Probe },
      failIfBlocked: true,
      ...options,
    });
  }

  close(): Promise<void> {
    clearInterval(this.timer);
    return this.publisher.close();
  }
}

/** Why a probe's failure means the node's bindings are gone, or undefined when it says nothing of them. */
function lostBecause(error: unknown): string | undefined {
  if (!(error instanceof WarrenError)) return undefined;
  if (error.code === ErrorCode.Unroutable) return 'the broker routed the node’s probe nowhere';
  if (error.code === ErrorCode.PublishRejected && isNotFound(error.cause)) return 'the exchange is gone';
  return undefined;
}
