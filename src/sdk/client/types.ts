import type { ReconnectOptions } from './reconnect-policy.js';
import type { GetToken } from './token-source.js';
import type { UrlOption } from './url-ring.js';

/** Connection state of a client. `connecting` until the first `welcome`; `reconnecting` after losing one. */
export const ClientState = {
  Connecting: 'connecting',
  Connected: 'connected',
  Reconnecting: 'reconnecting',
  /** `close()` was called; terminal. */
  Closed: 'closed',
} as const;
export type ClientState = (typeof ClientState)[keyof typeof ClientState];

/** Who holds the WebSocket: this tab alone, this tab for its siblings (leader), or a sibling (follower). */
export const TabRole = { Own: 'own', Leader: 'leader', Follower: 'follower' } as const;
export type TabRole = (typeof TabRole)[keyof typeof TabRole];

export const ClientErrorCode = {
  /** `getToken` threw, returned nothing or did not settle in time; the client retries with backoff. */
  Token: 'token_failed',
  /**
   * An attempt failed before the gateway's welcome: the WebSocket could not be created (a malformed URL),
   * the connection was refused or closed (a token the gateway does not accept, a node not ready, a host
   * not reachable: a browser does not tell them apart), or no welcome came in time. Retried with backoff.
   */
  Socket: 'socket_failed',
  /** The server sent something that is not a JSON frame, or a frame without the fields it must have. */
  BadFrame: 'bad_frame',
  /** A large event's payload expired before the gateway fetched it; `eventId` names the event. */
  PayloadUnavailable: 'payload_unavailable',
  /** `shareAcrossTabs` cannot work in this context (locks or channels refused); the tab has its own socket. */
  Share: 'share_unavailable',
  /** A tab-sharing sibling announced a different user; its relay is ignored. */
  ShareMismatch: 'share_mismatch',
  /**
   * `getToken` came to name another user (someone else signed in on this browser): the client closed
   * without showing anything of theirs. The page still shows the first user: reload it, or create a new
   * client for the new user.
   */
  IdentityChanged: 'identity_changed',
  /** An error frame from the gateway not covered above (its `code` is in the message). */
  Server: 'server_error',
} as const;
export type ClientErrorCode = (typeof ClientErrorCode)[keyof typeof ClientErrorCode];

export class WarrenClientError extends Error {
  override readonly name = 'WarrenClientError';
  /** The event an error is about, when it concerns one. */
  readonly eventId?: string;

  constructor(
    readonly code: ClientErrorCode,
    message: string,
    options?: { cause?: unknown; eventId?: string },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    if (options?.eventId !== undefined) this.eventId = options.eventId;
  }
}

export interface StateChange {
  from: ClientState;
  to: ClientState;
  /** The close code that ended the connection, on a move to `reconnecting` (1006 for a failed attempt). */
  code?: number;
}

/** An event as the application sees it: each id once. */
export interface WarrenEvent {
  id: string;
  type: string;
  data: unknown;
}

/** The connection's identity, from the gateway's `welcome`. */
export interface Session {
  userId: string;
  tenantId: string;
  gateway: string;
  connectionId: string;
}

/**
 * Events may have been missed (the client came back on another node, or the node's history no longer
 * reached back far enough): reload the state you show from your API.
 */
export interface Resync {
  reason: 'new_node' | 'history_gap';
}

export interface ClientEvents {
  state: StateChange;
  event: WarrenEvent;
  error: WarrenClientError;
  role: TabRole;
  resync: Resync;
}

export interface ClientOptions {
  /** `ws(s)://host/ws`, a list of gateway nodes (random start, another at random on failure or drain), or a function. */
  url: UrlOption;
  /**
   * Returns a token for the current user; called at start, after 4001, after repeated failed attempts, and
   * when a tab takes over its tabs' shared socket (so that a user signed out meanwhile is not connected
   * with the token the tab started with: throw, or return another user's, and no socket opens for them).
   */
  getToken: GetToken;
  /**
   * Share one WebSocket among this user's tabs of the same origin: one tab (elected with Web Locks) holds
   * it and relays over BroadcastChannel. Tabs are grouped by the token's `tid`/`sub` claims; a string
   * separates groups further. A token that is not a readable JWT shares nothing. Default false.
   */
  shareAcrossTabs?: boolean | string;
  /** `protocol` (default) sends the token as `Sec-WebSocket-Protocol: warren, bearer.<jwt>`, `query` as `?token=`. */
  tokenTransport?: 'protocol' | 'query';
  reconnect?: Partial<ReconnectOptions>;
  /** How many recent event ids to remember for deduplication. Default 1000. */
  dedupWindow?: number;
  /** Ping interval; a connection silent for a whole interval after a ping is dropped. 0 = off. Default 25 s. */
  pingIntervalMs?: number;
  /**
   * How long one attempt may take, from calling `getToken` to the gateway's `welcome`, before it is given up
   * and retried with backoff (a `token_failed` or `socket_failed` error says which part hung). 0 = off.
   * Default 20 s.
   */
  connectTimeoutMs?: number;
  /** A WebSocket implementation, for runtimes without a global one. */
  WebSocket?: typeof WebSocket;
}
