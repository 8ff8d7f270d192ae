import type { ServerFrame } from '../../protocol/frames.js';

/**
 * The server frame a WebSocket message carries: undefined for a binary message, text that is not JSON
 * (`notJson` is told why), or JSON that is not an object with a `type`.
 */
export function readFrame(data: unknown, notJson?: (cause: unknown) => void): ServerFrame | undefined {
  if (typeof data !== 'string') return undefined;
  let frame: ServerFrame;
  try {
    frame = JSON.parse(data) as ServerFrame;
  } catch (cause) {
    notJson?.(cause);
    return undefined;
  }
  return typeof frame === 'object' && frame !== null && typeof frame.type === 'string' ? frame : undefined;
}
