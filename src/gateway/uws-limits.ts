/**
 * uWebSockets.js's bound on a request's headers, read once when its binary loads (so this module is
 * imported before it): by default 4 KiB, past which it answers 431 before Warren sees the request, without
 * a log line or a metric. An upgrade carries the token (in the URL or a header, up to 8 KiB: see
 * BlockingTokenVerifier) and whatever cookies the browser holds for the gateway's host, so every tab of a
 * site with a few KiB of cookies would fail to connect. 16 KiB is Node's own `--max-http-header-size`
 * default; an operator's `UWS_HTTP_MAX_HEADERS_SIZE` stands.
 */
export const MAX_HEADERS_BYTES = 16 * 1024;

process.env['UWS_HTTP_MAX_HEADERS_SIZE'] ??= String(MAX_HEADERS_BYTES);
