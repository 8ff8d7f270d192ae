import { FrameErrorCode, type ServerFrame } from '../protocol/frames.js';

const NULL = Buffer.from('null');

/**
 * An event frame around `data` bytes that are already JSON (serialised once by the resolver, or the
 * claim-checked payload as stored): the payload is copied once into the frame, never parsed or
 * re-encoded, and the one frame is then written to every local tab. `id` and `type` are validated ids
 * (no characters that need escaping) but go through JSON.stringify anyway.
 */
export function eventFrame(id: string, eventType: string, offset: number, data: Uint8Array): Buffer {
  const head = `{"type":"event","id":${JSON.stringify(id)},"eventType":${JSON.stringify(eventType)},"offset":${offset},"data":`;
  const body = data.byteLength > 0 ? data : NULL;
  const headBytes = Buffer.byteLength(head);
  const frame = Buffer.allocUnsafe(headBytes + body.byteLength + 1);
  frame.write(head, 0, 'utf8');
  frame.set(body, headBytes);
  frame[frame.length - 1] = 0x7d; // '}'
  return frame;
}

export function encodeFrame(frame: ServerFrame): string {
  return JSON.stringify(frame);
}

/**
 * `events_missed`: the node lost (or may not have delivered) deliveries for the tab's user; at `offset` in
 * the tenant's count when the gap has one (a resume from it, or later, misses nothing after it).
 */
export function eventsMissedFrame(message: string, offset?: number): string {
  return encodeFrame({
    type: 'error',
    code: FrameErrorCode.EventsMissed,
    message,
    ...(offset === undefined ? {} : { offset }),
  });
}
