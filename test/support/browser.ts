import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { bundleClient } from '../../scripts/client-bundle.js';
import type { ClientOptions, Session, StateChange } from '../../src/sdk/client/index.js';
import { afterAll, beforeAll } from 'vitest';
import { eventually, token } from './harness.js';

export { freePort } from './harness.js';

/** Debian's Chromium, headless, with everything that would reach the network or slow start-up turned off. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: process.env['WARREN_TEST_CHROMIUM'] ?? '/usr/bin/chromium',
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

let bundle: Promise<string> | undefined;

/** The client bundle built from the current source, in memory, exactly as `npm run build` builds it. */
export function clientBundle(): Promise<string> {
  bundle ??= bundleClient().then((contents) => new TextDecoder().decode(contents));
  return bundle;
}

/**
 * Chromium and a test site for the tests of a describe block, started before the first and closed after the
 * last; read them from the returned object inside hooks and tests.
 */
export function useChromium(): { readonly browser: Browser; readonly site: TestSite } {
  const state = {} as { browser: Browser; site: TestSite };
  beforeAll(async () => {
    [state.browser, state.site] = await Promise.all([launchChromium(), TestSite.start()]);
  });
  afterAll(async () => {
    await state.browser?.close();
    await state.site?.close();
  });
  return state;
}

/** What the test page records; read back with `page.evaluate`. */
interface PageLog {
  events: string[];
  states: StateChange[];
  roles: string[];
  resyncs: string[];
  errors: string[];
}

interface PageHooks {
  start(options: TabOptions): void;
  log: PageLog;
  client: { state: string; role: string; session: Session | undefined; close(): void };
}

/** Client options a test passes to a tab; the page supplies `getToken` (from this site's /token). */
export type TabOptions = Omit<ClientOptions, 'getToken' | 'WebSocket' | 'url'> & {
  url: string | string[];
  tid: string;
  sub: string;
};

// Served at `/`: exposes a `start(options)` hook that connects with the bundle and logs what the client emits.
const PAGE = `<!doctype html><meta charset="utf-8"><title>warren test tab</title>
<script type="module">
import { connect } from '/warren-client.js';
window.warrenTest = {
  start(options) {
    const { tid, sub, ...rest } = options;
    const log = { events: [], states: [], roles: [], resyncs: [], errors: [] };
    const getToken = async () => {
      const res = await fetch('/token?tid=' + encodeURIComponent(tid) + '&sub=' + encodeURIComponent(sub));
      if (!res.ok) throw new Error('token endpoint answered ' + res.status);
      return res.text();
    };
    const client = connect({ ...rest, getToken });
    client.on('event', (e) => log.events.push(e.id));
    client.on('state', (s) => log.states.push(s));
    client.on('role', (r) => log.roles.push(r));
    client.on('resync', (r) => log.resyncs.push(r.reason));
    client.on('error', (e) => log.errors.push(e.code + ': ' + e.message));
    window.warrenTest.log = log;
    window.warrenTest.client = client;
  },
};
</script>`;

/** A tiny same-origin site for the tabs: the test page, the client bundle, and tokens on demand. */
export class TestSite {
  private readonly requests = new Map<string, number>();
  private readonly ttls = new Map<string, number[]>();
  private readonly refusals = new Map<string, number>();
  private readonly server: Server;
  origin = '';

  private constructor(js: string) {
    this.server = createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://localhost');
      if (url.pathname === '/') {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(PAGE);
      } else if (url.pathname === '/warren-client.js') {
        res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' }).end(js);
      } else if (url.pathname === '/token') {
        this.mint(url.searchParams.get('tid') ?? '', url.searchParams.get('sub') ?? '').then(
          (jwt) => res.writeHead(200, { 'content-type': 'text/plain' }).end(jwt),
          () => res.writeHead(500).end(),
        );
      } else res.writeHead(404).end();
    });
  }

  static async start(): Promise<TestSite> {
    const site = new TestSite(await clientBundle());
    await new Promise<void>((resolve) => site.server.listen(0, '127.0.0.1', resolve));
    site.origin = `http://127.0.0.1:${(site.server.address() as AddressInfo).port}`;
    return site;
  }

  /** How many tokens tabs fetched for a user. */
  tokenRequests(sub: string): number {
    return this.requests.get(sub) ?? 0;
  }

  /** The next tokens minted for `sub` expire after these many seconds, in order; then one hour. */
  expireNextTokens(sub: string, seconds: number[]): void {
    this.ttls.set(sub, [...seconds]);
  }

  /** The next `count` tokens minted for `sub` are signed with a key the gateway does not know (HTTP 401). */
  refuseNextTokens(sub: string, count: number): void {
    this.refusals.set(sub, count);
  }

  private mint(tid: string, sub: string): Promise<string> {
    this.requests.set(sub, this.tokenRequests(sub) + 1);
    const refusals = this.refusals.get(sub) ?? 0;
    this.refusals.set(sub, Math.max(0, refusals - 1));
    const secret = refusals > 0 ? 'a-key-the-gateway-does-not-know' : undefined;
    return token({ sub, tid, expiresIn: this.ttls.get(sub)?.shift() ?? 3600, ...(secret ? { secret } : {}) });
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** One browser tab running the client, as the test reads it. */
export class BrowserTab {
  constructor(readonly page: Page) {}

  static async open(context: BrowserContext, site: TestSite, options: TabOptions): Promise<BrowserTab> {
    const page = await context.newPage();
    await page.goto(`${site.origin}/`);
    await page.waitForFunction(() => 'warrenTest' in window, undefined, { polling: 20 });
    await page.evaluate((o) => (window as unknown as TestWindow).warrenTest.start(o), options);
    return new BrowserTab(page);
  }

  log(): Promise<PageLog> {
    return this.page.evaluate(() => (window as unknown as TestWindow).warrenTest.log);
  }

  events(): Promise<string[]> {
    return this.page.evaluate(() => (window as unknown as TestWindow).warrenTest.log.events);
  }

  status(): Promise<{ state: string; role: string; gateway: string | undefined }> {
    return this.page.evaluate(() => {
      const { client } = (window as unknown as TestWindow).warrenTest;
      return { state: client.state, role: client.role, gateway: client.session?.gateway };
    });
  }

  /** Waits until every id is shown in this tab. */
  async waitForEvents(ids: readonly string[], what: string, timeoutMs = 10_000): Promise<void> {
    await eventually(
      async () => {
        const seen = new Set(await this.events());
        return ids.every((id) => seen.has(id));
      },
      what,
      timeoutMs,
    );
  }

  close(): Promise<void> {
    return this.page.close();
  }
}

/** Functions passed to page.evaluate are serialised: they reach the page's hooks through `window` only. */
type TestWindow = { warrenTest: PageHooks };

/** Waits until every tab's client is connected. */
export async function allConnected(tabs: readonly BrowserTab[], timeoutMs = 10_000): Promise<void> {
  await eventually(
    async () => (await Promise.all(tabs.map((t) => t.status()))).every((s) => s.state === 'connected'),
    'every tab connected',
    timeoutMs,
  );
}
