import { WarrenClient } from './client.js';
import type { ClientOptions } from './types.js';

export { WarrenClient } from './client.js';
export { CloseCode } from '../../protocol/close-codes.js';
export {
  ClientErrorCode,
  ClientState,
  TabRole,
  WarrenClientError,
  type ClientEvents,
  type ClientOptions,
  type Resync,
  type Session,
  type StateChange,
  type WarrenEvent,
} from './types.js';
export type { ReconnectOptions } from './reconnect-policy.js';

/**
 * Connects a browser to Warren and keeps it connected.
 *
 * ```ts
 * const client = connect({
 *   url: 'wss://realtime.example.com/ws',
 *   getToken: () => fetch('/api/warren-token').then((r) => r.text()),
 *   shareAcrossTabs: true,
 * });
 * client.on('event', (e) => render(e.type, e.data));
 * client.on('state', ({ to }) => showBadge(to));
 * ```
 */
export function connect(options: ClientOptions): WarrenClient {
  return new WarrenClient(options);
}
