/**
 * WebSocket frames (DESIGN.md §5). Types only plus constants: the browser bundle imports this file, so it
 * must stay free of zod and Node built-ins. The gateway validates client frames with `client-frame-schema`.
 */

export interface WelcomeFrame {
  type: 'welcome';
  connectionId: string;
  userId: string;
  tenantId: string;
  gateway: string;
  /** Identifies this node's delivery sequence; `offset` values are only comparable within one epoch. */
  epoch: string;
  /** The last delivery offset of this node when the connection became able to receive. */
  offset: number;
}

export interface EventFrame {
  type: 'event';
  id: string;
  eventType: string;
  data: unknown;
  offset: number;
}

export interface PongFrame {
  type: 'pong';
}

export interface ResumedFrame {
  type: 'resumed';
  epoch: string;
  /** How many missed events were replayed before this frame. */
  replayed: number;
  offset: number;
}

export interface ErrorFrame {
  type: 'error';
  code: FrameErrorCode;
  message: string;
  /** The event the error is about, when it concerns one (e.g. a payload that expired). */
  id?: string;
  /** `events_missed`: the node's offset at the gap; a resume from it (or later) misses nothing after it. */
  offset?: number;
}

/**
 * The node is about to close this connection (4100 draining, 4101 lifetime reached) in `closeInMs`: connect
 * elsewhere now, and close this one once the new one is welcomed. Events routed meanwhile reach both (the
 * user's key is bound on the new node before its welcome), so a client that drops the repeats by id misses
 * none and needs no resume.
 */
export interface HandoffFrame {
  type: 'handoff';
  reason: 'draining' | 'lifetime';
  closeInMs: number;
}

export type ServerFrame = WelcomeFrame | EventFrame | PongFrame | ResumedFrame | ErrorFrame | HandoffFrame;

export interface PingFrame {
  type: 'ping';
}

export interface ResumeFrame {
  type: 'resume';
  epoch: string;
  offset: number;
}

export type ClientFrame = PingFrame | ResumeFrame;

export const FrameErrorCode = {
  /** Not JSON, or not an object with a known `type`. */
  BadFrame: 'bad_frame',
  /** Larger than the gateway's frame limit. */
  FrameTooLarge: 'frame_too_large',
  /** Binary frames are not part of the protocol. */
  BinaryFrame: 'binary_frame',
  /** `resume` for an epoch this node does not know, or an offset its history no longer covers. */
  ResumeUnavailable: 'resume_unavailable',
  /** A claim-checked payload was missing or expired when the gateway fetched it. */
  PayloadUnavailable: 'payload_unavailable',
  /**
   * The node knows it missed deliveries while this connection was open (its queue was lost or full, or its
   * users were counted offline while it could not reach Redis): resynchronise from the application.
   */
  EventsMissed: 'events_missed',
} as const;

export type FrameErrorCode = (typeof FrameErrorCode)[keyof typeof FrameErrorCode];

/** Sub-protocol the client offers; the token may travel as a second one, `bearer.<jwt>`. */
export const WS_PROTOCOL = 'warren';
export const BEARER_PROTOCOL_PREFIX = 'bearer.';
