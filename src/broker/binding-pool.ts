import type { Channel, ChannelModel } from 'amqplib';
import { errorMessage } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import type { BrokerConnection } from './connection.js';
import { isNotFound } from './topology.js';

export interface BindingCounters {
  onBind(): void;
  onUnbind(): void;
}

interface Slot {
  channel: Channel | undefined;
  /** The channel being opened in its place, shared by every operation that finds it closed. */
  opening: Promise<Channel> | undefined;
  pending: number;
}

const WAIT_FOR_BROKER_MS = 10_000;

/**
 * Queue bind/unbind over a small pool of channels. amqplib runs one RPC at a time per channel, and binding
 * is the costly broker operation (DESIGN.md §6: ~1,700/s one by one, ~5,000/s over 8 channels), so the pool
 * spreads them over the least busy channel. A channel closed by an error is reopened on next use.
 */
export class BindingPool {
  private slots: Slot[] = [];
  private model: ChannelModel | undefined;

  constructor(
    private readonly broker: BrokerConnection,
    private readonly size: number,
    private readonly counters: BindingCounters,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    await this.broker.onConnect(async (model) => {
      const slots = await Promise.all(
        Array.from({ length: this.size }, async () => ({
          channel: await this.openChannel(model),
          opening: undefined,
          pending: 0,
        })),
      );
      // Usable once every channel is open: a bind meanwhile waits for the connection instead of finding
      // no channel. A setup that fails in a later hook closes this connection without a 'disconnected':
      // the pool lets go of it then, rather than trying its channels.
      model.once('close', () => {
        if (this.model !== model) return;
        this.model = undefined;
        this.slots = [];
      });
      this.slots = slots;
      this.model = model;
    });
    this.broker.on('disconnected', () => {
      this.model = undefined;
      this.slots = [];
    });
  }

  private async openChannel(model: ChannelModel): Promise<Channel> {
    const channel = await model.createChannel();
    channel.on('error', (error: Error) => this.logger.warn({ err: error.message }, 'binding channel error'));
    channel.on('close', () => {
      for (const slot of this.slots) if (slot.channel === channel) slot.channel = undefined;
    });
    return channel;
  }

  /**
   * Runs `op` on the least busy channel. The slot is counted busy before anything is awaited: binds started
   * together (every held user's, after a reconnect) spread over the pool instead of all picking the first
   * idle channel. A closed channel is reopened once, however many operations find it closed.
   */
  private async run(op: (channel: Channel) => Promise<unknown>, waitMs: number): Promise<void> {
    if (!this.model) {
      if (waitMs <= 0) throw new Error('broker not connected');
      await this.broker.waitConnected(waitMs);
    }
    let slot: Slot | undefined;
    for (const candidate of this.slots) if (!slot || candidate.pending < slot.pending) slot = candidate;
    if (!slot) throw new Error('binding pool has no channels');
    slot.pending += 1;
    try {
      const channel = slot.channel ?? (await this.reopen(slot));
      await op(channel);
    } finally {
      slot.pending -= 1;
    }
  }

  private reopen(slot: Slot): Promise<Channel> {
    const model = this.model;
    if (!model) return Promise.reject(new Error('binding channel unavailable'));
    slot.opening ??= this.openChannel(model)
      .then((channel) => {
        slot.channel = channel;
        return channel;
      })
      .finally(() => {
        slot.opening = undefined;
      });
    return slot.opening;
  }

  // Counted once on a channel, sent: with the broker away an operation fails before it (an unbind at once,
  // a bind after its wait), and the ones tried again meanwhile would count many times over.
  async bind(queue: string, exchange: string, key: string): Promise<void> {
    await this.run((channel) => {
      this.counters.onBind();
      return channel.bindQueue(queue, exchange, key);
    }, WAIT_FOR_BROKER_MS);
  }

  /**
   * Unbinds at once or fails: with the broker away it does not wait for it (nobody waits on an unbind; the
   * caller keeps the key and tries again once the broker is back). Unbinding from a queue that is gone
   * (deleted, expired) succeeds, as there is nothing left to undo.
   */
  async unbind(queue: string, exchange: string, key: string): Promise<void> {
    try {
      await this.run((channel) => {
        this.counters.onUnbind();
        return channel.unbindQueue(queue, exchange, key);
      }, 0);
    } catch (error) {
      if (isNotFound(error)) {
        this.logger.debug({ err: errorMessage(error), key }, 'unbind: queue already gone');
        return;
      }
      throw error;
    }
  }

  async close(): Promise<void> {
    const slots = this.slots;
    this.slots = [];
    await Promise.all(
      slots.map(async (slot) => {
        try {
          await slot.channel?.close();
        } catch {
          // Closed with the connection already.
        }
      }),
    );
  }
}
