import type { Channel, ChannelModel, ConsumeMessage } from 'amqplib';
import { errorMessage } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import type { BrokerConnection } from './connection.js';

/**
 * A message together with the channel it came on. Delivery tags are channel-scoped: acking a tag from a
 * channel that died on a reconnect would, on the new channel, be a protocol error, so settling a message
 * whose channel is gone is a no-op (the broker has already requeued it).
 */
export class Delivery {
  private settled = false;

  constructor(
    readonly message: ConsumeMessage,
    private readonly channel: Channel,
    private readonly isCurrent: (channel: Channel) => boolean,
  ) {}

  get live(): boolean {
    return !this.settled && this.isCurrent(this.channel);
  }

  ack(): void {
    if (!this.live) return;
    this.settled = true;
    this.channel.ack(this.message);
  }

  /** Rejects without requeue: the queue's dead-letter exchange takes it. */
  reject(): void {
    if (!this.live) return;
    this.settled = true;
    this.channel.nack(this.message, false, false);
  }

  requeue(): void {
    if (!this.live) return;
    this.settled = true;
    this.channel.nack(this.message, false, true);
  }
}

export interface ConsumerOptions {
  queue: string;
  prefetch: number;
  /** Runs on each (re)connect before consuming starts, on the consumer's channel (declare, bind…). */
  prepare?: (channel: Channel, model: ChannelModel) => Promise<void>;
}

/** Consumes one queue with manual acks and a prefetch window, re-subscribing after every reconnect. */
export class Consumer {
  private channel: Channel | undefined;
  private consumerTag: string | undefined;
  private stopped = false;

  constructor(
    private readonly broker: BrokerConnection,
    private readonly options: ConsumerOptions,
    private readonly handle: (delivery: Delivery) => void,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    await this.broker.onConnect((model) => this.open(model));
  }

  private async open(model: ChannelModel): Promise<void> {
    if (this.stopped) return;
    const channel = await model.createChannel();
    channel.on('error', (error: Error) => this.logger.warn({ err: error.message }, 'consumer channel error'));
    channel.on('close', () => {
      if (this.channel === channel) this.channel = undefined;
    });
    await this.options.prepare?.(channel, model);
    await channel.prefetch(this.options.prefetch);
    this.channel = channel;
    const isCurrent = (c: Channel): boolean => c === this.channel;
    const reply = await channel.consume(
      this.options.queue,
      (message) => {
        if (message === null) {
          this.logger.warn({ queue: this.options.queue }, 'consumer cancelled by the broker');
          return;
        }
        try {
          this.handle(new Delivery(message, channel, isCurrent));
        } catch (error) {
          this.logger.error({ err: errorMessage(error) }, 'delivery handler threw');
        }
      },
      { noAck: false },
    );
    this.consumerTag = reply.consumerTag;
  }

  /** The channel, for operations that must happen on it (e.g. deleting the queue while draining). */
  get currentChannel(): Channel | undefined {
    return this.channel;
  }

  /** Stops receiving new messages; those already received can still be acked. */
  async cancel(): Promise<void> {
    this.stopped = true;
    const { channel, consumerTag } = this;
    if (channel && consumerTag) {
      try {
        await channel.cancel(consumerTag);
      } catch (error) {
        this.logger.debug({ err: errorMessage(error) }, 'cancel failed');
      }
    }
  }

  async close(): Promise<void> {
    await this.cancel();
    const channel = this.channel;
    this.channel = undefined;
    try {
      await channel?.close();
    } catch {
      // Already closed with its connection.
    }
  }
}
