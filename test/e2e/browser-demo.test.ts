import { request as httpRequest } from 'node:http';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { networkInterfaces, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { seedDemoMemberships } from '../../src/gateway/demo/demo-directory.js';
import { demoRoutes } from '../../src/gateway/demo/demo-routes.js';
import { mintDevToken } from '../../src/gateway/dev-tokens.js';
import { startGateway, type Gateway } from '../../src/gateway/main.js';
import type { Resolver } from '../../src/resolver/main.js';
import type { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { clientBundle, launchChromium } from '../support/browser.js';
import {
  TEST_SECRET,
  connectPublisher,
  eventually,
  startTestGateway,
  startTestResolver,
  testConfig,
  testLogger,
  testPrefix,
  removeInstallation,
} from '../support/harness.js';

describe('the warren dev demo page and its dev-only endpoints', () => {
  let browser: Browser;
  let dir: string;
  let bundlePath: string;
  let prefix: string;
  let resolver: Resolver;
  let warren: WarrenPublisher;
  let gateway: Gateway;

  beforeAll(async () => {
    browser = await launchChromium();
    dir = await mkdtemp(join(tmpdir(), 'warren-demo-'));
    bundlePath = join(dir, 'warren-client.js');
    await writeFile(bundlePath, await clientBundle());
  });

  afterAll(async () => {
    await browser?.close();
    await rm(dir, { recursive: true, force: true });
  });

  beforeEach(async () => {
    prefix = testPrefix('browser-demo');
    // On every interface, so the test can also come in by the machine's network address.
    const config = testConfig(prefix, { gateway: { host: '0.0.0.0' } });
    resolver = await startTestResolver(config);
    warren = await connectPublisher(config);
    await seedDemoMemberships(warren);
    gateway = await startGateway(config, {
      logger: testLogger(config),
      routes: demoRoutes({
        mintToken: (tenantId, userId) => mintDevToken(TEST_SECRET, tenantId, userId),
        publish: (event) => warren.publishEvent(event),
        clientBundlePath: bundlePath,
        logger: testLogger(config),
      }),
    });
  });

  afterEach(async () => {
    await removeInstallation(prefix, { warren, resolvers: [resolver], gateways: [gateway] });
  });

  const post = (port: number, path: string, body: unknown, type = 'application/json') =>
    fetch(`http://127.0.0.1:${port}${path}`, {
      method: 'POST',
      headers: { 'content-type': type },
      body: JSON.stringify(body),
    });

  it('exists in dev mode only: a plain gateway answers 404 to the demo page and /dev/token', async () => {
    const plain = await startTestGateway(testConfig(prefix));
    try {
      const token = await post(plain.port, '/dev/token', { tenantId: 'acme-health', userId: 'alice' });
      expect(token.status).toBe(404);
      expect((await fetch(`http://127.0.0.1:${plain.port}/`)).status).toBe(404);
    } finally {
      await plain.close();
    }
    const dev = await post(gateway.port, '/dev/token', { tenantId: 'acme-health', userId: 'alice' });
    expect(dev.status).toBe(200);
    expect(((await dev.json()) as { token: string }).token.split('.')).toHaveLength(3);
  });

  it('refuses unknown users and non-JSON posts (no cross-site form can mint or publish)', async () => {
    expect(
      (await post(gateway.port, '/dev/token', { tenantId: 'acme-health', userId: 'mallory' })).status,
    ).toBe(400);
    const form = await post(
      gateway.port,
      '/dev/token',
      { tenantId: 'acme-health', userId: 'alice' },
      'text/plain',
    );
    expect(form.status).toBe(400);
    const publish = { tenantId: 'acme-health', teamId: 'icu', text: 'x', from: 'alice' };
    expect((await post(gateway.port, '/dev/publish', publish, 'text/plain')).status).toBe(400);
    // A bad request says so (400), whichever check refuses it: a sender not in the tenant, a type whose
    // routing key would be over 255 characters.
    expect((await post(gateway.port, '/dev/publish', { ...publish, from: 'mallory' })).status).toBe(400);
    const long = Array.from({ length: 5 }, () => 'a'.repeat(64)).join('.');
    expect((await post(gateway.port, '/dev/publish', { ...publish, type: long })).status).toBe(400);
  });

  it('answers only requests addressed to localhost (no DNS rebinding, no access by network address)', async () => {
    const withHost = (
      host: string,
      path: string,
      via = '127.0.0.1',
      headers: Record<string, string> = {},
    ): Promise<number> =>
      new Promise((resolve, reject) => {
        const req = httpRequest(
          {
            host: via,
            port: gateway.port,
            path,
            method: 'POST',
            headers: { host, 'content-type': 'application/json', ...headers },
          },
          (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          },
        );
        req.on('error', reject);
        req.end(JSON.stringify({ tenantId: 'acme-health', userId: 'alice', teamId: 'icu', text: 'x' }));
      });
    expect(await withHost('rebound.example.com', '/dev/token')).toBe(403);
    expect(await withHost('192.168.1.20:8080', '/dev/publish')).toBe(403);
    expect(await withHost(`localhost:${gateway.port}`, '/dev/token')).toBe(200);
    // Another machine could send `Host: localhost` itself: the connection must come from this machine.
    const lan = Object.values(networkInterfaces())
      .flat()
      .find((a) => a && a.family === 'IPv4' && !a.internal)?.address;
    if (lan) expect(await withHost(`localhost:${gateway.port}`, '/dev/token', lan)).toBe(403);
    // Nor through a proxy or relay on this machine (which says so), nor from a page of another origin.
    const local = `localhost:${gateway.port}`;
    for (const relayed of <Record<string, string>[]>[
      { 'x-forwarded-for': '203.0.113.9' },
      { forwarded: 'for=203.0.113.9' },
      { via: '1.1 proxy' },
      { 'x-real-ip': '203.0.113.9' },
      { origin: 'https://elsewhere.example' },
      // Another page on this machine: another port is another origin.
      { origin: 'http://localhost:3000' },
      { origin: 'null' },
    ])
      expect({ relayed, status: await withHost(local, '/dev/token', '127.0.0.1', relayed) }).toEqual({
        relayed,
        status: 403,
      });
    expect(await withHost(local, '/dev/token', '127.0.0.1', { origin: `http://${local}` })).toBe(200);
  });

  /** A tab signed in as `hash` (tenant/user); in a context of its own unless one is given. */
  async function openAs(hash: string, context?: BrowserContext): Promise<Page> {
    const page = await (context ?? (await browser.newContext())).newPage();
    await page.goto(`http://127.0.0.1:${gateway.port}/#${hash}`);
    await page.locator('#status[data-state="connected"]').waitFor({ timeout: 10_000 });
    return page;
  }

  const feed = (page: Page) => page.locator('#events .event p').allTextContents();
  /** The connection log, oldest line first, each without its time; a red line starts with `error: `. */
  const connectionLog = (page: Page) =>
    page.$$eval('#log li', (items) =>
      items
        .map(
          (li) => (li.className === 'bad' ? 'error: ' : '') + (li.querySelector('span')?.textContent ?? ''),
        )
        .reverse(),
    );

  it('signs demo users in, publishes from the form, and shows each event to its team only', async () => {
    const alice = await openAs('acme-health/alice');
    const bob = await openAs('acme-health/bob');
    const carol = await openAs('acme-health/carol');
    expect(await alice.locator('#status-text').textContent()).toContain('Alice Nguyen');
    // Picking another user only says whom "Switch user" signs in next: the page stays Alice's.
    await alice.selectOption('#user', 'carol');
    expect(await alice.locator('#status-text').textContent()).toContain('Alice Nguyen');
    expect(await alice.locator('#audience').textContent()).toContain('Alice’s tabs');
    // The chips beside the pickers are the picked user's, named and marked as not signed in; the publish
    // form says whom it sends as.
    const chips = alice.locator('#memberships');
    expect(await chips.textContent()).toBe('Carol is inRadiologynot signed in yet');
    expect(await alice.locator('#sender').textContent()).toContain('As Alice Nguyen');
    await alice.selectOption('#user', 'alice');
    expect(await chips.textContent()).toBe('Alice is inICU');

    await alice.selectOption('#team', 'icu');
    await alice.fill('#text', 'Bed 4 needs a check');
    await alice.click('#publish button[type=submit]');
    await alice.locator('#flash', { hasText: 'Published' }).waitFor();
    await carol.selectOption('#team', 'radiology');
    await carol.fill('#text', 'Imaging slot moved');
    await carol.click('#publish button[type=submit]');

    await eventually(async () => (await feed(carol)).includes('Imaging slot moved'), 'carol sees radiology');
    for (const page of [alice, bob]) {
      await eventually(
        async () => (await feed(page)).includes('Bed 4 needs a check'),
        'icu sees the message',
      );
    }
    // Carol's own event arrived after Alice's was published: Alice's would be on her page by now if misrouted.
    expect(await feed(carol)).toEqual(['Imaging slot moved']);
    expect(await feed(alice)).toEqual(['Bed 4 needs a check']);
    // Published as the signed-in Alice, not as the user picked.
    expect(await bob.locator('#events .event-head').first().textContent()).toContain('from Alice Nguyen');
    expect(await alice.locator('#count').textContent()).toBe('1');
    for (const page of [alice, bob, carol]) await page.context().close();
  });

  it('a lone tab logs that it holds the socket, and loads without a console error (no favicon 404)', async () => {
    const page = await (await browser.newContext()).newPage();
    const consoleErrors: string[] = [];
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text());
    });
    await page.goto(`http://127.0.0.1:${gateway.port}/#acme-health/alice`);
    await page.locator('#status[data-state="connected"]').waitFor({ timeout: 10_000 });
    await page.waitForLoadState('load');
    // Sharing is on, and the tab starts as a follower until the lock is decided: alone, it never follows.
    await eventually(
      async () => (await connectionLog(page)).some((line) => line.startsWith('connected')),
      'the connected line',
    );
    expect(await connectionLog(page)).toEqual([
      'signing in as Alice Nguyen',
      'this tab holds the socket',
      expect.stringMatching(/^connected to node \S+$/),
    ]);
    expect(await page.locator('#status-text').textContent()).toContain('this tab holds the socket');
    expect(consoleErrors).toEqual([]);
    await page.context().close();
  });

  it('on a phone-sized screen keeps the logo and status dot round and the tag on one line', async () => {
    const context = await browser.newContext({ viewport: { width: 420, height: 800 } });
    const page = await openAs('acme-health/alice', context);
    for (const selector of ['.logo', '.dot']) {
      const box = await page.locator(selector).boundingBox();
      expect(box, selector).not.toBeNull();
      expect(box!.width, selector).toBeCloseTo(box!.height, 0);
    }
    const tag = await page.locator('.tag').boundingBox();
    // One line of 12px text with its padding and border, not two.
    expect(tag!.height).toBeLessThan(24);
    await context.close();
  });

  it('on a phone-sized screen wraps a long unbroken message inside its card, the page no wider than the screen', async () => {
    const context = await browser.newContext({ viewport: { width: 390, height: 844 } });
    const page = await openAs('acme-health/alice', context);
    const word = 'x'.repeat(300);
    await page.fill('#text', word);
    await page.click('#publish button[type=submit]');
    await eventually(async () => (await feed(page)).includes(word), 'the event arrives');
    // Unwrapped, the word widened the feed, its card and with them the whole page to some 1900px.
    expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
    const card = await page.locator('#events .event').first().boundingBox();
    expect(card!.x + card!.width).toBeLessThanOrEqual(390);
    await context.close();
  });

  it('marks the refused field and focuses it; with warren dev stopped says so, and logs retries once, counted', async () => {
    const page = await openAs('acme-health/alice');
    expect(await page.locator('#flash').getAttribute('role')).toBe('status');
    await page.fill('#type', 'bad type!');
    await page.fill('#text', 'x');
    await page.click('#publish button[type=submit]');
    await page.locator('#flash.err').waitFor();
    expect(await page.locator('#type').getAttribute('aria-invalid')).toBe('true');
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('type');
    await page.fill('#type', 'message.created');
    await page.click('#publish button[type=submit]');
    await page.locator('#flash', { hasText: 'Published' }).waitFor();
    expect(await page.locator('#type').getAttribute('aria-invalid')).toBeNull();

    await gateway.close();
    await page.locator('#status[data-state="reconnecting"]').waitFor({ timeout: 10_000 });
    await page.click('#publish button[type=submit]');
    // Not the browser's bare "Failed to fetch".
    await page.locator('#flash.err', { hasText: 'warren dev does not answer' }).waitFor();
    // Every retry fails alike: one line with a count, not a copy per attempt.
    await eventually(
      async () => (await page.locator('#log .times', { hasText: '×' }).count()) > 0,
      'a counted line',
    );
    const lines = await connectionLog(page);
    expect(lines.filter((line, i) => line === lines[i - 1])).toEqual([]);
    await page.context().close();
  });

  it('publishes a cleared event type as message.created, and says what a type may hold', async () => {
    const page = await openAs('acme-health/alice');
    await page.fill('#type', '');
    await page.fill('#text', 'Typeless');
    await page.click('#publish button[type=submit]');
    await eventually(async () => (await feed(page)).includes('Typeless'), 'the event arrives');
    expect(await page.locator('#events .type').first().textContent()).toBe('message.created');
    await page.fill('#type', 'bad type!');
    await page.click('#publish button[type=submit]');
    await page.locator('#flash.err').waitFor();
    expect(await page.locator('#flash').textContent()).toContain('dot-separated words of letters, digits');
    await page.context().close();
  });

  it('a second tab of the user follows, and takes over without an error when the first closes', async () => {
    const context = await browser.newContext();
    const first = await openAs('acme-health/alice', context);
    const second = await openAs('acme-health/alice', context);
    expect(await connectionLog(second)).toEqual([
      'signing in as Alice Nguyen',
      expect.stringMatching(/^connected to node \S+ via a sibling tab$/),
    ]);
    expect(await second.locator('#status-text').textContent()).toContain('via a sibling tab');

    await first.close();
    await second
      .locator('#status[data-state="connected"] #status-text', { hasText: 'this tab holds the socket' })
      .waitFor({ timeout: 10_000 });
    await eventually(
      async () => (await connectionLog(second)).at(-1)?.startsWith('connected to node') ?? false,
      'the connected line',
    );
    expect((await connectionLog(second)).slice(2)).toEqual([
      'the tab holding the connection closed; this tab takes over',
      expect.stringMatching(/^connected to node \S+$/),
    ]);
    // The new socket is the user's: an event published now arrives.
    await second.fill('#text', 'After the takeover');
    await second.click('#publish button[type=submit]');
    await eventually(async () => (await feed(second)).includes('After the takeover'), 'the event arrives');
    await context.close();
  });
});
