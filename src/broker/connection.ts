import { EventEmitter } from 'node:events';
import amqp, { type ChannelModel } from 'amqplib';
import { fullJitterDelay } from '../shared/backoff.js';
import { ErrorCode, WarrenError, errorMessage, isWarrenError, withoutCredentials } from '../shared/errors.js';
import { fulfilsWithin } from '../shared/lifecycle.js';
import type { Logger } from '../shared/logger.js';

export interface BrokerOptions {
  url: string;
  frameMax: number;
  heartbeatSec: number;
  reconnectBaseMs: number;
  reconnectCapMs: number;
  /** One attempt, TCP connect and AMQP handshake; then it is dropped (and retried with backoff). */
  connectTimeoutMs: number;
  /** Shown in the broker's connection list. */
  connectionName: string;
}

/** Runs on every (re)connect, in registration order, before the connection counts as up. */
export type SetupHook = (model: ChannelModel) => Promise<void>;

interface BrokerEvents {
  connected: [];
  disconnected: [Error];
  /** `close()` was called: nothing will connect any more. */
  closing: [];
}

/** How long `close` waits for the broker to answer before dropping the socket. */
const CLOSE_TIMEOUT_MS = 5000;

// amqplib's own serialisation buffer for header tables; a CC list larger than this cannot be published.
const AMQPLIB_TABLE_BUFFER = 65_536;

/**
 * The broker refused the credentials or a permission a setup step needs (AMQP 403 ACCESS_REFUSED), or a
 * queue Warren declares exists otherwise than configured (WARREN_ERR_TOPOLOGY_MISMATCH): trying
 * again with the same account fails the same way. A library's caller hears it at once rather than after the
 * connect timeout, and a daemon starting stops with it (a wrong password in its configuration); once
 * connected, a daemon keeps trying through such refusals (an operator may be rotating the password). Not 530
 * NOT_ALLOWED: RabbitMQ also says that for a connection limit reached, which passes (and amqplib reports a
 * refused virtual host without the broker's text anyway).
 */
export function refusedForGood(error: Error): boolean {
  // A shared queue there of another type than configured: declaring again meets the same queue.
  if (isWarrenError(error, ErrorCode.TopologyMismatch)) return true;
  return /\bACCESS.REFUSED\b/.test(error.message);
}

/**
 * What a failed connection attempt says to an operator. RabbitMQ closes the connection at `connection.open`
 * (530 NOT_ALLOWED) for a virtual host that does not exist, one the user has no permissions on, or a
 * connection limit reached, and amqplib drops the broker's text from its error: name the virtual host and
 * the likely causes instead of amqplib's "Expected ConnectionOpenOk".
 */
export function explainConnectFailure(error: unknown, url: string): string {
  const message = errorMessage(error);
  if (!/^Expected ConnectionOpenOk; got <ConnectionClose\b/.test(message)) return message;
  const vhost = decodeURIComponent(new URL(url).pathname.slice(1)) || '/';
  return (
    `RabbitMQ refused to open virtual host "${vhost}": it does not exist, the user has no permissions on it, ` +
    `or a connection limit is reached (rabbitmqctl list_vhosts, list_user_permissions)`
  );
}

/**
 * One AMQP connection per process, recovered by amqplib with full-jitter backoff. Components register setup
 * hooks (declare topology, open channels, start consumers, re-bind) which run again after every reconnect,
 * so nothing above this class has to notice a reconnect other than by its hook running.
 */
export class BrokerConnection extends EventEmitter<BrokerEvents> {
  private readonly hooks: SetupHook[] = [];
  private recovering: amqp.RecoveringChannelModel | undefined;
  private current: ChannelModel | undefined;
  private closing = false;
  /** The close under way or done, which every call of `close` returns. */
  private closed: Promise<void> | undefined;
  /** The last connection set up, for dropping its socket when a close is not answered. */
  private lastModel: ChannelModel | undefined;
  private blockedBy: string | undefined;
  /**
   * Calls waiting for a connection, woken when one is set up or on close: one set rather than listeners of
   * their own, of which more than ten waiting (publishes during a broker blip) drew a MaxListenersExceeded
   * warning on every blip.
   */
  private readonly waiters = new Set<() => void>();

  constructor(
    private readonly options: BrokerOptions,
    private readonly logger: Logger,
  ) {
    super();
  }

  /** Adds a hook; if already connected it also runs now, on the current connection. */
  async onConnect(hook: SetupHook): Promise<void> {
    this.hooks.push(hook);
    if (this.current) await hook(this.current);
  }

  get connected(): boolean {
    return this.current !== undefined;
  }

  /** The live connection, or undefined between a drop and the next successful setup. */
  get model(): ChannelModel | undefined {
    return this.current;
  }

  /** The frame size both sides agreed on (bounds the header frame, hence CC lists). */
  get frameMax(): number {
    const negotiated = (this.current as unknown as { connection?: { frameMax?: number } })?.connection
      ?.frameMax;
    return negotiated ?? this.options.frameMax;
  }

  /** Bytes a header table (the CC list and other headers) may take in one message. */
  get headerBudget(): number {
    return Math.min(this.frameMax, AMQPLIB_TABLE_BUFFER);
  }

  /**
   * Connects, retrying with backoff; resolves after the first successful setup. Forever by default (a
   * daemon waits for its broker, logging each attempt); with `timeoutMs`, gives up after that long, stops
   * retrying and rejects with the last attempt's error (a library's caller is told). An attempt that
   * `giveUpOn` says will fail the same way again (see `refusedForGood`) ends it at once, not retryable,
   * with or without a timeout. Once connected, reconnects go on whatever they meet.
   */
  async start(options: { timeoutMs?: number; giveUpOn?: (error: Error) => boolean } = {}): Promise<void> {
    let url: URL;
    try {
      url = new URL(this.options.url);
    } catch {
      // URL's own error carries the whole input, password included.
      throw new WarrenError(
        ErrorCode.Config,
        `not a valid broker URL: ${withoutCredentials(this.options.url)} (percent-encode @, /, : and spaces in the user name and password)`,
      );
    }
    if (!url.searchParams.has('frameMax')) url.searchParams.set('frameMax', String(this.options.frameMax));
    if (!url.searchParams.has('heartbeat'))
      url.searchParams.set('heartbeat', String(this.options.heartbeatSec));
    const { reconnectBaseMs, reconnectCapMs } = this.options;
    this.recovering = await amqp.connect(url.toString(), {
      clientProperties: { connection_name: this.options.connectionName },
      // amqplib leaves Nagle's algorithm on: a small frame written while an earlier one is unacknowledged
      // waits for the broker's delayed ACK. Under load that added 20–40 ms to every hop (measured: publish →
      // consume p50 23 ms with it, 1.4 ms without, with the claim-check bench's fan-out running).
      noDelay: true,
      // Until the handshake is done; amqplib clears it then (heartbeats watch the open connection).
      timeout: this.options.connectTimeoutMs,
      recovery: {
        waitForConnect: false,
        maxRetries: Infinity,
        calculateDelay: (attempt: number) => fullJitterDelay(attempt, reconnectBaseMs, reconnectCapMs),
        setup: (model: ChannelModel) => this.setup(model),
      },
    });
    this.recovering.on('connect', () => {
      this.logger.info('broker connected');
      this.wake();
      this.emit('connected');
    });
    this.recovering.on('disconnect', (error: Error) => {
      this.current = undefined;
      // An alarm belongs to the connection it was raised on. Kept, it would fail every `failIfBlocked`
      // publish at once while reconnecting, instead of waiting for the next connection. (The broker tells
      // that one only once it publishes under the alarm: until then a publish waits for its confirm.)
      this.blockedBy = undefined;
      if (this.closing) return;
      this.logger.warn({ err: error.message }, 'broker connection lost; reconnecting');
      this.emit('disconnected', error);
    });
    let lastFailure: string | undefined;
    let refusal: Error | undefined;
    const recovering = this.recovering;
    const givenUp = new Promise<void>((resolve) =>
      recovering.on('connect-failed', (error: Error) => {
        lastFailure = explainConnectFailure(error, this.options.url);
        // Which broker: a daemon waiting on a wrong URL says so in its own log, not only in an address.
        this.logger.warn(
          { err: lastFailure, url: withoutCredentials(this.options.url) },
          'broker connect failed',
        );
        if (refusal === undefined && options.giveUpOn?.(error)) {
          refusal = error;
          resolve();
        }
      }),
    );
    this.recovering.on('reconnect-scheduled', (info: { attempt: number; delay: number }) => {
      this.logger.debug(info, 'broker reconnect scheduled');
    });
    this.recovering.on('error', (error: Error) => {
      this.logger.warn({ err: error.message }, 'broker connection error');
    });
    const { timeoutMs } = options;
    const connectedOrRefused = Promise.race([this.recovering.waitForConnect(), givenUp]);
    // Without a timeout it waits for one or the other, however long.
    const settled =
      timeoutMs === undefined
        ? await connectedOrRefused.then(() => true)
        : await fulfilsWithin(connectedOrRefused, timeoutMs);
    if (settled && refusal === undefined) return;
    await this.close().catch(() => {});
    // Told as the declaration said it, its code kept: a mismatch is not the broker being unavailable.
    if (isWarrenError(refusal, ErrorCode.TopologyMismatch)) throw refusal;
    if (refusal !== undefined) {
      // RabbitMQ says which mechanism refused the login, not what to mend.
      const hint = /\bLogin was refused\b/.test(refusal.message)
        ? ': check the user name and password in the URL'
        : '';
      throw new WarrenError(
        ErrorCode.BrokerUnavailable,
        `RabbitMQ at ${withoutCredentials(this.options.url)} refused: ${refusal.message}${hint}`,
        // The same credentials, vhost and permissions are refused the same way until an operator acts.
        { cause: refusal, retryable: false },
      );
    }
    throw new WarrenError(
      ErrorCode.BrokerUnavailable,
      `cannot connect to RabbitMQ at ${withoutCredentials(this.options.url)} within ${timeoutMs} ms` +
        (lastFailure ? `: ${lastFailure}` : ''),
      { retryable: true },
    );
  }

  private async setup(model: ChannelModel): Promise<void> {
    // Channel-level errors surface on their channels; this keeps a stray one from crashing the process.
    model.on('error', (error: Error) => this.logger.debug({ err: error.message }, 'connection error event'));
    // A memory or disk alarm: the broker takes no publishes (and confirms none) until it clears.
    model.on('blocked', (reason: string) => {
      if (this.lastModel === model) this.blockedBy = reason;
      this.logger.warn({ reason }, 'broker blocked this connection');
    });
    model.on('unblocked', () => {
      if (this.lastModel === model) this.blockedBy = undefined;
      this.logger.info('broker unblocked this connection');
    });
    for (const hook of this.hooks) {
      try {
        await hook(model);
      } catch (error) {
        this.logger.error({ err: errorMessage(error) }, 'broker setup failed; will reconnect');
        throw error;
      }
    }
    // Closed (or given up on) while the hooks ran: this connection is not to be used, or kept.
    if (this.closing) {
      await model.close().catch(() => {});
      throw new WarrenError(ErrorCode.Closed, 'broker connection is closed');
    }
    this.current = model;
    this.lastModel = model;
    this.blockedBy = undefined;
  }

  /** Why the broker blocks publishes on this connection (a memory or disk alarm), while it does. */
  get blocked(): string | undefined {
    return this.blockedBy;
  }

  /** Resolves when connected, or rejects after `timeoutMs`. */
  async waitConnected(timeoutMs: number): Promise<ChannelModel> {
    if (this.current) return this.current;
    if (this.closing) throw new WarrenError(ErrorCode.Closed, 'broker connection is closed');
    return new Promise<ChannelModel>((resolve, reject) => {
      const settle = (): void => {
        clearTimeout(timer);
        this.waiters.delete(settle);
        if (this.current) resolve(this.current);
        else if (this.closing) reject(new WarrenError(ErrorCode.Closed, 'broker connection is closed'));
        else
          reject(
            new WarrenError(ErrorCode.BrokerUnavailable, `broker not connected within ${timeoutMs} ms`, {
              retryable: true,
            }),
          );
      };
      const timer = setTimeout(settle, timeoutMs);
      this.waiters.add(settle);
    });
  }

  private wake(): void {
    // Lost again before this ran: they wait on, for the next connection or their timeout.
    if (this.current === undefined && !this.closing) return;
    for (const waiter of [...this.waiters]) waiter();
  }

  /** Closes the connection for good; a second call waits for the first (the same promise). */
  close(): Promise<void> {
    this.closed ??= this.shutdown();
    return this.closed;
  }

  private async shutdown(): Promise<void> {
    this.closing = true;
    this.current = undefined;
    // Whoever waits for a connection is told now, not when their timeout ends.
    this.wake();
    this.emit('closing');
    // Bounded: a broker under a resource alarm reads nothing from a blocked connection, not even its
    // close; past the bound the socket is dropped.
    const closed = await fulfilsWithin(this.recovering?.close() ?? Promise.resolve(), CLOSE_TIMEOUT_MS);
    if (!closed) {
      this.logger.warn('broker did not answer the close; dropping the connection');
      // With an error: amqplib hears of its socket only through 'error' and 'end', and a plain destroy
      // emits neither, which left its heartbeat timer and the channels' pending confirms waiting for the
      // heartbeat to notice (twice the interval on), and the process alive until then.
      (
        this.lastModel as unknown as { connection?: { stream?: { destroy(error: Error): void } } } | undefined
      )?.connection?.stream?.destroy(new Error('broker did not answer the close'));
    }
  }
}
