/** WebSocket close codes the gateway uses; the client decides how to reconnect from them. */
export const CloseCode = {
  Normal: 1000,
  /** Token missing, invalid or expired: fetch a new token before reconnecting. */
  Unauthorized: 4001,
  /** A client frame far over the limit (RFC 6455 "message too big"): fix the client. */
  MessageTooBig: 1009,
  /** Too many bad frames or messages: back off. */
  RateLimited: 4008,
  /** The tab did not read fast enough and crossed the backpressure limit: back off. */
  TooSlow: 4009,
  /** The node is draining (deploy, scale-in): reconnect promptly, with jitter, to another node. */
  Draining: 4100,
  /** The connection reached its maximum lifetime: reconnect promptly, with jitter. */
  LifetimeReached: 4101,
} as const;

export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode];

export const CloseReason: Readonly<Record<number, string>> = {
  [CloseCode.Unauthorized]: 'unauthorized',
  [CloseCode.RateLimited]: 'rate limited',
  [CloseCode.TooSlow]: 'too slow',
  [CloseCode.Draining]: 'draining',
  [CloseCode.LifetimeReached]: 'lifetime reached',
};
