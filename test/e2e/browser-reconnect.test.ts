import type { BrowserContext } from 'playwright-core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { WarrenConfig } from '../../src/config/schema.js';
import type { Gateway } from '../../src/gateway/main.js';
import type { Resolver } from '../../src/resolver/main.js';
import type { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { allConnected, BrowserTab, freePort, useChromium, type TabOptions } from '../support/browser.js';
import {
  connectPublisher,
  counter,
  eventually,
  startTestGateway,
  startTestResolver,
  testConfig,
  testPrefix,
  removeInstallation,
} from '../support/harness.js';

const TENANT = 'acme';

describe('browser client reconnects: drained node, expired token', () => {
  const chromium = useChromium();
  let prefix: string;
  let config: Readonly<WarrenConfig>;
  let gateways: Gateway[];
  let resolver: Resolver;
  let warren: WarrenPublisher;
  let context: BrowserContext;

  beforeEach(async () => {
    prefix = testPrefix('browser-reconnect');
    config = testConfig(prefix);
    gateways = [];
    resolver = await startTestResolver(config);
    warren = await connectPublisher(config);
    await warren.addUserToTeam(TENANT, 'A', 'red');
    context = await chromium.browser.newContext();
  });

  afterEach(async () => {
    await context.close();
    await removeInstallation(prefix, { warren, resolvers: [resolver], gateways });
  });

  async function gatewayOn(port: number, handoffMs = 0): Promise<Gateway> {
    const gateway = await startTestGateway(testConfig(prefix, { gateway: { port, handoffMs } }));
    gateways.push(gateway);
    return gateway;
  }

  const tab = (url: string | string[], extra: Partial<TabOptions> = {}): Promise<BrowserTab> =>
    BrowserTab.open(context, chromium.site, {
      url,
      tid: TENANT,
      sub: 'A',
      reconnect: { baseMs: 100, capMs: 1000 },
      ...extra,
    });

  const publish = (id: string): Promise<void> =>
    warren.publishEvent({ id, tenantId: TENANT, type: 'test.event', audience: { teams: ['red'] }, data: {} });

  it('a drained gateway (4100): tabs move to the second node of their list and keep receiving', async () => {
    // The second node's port is known before it runs: tabs whose random start picks it fail over to the first.
    const [port1, port2] = [await freePort(), await freePort()];
    const urls = [`ws://127.0.0.1:${port1}/ws`, `ws://127.0.0.1:${port2}/ws`];
    const first = await gatewayOn(port1);
    const tabs = await Promise.all([tab(urls), tab(urls), tab(urls, { shareAcrossTabs: true })]);
    await allConnected(tabs);
    expect(first.connections).toBe(3);
    await publish('before');
    for (const t of tabs) await t.waitForEvents(['before'], 'event on the first node');

    const second = await gatewayOn(port2);
    await first.drain();
    await eventually(
      async () => (await Promise.all(tabs.map((t) => t.status()))).every((s) => s.gateway === second.nodeId),
      'every tab on the second node',
    );
    await allConnected(tabs);
    expect(second.connections).toBe(3);

    await publish('after-1');
    await publish('after-2');
    for (const t of tabs) {
      await t.waitForEvents(['after-1', 'after-2'], 'events on the second node');
      const log = await t.log();
      expect([...log.events].sort()).toEqual(['after-1', 'after-2', 'before']);
      expect(log.states).toContainEqual({ from: 'connected', to: 'reconnecting', code: 4100 });
      // Offsets of another node mean nothing: the application is told to reload instead.
      expect(log.resyncs).toEqual(['new_node']);
    }
  });

  it('a drained gateway that hands its tabs off: they move to the second node first and miss nothing', async () => {
    const [port1, port2] = [await freePort(), await freePort()];
    const urls = [`ws://127.0.0.1:${port1}/ws`, `ws://127.0.0.1:${port2}/ws`];
    const first = await gatewayOn(port1, 5000);
    const tabs = await Promise.all([tab(urls), tab(urls, { shareAcrossTabs: true })]);
    await allConnected(tabs);
    const second = await gatewayOn(port2, 5000);

    // Events flow all through the move.
    const published: string[] = [];
    let flowing = true;
    const flow = (async () => {
      for (let i = 0; flowing; i += 1) {
        const id = `e-${i}`;
        await publish(id);
        published.push(id);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })();
    await eventually(() => published.length >= 10, 'events flowing');
    await first.drain();
    await eventually(
      async () => (await Promise.all(tabs.map((t) => t.status()))).every((s) => s.gateway === second.nodeId),
      'every tab on the second node',
    );
    await eventually(() => published.length >= 30, 'events flowing after the move');
    flowing = false;
    await flow;
    for (const t of tabs) {
      await t.waitForEvents(published, 'every event, through the move');
      const log = await t.log();
      // Once each, in a connection that never dropped: nothing to resume or resynchronise.
      expect([...log.events].sort()).toEqual([...published].sort());
      expect(log.resyncs).toEqual([]);
      expect(log.states.map((s) => s.to)).toEqual(['connected']);
    }
  });

  it('shared tabs: a leader tab that goes during a handoff leaves the tab taking over a resync', async () => {
    const [port1, port2] = [await freePort(), await freePort()];
    const urls = [`ws://127.0.0.1:${port1}/ws`, `ws://127.0.0.1:${port2}/ws`];
    const first = await gatewayOn(port1, 5000);
    const shared = { shareAcrossTabs: true };
    const tabs = [await tab(urls, shared), await tab(urls, shared)];
    await allConnected(tabs);
    const second = await gatewayOn(port2, 5000);
    const roles = await Promise.all(tabs.map(async (t) => (await t.status()).role));
    const leader = tabs[roles.indexOf('leader')];
    const follower = tabs[roles.indexOf('follower')];
    if (!leader || !follower) throw new Error(`roles: ${roles.join(', ')}`);
    await publish('before');
    await follower.waitForEvents(['before'], 'an event relayed to the follower');

    const draining = first.drain();
    try {
      await eventually(
        async () => (await follower.status()).gateway === second.nodeId,
        'the leader moved to the second node (its follower says so)',
      );
      // A quiet user: nothing came through both connections, so the old one is still kept when the
      // leader's tab goes, with whatever its node had not written yet.
      await leader.close();
      await eventually(async () => {
        const s = await follower.status();
        return s.role === 'leader' && s.state === 'connected';
      }, 'the follower leads');
      await eventually(
        async () => (await follower.log()).resyncs.length > 0,
        'the tab that took over says events may be missing',
      );
    } finally {
      await draining;
    }
    await publish('after');
    await follower.waitForEvents(['after'], 'events after the take-over');
    expect((await follower.log()).resyncs).toEqual(['history_gap']);
  });

  it('an expired token (4001): the client fetches a new one and reconnects', async () => {
    const gateway = await gatewayOn(0);
    // exp has one-second resolution: 3 s leaves at least 2 s to connect before the gateway closes with 4001.
    chromium.site.expireNextTokens('A', [3]);
    const before = chromium.site.tokenRequests('A');
    const t = await tab(`ws://127.0.0.1:${gateway.port}/ws`);
    await allConnected([t]);

    await eventually(
      async () => (await t.log()).states.some((s) => s.code === 4001),
      'the gateway closes with 4001 at expiry',
    );
    await allConnected([t]);
    expect(chromium.site.tokenRequests('A') - before).toBe(2);

    await publish('after-expiry');
    await t.waitForEvents(['after-expiry'], 'event after the new token');
    expect((await t.log()).states.map((s) => s.to)).toEqual(['connected', 'reconnecting', 'connected']);
  });

  it('a token refused with HTTP 401 (the browser sees only 1006): after repeated failures a new token', async () => {
    const gateway = await gatewayOn(0);
    chromium.site.refuseNextTokens('A', 1);
    const before = chromium.site.tokenRequests('A');
    const t = await tab(`ws://127.0.0.1:${gateway.port}/ws`);
    await allConnected([t]);
    // Two refused attempts with the first token, then the policy suspects it: exactly one more fetch.
    expect(chromium.site.tokenRequests('A') - before).toBe(2);
    expect(await counter(gateway, 'warren_gateway_auth_failures_total')).toBe(2);
    // The application hears of each failed attempt, not only of the socket that finally opens.
    const url = `ws://127.0.0.1:${gateway.port}/ws`;
    const failed = `socket_failed: no connection to ${url}: refused (a token the gateway does not accept, a node not ready) or unreachable; retrying`;
    expect((await t.log()).errors).toEqual([failed, failed]);

    await publish('after-refusal');
    await t.waitForEvents(['after-refusal'], 'event with the new token');
  });
});
