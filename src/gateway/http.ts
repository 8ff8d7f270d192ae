import type { HttpResponse } from 'uWebSockets.js';

/** Small helpers for uWS HTTP responses; writes are corked, as uWS wants for responses sent after an await. */

export function send(
  res: HttpResponse,
  status: string,
  body: string | Uint8Array,
  contentType = 'application/json',
  headers: Record<string, string> = {},
): void {
  res.cork(() => {
    res.writeStatus(status).writeHeader('content-type', contentType);
    for (const [name, value] of Object.entries(headers)) res.writeHeader(name, value);
    res.end(body);
  });
}

export function sendJson(res: HttpResponse, status: string, value: unknown): void {
  send(res, status, JSON.stringify(value));
}

/** Tracks whether the client went away, which uWS requires before any asynchronous response. */
export function watchAbort(res: HttpResponse): { readonly aborted: boolean } {
  const state = { aborted: false };
  res.onAborted(() => {
    state.aborted = true;
  });
  return state;
}

/** Reads a request body up to `limit` bytes; rejects when larger or aborted. Call synchronously in the handler. */
export function readBody(res: HttpResponse, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    res.onAborted(() => reject(new Error('request aborted')));
    res.onData((chunk, isLast) => {
      size += chunk.byteLength;
      if (size > limit) {
        reject(new Error(`body larger than ${limit} bytes`));
        return;
      }
      // uWS reuses the chunk's memory after this callback: copy it.
      chunks.push(Buffer.from(new Uint8Array(chunk)));
      if (isLast) resolve(Buffer.concat(chunks));
    });
  });
}
