import {
  BEARER_PROTOCOL_PREFIX,
  WS_PROTOCOL,
  type ClientFrame,
  type ServerFrame,
  type WelcomeFrame,
} from '../../protocol/frames.js';
import { CloseCode } from '../../protocol/close-codes.js';
import { MovedFrom } from './moved-from.js';
import { ABNORMAL_CLOSURE, planReconnect, type ReconnectOptions } from './reconnect-policy.js';
import { tokenError, type TokenSource } from './token-source.js';
import { readFrame } from './read-frame.js';
import { ClientErrorCode, WarrenClientError } from './types.js';
import type { UrlRing } from './url-ring.js';

export interface LinkHooks {
  /**
   * Every server frame, in order; `welcome` means the connection can receive. While the link moves to
   * another node (`handoff`), also the events the old connection still brings, without their offsets
   * (they count on the old node).
   */
  frame(frame: ServerFrame): void;
  /**
   * The link moved to another node without a gap: the node it was on said it would close (`handoff`), and
   * the new connection was welcomed while the old one was still open (and is kept open a moment longer
   * for what is still on its way through it).
   */
  moved(welcome: WelcomeFrame): void;
  /** The connections moved from are all let go (see `moving`). */
  settled(): void;
  /** A connection ended or an attempt failed; the link has already scheduled the next attempt. */
  down(code: number): void;
  error(error: WarrenClientError): void;
}

export interface LinkSettings {
  urls: UrlRing;
  tokens: TokenSource;
  reconnect: ReconnectOptions;
  tokenTransport: 'protocol' | 'query';
  pingIntervalMs: number;
  /** One attempt, from asking for the token to the gateway's welcome; 0 = unbounded. */
  connectTimeoutMs: number;
  WebSocket: typeof WebSocket;
  random: () => number;
  now: () => number;
}

type Timer = ReturnType<typeof setTimeout>;

/** A `handoff` without a usable `closeInMs` (the gateway's default `gateway.handoffMs`). */
const DEFAULT_CLOSE_IN_MS = 5000;
/** The largest `gateway.handoffMs`: a `closeInMs` above it is taken as this. */
const MAX_CLOSE_IN_MS = 60_000;
/**
 * A connection moved from is closed this long after its node said it would close it, if still open. Over
 * the second a node takes at most to find out whether it has delivered everything (and say events_missed
 * if not) before that close, with time to spare for a busy node.
 */
export const LEFT_GRACE_MS = 2500;

/**
 * `error` with `token` (as sent, or URI-encoded) masked in its message; the error itself when its message
 * does not hold it. The masked one is a new error of the same name, without the original as its cause,
 * which would carry the token still.
 */
function withoutToken(error: unknown, token: string): unknown {
  if (!(error instanceof Error)) return error;
  const masked = error.message.split(encodeURIComponent(token)).join('***').split(token).join('***');
  if (masked === error.message) return error;
  const copy = new Error(masked);
  copy.name = error.name;
  return copy;
}

/**
 * A connection that closed before the gateway's welcome. A browser reports an upgrade the gateway refused
 * (401 for a token it does not accept, 503 for a node not ready) as it reports an unreachable host: 1006,
 * with nothing more; the gateway's log and its `warren_gateway_auth_failures_total` say which.
 */
function attemptFailed(url: string, code: number): WarrenClientError {
  const why =
    code === ABNORMAL_CLOSURE
      ? 'refused (a token the gateway does not accept, a node not ready) or unreachable'
      : `closed with ${code}`;
  return new WarrenClientError(ClientErrorCode.Socket, `no connection to ${url}: ${why}; retrying`);
}

/**
 * One WebSocket to a gateway and the loop that keeps it up: token, URL, connect, and after every close a
 * delay chosen by the reconnect policy. Knows nothing of events, dedup or tabs.
 */
export class SocketLink {
  private ws: WebSocket | undefined;
  private retryTimer: Timer | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private closed = false;
  private attempt = 0;
  private failures = 0;
  private refreshToken = false;
  private welcomedAt: number | undefined;
  private lastFrameAt = 0;
  private pingSentAt: number | undefined;
  /** Gives the attempt up when no welcome comes in time (`bound`). */
  private attemptTimer: Timer | undefined;
  /** The URL of the current attempt, without a token. */
  private attemptUrl = '';
  /** Aborted by `close()`: gives up a token still being fetched. */
  private readonly closing = new AbortController();
  /** The connection being opened to move to, after a `handoff`; it replaces `ws` once welcomed. */
  private next: WebSocket | undefined;
  private nextTimer: Timer | undefined;
  /** The connections moved from, still kept: more than one when the new node too says `handoff` soon. */
  private readonly left: MovedFrom;

  constructor(
    private readonly settings: LinkSettings,
    private readonly hooks: LinkHooks,
  ) {
    this.left = new MovedFrom(
      (frame) => hooks.frame(frame),
      () => {
        if (!this.closed) hooks.settled();
      },
    );
  }

  start(): void {
    void this.open();
  }

  /** A connection moved from is still kept: what its node has not written yet comes through it only. */
  moving(): boolean {
    return this.left.size > 0;
  }

  /** Sends a frame if the socket is open; frames are never queued across connections. */
  send(frame: ClientFrame): void {
    if (this.ws?.readyState === 1) this.ws.send(JSON.stringify(frame));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.closing.abort();
    clearTimeout(this.retryTimer);
    clearTimeout(this.attemptTimer);
    this.dropNext();
    this.left.dropAll();
    this.detach()?.close(1000, 'client closed');
  }

  /**
   * Opens a socket to `url` with `token`; throws what the browser throws (a blocked URL), with the token
   * masked: a URL it refuses is quoted in its message (Chromium's "The URL '…' is invalid.", the ws
   * package's "Invalid URL: …"), `?token=` and all, and the application logs the error it is told.
   */
  private socketTo(url: string, token: string): WebSocket {
    const { tokenTransport, WebSocket: Socket } = this.settings;
    try {
      return tokenTransport === 'query'
        ? new Socket(`${url}${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`, WS_PROTOCOL)
        : new Socket(url, [WS_PROTOCOL, `${BEARER_PROTOCOL_PREFIX}${token}`]);
    } catch (error) {
      throw withoutToken(error, token);
    }
  }

  private async open(): Promise<void> {
    const started = this.settings.now();
    let token: string;
    try {
      token = await this.settings.tokens.getWithin(
        this.refreshToken,
        this.settings.connectTimeoutMs,
        this.closing.signal,
      );
    } catch (cause) {
      if (this.closed) return;
      this.hooks.error(tokenError(cause));
      // No node was tried: the next attempt goes to the same one (a tab taking over stays on its leader's).
      this.ended(ABNORMAL_CLOSURE, undefined, { keepUrl: true });
      return;
    }
    if (this.closed) return;
    this.refreshToken = false;
    let url = '(url option)';
    let ws: WebSocket;
    try {
      // Inside the try: a `url` function of the application that throws is a failed attempt, retried.
      url = this.settings.urls.current();
      ws = this.socketTo(url, token);
    } catch (cause) {
      const why = cause instanceof Error ? `: ${cause.message}` : '';
      this.hooks.error(new WarrenClientError(ClientErrorCode.Socket, `cannot open ${url}${why}`, { cause }));
      this.ended(ABNORMAL_CLOSURE, undefined);
      return;
    }
    this.attach(ws, url);
    this.welcomedAt = undefined;
    this.bound(started);
  }

  /** Makes `ws`, opened to `url`, the link's connection: its frames and its close are the link's. */
  private attach(ws: WebSocket, url: string): void {
    this.ws = ws;
    this.attemptUrl = url;
    ws.onmessage = (message: MessageEvent) => this.message(message.data);
    ws.onclose = (event: CloseEvent) => this.dropped(event.code);
  }

  /** A server frame `readFrame` could not take, on any connection of the link: reported, and ignored. */
  private readonly badFrame = (why: string, cause?: unknown): void =>
    this.hooks.error(new WarrenClientError(ClientErrorCode.BadFrame, why, { cause }));

  private message(data: unknown): void {
    this.lastFrameAt = this.settings.now();
    const frame = readFrame(data, this.badFrame);
    if (!frame) return;
    if (frame.type === 'welcome') {
      clearTimeout(this.attemptTimer);
      this.welcomedAt = this.lastFrameAt;
      this.startPing();
    }
    if (frame.type === 'handoff') {
      const { closeInMs } = frame;
      const ms =
        typeof closeInMs === 'number' && closeInMs >= 0
          ? Math.min(closeInMs, MAX_CLOSE_IN_MS)
          : DEFAULT_CLOSE_IN_MS;
      void this.moveOn(this.settings.now() + ms);
      return;
    }
    if (frame.type === 'event') this.left.seen(frame.id);
    this.hooks.frame(frame);
  }

  /**
   * The node will close this connection (`handoff`): a new one is opened to another node (the next URL of
   * a list, or the same URL for a load balancer to place) and takes over once welcomed; the old one stays
   * open until then, so that nothing routed meanwhile is missed. If the new one fails, the old one's close
   * reconnects as usual. `closesAt`: when the node said it would close the old one.
   */
  private async moveOn(closesAt: number): Promise<void> {
    const from = this.ws;
    if (this.next || !from) return;
    let token: string;
    try {
      token = await this.settings.tokens.getWithin(
        false,
        this.settings.connectTimeoutMs,
        this.closing.signal,
      );
    } catch {
      // The close that follows reconnects, and asks for a token again then.
      return;
    }
    if (this.closed || this.ws !== from || this.next) return;
    // The ring moves on only once the move is made: given up, the old connection's close moves it on
    // from the old node (not back to it), and until then the old node is the one its followers are told.
    const { urls } = this.settings;
    const at = urls.listed();
    let url: string;
    let ws: WebSocket;
    try {
      urls.advance();
      url = urls.current();
      ws = this.socketTo(url, token);
    } catch {
      return;
    } finally {
      if (at !== undefined) urls.moveTo(at);
    }
    this.next = ws;
    ws.onmessage = (message: MessageEvent) => {
      const frame = readFrame(message.data, this.badFrame);
      // The welcome is a connection's first frame: anything else, or one that is not a frame (a welcome
      // without its fields), gives the move up, which would otherwise wait on a welcome that never comes.
      if (frame?.type === 'welcome') this.moved(ws, url, frame, closesAt);
      else this.dropNext();
    };
    ws.onclose = () => {
      if (this.next === ws) this.dropNext();
    };
    const ms = this.settings.connectTimeoutMs;
    if (ms > 0) this.nextTimer = setTimeout(() => this.dropNext(), ms);
  }

  /** The new connection is welcomed: it becomes the link's; the old one is kept while it may bring more. */
  private moved(ws: WebSocket, url: string, welcome: WelcomeFrame, closesAt: number): void {
    clearTimeout(this.nextTimer);
    this.next = undefined;
    const old = this.detach();
    if (old) this.left.keep(old, Math.max(0, closesAt - this.settings.now()) + LEFT_GRACE_MS);
    this.settings.urls.moveTo(url);
    this.attach(ws, url);
    this.attempt = 0;
    this.failures = 0;
    this.lastFrameAt = this.settings.now();
    this.welcomedAt = this.lastFrameAt;
    this.startPing();
    this.hooks.moved(welcome);
  }

  /** Gives up a move under way (its connection failed, or the old one closed first). */
  private dropNext(): void {
    clearTimeout(this.nextTimer);
    const ws = this.next;
    this.next = undefined;
    if (!ws) return;
    ws.onmessage = null;
    ws.onclose = null;
    ws.close(1000, 'move given up');
  }

  private dropped(code: number): void {
    // Closed before the connection it was moving to was welcomed: that one is left, and the link
    // reconnects as after any close (a gap is possible, and said).
    this.dropNext();
    this.detach();
    const { welcomedAt } = this;
    // An attempt that ended before its welcome would otherwise leave the application with a client
    // `connecting` for good and nothing to show: a token the gateway refuses and a wrong URL look alike.
    // Not for a node draining or at its lifetime before the welcome: expected, and moved on from at once.
    if (welcomedAt === undefined && code !== CloseCode.Draining && code !== CloseCode.LifetimeReached)
      this.hooks.error(attemptFailed(this.attemptUrl, code));
    this.ended(code, welcomedAt === undefined ? undefined : this.settings.now() - welcomedAt);
  }

  /** `uptimeMs` undefined: the connection never got its welcome. `keepUrl`: the URL was not at fault. */
  private ended(code: number, uptimeMs: number | undefined, options: { keepUrl?: boolean } = {}): void {
    if (this.closed) return;
    clearTimeout(this.attemptTimer);
    const plan = planReconnect(
      {
        code,
        welcomed: uptimeMs !== undefined,
        uptimeMs: uptimeMs ?? 0,
        attempt: this.attempt,
        failuresBeforeWelcome: this.failures,
      },
      this.settings.reconnect,
      this.settings.random,
    );
    this.attempt = plan.attempt;
    this.failures = plan.failuresBeforeWelcome;
    this.refreshToken ||= plan.refreshToken;
    if (plan.nextUrl && !options.keepUrl) this.settings.urls.advance();
    this.retryTimer = setTimeout(() => void this.open(), plan.delayMs);
    this.hooks.down(code);
  }

  /**
   * Gives the attempt that began at `started` up once `connectTimeoutMs` has passed without a welcome (the
   * token's share of it included): a socket that never opens (packets dropped) or a gateway that accepts and
   * says nothing would otherwise hold the client in `connecting` for good. The node is left for the next.
   * A welcome, a close, or the end of the attempt clears the timer.
   */
  private bound(started: number): void {
    const ms = this.settings.connectTimeoutMs;
    if (!(ms > 0)) return;
    this.attemptTimer = setTimeout(
      () => {
        this.hooks.error(new WarrenClientError(ClientErrorCode.Socket, `no welcome within ${ms} ms`));
        this.detach()?.close(4000, 'no welcome');
        this.ended(ABNORMAL_CLOSURE, undefined);
      },
      Math.max(0, started + ms - this.settings.now()),
    );
  }

  /**
   * Pings only detect a connection that died silently (a sleeping laptop, a dropped NAT entry). The check is
   * "no frame since the last ping", not wall-clock silence: background tabs run timers late, and a late
   * timer must not look like a dead server.
   */
  private startPing(): void {
    const interval = this.settings.pingIntervalMs;
    if (interval <= 0) return;
    clearInterval(this.pingTimer);
    this.pingSentAt = undefined;
    this.pingTimer = setInterval(() => {
      const sent = this.pingSentAt;
      if (sent !== undefined && this.lastFrameAt < sent && this.settings.now() - sent >= interval) {
        this.detach()?.close(4000, 'ping timeout');
        this.dropped(ABNORMAL_CLOSURE);
        return;
      }
      this.pingSentAt = this.settings.now();
      this.send({ type: 'ping' });
    }, interval);
  }

  /** Stops listening to the current socket and returns it (the caller may close it). */
  private detach(): WebSocket | undefined {
    clearInterval(this.pingTimer);
    this.pingTimer = undefined;
    const ws = this.ws;
    this.ws = undefined;
    if (ws) {
      ws.onmessage = null;
      ws.onclose = null;
    }
    return ws;
  }
}
