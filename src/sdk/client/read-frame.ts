import type { ServerFrame } from '../../protocol/frames.js';

/**
 * The fields a frame of each type must have for the client to act on it: an `offset` a number, the others
 * strings. A welcome with no user in it would close the client as if someone else had signed in, an event
 * with no id passes the dedup once and reaches the application, and an offset that is no number would stop
 * the cursor for good (every later resume refused as a bad frame, with nothing said).
 */
const SHAPES: Partial<Record<string, string[]>> = {
  welcome: ['userId', 'tenantId', 'epoch', 'offset'],
  event: ['id', 'eventType', 'offset'],
  resumed: ['offset'],
  error: ['code'],
};

/**
 * The server frame a WebSocket message carries: undefined for a binary message, text that is not JSON or
 * not a frame (`bad` is told why), or a type this client does not know (a newer gateway's, passed over).
 */
export function readFrame(
  data: unknown,
  bad?: (why: string, cause?: unknown) => void,
): ServerFrame | undefined {
  if (typeof data !== 'string') return undefined;
  let frame: unknown;
  try {
    frame = JSON.parse(data);
  } catch (cause) {
    bad?.('frame is not JSON', cause);
    return undefined;
  }
  const type = (frame as { type?: unknown } | null)?.type;
  if (typeof frame !== 'object' || frame === null || Array.isArray(frame) || typeof type !== 'string') {
    bad?.('frame is not an object with a type');
    return undefined;
  }
  const fields = frame as Record<string, unknown>;
  // Not `?? []`: a type named like a property every object has (`constructor`) finds that.
  const shape = SHAPES[type];
  const wellFormed = (Array.isArray(shape) ? shape : []).every((name) =>
    name === 'offset' ? Number.isFinite(fields[name]) : typeof fields[name] === 'string',
  );
  if (wellFormed) return frame as ServerFrame;
  bad?.(`${type} frame without the fields it must have`);
  return undefined;
}
