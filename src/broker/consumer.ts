import type { Channel, ChannelModel, ConsumeMessage } from 'amqplib';
import { RetrySchedule } from '../shared/backoff.js';
import { errorMessage } from '../shared/errors.js';
import { fulfilsWithin } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import type { BrokerConnection } from './connection.js';

/**
 * Acks of one channel, sent at the end of the turn they were made in: the longest run of settled messages
 * at the head of the window as one `multiple` ack, each settled message behind a still-unsettled one
 * singly (so a slow message never holds the prefetch window shut). A broker read of a hundred deliveries
 * settled in one go costs one ack frame instead of a hundred.
 */
class AckBatcher {
  /** Delivery tags received and not yet acked → settled; a Map keeps them in the order received (ascending). */
  private readonly window = new Map<number, boolean>();
  private scheduled = false;
  private readonly flush = (): void => {
    this.scheduled = false;
    try {
      this.send();
    } catch {
      // The channel closed in this turn: the broker requeues whatever it had not been told about.
    }
  };

  constructor(private readonly channel: Channel) {}

  private send(): void {
    let head: number | undefined;
    let atHead = true;
    for (const [tag, done] of this.window) {
      if (!done) {
        atHead = false;
        continue;
      }
      this.window.delete(tag);
      if (atHead) head = tag;
      else this.channel.ack(tagged(tag));
    }
    if (head !== undefined) this.channel.ack(tagged(head), true);
  }

  received(tag: number): void {
    this.window.set(tag, false);
  }

  ack(tag: number): void {
    if (!this.window.has(tag)) return;
    this.window.set(tag, true);
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(this.flush);
  }

  /** A message nacked (requeued or rejected) on its own: it leaves the window. */
  forget(tag: number): void {
    this.window.delete(tag);
  }
}

/** amqplib acks by the message's delivery tag only. */
function tagged(deliveryTag: number): ConsumeMessage {
  return { fields: { deliveryTag } } as ConsumeMessage;
}

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
    private readonly acks: AckBatcher,
  ) {
    acks.received(message.fields.deliveryTag);
  }

  get live(): boolean {
    return !this.settled && this.isCurrent(this.channel);
  }

  /** Acked at the end of the turn, with the other acks of the channel made in it. */
  ack(): void {
    if (!this.live) return;
    this.settled = true;
    this.acks.ack(this.message.fields.deliveryTag);
  }

  /** Rejects without requeue: the queue's dead-letter exchange takes it. */
  reject(): void {
    this.nack(false);
  }

  requeue(): void {
    this.nack(true);
  }

  private nack(requeue: boolean): void {
    if (!this.live) return;
    this.settled = true;
    this.acks.forget(this.message.fields.deliveryTag);
    try {
      this.channel.nack(this.message, false, requeue);
    } catch {
      // The channel is closing (amqplib throws IllegalOperationError): the broker requeues everything it
      // had not been told about, this message included. Settling never throws into the caller.
    }
  }
}

export interface ConsumerOptions {
  queue: string;
  prefetch: number;
  /** Runs on each (re)connect before consuming starts, on the consumer's channel (declare, bind…). */
  prepare?: (channel: Channel, model: ChannelModel) => Promise<void>;
  /**
   * Runs after the consumer came back on a connection that stayed up: its channel was closed by the broker
   * (an unacknowledged message past `consumer_timeout`, a protocol error) or its queue was deleted under
   * it. `prepare` has run again; bindings made elsewhere may have gone with a deleted queue.
   */
  resubscribed?: () => Promise<void>;
}

// Re-subscribing after the broker closed the consumer's channel: first try soon, then back off.
const RESUBSCRIBE_BASE_MS = 200;
const RESUBSCRIBE_CAP_MS = 10_000;
/** How long a cancel or a channel close may take before stopping goes on without its answer. */
const STOP_STEP_MS = 2000;

/**
 * Consumes one queue with manual acks and a prefetch window, re-subscribing after every reconnect, and
 * also when the broker closes its channel or cancels it while the connection stays up (without that the
 * process would stay connected, and ready, and never receive again).
 */
export class Consumer {
  private channel: Channel | undefined;
  private consumerTag: string | undefined;
  private stopped = false;
  private readonly retries = new RetrySchedule(RESUBSCRIBE_BASE_MS, RESUBSCRIBE_CAP_MS);

  constructor(
    private readonly broker: BrokerConnection,
    private readonly options: ConsumerOptions,
    private readonly handle: (delivery: Delivery) => void,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    await this.broker.onConnect(async (model) => {
      await this.open(model);
      this.retries.reset();
    });
  }

  /** Subscribes on a new channel of `model`; resolves with it, or undefined when stopped meanwhile. */
  private async open(model: ChannelModel): Promise<Channel | undefined> {
    if (this.stopped) return undefined;
    const channel = await model.createChannel();
    channel.on('error', (error: Error) => this.logger.warn({ err: error.message }, 'consumer channel error'));
    channel.on('close', () => {
      if (this.channel !== channel) return;
      this.channel = undefined;
      this.resubscribe('consumer channel closed by the broker');
    });
    try {
      await this.options.prepare?.(channel, model);
      await channel.prefetch(this.options.prefetch);
    } catch (error) {
      await channel.close().catch(() => {});
      throw error;
    }
    // Closed (or cancelled) while it prepared: it found no channel to close, and none is to consume now.
    if (this.stopped) {
      await channel.close().catch(() => {});
      return undefined;
    }
    this.channel = channel;
    const isCurrent = (c: Channel): boolean => c === this.channel;
    const acks = new AckBatcher(channel);
    const reply = await channel.consume(
      this.options.queue,
      (message) => {
        if (message === null) {
          // The queue was deleted (or the node holding it went away): start over on a fresh channel.
          if (this.channel === channel) this.channel = undefined;
          channel.close().catch(() => {});
          this.resubscribe('consumer cancelled by the broker');
          return;
        }
        const delivery = new Delivery(message, channel, isCurrent, acks);
        try {
          this.handle(delivery);
        } catch (error) {
          // A bug, not bad input (handlers dead-letter that themselves). Rejected rather than left
          // unsettled, which would hold a prefetch slot until the broker's consumer timeout closes the
          // channel; queues with a dead-letter exchange keep it there, with the reason logged here.
          this.logger.error(
            { err: errorMessage(error), queue: this.options.queue, messageId: message.properties.messageId },
            'delivery handler threw; message rejected',
          );
          delivery.reject();
        }
      },
      { noAck: false },
    );
    this.consumerTag = reply.consumerTag;
    // Cancelled while the subscription was on its way: `cancel` had no consumer tag to cancel yet.
    if (this.stopped) await channel.cancel(reply.consumerTag).catch(() => {});
    return channel;
  }

  private resubscribe(reason: string): void {
    // One attempt pending at a time (a failed subscribe both rejects and closes its channel).
    if (this.stopped) return;
    this.retries.schedule((attempt) => {
      // A reconnect has subscribed on its new connection already.
      if (this.stopped || this.channel) return;
      // The connection is down or being set up again: its setup subscribes, or this tries again after it.
      // Otherwise on the current connection, whichever it is: one that came back and lost its channel
      // again while this attempt was pending included.
      const model = this.broker.model;
      if (model === undefined) return this.resubscribe(reason);
      if (attempt === 1) this.logger.warn({ queue: this.options.queue }, `${reason}; re-subscribing`);
      this.open(model)
        .then(async (opened) => {
          try {
            await this.options.resubscribed?.();
          } catch (error) {
            // Subscribed but not set up again (say, users not re-bound): start over, so that it is. Only
            // this attempt's channel: a reconnect meanwhile may have subscribed on a new one, set up.
            if (opened && this.channel === opened) this.channel = undefined;
            await opened?.close().catch(() => {});
            throw error;
          }
        })
        .then(
          () => {
            this.retries.reset();
            this.logger.info({ queue: this.options.queue }, 're-subscribed');
          },
          (error: unknown) => {
            this.logger.warn({ err: errorMessage(error), queue: this.options.queue }, 're-subscribe failed');
            this.resubscribe(reason);
          },
        );
    });
  }

  /**
   * Subscribes again on a new channel, set up as after a loss (`prepare`, then `resubscribed`): for what
   * the consumer's owner found lost that the broker does not report to a consumer (its queue's bindings).
   * Deliveries not acked yet come again. Does nothing while stopped or already re-subscribing.
   */
  restart(reason: string): void {
    const channel = this.channel;
    if (this.stopped || channel === undefined) return;
    this.channel = undefined;
    channel.close().catch(() => {});
    this.resubscribe(reason);
  }

  /** The channel, for operations that must happen on it (e.g. deleting the queue while draining). */
  get currentChannel(): Channel | undefined {
    return this.channel;
  }

  /** Stops receiving new messages; those already received can still be acked. */
  async cancel(): Promise<void> {
    const again = this.stopped;
    this.stopped = true;
    const { channel, consumerTag } = this;
    // Cancelled already (close after cancel): not asked, and waited for, twice.
    if (channel && consumerTag && !again) {
      try {
        // Bounded: a broker that blocks the connection (a resource alarm) reads nothing, not the cancel.
        if (!(await fulfilsWithin(channel.cancel(consumerTag), STOP_STEP_MS)))
          this.logger.warn({ queue: this.options.queue }, 'the broker did not answer the cancel; going on');
      } catch (error) {
        this.logger.debug({ err: errorMessage(error) }, 'cancel failed');
      }
    }
  }

  /**
   * Stops by closing the channel, without a cancel first: the broker requeues what was received and not
   * settled before it hands the queue to another consumer. For a single-active-consumer queue whose order
   * matters: on a quorum queue a cancel hands the queue over at once, and a message held then comes back
   * behind those the next consumer took meanwhile. What is held can no longer be acked (it comes again).
   */
  async closeAtOnce(): Promise<void> {
    this.stopped = true;
    const channel = this.channel;
    this.channel = undefined;
    try {
      // Bounded as the cancel: the connection's own close, which follows, ends the channel anyway.
      if (channel) await fulfilsWithin(channel.close(), STOP_STEP_MS);
    } catch {
      // Already closed with its connection.
    }
  }

  async close(): Promise<void> {
    await this.cancel();
    await this.closeAtOnce();
  }
}
