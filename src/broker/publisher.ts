import { randomUUID } from 'node:crypto';
import type { ChannelModel, ConfirmChannel, ConsumeMessage, Options } from 'amqplib';
import { ErrorCode, WarrenError, errorMessage } from '../shared/errors.js';
import { fulfilsWithin } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';
import { RetrySchedule } from '../shared/backoff.js';
import type { BrokerConnection } from './connection.js';

export interface PublishOptions extends Options.Publish {
  /**
   * How long to wait for the broker, or for a publish channel the broker closed to be reopened, before
   * failing (default: fail at once).
   */
  waitForConnectionMs?: number;
  /**
   * How long to wait for the broker's confirm once the message is written (default: for as long as it
   * takes). A broker under a memory or disk alarm blocks publishers and confirms nothing until it clears.
   */
  confirmTimeoutMs?: number;
  /**
   * Fail at once while the broker blocks the connection (a resource alarm) instead of writing into
   * buffers that only drain once it clears: a caller that retries would pile up copies meanwhile.
   */
  failIfBlocked?: boolean;
  /**
   * Fail (`WARREN_ERR_UNROUTABLE`) when no queue takes the message, instead of resolving: the broker
   * confirms a message it routed nowhere. The message carries a header of its own so that a return can be
   * told apart from the others.
   */
  mandatory?: boolean;
}

// Names a mandatory publish, so that the broker's return of it can be matched with its confirm.
export const PUBLISH_ID_HEADER = 'x-warren-publish-id';

// Closing waits this long for outstanding confirms and the channel's close (a blocked broker may send
// neither).
const CLOSE_CONFIRMS_MS = 5000;

// What amqplib calls back with for a basic.nack (a channel that closes calls back with "channel closed").
const AMQPLIB_NACK = 'message nacked';

// Reopening the confirm channel after the broker closed it: soon at first, then backing off.
const REOPEN_BASE_MS = 100;
const REOPEN_CAP_MS = 5000;

/**
 * Whether a channel's close reason refuses this very publish: an access refusal (403) of its topic (routing
 * key) or of its whole exchange. The broker names them ("write access to topic 'acme.x' in exchange
 * 'warren.events' …", "write access to exchange 'warren.events' …"), cutting the text at 255 bytes ("…"
 * then ends a name it cut short).
 */
export function refuses(error: Error, exchange: string, routingKey: string): boolean {
  if ((error as { code?: unknown }).code !== 403) return false;
  const named = (what: string, name: string): boolean => {
    const at = error.message.indexOf(`${what} '`);
    if (at < 0) return false;
    const rest = error.message.slice(at + what.length + 2);
    const end = rest.indexOf("'");
    if (end >= 0) return rest.slice(0, end) === name;
    // Cut short: the name as far as it goes.
    // (amqplib quotes the broker's text: `… with message "ACCESS_REFUSED - …..."`.)
    const partial = rest.replace(/\.\.\."?$/, '');
    return partial.length > 0 && name.startsWith(partial);
  };
  if (error.message.includes("topic '")) return named('topic', routingKey);
  return named('exchange', exchange);
}

/**
 * Whether a publish failed for want of `exchange`: the broker closes the channel (404) naming it, where a
 * missing queue would have it return a mandatory message. Only a 404 naming that exchange: one of a publish
 * beside it on the same channel, to another exchange, is not this one's.
 */
export function exchangeMissing(error: unknown, exchange: string): error is WarrenError {
  return (
    error instanceof WarrenError &&
    error.code === ErrorCode.PublishRejected &&
    (error.cause as { code?: unknown } | undefined)?.code === 404 &&
    errorMessage(error.cause).includes(`exchange '${exchange}'`)
  );
}

/** Errors of publishes whose channel went (a connection lost) before the broker confirmed them. */
const lostConfirms = new WeakSet<WarrenError>();

/**
 * Whether a publish failed because its channel went before the broker confirmed it (the connection lost,
 * say), and not because the broker refused or nacked it: the broker may or may not have the message, and
 * sending it again once a channel is back is how a publisher that can repeat itself makes sure of it.
 */
export function lostBeforeConfirm(error: unknown): error is WarrenError {
  return error instanceof WarrenError && lostConfirms.has(error);
}

/** A publish whose confirm `close()` left outstanding: retryable, as the broker may or may not have it. */
function closedBeforeConfirm(cause?: unknown): WarrenError {
  return new WarrenError(
    ErrorCode.Closed,
    'the publisher closed before the broker confirmed the message: it may or may not be published, ' +
      'sending it again is safe',
    { ...(cause === undefined ? {} : { cause }), retryable: true },
  );
}

function lost(message: string, cause: unknown): WarrenError {
  const error = new WarrenError(ErrorCode.BrokerUnavailable, message, { cause, retryable: true });
  lostConfirms.add(error);
  return error;
}

/**
 * Publishes over one confirm channel. `publish` resolves when the broker has confirmed the message and
 * rejects on a nack or when the connection drops first: at-least-once publishing, the caller decides
 * whether to retry or to let its own message be redelivered.
 */
export class Publisher {
  private channel: ConfirmChannel | undefined;
  private closed = false;
  private closing: Promise<void> | undefined;
  private readonly reopens = new RetrySchedule(REOPEN_BASE_MS, REOPEN_CAP_MS);
  /** Publishes waiting for a channel; woken when one opens or the publisher closes. */
  private readonly waiters = new Set<() => void>();
  /**
   * Mandatory publishes the broker returned as unroutable, until their confirm: it comes after the return
   * on the same channel.
   */
  private readonly returned = new Set<string>();
  /** Why the broker closed a channel (an access refusal, an exchange gone): told to the publishes on it. */
  private readonly closedBy = new WeakMap<ConfirmChannel, Error>();
  /** Rejects of publishes written and not confirmed yet: `close` fails those left at its deadline. */
  private readonly unconfirmed = new Set<(error: WarrenError) => void>();

  constructor(
    private readonly broker: BrokerConnection,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    await this.broker.onConnect((model) => this.open(model));
  }

  private async open(model: ChannelModel): Promise<void> {
    const channel = await model.createConfirmChannel();
    if (this.closed) {
      // Closed while the channel was being opened (a reopen racing close()): nothing may publish on it.
      await channel.close().catch(() => {});
      return;
    }
    channel.on('error', (error: Error) => {
      this.closedBy.set(channel, error);
      this.logger.warn({ err: error.message }, 'publish channel error');
    });
    channel.on('return', (message: ConsumeMessage) => {
      const id: unknown = message.properties.headers?.[PUBLISH_ID_HEADER];
      if (typeof id === 'string') this.returned.add(id);
    });
    channel.on('close', () => {
      if (this.channel !== channel) return;
      this.channel = undefined;
      // The broker closes a channel on its own for a channel-level error (a publish to an exchange that
      // is gone, say) while the connection stays up: without a new one every later publish would fail as
      // "not connected" until the whole connection dropped.
      this.reopen();
    });
    this.channel = channel;
    this.wake();
  }

  private wake(): void {
    for (const waiter of [...this.waiters]) waiter();
  }

  /** The channel once there is one, or undefined after `timeoutMs` or a close. */
  private channelWithin(timeoutMs: number): Promise<ConfirmChannel | undefined> {
    if (this.channel || this.closed || timeoutMs <= 0) return Promise.resolve(this.channel);
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(done);
        resolve(this.channel);
      };
      const timer = setTimeout(done, timeoutMs);
      this.waiters.add(done);
    });
  }

  private reopen(): void {
    if (this.closed) return;
    this.reopens.schedule(() => {
      // Closed, or reopened by a reconnect meanwhile.
      if (this.closed || this.channel) return;
      // The connection is down: its reconnect opens a channel, or this tries again after it. On the
      // current connection, whichever it is: one that came back and lost its channel again is included.
      const current = this.broker.model;
      if (current === undefined) return this.reopen();
      this.open(current).then(
        () => this.logger.info('publish channel reopened'),
        (error: unknown) => {
          this.logger.warn({ err: errorMessage(error) }, 'reopening the publish channel failed');
          this.reopen();
        },
      );
    });
  }

  get ready(): boolean {
    return this.channel !== undefined;
  }

  /** Whether a publish channel is open within `timeoutMs` (the connection and the channel waited for). */
  readyWithin(timeoutMs: number): Promise<boolean> {
    return this.waitForChannel(timeoutMs).then(
      (channel) => channel !== undefined,
      () => false,
    );
  }

  /**
   * The channel, waiting up to `timeoutMs` for the connection (rejecting as `waitConnected` does) and then
   * for the channel: connected, it may be on its way (a reconnect's setup, or a reopen after the broker
   * closed just the channel).
   */
  private async waitForChannel(timeoutMs: number): Promise<ConfirmChannel | undefined> {
    if (this.channel) return this.channel;
    const deadline = Date.now() + timeoutMs;
    await this.broker.waitConnected(timeoutMs);
    return this.channelWithin(deadline - Date.now());
  }

  /**
   * Throws (or rejects with) what `publish` would now with `failIfBlocked`, before its caller does work for
   * the message (a payload stored for it): closed, the broker blocking publishers, or no channel within
   * `waitMs`.
   */
  async whenPublishable(waitMs: number): Promise<void> {
    await this.channelFor(waitMs, true);
  }

  /** The channel a publish goes on, or why there is none; a channel open is given at once, not awaited. */
  private channelFor(
    waitMs: number | undefined,
    failIfBlocked: boolean | undefined,
  ): ConfirmChannel | Promise<ConfirmChannel> {
    if (this.closed) throw new WarrenError(ErrorCode.Closed, 'the publisher is closed');
    const blocked = this.broker.blocked;
    if (failIfBlocked && blocked !== undefined) {
      throw new WarrenError(
        ErrorCode.BrokerUnavailable,
        `the broker is not taking messages (${blocked}): try again later`,
        { retryable: true },
      );
    }
    const none = (): never => {
      // Closing: trying again cannot help, unlike a connection that is coming back.
      if (this.closed) throw new WarrenError(ErrorCode.Closed, 'the publisher is closed');
      throw new WarrenError(ErrorCode.BrokerUnavailable, 'not connected to the broker', { retryable: true });
    };
    if (this.channel) return this.channel;
    if (waitMs === undefined || waitMs <= 0) return none();
    return this.waitForChannel(waitMs).then((channel) => channel ?? none());
  }

  async publish(
    exchange: string,
    routingKey: string,
    body: Buffer,
    options: PublishOptions = {},
  ): Promise<void> {
    const { waitForConnectionMs, confirmTimeoutMs, failIfBlocked, ...amqpOptions } = options;
    const found = this.channelFor(waitForConnectionMs, failIfBlocked);
    // With a channel open, no await: the SDK passes waitForConnectionMs on every publish.
    const channel = found instanceof Promise ? await found : found;
    const publishId = options.mandatory ? randomUUID() : undefined;
    if (publishId !== undefined)
      amqpOptions.headers = { ...(options.headers ?? {}), [PUBLISH_ID_HEADER]: publishId };
    return new Promise<void>((resolve, fail) => {
      const reject = (error: WarrenError): void => {
        clearTimeout(timer);
        this.unconfirmed.delete(reject);
        fail(error);
      };
      this.unconfirmed.add(reject);
      const timer =
        confirmTimeoutMs === undefined
          ? undefined
          : setTimeout(() => {
              reject(
                new WarrenError(
                  ErrorCode.Timeout,
                  `broker did not confirm within ${confirmTimeoutMs} ms (blocked by a resource alarm?); ` +
                    'the message may still be published: sending it again is safe',
                  { retryable: true },
                ),
              );
            }, confirmTimeoutMs);
      try {
        channel.publish(exchange, routingKey, body, amqpOptions, (error: unknown) => {
          clearTimeout(timer);
          this.unconfirmed.delete(reject);
          const wasReturned = publishId !== undefined && this.returned.delete(publishId);
          const closedBy = error ? this.closedBy.get(channel) : undefined;
          if (closedBy) {
            // The broker closed the channel over this publish, or one beside it: its reason says which
            // ("ACCESS_REFUSED …" for a routing key the account may not use), not "channel closed".
            reject(
              new WarrenError(
                ErrorCode.PublishRejected,
                `broker refused the message: ${closedBy.message}`,
                // Sending it again cannot help when the refusal is this message's: its routing key, or the
                // exchange itself; one published beside it, or another reason, may pass next time.
                { cause: closedBy, retryable: !refuses(closedBy, exchange, routingKey) },
              ),
            );
          } else if (error && errorMessage(error) === AMQPLIB_NACK) {
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
          } else if (error) {
            // The channel closed with the confirm outstanding: by close(), or with its connection (a broker
            // restart, a network drop), the message written or not.
            reject(
              this.closed
                ? closedBeforeConfirm(error)
                : lost(
                    'the connection to the broker was lost before it confirmed the message: it may or may ' +
                      'not be published, sending it again is safe',
                    error,
                  ),
            );
          } else {
            // A confirm: the channel works, so the next reopen (if any) starts from the short delay again.
            this.reopens.reset();
            if (wasReturned) {
              reject(
                new WarrenError(
                  ErrorCode.Unroutable,
                  `no queue took the message (exchange "${exchange}", routing key "${routingKey}")`,
                  { retryable: true },
                ),
              );
            } else {
              resolve();
            }
          }
        });
      } catch (error) {
        // amqplib throws synchronously on a closed channel or a header table that does not fit. A channel
        // this publisher has already let go of (closed meanwhile, reopened or not) sent nothing.
        reject(
          this.channel !== channel && !this.closed
            ? lost(
                `the connection to the broker was lost before the message was sent: ${errorMessage(error)}`,
                error,
              )
            : new WarrenError(ErrorCode.PublishRejected, `publish failed: ${errorMessage(error)}`, {
                cause: error,
                retryable: this.channel === undefined,
              }),
        );
      }
    });
  }

  /** Waits (boundedly) for outstanding confirms, then closes the channel. A second call waits for the first. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    this.closed = true;
    const channel = this.channel;
    this.channel = undefined;
    this.wake();
    if (channel) {
      // Bounded: a blocked broker reads nothing from this connection, not even the close.
      const deadline = Date.now() + CLOSE_CONFIRMS_MS;
      // Out of time, on to the next step; a failure of the step itself ends the close below.
      const bounded = (step: Promise<unknown>) => fulfilsWithin(step, Math.max(0, deadline - Date.now()));
      try {
        await bounded(channel.waitForConfirms());
        await bounded(channel.close());
      } catch {
        // The connection may already be gone; nothing left to flush.
      }
    }
    // Left waiting, they would settle only once amqplib gave up on the connection (its heartbeat, some
    // 20 s on), long after their caller was told the publisher is closed.
    for (const reject of [...this.unconfirmed]) {
      reject(closedBeforeConfirm());
    }
  }
}
