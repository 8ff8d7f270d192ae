import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Gateway } from '../../src/gateway/main.js';
import {
  BrokerProbe,
  eventually,
  openTab,
  startTestGateway,
  testConfig,
  testPrefix,
  token,
  type TestTab,
} from '../support/harness.js';

describe('delivery path over two gateway nodes', () => {
  let prefix: string;
  let gateways: Gateway[] = [];
  let tabs: TestTab[] = [];
  let probe: BrokerProbe;

  beforeEach(async () => {
    prefix = testPrefix('delivery');
    const config = testConfig(prefix);
    gateways = [await startTestGateway(config), await startTestGateway(config)];
    probe = await BrokerProbe.open();
  });

  afterEach(async () => {
    for (const tab of tabs) tab.ws.terminate();
    tabs = [];
    await Promise.all(gateways.map((g) => g.close()));
    await probe.deleteExchangesAndQueues(
      prefix,
      gateways.map((g) => g.queue),
    );
    await probe.close();
  });

  async function open(node: number, tid: string, sub: string): Promise<TestTab> {
    const gateway = gateways[node];
    if (!gateway) throw new Error('no such node');
    const tab = await openTab(gateway.port, await token({ sub, tid }));
    tabs.push(tab);
    return tab;
  }

  it('writes a delivery to exactly the addressed users’ tabs, once each, on whichever node they are', async () => {
    const a1 = await open(0, 't1', 'A');
    const a2 = await open(1, 't1', 'A');
    const a3 = await open(1, 't1', 'A');
    const b = await open(0, 't1', 'B');
    const otherTenantA = await open(1, 't2', 'A');
    const all = [a1, a2, a3, b, otherTenantA];

    await probe.deliver(prefix, ['u.t1.A'], { id: 'e1', tenantId: 't1', data: { n: 1 } });
    await eventually(() => [a1, a2, a3].every((t) => t.eventIds().includes('e1')), 'A’s three tabs get e1');

    await probe.deliver(prefix, ['u.t1.A', 'u.t1.B'], { id: 'e2', tenantId: 't1', data: { n: 2 } });
    await eventually(() => [a1, a2, a3, b].every((t) => t.eventIds().includes('e2')), 'A and B get e2');

    // A marker event to t2's A, sent last: once it has arrived, anything misrouted earlier would have too.
    await probe.deliver(prefix, ['u.t2.A'], { id: 'marker', tenantId: 't2' });
    await eventually(() => otherTenantA.eventIds().includes('marker'), 't2 A gets the marker');

    expect(a1.eventIds()).toEqual(['e1', 'e2']);
    expect(a2.eventIds()).toEqual(['e1', 'e2']);
    expect(a3.eventIds()).toEqual(['e1', 'e2']);
    expect(b.eventIds()).toEqual(['e2']);
    expect(otherTenantA.eventIds()).toEqual(['marker']);
    expect(a1.events()[0]?.data).toEqual({ n: 1 });
    for (const tab of all) expect(tab.closeCode).toBeUndefined();
  });

  it('refuses a recipient key whose tenant is not the delivery’s tenant', async () => {
    const victim = await open(0, 't2', 'A');
    const a = await open(0, 't1', 'A');
    // A (buggy or hostile) delivery of tenant t1 that names a t2 user among its recipients.
    await probe.deliver(prefix, ['u.t1.A', 'u.t2.A'], { id: 'leak', tenantId: 't1' });
    await probe.deliver(prefix, ['u.t2.A'], { id: 'marker', tenantId: 't2' });
    await eventually(
      () => victim.eventIds().includes('marker') && a.eventIds().includes('leak'),
      'deliveries',
    );
    expect(victim.eventIds()).toEqual(['marker']);
  });

  it('does not write the same event twice to a user when it is delivered again', async () => {
    const a = await open(0, 't1', 'A');
    await probe.deliver(prefix, ['u.t1.A'], { id: 'once', tenantId: 't1' });
    await probe.deliver(prefix, ['u.t1.A'], { id: 'once', tenantId: 't1' });
    await probe.deliver(prefix, ['u.t1.A'], { id: 'after', tenantId: 't1' });
    await eventually(() => a.eventIds().includes('after'), 'marker');
    expect(a.eventIds()).toEqual(['once', 'after']);
  });
});
