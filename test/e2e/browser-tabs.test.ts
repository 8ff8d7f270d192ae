import type { BrowserContext } from 'playwright-core';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Gateway } from '../../src/gateway/main.js';
import type { Resolver } from '../../src/resolver/main.js';
import type { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { allConnected, BrowserTab, useChromium, type TabOptions } from '../support/browser.js';
import {
  connectPublisher,
  eventually,
  openTab,
  startTestGateway,
  startTestResolver,
  testConfig,
  testPrefix,
  token,
  removeInstallation,
} from '../support/harness.js';

// User A is in team red, user B in team blue, both of tenant acme. Tabs run the real client bundle in
// Chromium against a real gateway, resolver, RabbitMQ and Redis.

const TENANT = 'acme';

describe('browser tabs: every event once per tab, never to another user', () => {
  const chromium = useChromium();
  let prefix: string;
  let gateway: Gateway;
  let resolver: Resolver;
  let warren: WarrenPublisher;
  let context: BrowserContext;

  beforeEach(async () => {
    prefix = testPrefix('browser-tabs');
    const config = testConfig(prefix);
    resolver = await startTestResolver(config);
    gateway = await startTestGateway(config);
    warren = await connectPublisher(config);
    await warren.addUserToTeam(TENANT, 'A', 'red');
    await warren.addUserToTeam(TENANT, 'B', 'blue');
    context = await chromium.browser.newContext();
  });

  afterEach(async () => {
    await context.close();
    await removeInstallation(prefix, { warren, resolvers: [resolver], gateways: [gateway] });
  });

  const tab = (sub: string, extra: Partial<TabOptions> = {}): Promise<BrowserTab> =>
    BrowserTab.open(context, chromium.site, {
      url: `ws://127.0.0.1:${gateway.port}/ws`,
      tid: TENANT,
      sub,
      reconnect: { baseMs: 100, capMs: 1000 },
      ...extra,
    });

  const publish = (id: string, teams: string[]): Promise<void> =>
    warren.publishEvent({ id, tenantId: TENANT, type: 'test.event', audience: { teams }, data: { id } });

  it('A in three tabs and B in one: A’s team events reach each A tab once and no B tab', async () => {
    const aTabs = await Promise.all([tab('A'), tab('A'), tab('A')]);
    const bTab = await tab('B');
    await allConnected([...aTabs, bTab]);
    expect(gateway.connections).toBe(4);

    const red = ['red-1', 'red-2', 'red-3', 'red-4'];
    const blue = ['blue-1', 'blue-2'];
    await publish('red-1', ['red']);
    await publish('blue-1', ['blue']);
    await publish('red-2', ['red']);
    await publish('red-2', ['red']); // the same id again: still shown once
    await publish('red-3', ['red']);
    await publish('blue-2', ['blue']);
    await publish('red-4', ['red']);
    // Sent last to both teams: once every tab has it, a misrouted earlier event would have arrived too.
    await publish('marker', ['red', 'blue']);

    for (const t of aTabs) await t.waitForEvents([...red, 'marker'], 'A tabs get red events and the marker');
    await bTab.waitForEvents([...blue, 'marker'], 'B gets blue events and the marker');
    for (const t of aTabs) expect((await t.events()).sort()).toEqual([...red, 'marker'].sort());
    expect((await bTab.events()).sort()).toEqual([...blue, 'marker'].sort());
  });

  it('shared mode: one socket per user; the leader tab closes, another takes over within 2 s, no event lost after', async () => {
    const shared = { shareAcrossTabs: true };
    const aTabs = await Promise.all([tab('A', shared), tab('A', shared), tab('A', shared)]);
    await allConnected(aTabs);
    const roles = await Promise.all(aTabs.map(async (t) => (await t.status()).role));
    expect([...roles].sort()).toEqual(['follower', 'follower', 'leader']);
    expect(gateway.connections).toBe(1);
    // B shares the origin but not the user: it must get a socket of its own and none of A's events.
    const bTab = await tab('B', shared);
    await allConnected([bTab]);
    expect((await bTab.status()).role).toBe('leader');
    // Alone in its group, B's tab was never told it follows.
    expect((await bTab.log()).roles).toEqual(['leader']);
    expect(gateway.connections).toBe(2);

    // Publish continuously while the leader goes away.
    let seq = 0;
    let running = true;
    const published: string[] = [];
    const loop = (async () => {
      while (running) {
        const id = `flow-${seq++}`;
        await publish(id, ['red']);
        published.push(id);
        await new Promise((r) => setTimeout(r, 25));
      }
    })();

    await aTabs[0]!.waitForEvents(['flow-3'], 'events flowing before the handover');
    const oldLeader = aTabs[roles.indexOf('leader')];
    if (!oldLeader) throw new Error('no leader tab');
    const rest = aTabs.filter((t) => t !== oldLeader);
    await oldLeader.close();

    await eventually(
      async () => {
        const status = await Promise.all(rest.map((t) => t.status()));
        return status.some((s) => s.role === 'leader') && status.every((s) => s.state === 'connected');
      },
      'a remaining tab leads and every remaining tab is connected',
      2000,
    );
    const firstAfterTakeover = seq;

    await rest[0]!.waitForEvents([`flow-${firstAfterTakeover + 10}`], 'ten more events after the takeover');
    running = false;
    await loop;
    await publish('marker', ['red', 'blue']);
    for (const t of [...rest, bTab]) await t.waitForEvents(['marker'], 'marker everywhere');

    const expected = published.filter((id) => Number(id.slice('flow-'.length)) >= firstAfterTakeover);
    for (const t of rest) {
      const events = await t.events();
      expect(new Set(events).size).toBe(events.length);
      expect(expected.filter((id) => !events.includes(id))).toEqual([]);
    }
    expect(await bTab.events()).toEqual(['marker']);
    expect(gateway.connections).toBe(2);
  });

  it('shared mode, handover on the same node: what was delivered while no tab held the socket is replayed', async () => {
    // A socket outside the browser keeps A online on this node, so deliveries keep coming here (and into
    // the node's history) while the browser has no socket at all.
    const keeper = await openTab(gateway.port, await token({ sub: 'A', tid: TENANT }));
    try {
      const shared = { shareAcrossTabs: true };
      const aTabs = await Promise.all([tab('A', shared), tab('A', shared)]);
      await allConnected(aTabs);
      await publish('before', ['red']);
      for (const t of aTabs) await t.waitForEvents(['before'], 'first event in both tabs');

      // Offline stops the next leader's handshakes (not the BroadcastChannel), so the gap is certain.
      await context.setOffline(true);
      const roles = await Promise.all(aTabs.map(async (t) => (await t.status()).role));
      const [oldLeader, next] = roles[0] === 'leader' ? [aTabs[0]!, aTabs[1]!] : [aTabs[1]!, aTabs[0]!];
      await oldLeader.close();
      await eventually(async () => (await next.status()).role === 'leader', 'the other tab leads');
      expect(gateway.connections).toBe(1);

      const gap = ['gap-1', 'gap-2', 'gap-3'];
      for (const id of gap) await publish(id, ['red']);
      await eventually(() => gap.every((id) => keeper.eventIds().includes(id)), 'the node delivered the gap');
      expect(await next.events()).toEqual(['before']);

      await context.setOffline(false);
      await next.waitForEvents(gap, 'the new leader resumes and gets the gap');
      const log = await next.log();
      expect([...log.events].sort()).toEqual(['before', ...gap].sort());
      expect(log.resyncs).toEqual([]);
      expect((await next.status()).gateway).toBe(gateway.nodeId);
    } finally {
      keeper.ws.terminate();
    }
  });
});
