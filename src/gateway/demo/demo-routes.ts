import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { HttpRequest, TemplatedApp } from 'uWebSockets.js';
import { EVENT_TYPE_PATTERN } from '../../protocol/ids.js';
import { errorMessage } from '../../shared/errors.js';
import type { Logger } from '../../shared/logger.js';
import { BodyTooLarge, readBody, send, sendJson } from '../http.js';
import { DEMO_DIRECTORY, findTenant, findUser } from './demo-directory.js';
import { DEMO_PAGE } from './demo-page.js';

/** What the demo routes publish: a model event as the publisher SDK takes it. */
export interface DemoEvent {
  id: string;
  tenantId: string;
  type: string;
  audience: { teams: string[] };
  data: { text: string; team: string; from: string };
}

export interface DemoRoutesDeps {
  /** Mints a token for a demo user; absent when the installation verifies tokens with a public key. */
  mintToken?: (tenantId: string, userId: string) => Promise<string>;
  publish: (event: DemoEvent) => Promise<void>;
  /** dist/client/warren-client.js, built by `npm run build`. */
  clientBundlePath: string;
  logger: Logger;
}

const MAX_BODY_BYTES = 4096;
const MAX_TEXT = 500;

class BadRequest extends Error {}

// Browsers on other sites cannot reach these through a developer's `warren dev` by DNS rebinding: the
// Host must be the loopback name the page was opened on. Machines on the same network cannot either, even
// sending that Host themselves: the connection must come from this machine.
const LOCAL_HOST = /^(localhost|127\.0\.0\.1|\[::1\])(:\d+)?$/i;
// What a proxy or a relay on this machine adds: the request then comes from elsewhere, whatever its Host.
const RELAYED = ['forwarded', 'x-forwarded-for', 'x-forwarded-host', 'x-real-ip', 'via'];

/** Whether a request reached the dev endpoints from this machine's own browser (see `LOCAL_HOST`). */
function fromThisMachine(req: HttpRequest, peer: string): boolean {
  if (!LOCAL_HOST.test(req.getHeader('host')) || !isLoopback(peer)) return false;
  if (RELAYED.some((name) => req.getHeader(name) !== '')) return false;
  // A browser says which page sent it: only the demo page itself, served from this very host and port.
  const origin = req.getHeader('origin');
  return origin === '' || origin.toLowerCase() === `http://${req.getHeader('host').toLowerCase()}`;
}

/** Whether uWS's text form of the peer address is a loopback address (IPv4, IPv6 or IPv4-mapped). */
export function isLoopback(address: string): boolean {
  const a = address.toLowerCase();
  if (/^(::ffff:)?127\.\d+\.\d+\.\d+$/.test(a)) return true;
  // IPv6 ::1, written short or in full; IPv4-mapped 127.x written in hex.
  const groups = a.includes('::') ? expandIpv6(a) : a.split(':');
  if (groups.length !== 8) return false;
  const n = groups.map((g) => parseInt(g || '0', 16));
  const zeros = (from: number, to: number) => n.slice(from, to).every((v) => v === 0);
  if (zeros(0, 7) && n[7] === 1) return true;
  return zeros(0, 5) && n[5] === 0xffff && (n[6] ?? 0) >> 8 === 127;
}

function expandIpv6(address: string): string[] {
  const [head = '', tail = ''] = address.split('::');
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  return [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right];
}

/**
 * Reads a JSON object body. Only `application/json` is accepted: another site cannot send that type
 * without a CORS preflight, which these routes never approve, so a page elsewhere cannot mint tokens or
 * publish through a developer's running `warren dev`.
 */
async function jsonBody(body: Promise<Buffer>, contentType: string): Promise<Record<string, unknown>> {
  if (!contentType.startsWith('application/json')) throw new BadRequest('content-type must be JSON');
  let bytes: Buffer;
  try {
    bytes = await body;
  } catch (error) {
    throw error instanceof BodyTooLarge ? new BadRequest('body too large') : error;
  }
  try {
    const value: unknown = JSON.parse(bytes.toString('utf8'));
    if (typeof value !== 'object' || value === null) throw new Error('not an object');
    return value as Record<string, unknown>;
  } catch {
    throw new BadRequest('body must be a JSON object');
  }
}

/** Runs a JSON POST handler and answers with its result, 400 for a BadRequest, 500 otherwise. */
function jsonPost(
  app: TemplatedApp,
  path: string,
  logger: Logger,
  handle: (body: Record<string, unknown>) => Promise<unknown>,
): void {
  app.post(path, (res, req) => {
    const request = readBody(res, MAX_BODY_BYTES);
    const peer = Buffer.from(res.getRemoteAddressAsText()).toString();
    if (!fromThisMachine(req, peer)) {
      sendJson(res, '403 Forbidden', {
        error:
          'dev endpoints answer only the demo page of this machine: opened at localhost, 127.0.0.1 or [::1], ' +
          'not through a proxy, not from a page of another origin',
      });
      return;
    }
    jsonBody(request.body, req.getHeader('content-type'))
      .then(handle)
      .then(
        (result) => {
          if (!request.aborted) sendJson(res, '200 OK', result);
        },
        (error: unknown) => {
          if (request.aborted) return;
          if (error instanceof BadRequest) return sendJson(res, '400 Bad Request', { error: error.message });
          logger.warn({ err: errorMessage(error), path }, 'demo request failed');
          sendJson(res, '500 Internal Server Error', { error: errorMessage(error) });
        },
      );
  });
}

/**
 * The `warren dev` demo: the page at `/`, the client bundle, and dev-only endpoints to mint tokens for the
 * demo users and publish to the demo teams. `warren gateway` never registers these, so there they are 404.
 */
export function demoRoutes(deps: DemoRoutesDeps): (app: TemplatedApp) => void {
  const logger = deps.logger.child({ component: 'demo' });

  return (app) => {
    app.get('/', (res) => send(res, '200 OK', DEMO_PAGE, 'text/html; charset=utf-8'));

    // Read on every request, so `npm run build:client` shows up without restarting `warren dev`.
    app.get('/warren-client.js', (res) => {
      let aborted = false;
      res.onAborted(() => (aborted = true));
      readFile(deps.clientBundlePath).then(
        (js) => {
          if (!aborted)
            send(res, '200 OK', js, 'text/javascript; charset=utf-8', { 'cache-control': 'no-cache' });
        },
        () => {
          const hint = 'console.error("warren-client.js is not built: run npm run build")';
          if (!aborted) send(res, '503 Service Unavailable', hint, 'text/javascript');
        },
      );
    });

    app.get('/dev/directory', (res) => sendJson(res, '200 OK', { tenants: DEMO_DIRECTORY }));

    jsonPost(app, '/dev/token', logger, async (body) => {
      const tenant = findTenant(body['tenantId']);
      const user = tenant && findUser(tenant, body['userId']);
      if (!tenant || !user) throw new BadRequest('unknown demo tenant or user');
      if (!deps.mintToken)
        throw new BadRequest('dev tokens need an HS256 secret (WARREN_JWT_SECRET or none at all)');
      return { token: await deps.mintToken(tenant.id, user.id) };
    });

    jsonPost(app, '/dev/publish', logger, async (body) => {
      const tenant = findTenant(body['tenantId']);
      const team = tenant?.teams.find((t) => t.id === body['teamId']);
      const from = tenant && findUser(tenant, body['from']);
      const { type = 'message.created', text } = body;
      if (!tenant || !team) throw new BadRequest('unknown demo tenant or team');
      // The routing key `<tenant>.<type>` must fit in 255 characters too (checked again by the SDK).
      if (
        typeof type !== 'string' ||
        !EVENT_TYPE_PATTERN.test(type) ||
        tenant.id.length + 1 + type.length > 255
      )
        throw new BadRequest(
          'event type must be up to 8 dot-separated words of letters, digits, _ and - (message.created)',
        );
      if (body['from'] !== undefined && !from) throw new BadRequest('unknown demo user in from');
      if (typeof text !== 'string' || text.trim() === '' || text.trim().length > MAX_TEXT) {
        throw new BadRequest(`text must be 1 to ${MAX_TEXT} characters`);
      }
      const id = `evt_${Date.now().toString(36)}${randomBytes(4).toString('hex')}`;
      await deps.publish({
        id,
        tenantId: tenant.id,
        type,
        audience: { teams: [team.id] },
        data: { text: text.trim(), team: team.id, from: from?.id ?? 'someone' },
      });
      return { id };
    });
  };
}
