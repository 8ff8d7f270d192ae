import type { ServerFrame } from '../protocol/frames.js';

const CLOSE = Buffer.from('}');

/**
 * An event frame around `data` bytes the resolver already serialised: the payload is copied, never parsed.
 * `id` and `type` are validated ids (no characters that need escaping) but go through JSON.stringify anyway.
 */
export function eventFrame(id: string, eventType: string, offset: number, data: Uint8Array): Buffer {
  const head = Buffer.from(
    `{"type":"event","id":${JSON.stringify(id)},"eventType":${JSON.stringify(eventType)},"offset":${offset},"data":`,
  );
  return Buffer.concat([head, data.byteLength > 0 ? data : Buffer.from('null'), CLOSE]);
}

export function encodeFrame(frame: ServerFrame): string {
  return JSON.stringify(frame);
}
