import type { WebSocket } from 'uWebSockets.js';
import { CloseCode } from '../protocol/close-codes.js';
import { userKey } from '../protocol/ids.js';
import type { HandoffFrame, ServerFrame } from '../protocol/frames.js';
import { revokes } from '../store/revocation-store.js';
import type { Identity } from './auth.js';
import { encodeFrame, eventsMissedFrame } from './frames.js';
import type { RegisteredTab } from './registry.js';

export interface TabSocketData {
  identity: Identity;
  connectionId: string;
  upgradedAt: number;
  tab?: Tab;
}

export interface TabLimits {
  maxBackpressureBytes: number;
}

/**
 * Closes `tab` with 4001 if a revocation of its user at `revokedAt` covers its token (see `revokes`);
 * whether it did. The one place a revocation closes a tab: a new tab's own read, the gateways' message,
 * and a node's read of what it may have missed.
 */
export function endIfRevoked(
  tab: Pick<Tab, 'closed' | 'issuedAt' | 'end'>,
  revokedAt: number | undefined,
): boolean {
  if (tab.closed || revokedAt === undefined || !revokes(revokedAt, tab.issuedAt)) return false;
  tab.end(CloseCode.Unauthorized, 'token revoked');
  return true;
}

/** Called once per gateway-initiated close, for metrics. */
export type CloseListener = (code: number) => void;

/**
 * A client pings only to find out whether its connection is alive (the SDK every 25 s at most, never more
 * than once a second): a few at once, then one a second. Past that each ping costs the node's one thread
 * a parse and a write for nothing, and is answered as a bad frame (`gateway.badFrameLimit` closes it).
 */
export const PING_BURST = 5;
const PING_REFILL_MS = 1000;

/** A tab's pings: `PING_BURST` at once, earning one back a second, on a clock that never steps back. */
export class PingBudget {
  private left = PING_BURST;
  private since = 0;

  constructor(private readonly now: () => number = () => performance.now()) {}

  /** Spends one ping; false when none is left. */
  take(): boolean {
    const now = this.now();
    // A clock set back (the injected one of a test, say): counted as no time passed, never as a debt.
    if (now < this.since) this.since = now;
    const earned = Math.floor((now - this.since) / PING_REFILL_MS);
    if (earned > 0) {
      this.left = Math.min(PING_BURST, this.left + earned);
      this.since = this.left === PING_BURST ? now : this.since + earned * PING_REFILL_MS;
    }
    if (this.left === 0) return false;
    this.left -= 1;
    return true;
  }
}

/** One browser tab: a socket plus the identity its token proved. */
export class Tab implements RegisteredTab {
  readonly id: string;
  readonly tenantId: string;
  readonly userId: string;
  readonly key: string;
  readonly expiresAt: number;
  /** Its token's `iat`, epoch milliseconds (see Identity.issuedAt). */
  readonly issuedAt: number | undefined;
  /** Set once `welcome` is sent; deliveries before that are not this tab's to receive. */
  ready = false;
  /** Pings that came before the welcome: their pongs follow the welcome, one each. */
  pongsDue = 0;
  /** A `resume` that came before the welcome: answered after it (the replay reaches up to the welcome). */
  resumeDue: { epoch: string; offset: number } | undefined;
  /**
   * Error frames answering frames that came before the welcome, sent after it (at most the bad-frame
   * limit: past it the tab is closed).
   */
  readonly errorsDue: ServerFrame[] = [];
  /** The node's delivery offset when `welcome` was sent: deliveries after it reach the tab live. */
  welcomeOffset = 0;
  /** A tab resumes once; the replay is bounded by `welcomeOffset`, so a second one would only repeat it. */
  resumed = false;
  closed = false;
  badFrames = 0;
  /** Pings this tab may still send (see PING_BURST). */
  readonly pings = new PingBudget();
  timer: NodeJS.Timeout | undefined;
  /** Set while the tab has been told to move (`handOff`): resolves once it is closed. */
  private handoff: Promise<void> | undefined;
  private handedOff: (() => void) | undefined;
  /** Frames written in this turn, sent together at its end (see `Tab.write`). */
  private pending: (Uint8Array | string)[] = [];
  private pendingBytes = 0;
  /** The largest of the pending frames: the limit stretches to let one such frame through. */
  private largestPending = 0;
  /** The largest frame sent since the socket's unsent bytes were last within the limit. */
  private largestUnsent = 0;
  /** uWS refused a frame of this turn (2 = dropped): the tab has lost it and must not go on as if not. */
  private dropped = false;
  private readonly sendPending = (): void => {
    for (const frame of this.pending) if (this.ws.send(frame, false) === 2) this.dropped = true;
    // uWS has copied them; a large payload must not stay referenced by every tab until its next frame.
    this.clearPending();
  };

  constructor(
    private readonly ws: WebSocket<TabSocketData>,
    data: TabSocketData,
    private readonly limits: TabLimits,
    private readonly onGatewayClose: CloseListener,
  ) {
    this.id = data.connectionId;
    this.tenantId = data.identity.tenantId;
    this.userId = data.identity.userId;
    this.expiresAt = data.identity.expiresAt;
    this.issuedAt = data.identity.issuedAt;
    this.key = userKey(this.tenantId, this.userId);
  }

  /**
   * Queues a text frame; it is sent at the end of the current turn with the others queued for this tab,
   * under one cork, so several events for a tab in one turn (one read from the broker holds many) cost one
   * socket write instead of one each. A tab whose unsent bytes then pass the limit is closed with
   * `tooSlowCode` rather than buffered further: one slow tab must not grow the node's memory or hold up
   * other tabs. Returns false when the tab is closed.
   */
  write(frame: Uint8Array | string, tooSlowCode: number): boolean {
    if (this.closed) return false;
    // Its token has run out and its timer has not fired yet (an event loop busy for a while): nothing more
    // is written to it.
    if (Date.now() >= this.expiresAt) {
      this.end(CloseCode.Unauthorized, 'token expired');
      return false;
    }
    if (this.pending.length === 0) outbox.add(this, tooSlowCode);
    this.pending.push(frame);
    const bytes = typeof frame === 'string' ? Buffer.byteLength(frame) : frame.byteLength;
    this.pendingBytes += bytes;
    if (bytes > this.largestPending) this.largestPending = bytes;
    return true;
  }

  /** Sends what `write` queued (called by the outbox at the end of the turn, and before a close). */
  flush(tooSlowCode: number): void {
    if (this.closed || this.pending.length === 0) return;
    // What is left of an earlier large frame is within the limit: it needs no allowance any more.
    if (this.ws.getBufferedAmount() <= this.limits.maxBackpressureBytes) this.largestUnsent = 0;
    this.largestUnsent = Math.max(this.largestUnsent, this.largestPending);
    const allowed = this.allowance(0);
    this.ws.cork(this.sendPending);
    if (this.dropped || this.ws.getBufferedAmount() > allowed) this.end(tooSlowCode, 'too slow');
  }

  /**
   * Whether `pending` more bytes (the largest frame among them `largestFrame`), on top of what the socket
   * has not sent yet, would pass the backpressure limit (frames a writer holds back count as unsent).
   */
  wouldOverflow(pending: number, largestFrame = 0): boolean {
    return (
      !this.closed && this.ws.getBufferedAmount() + this.pendingBytes + pending > this.allowance(largestFrame)
    );
  }

  /**
   * Unsent bytes allowed: the configured limit, plus the largest frame that may still be unsent when that
   * frame alone is over the limit. An event bigger than the limit then still reaches a tab that keeps up
   * (instead of closing every tab it is for with 4009, and again on each resume), while a tab more than
   * the limit behind it is still too slow.
   */
  private allowance(largestFrame: number): number {
    const { maxBackpressureBytes } = this.limits;
    const largest = Math.max(largestFrame, this.largestPending, this.largestUnsent);
    return largest > maxBackpressureBytes ? maxBackpressureBytes + largest : maxBackpressureBytes;
  }

  /** Closes with a code (idempotent). Frames queued in this turn go first, unless the tab is too slow. */
  end(code: number, reason: string): void {
    if (this.closed) return;
    if (code !== CloseCode.TooSlow && this.pending.length > 0) this.ws.cork(this.sendPending);
    this.clearPending();
    this.closed = true;
    clearTimeout(this.timer);
    this.handedOff?.();
    this.onGatewayClose(code);
    this.ws.end(code, reason);
  }

  /** Marks the socket gone (its close handler ran). */
  markClosed(): void {
    this.closed = true;
    this.clearPending();
    clearTimeout(this.timer);
    this.handedOff?.();
  }

  /**
   * Closes the tab with `code` (4100 draining, 4101 lifetime) after telling it to move: a `handoff` frame,
   * then `ms` for the client to be welcomed elsewhere (it closes this socket itself then), or until its
   * token expires (4001) if sooner. At once when `ms` is 0, or before the welcome (always a tab's first
   * frame). Deliveries go on meanwhile. Resolves once the tab is closed; asked again while it moves, the
   * first close stands, unless asked with no time (a superseded node, which delivers nothing more: holding
   * the client there would only delay its move, and the node's end). `beforeClose` runs when the time is
   * up, the close waiting for it (the caller bounds it).
   */
  handOff(
    reason: HandoffFrame['reason'],
    code: number,
    ms: number,
    beforeClose?: (tab: Tab) => Promise<void>,
  ): Promise<void> {
    if (this.closed) return Promise.resolve();
    const why = reason === 'draining' ? 'draining' : 'lifetime reached';
    if (this.handoff && ms > 0) return this.handoff;
    if (!this.ready || ms <= 0) {
      // Told to move already, its client may be on another node, taking this close for the end of what
      // this node had for it: closed with no time (superseded), the node can no longer say it delivered
      // everything (what it had not read yet is the other process's now, and reaches no tab).
      if (this.handoff) {
        const missed = 'this node stopped before it had delivered everything routed to it; resynchronise';
        this.write(eventsMissedFrame(missed), CloseCode.TooSlow);
      }
      this.end(code, why);
      return Promise.resolve();
    }
    this.handoff = new Promise<void>((resolve) => (this.handedOff = resolve));
    // The token's expiry may come first (closed with 4001 then): the frame says when the close comes.
    const now = Date.now();
    const expires = this.expiresAt <= now + ms;
    const delay = Math.max(0, Math.min(ms, this.expiresAt - now));
    this.write(encodeFrame({ type: 'handoff', reason, closeInMs: delay }), CloseCode.TooSlow);
    clearTimeout(this.timer);
    const close = (): void =>
      expires ? this.end(CloseCode.Unauthorized, 'token expired') : this.end(code, why);
    this.timer = setTimeout(() => {
      if (!beforeClose) return close();
      void beforeClose(this).then(close, close);
    }, delay);
    return this.handoff;
  }

  private clearPending(): void {
    this.pending = [];
    this.pendingBytes = 0;
    this.largestPending = 0;
  }
}

/**
 * The tabs with frames queued in this turn. Flushed in a microtask: after the synchronous work that queued
 * them (amqplib hands over every delivery of one socket read in one go), before any I/O of the next turn.
 */
class Outbox {
  private readonly tabs = new Map<Tab, number>();
  private scheduled = false;
  private readonly flush = (): void => {
    this.scheduled = false;
    for (const [tab, tooSlowCode] of this.tabs) {
      // Out first: a tab whose socket throws must not stay listed and stall every later flush.
      this.tabs.delete(tab);
      try {
        tab.flush(tooSlowCode);
      } catch {
        tab.markClosed();
      }
    }
  };

  add(tab: Tab, tooSlowCode: number): void {
    this.tabs.set(tab, tooSlowCode);
    if (this.scheduled) return;
    this.scheduled = true;
    queueMicrotask(this.flush);
  }
}

const outbox = new Outbox();
