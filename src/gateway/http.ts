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

/**
 * Answers a HEAD request with the headers a GET would get, its length included, and no body. The length is
 * written as a header: this uWS build's `endWithoutBody(length)` aborts the process unless an abort
 * handler is attached (uNetworking/uWebSockets#1855) and leaves a kept-alive connection unusable.
 */
export function sendHead(
  res: HttpResponse,
  status: string,
  body: string,
  contentType = 'application/json',
  headers: Record<string, string> = {},
): void {
  res.cork(() => {
    res
      .writeStatus(status)
      .writeHeader('content-type', contentType)
      .writeHeader('content-length', String(Buffer.byteLength(body)));
    for (const [name, value] of Object.entries(headers)) res.writeHeader(name, value);
    res.endWithoutBody();
  });
}

/** Tracks whether the client went away, which uWS requires before any asynchronous response. */
export function watchAbort(res: HttpResponse): { readonly aborted: boolean } {
  const state = { aborted: false };
  res.onAborted(() => {
    state.aborted = true;
  });
  return state;
}

export class BodyTooLarge extends Error {}

/**
 * Reads a request body of at most `limit` bytes. Call synchronously in the handler (uWS wants its
 * callbacks attached before the handler returns); check `aborted` before answering, as with watchAbort.
 */
export function readBody(
  res: HttpResponse,
  limit: number,
): { body: Promise<Buffer>; readonly aborted: boolean } {
  const request = { aborted: false, body: Promise.resolve(Buffer.alloc(0)) };
  request.body = new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    res.onAborted(() => {
      request.aborted = true;
      reject(new Error('request aborted'));
    });
    res.onData((chunk, isLast) => {
      size += chunk.byteLength;
      // uWS reuses the chunk's memory after this callback: copy it.
      if (size <= limit) chunks.push(Buffer.from(new Uint8Array(chunk)));
      if (!isLast) return;
      if (size > limit) reject(new BodyTooLarge(`body larger than ${limit} bytes`));
      else resolve(Buffer.concat(chunks));
    });
  });
  // Whoever awaits `body` sees the rejection; a caller that answered without reading must not crash.
  request.body.catch(() => {});
  return request;
}
