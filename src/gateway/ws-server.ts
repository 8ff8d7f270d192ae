import { randomUUID } from 'node:crypto';
// Before uWebSockets.js: it reads its header bound once, as it loads.
import './uws-limits.js';
import * as uWS from 'uWebSockets.js';
import type { HttpRequest, HttpResponse, TemplatedApp, WebSocket } from 'uWebSockets.js';
import { CloseCode } from '../protocol/close-codes.js';
import { BEARER_PROTOCOL_PREFIX, FrameErrorCode, WS_PROTOCOL, type ServerFrame } from '../protocol/frames.js';
import { clientFrameSchema, describeIssues } from '../protocol/schemas.js';
import { ErrorCode, errorMessage, WarrenError } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import { jitter } from '../shared/backoff.js';
import { PerKeyThrottle } from '../shared/throttle.js';
import type { Registry } from '../shared/metrics.js';
import { RefusalReason, TokenRefused, type Identity } from './auth.js';
import type { RevocationStore } from '../store/revocation-store.js';
import type { BlockingTokenVerifier } from './blocking-verifier.js';
import type { DeliveryRouter } from './delivery-router.js';
import { encodeFrame } from './frames.js';
import type { GatewayMetrics } from './gateway-metrics.js';
import type { DeliveryHistory } from './history.js';
import { send, sendHead, watchAbort } from './http.js';
import type { ConnectionRegistry } from './registry.js';
import { endIfRevoked, PING_BURST, Tab, type TabSocketData } from './tab.js';

export interface WsServerLimits {
  maxFrameBytes: number;
  maxBackpressureBytes: number;
  idleTimeoutSec: number;
  maxLifetimeMs: number;
  lifetimeJitter: number;
  badFrameLimit: number;
  /** How long a tab told to move (`handoff`) stays open before its 4101 (`gateway.handoffMs`). */
  handoffMs: number;
}

export interface Readiness {
  broker: boolean;
  redis: boolean;
  /**
   * The payloads' own Redis (`claimCheck.redisUrl`), when one is set: reported, not required. Without it
   * only claim-checked events fail (payload_unavailable); refusing every new tab of every node, which share
   * it, would take the small events down with them.
   */
  payloadRedis?: boolean;
  /** Tokens can be verified (the verifier's worker is up). */
  tokens: boolean;
  /**
   * The node's queue is consumed and every held user bound: false while it subscribes again with the
   * broker connection up (its channel closed, its queue deleted or its bindings lost) until its users are
   * bound again and the revocations it may have missed are read.
   */
  consuming: boolean;
  draining: boolean;
}

/** Whether the node takes new tabs. */
export const isReady = (r: Readiness): boolean =>
  r.broker && r.redis && r.tokens && r.consuming && !r.draining;

export interface WsServerDeps {
  nodeId: string;
  verifier: Pick<BlockingTokenVerifier, 'verify'>;
  registry: ConnectionRegistry<Tab>;
  /** Revoked users (`revokeUser`): read for every new tab once its user's key is bound. */
  revocations: Pick<RevocationStore, 'revokedAt'>;
  history: DeliveryHistory;
  /** Where a new tab's stream starts (see DeliveryRouter.welcomeOffset). */
  router: Pick<DeliveryRouter, 'welcomeOffset' | 'adopt' | 'writeTo' | 'heldFor'>;
  metrics: GatewayMetrics;
  metricsRegistry: Registry;
  /** `/metrics` is served on another port (`gateway.metricsPort`): this app answers it 404. */
  metricsElsewhere?: boolean;
  limits: WsServerLimits;
  readiness: () => Readiness;
  logger: Logger;
  /** Extra HTTP routes (the dev demo page), registered before the catch-all 404. */
  routes?: (app: TemplatedApp) => void;
  /** Runs before a tab told to move is closed (see Tab.handOff). */
  beforeHandoffClose?: (tab: Tab) => Promise<void>;
}

// setTimeout cannot wait longer than 2^31-1 ms; a far-away expiry is re-armed when this one fires.
const MAX_TIMER_MS = 2_147_483_647;
const decoder = new TextDecoder();

function tokenFrom(req: HttpRequest): { token: string | undefined; protocol: string } {
  const offered = req
    .getHeader('sec-websocket-protocol')
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean);
  const bearer = offered.find((p) => p.startsWith(BEARER_PROTOCOL_PREFIX));
  // Answer with `warren` only: echoing the bearer entry would send the token back in a header.
  const protocol = offered.includes(WS_PROTOCOL) ? WS_PROTOCOL : '';
  const token = bearer ? bearer.slice(BEARER_PROTOCOL_PREFIX.length) : req.getQuery('token');
  return { token: token || undefined, protocol };
}

// uWS's limit is an unsigned 32-bit byte count; frames past it would be dropped silently (send returns 2,
// which Tab treats as too slow anyway).
const UWS_MAX_BACKPRESSURE = 0xffff_ffff;

const NOT_FOUND = JSON.stringify({ error: 'not found' });
const NOT_ALLOWED = JSON.stringify({ error: 'method not allowed' });

/** How often the log says, per reason, that tokens were refused. */
const REFUSAL_LOG_INTERVAL_MS = 10_000;

/** uSockets' listen options (`ListenOptions` is a const enum only in the typings). */
const LISTEN_DEFAULT = 0;
const LISTEN_EXCLUSIVE_PORT = 1;
type ListenWithOptions = (
  host: string,
  port: number,
  options: number,
  cb: (socket: uWS.us_listen_socket | false) => void,
) => void;

/** Frames up to this get an error frame when over `maxFrameBytes`; larger ones close the socket (1009). */
function closeAbove(maxFrameBytes: number): number {
  return Math.max(64 * 1024, maxFrameBytes * 4);
}

/** The uWebSockets.js app: `/ws` for tabs, `/healthz`, `/readyz`, `/metrics`. */
export class WsServer {
  private readonly app: TemplatedApp;
  private listenSocket: uWS.us_listen_socket | undefined;
  private accepting = true;
  private readonly refusals = new PerKeyThrottle(REFUSAL_LOG_INTERVAL_MS);

  constructor(private readonly deps: WsServerDeps) {
    const { limits } = deps;
    this.app = uWS.App();
    this.app.ws<TabSocketData>('/ws', {
      // Past this uWS drops the connection without a close frame (the browser says 1006): set 4 times
      // above the bound Warren closes at itself, with 1009, so that a client sending too much hears why.
      maxPayloadLength: 4 * closeAbove(limits.maxFrameBytes),
      idleTimeout: limits.idleTimeoutSec,
      sendPingsAutomatically: true,
      // Warren closes a slow tab itself (4009); uWS must never drop a frame first, and a tab may be one
      // large event above the limit (see Tab.allowance), so uWS's own bound is set out of the way.
      maxBackpressure: UWS_MAX_BACKPRESSURE,
      closeOnBackpressureLimit: false,
      upgrade: (res, req, context) => this.upgrade(res, req, context),
      open: (ws) => this.open(ws),
      message: (ws, message, isBinary) => this.message(ws, message, isBinary),
      close: (ws) => this.closed(ws),
    });
    // A plain GET of the socket's path: say what it wants rather than 404 (someone pasting the URL into a
    // browser, a load balancer's check pointed at it).
    this.app.get('/ws', (res) =>
      send(
        res,
        '426 Upgrade Required',
        JSON.stringify({ error: 'WebSocket upgrade required' }),
        'application/json',
        {
          upgrade: 'websocket',
        },
      ),
    );
    // Load balancers and uptime checks ask with GET or HEAD.
    const health = (path: string, answer: () => { status: string; body: string }): void => {
      this.app.get(path, (res) => {
        const { status, body } = answer();
        send(res, status, body);
      });
      this.app.head(path, (res) => {
        const { status, body } = answer();
        sendHead(res, status, body);
      });
      this.app.any(path, (res) =>
        send(res, '405 Method Not Allowed', NOT_ALLOWED, 'application/json', { allow: 'GET, HEAD' }),
      );
    };
    health('/healthz', () => ({ status: '200 OK', body: JSON.stringify({ status: 'ok' }) }));
    health('/readyz', () => {
      const r = deps.readiness();
      const ready = isReady(r);
      return { status: ready ? '200 OK' : '503 Service Unavailable', body: JSON.stringify({ ready, ...r }) };
    });
    // Unless served on a port of its own (`gateway.metricsPort`), away from the tabs' public one.
    if (!deps.metricsElsewhere) {
      this.app.head('/metrics', (res) =>
        sendHead(res, '405 Method Not Allowed', NOT_ALLOWED, 'application/json', { allow: 'GET' }),
      );
      this.app.any('/metrics', (res) =>
        send(res, '405 Method Not Allowed', NOT_ALLOWED, 'application/json', { allow: 'GET' }),
      );
      this.app.get('/metrics', (res) => {
        const state = watchAbort(res);
        deps.metricsRegistry.metrics().then(
          (text) => {
            if (!state.aborted) send(res, '200 OK', text, deps.metricsRegistry.contentType);
          },
          (error: unknown) => {
            if (!state.aborted) send(res, '500 Internal Server Error', errorMessage(error), 'text/plain');
          },
        );
      });
    }
    deps.routes?.(this.app);
    // A HEAD answer must carry no body, whatever the path: bytes after it would be read as the start of the
    // next answer on a kept-alive connection.
    this.app.head('/*', (res) => sendHead(res, '404 Not Found', NOT_FOUND));
    this.app.any('/*', (res) => send(res, '404 Not Found', NOT_FOUND));
  }

  /**
   * Listens on `host:port`. uSockets sets SO_REUSEPORT unless told otherwise, so a second process on a
   * port already taken would listen too and take every other connection (with `warren dev`, each its own
   * secret: half the tokens refused); unless `reusePort`, a taken port fails here instead.
   */
  listen(host: string, port: number, reusePort = false): Promise<number> {
    return new Promise((resolve, reject) => {
      const done = (socket: uWS.us_listen_socket | false): void => {
        if (!socket) {
          const hint = reusePort
            ? ''
            : ' (is another process listening on it? Stop it, or set gateway.port, WARREN_GATEWAY_PORT)';
          reject(new WarrenError(ErrorCode.Listen, `cannot listen on ${host}:${port}${hint}`));
          return;
        }
        this.listenSocket = socket;
        resolve(uWS.us_socket_local_port(socket as unknown as uWS.us_socket));
      };
      const options = reusePort ? LISTEN_DEFAULT : LISTEN_EXCLUSIVE_PORT;
      // The typings give options only without a host; the binding takes (host, port, options, cb) too.
      (this.app as unknown as { listen: ListenWithOptions }).listen(host, port, options, done);
    });
  }

  /** Stops accepting connections; open ones stay. */
  stopAccepting(): void {
    this.accepting = false;
    if (this.listenSocket) uWS.us_listen_socket_close(this.listenSocket);
    this.listenSocket = undefined;
  }

  /** Force-closes everything still open. */
  close(): void {
    this.stopAccepting();
    this.app.close();
  }

  private upgrade(res: HttpResponse, req: HttpRequest, context: uWS.us_socket_context_t): void {
    if (!this.accepting || !isReady(this.deps.readiness())) {
      send(res, '503 Service Unavailable', 'not ready', 'text/plain', { 'retry-after': '1' });
      return;
    }
    const { token, protocol } = tokenFrom(req);
    let identity: Identity;
    try {
      // Synchronous on purpose (see BlockingTokenVerifier): the upgrade then completes inside this handler.
      identity = this.deps.verifier.verify(token);
    } catch (error) {
      if (error instanceof TokenRefused) {
        this.refused(error.reason, 'HTTP 401', error.message);
        send(res, '401 Unauthorized', 'unauthorized', 'text/plain');
      } else {
        this.deps.logger.debug({ err: errorMessage(error) }, 'upgrade refused');
        send(res, '503 Service Unavailable', 'try again', 'text/plain', { 'retry-after': '1' });
      }
      return;
    }
    const data: TabSocketData = { identity, connectionId: randomUUID(), upgradedAt: performance.now() };
    res.upgrade(
      data,
      req.getHeader('sec-websocket-key'),
      protocol,
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  }

  private open(ws: WebSocket<TabSocketData>): void {
    const data = ws.getUserData();
    const { metrics, limits, registry } = this.deps;
    const tab = new Tab(ws, data, { maxBackpressureBytes: limits.maxBackpressureBytes }, (code) =>
      metrics.closes.inc({ code: String(code) }),
    );
    data.tab = tab;
    metrics.connections.inc();
    registry
      .add(tab)
      // After the bind, not beside it: a revocation written after this read is published after the key
      // was bound, so the node gets it and closes the tab (DeliveryRouter.control), welcomed or not.
      .then(() => (tab.closed ? undefined : this.deps.revocations.revokedAt(tab.tenantId, tab.userId)))
      .then(
        (revokedAt) => {
          if (tab.closed) return;
          // The token ran out while the user was being bound (a slow broker): no welcome, and no delivery.
          if (Date.now() >= tab.expiresAt) return tab.end(CloseCode.Unauthorized, 'token expired');
          if (endIfRevoked(tab, revokedAt))
            return this.refused(RefusalReason.Revoked, 'closed with 4001 before the welcome');
          const { history, nodeId, router } = this.deps;
          const offset = router.welcomeOffset(tab.tenantId, tab.key);
          this.sendFrame(tab, {
            type: 'welcome',
            connectionId: tab.id,
            userId: tab.userId,
            tenantId: tab.tenantId,
            gateway: nodeId,
            epoch: history.epoch,
            offset,
          });
          tab.welcomeOffset = offset;
          tab.ready = true;
          // Asked before the welcome: answered after it, which is always a tab's first frame.
          for (const frame of tab.errorsDue.splice(0)) this.sendFrame(tab, frame);
          for (; tab.pongsDue > 0; tab.pongsDue -= 1) this.sendFrame(tab, { type: 'pong' });
          router.adopt(tab);
          metrics.welcomeSeconds.observe((performance.now() - data.upgradedAt) / 1000);
          this.armTimer(tab, Date.now() + this.lifetime());
          // Last, as if sent right after the welcome: a client resuming at once on a reconnect need not
          // wait for the welcome to ask.
          const resume = tab.resumeDue;
          tab.resumeDue = undefined;
          if (resume) this.resume(tab, resume.epoch, resume.offset);
        },
        (error: unknown) => {
          this.deps.logger.warn({ err: errorMessage(error), connectionId: tab.id }, 'could not register tab');
          tab.end(1013, 'try again later');
        },
      );
  }

  /**
   * Counts a refused token, and says so once per reason per interval, with how many: a token minted wrong
   * refuses every connection, and at debug level nothing would say why; a flood of junk tokens costs a line
   * per interval.
   */
  private refused(reason: RefusalReason, how: string, err?: string): void {
    this.deps.metrics.authFailures.inc({ reason });
    this.refusals.tell(reason, 1, (count) =>
      this.deps.logger.info(
        { reason, ...(err === undefined ? {} : { err }), count },
        `tokens refused (${how})`,
      ),
    );
  }

  private lifetime(): number {
    const { maxLifetimeMs, lifetimeJitter } = this.deps.limits;
    return maxLifetimeMs === 0 ? Infinity : jitter(maxLifetimeMs, lifetimeJitter);
  }

  /** One timer per tab, for whichever comes first: token expiry (4001) or maximum lifetime (4101). */
  private armTimer(tab: Tab, lifetimeEnd: number): void {
    const now = Date.now();
    const expired = tab.expiresAt <= lifetimeEnd;
    const at = Math.min(tab.expiresAt, lifetimeEnd);
    const delay = at - now;
    if (delay > MAX_TIMER_MS) {
      tab.timer = setTimeout(() => this.armTimer(tab, lifetimeEnd), MAX_TIMER_MS);
      return;
    }
    tab.timer = setTimeout(
      () => {
        if (expired) tab.end(CloseCode.Unauthorized, 'token expired');
        else
          void tab.handOff(
            'lifetime',
            CloseCode.LifetimeReached,
            this.deps.limits.handoffMs,
            this.deps.beforeHandoffClose,
          );
      },
      Math.max(0, delay),
    );
  }

  private message(ws: WebSocket<TabSocketData>, message: ArrayBuffer, isBinary: boolean): void {
    const tab = ws.getUserData().tab;
    if (!tab || tab.closed) return;
    // Size first, binary or not: a frame far over the bound is closed with 1009 whatever its kind.
    if (message.byteLength > closeAbove(this.deps.limits.maxFrameBytes)) {
      tab.end(CloseCode.MessageTooBig, 'frame too large');
      return;
    }
    if (message.byteLength > this.deps.limits.maxFrameBytes) {
      return this.badFrame(
        tab,
        FrameErrorCode.FrameTooLarge,
        `frames are limited to ${this.deps.limits.maxFrameBytes} bytes`,
      );
    }
    if (isBinary) return this.badFrame(tab, FrameErrorCode.BinaryFrame, 'binary frames are not accepted');
    let parsed: unknown;
    try {
      parsed = JSON.parse(decoder.decode(message));
    } catch {
      return this.badFrame(tab, FrameErrorCode.BadFrame, 'not JSON');
    }
    const result = clientFrameSchema.safeParse(parsed);
    if (!result.success) return this.badFrame(tab, FrameErrorCode.BadFrame, describeIssues(result.error));
    const frame = result.data;
    if (frame.type === 'ping') {
      if (!tab.pings.take())
        return this.badFrame(
          tab,
          FrameErrorCode.BadFrame,
          `too many pings: ${PING_BURST} at once, then one a second`,
        );
      if (tab.ready) this.sendFrame(tab, { type: 'pong' });
      else tab.pongsDue += 1;
      return;
    }
    this.resume(tab, frame.epoch, frame.offset);
  }

  private resume(tab: Tab, epoch: string, offset: number): void {
    const { history } = this.deps;
    if (tab.resumed || tab.resumeDue) {
      return this.badFrame(tab, FrameErrorCode.BadFrame, 'this connection has already resumed');
    }
    if (!tab.ready) {
      tab.resumeDue = { epoch, offset };
      return;
    }
    tab.resumed = true;
    // Up to the welcome's offset: what was delivered since then has already been written to this tab.
    // Within gateway.resumeWindowMs: the history's maximum age.
    const frames = history.since(epoch, tab.tenantId, offset, tab.key, tab.welcomeOffset);
    if (!frames) {
      this.sendFrame(tab, {
        type: 'error',
        code: FrameErrorCode.ResumeUnavailable,
        message:
          epoch === history.epoch
            ? 'history does not cover that offset on this node; resynchronise'
            : 'that epoch is not this node’s (another node, or this one restarted); resynchronise',
      });
      return;
    }
    // Written at once, a replay past the tab's backpressure limit would close a healthy tab as too slow
    // (4009, and a longer backoff): the client resynchronises from the application instead. Counted with
    // what is already held back for the tab (live events waiting for the next turns): they are sent first.
    let { bytes, largest } = this.deps.router.heldFor(tab);
    for (const frame of frames) {
      bytes += frame.byteLength;
      largest = Math.max(largest, frame.byteLength);
    }
    if (tab.wouldOverflow(bytes, largest)) {
      this.sendFrame(tab, {
        type: 'error',
        code: FrameErrorCode.ResumeUnavailable,
        message: `${frames.length} missed events (${bytes} bytes with what waits for this tab) are more than it may buffer; resynchronise`,
      });
      return;
    }
    const resumed = Buffer.from(
      encodeFrame({
        type: 'resumed',
        epoch: history.epoch,
        replayed: frames.length,
        // How far the replay reached: the welcome's offset (later deliveries came live).
        offset: tab.welcomeOffset,
      }),
    );
    // `resumed` after the last replayed frame, however many turns the replay is spread over.
    this.deps.router.writeTo(tab, [...frames, resumed]);
  }

  private badFrame(tab: Tab, code: FrameErrorCode, message: string): void {
    this.deps.metrics.badFrames.inc();
    tab.badFrames += 1;
    if (tab.badFrames > this.deps.limits.badFrameLimit) {
      tab.end(CloseCode.RateLimited, 'too many bad frames');
      return;
    }
    // Before the welcome, held for after it (see `errorsDue`).
    if (tab.ready) this.sendFrame(tab, { type: 'error', code, message });
    else tab.errorsDue.push({ type: 'error', code, message });
  }

  private sendFrame(tab: Tab, frame: ServerFrame): void {
    tab.write(encodeFrame(frame), CloseCode.TooSlow);
  }

  private closed(ws: WebSocket<TabSocketData>): void {
    const tab = ws.getUserData().tab;
    if (!tab) return;
    tab.markClosed();
    this.deps.metrics.connections.dec();
    this.deps.registry.remove(tab);
  }
}
