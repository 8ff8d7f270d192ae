import type { WebSocket } from 'uWebSockets.js';
import { userKey } from '../protocol/ids.js';
import type { Identity } from './auth.js';
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

/** Called once per gateway-initiated close, for metrics. */
export type CloseListener = (code: number) => void;

/** One browser tab: a socket plus the identity its token proved. */
export class Tab implements RegisteredTab {
  readonly id: string;
  readonly tenantId: string;
  readonly userId: string;
  readonly key: string;
  readonly expiresAt: number;
  /** Set once `welcome` is sent; deliveries before that are not this tab's to receive. */
  ready = false;
  closed = false;
  badFrames = 0;
  timer: NodeJS.Timeout | undefined;
  private outgoing: Uint8Array | string = '';
  private readonly sendOutgoing = (): void => {
    this.ws.send(this.outgoing, false);
    // uWS has copied it; a large payload must not stay referenced by every tab until its next frame.
    this.outgoing = '';
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
    this.key = userKey(this.tenantId, this.userId);
  }

  /**
   * Writes a text frame. A tab whose unsent bytes pass the limit is closed with `tooSlowCode` rather than
   * buffered further: one slow tab must not grow the node's memory or hold up other tabs.
   */
  write(frame: Uint8Array | string, tooSlowCode: number): boolean {
    if (this.closed) return false;
    // One bound callback per tab rather than a closure per frame: this runs for every frame of every tab.
    this.outgoing = frame;
    this.ws.cork(this.sendOutgoing);
    if (this.ws.getBufferedAmount() > this.limits.maxBackpressureBytes) {
      this.end(tooSlowCode, 'too slow');
      return false;
    }
    return true;
  }

  /**
   * Whether `pending` more bytes, on top of what the socket has not sent yet, would pass the backpressure
   * limit (frames a writer holds back for the tab count as unsent).
   */
  wouldOverflow(pending: number): boolean {
    return !this.closed && this.ws.getBufferedAmount() + pending > this.limits.maxBackpressureBytes;
  }

  /** Closes with a code (idempotent). */
  end(code: number, reason: string): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.onGatewayClose(code);
    this.ws.end(code, reason);
  }

  /** Marks the socket gone (its close handler ran). */
  markClosed(): void {
    this.closed = true;
    clearTimeout(this.timer);
  }
}
