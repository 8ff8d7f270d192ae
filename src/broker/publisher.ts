import type { ChannelModel, ConfirmChannel, Options } from 'amqplib';
import { ErrorCode, WarrenError, errorMessage } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import type { BrokerConnection } from './connection.js';

export interface PublishOptions extends Options.Publish {
  /** How long to wait for the broker to come back before failing (default: fail at once). */
  waitForConnectionMs?: number;
}

/**
 * Publishes over one confirm channel. `publish` resolves when the broker has confirmed the message and
 * rejects on a nack or when the connection drops first: at-least-once publishing, the caller decides
 * whether to retry or to let its own message be redelivered.
 */
export class Publisher {
  private channel: ConfirmChannel | undefined;

  constructor(
    private readonly broker: BrokerConnection,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    await this.broker.onConnect((model) => this.open(model));
  }

  private async open(model: ChannelModel): Promise<void> {
    const channel = await model.createConfirmChannel();
    channel.on('error', (error: Error) => this.logger.warn({ err: error.message }, 'publish channel error'));
    channel.on('close', () => {
      if (this.channel === channel) this.channel = undefined;
    });
    this.channel = channel;
  }

  get ready(): boolean {
    return this.channel !== undefined;
  }

  async publish(
    exchange: string,
    routingKey: string,
    body: Buffer,
    options: PublishOptions = {},
  ): Promise<void> {
    const { waitForConnectionMs, ...amqpOptions } = options;
    let channel = this.channel;
    if (!channel && waitForConnectionMs !== undefined && waitForConnectionMs > 0) {
      await this.broker.waitConnected(waitForConnectionMs);
      channel = this.channel;
    }
    if (!channel) {
      throw new WarrenError(ErrorCode.BrokerUnavailable, 'not connected to the broker', { retryable: true });
    }
    return new Promise<void>((resolve, reject) => {
      try {
        channel.publish(exchange, routingKey, body, amqpOptions, (error: unknown) => {
          if (error) {
            reject(
              new WarrenError(
                ErrorCode.PublishNacked,
                `broker did not confirm the message: ${errorMessage(error)}`,
                {
                  cause: error,
                  retryable: true,
                },
              ),
            );
          } else {
            resolve();
          }
        });
      } catch (error) {
        // amqplib throws synchronously on a closed channel or a header table that does not fit.
        reject(
          new WarrenError(ErrorCode.PublishRejected, `publish failed: ${errorMessage(error)}`, {
            cause: error,
            retryable: this.channel === undefined,
          }),
        );
      }
    });
  }

  async close(): Promise<void> {
    const channel = this.channel;
    this.channel = undefined;
    if (!channel) return;
    try {
      await channel.waitForConfirms();
      await channel.close();
    } catch {
      // The connection may already be gone; nothing left to flush.
    }
  }
}
