import { Redis } from 'ioredis';
import roaring from 'roaring';
import { afterEach, beforeAll, beforeEach, describe, expect, inject, it } from 'vitest';
import type { Gateway } from '../../src/gateway/main.js';
import { DeliveryHeader } from '../../src/protocol/delivery.js';
import { Keys } from '../../src/store/keys.js';
import { PresenceStore } from '../../src/store/presence-store.js';
import { serverStamp, withWarrenCommands } from '../../src/store/redis.js';
import {
  BrokerProbe,
  cleanRedis,
  counter,
  eventually,
  openTab,
  startTestGateway,
  testConfig,
  testPrefix,
  token,
  type TestTab,
} from '../support/harness.js';

/** The id-map stamp of the test Redis, as resolvers put it on node-routed deliveries. */
let stamp: string | undefined;
beforeAll(async () => {
  const redis = new Redis(inject('redisUrl'));
  try {
    stamp = await serverStamp(redis);
  } finally {
    redis.disconnect();
  }
  expect(stamp).toBeDefined();
});

/** The recipients header of a node-routed delivery to these bits, with the stamp of the bits' server. */
const recipients = (...bits: number[]) => ({
  [DeliveryHeader.Recipients]: Buffer.from(new roaring.RoaringBitmap32(bits).serialize('portable')),
  [DeliveryHeader.IdMap]: stamp,
});

/** Two gateway nodes on a fresh prefix per test, tabs opened on either, everything removed afterwards. */
function twoNodes(name: string, overrides: Parameters<typeof testConfig>[1] = {}) {
  const state = {
    prefix: '',
    gateways: [] as Gateway[],
    tabs: [] as TestTab[],
    probe: undefined as unknown as BrokerProbe,
  };
  beforeEach(async () => {
    state.prefix = testPrefix(name);
    const config = testConfig(state.prefix, overrides);
    state.gateways = [await startTestGateway(config), await startTestGateway(config)];
    state.probe = await BrokerProbe.open();
  });
  afterEach(async () => {
    for (const tab of state.tabs) tab.ws.terminate();
    state.tabs = [];
    await Promise.all(state.gateways.map((g) => g.close()));
    await state.probe.deleteExchangesAndQueues(
      state.prefix,
      state.gateways.map((g) => g.queue),
    );
    await state.probe.close();
    await cleanRedis(state.prefix);
  });
  const open = async (node: number, tid: string, sub: string): Promise<TestTab> => {
    const gateway = state.gateways[node];
    if (!gateway) throw new Error('no such node');
    const tab = await openTab(gateway.port, await token({ sub, tid }));
    state.tabs.push(tab);
    return tab;
  };
  return { state, open };
}

describe('delivery path over two gateway nodes', () => {
  const { state, open } = twoNodes('delivery');
  const deliver: BrokerProbe['deliver'] = (...args) => state.probe.deliver(...args);
  const prefix = () => state.prefix;

  it('writes a delivery to exactly the addressed users’ tabs, once each, on whichever node they are', async () => {
    const a1 = await open(0, 't1', 'A');
    const a2 = await open(1, 't1', 'A');
    const a3 = await open(1, 't1', 'A');
    const b = await open(0, 't1', 'B');
    const otherTenantA = await open(1, 't2', 'A');
    const all = [a1, a2, a3, b, otherTenantA];

    await deliver(prefix(), ['u.t1.A'], { id: 'e1', tenantId: 't1', data: { n: 1 } });
    await eventually(() => [a1, a2, a3].every((t) => t.eventIds().includes('e1')), 'A’s three tabs get e1');

    await deliver(prefix(), ['u.t1.A', 'u.t1.B'], { id: 'e2', tenantId: 't1', data: { n: 2 } });
    await eventually(() => [a1, a2, a3, b].every((t) => t.eventIds().includes('e2')), 'A and B get e2');

    // A marker event to t2's A, sent last: once it has arrived, anything misrouted earlier would have too.
    await deliver(prefix(), ['u.t2.A'], { id: 'marker', tenantId: 't2' });
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
    await deliver(prefix(), ['u.t1.A', 'u.t2.A'], { id: 'leak', tenantId: 't1' });
    await deliver(prefix(), ['u.t2.A'], { id: 'marker', tenantId: 't2' });
    await eventually(
      () => victim.eventIds().includes('marker') && a.eventIds().includes('leak'),
      'deliveries',
    );
    expect(victim.eventIds()).toEqual(['marker']);
  });

  it('does not write the same event twice to a user when it is delivered again', async () => {
    const a = await open(0, 't1', 'A');
    await deliver(prefix(), ['u.t1.A'], { id: 'once', tenantId: 't1' });
    await deliver(prefix(), ['u.t1.A'], { id: 'once', tenantId: 't1' });
    await deliver(prefix(), ['u.t1.A'], { id: 'after', tenantId: 't1' });
    await eventually(() => a.eventIds().includes('after'), 'marker');
    expect(a.eventIds()).toEqual(['once', 'after']);
  });

  it('writes once to a user named twice in one delivery (routing key and CC)', async () => {
    const a = await open(0, 't1', 'A');
    await deliver(prefix(), ['u.t1.A', 'u.t1.A', 'u.t1.A'], { id: 'twice', tenantId: 't1' });
    await deliver(prefix(), ['u.t1.A'], { id: 'after', tenantId: 't1' });
    await eventually(() => a.eventIds().includes('after'), 'marker');
    expect(a.eventIds()).toEqual(['twice', 'after']);
  });
});

describe('node-routed deliveries (recipients as bits of the tenant id map)', () => {
  const { state, open } = twoNodes('bydelivery');
  const deliver: BrokerProbe['deliver'] = (...args) => state.probe.deliver(...args);
  const prefix = () => state.prefix;
  let redis: Redis;
  beforeEach(() => {
    redis = new Redis(inject('redisUrl'));
  });
  afterEach(async () => {
    await redis.quit();
  });

  /** The user's bit, as the gateway announced it online. */
  async function bitOf(tenantId: string, userId: string): Promise<number> {
    const bit = await redis.hget(new Keys(prefix()).ids(tenantId), userId);
    if (bit === null) throw new Error(`${tenantId}/${userId} has no bit`);
    return Number(bit);
  }

  const nodes = (...indexes: number[]) => indexes.map((i) => `n.${(state.gateways[i] as Gateway).nodeId}`);

  it('writes to exactly the listed users’ tabs on the nodes it is routed to, and never by a bit of another tenant', async () => {
    // First in their tenants: t1's A and t2's Z hold the same bit number, in different id maps.
    const a1 = await open(0, 't1', 'A');
    const a2 = await open(1, 't1', 'A');
    const z = await open(0, 't2', 'Z');
    const b = await open(1, 't1', 'B');
    const c = await open(0, 't1', 'C');
    const [bitA, bitB, bitZ] = [await bitOf('t1', 'A'), await bitOf('t1', 'B'), await bitOf('t2', 'Z')];
    expect(bitZ).toBe(bitA);

    await deliver(prefix(), nodes(0, 1), { id: 'e1', tenantId: 't1' }, recipients(bitA, bitB));
    // The same bits for t2: only Z has one of them there.
    await deliver(prefix(), nodes(0, 1), { id: 'e2', tenantId: 't2' }, recipients(bitA, bitB));
    // Routed to node 1 only: A's tab on node 0 does not get it.
    await deliver(prefix(), nodes(1), { id: 'e3', tenantId: 't1' }, recipients(bitA));
    await deliver(prefix(), nodes(0), { id: 'marker', tenantId: 't1' }, recipients(await bitOf('t1', 'C')));
    await eventually(() => c.eventIds().includes('marker') && a2.eventIds().includes('e3'), 'marker');

    expect(a1.eventIds()).toEqual(['e1']);
    expect(a2.eventIds()).toEqual(['e1', 'e3']);
    expect(b.eventIds()).toEqual(['e1']);
    expect(z.eventIds()).toEqual(['e2']);
    expect(c.eventIds()).toEqual(['marker']);
    for (const gateway of state.gateways)
      expect(await counter(gateway, 'warren_gateway_refused_total')).toBe(0);
  });

  it('records deliveries for a user whose last tab closed, through the grace period, so a reload resumes them', async () => {
    const gateway = state.gateways[0] as Gateway;
    const keeper = await open(0, 't1', 'K');
    const first = await open(0, 't1', 'R');
    const [bitR, bitK] = [await bitOf('t1', 'R'), await bitOf('t1', 'K')];
    await deliver(prefix(), nodes(0), { id: 'seen', tenantId: 't1' }, recipients(bitR));
    await eventually(() => first.eventIds().includes('seen'), 'seen');
    const offset = first.events().at(-1)?.offset ?? 0;
    const epoch = first.welcome?.epoch ?? '';
    first.ws.terminate();
    // R is offline (its last tab closed) but its key is still bound for the grace period.
    const online = new Keys(prefix()).online('t1', gateway.nodeId);
    await eventually(async () => (await redis.getbit(online, bitR)) === 0, 'R announced offline');
    await deliver(prefix(), nodes(0), { id: 'missed', tenantId: 't1' }, recipients(bitR));
    await deliver(prefix(), nodes(0), { id: 'marker', tenantId: 't1' }, recipients(bitK));
    await eventually(() => keeper.eventIds().includes('marker'), 'the node handled both');

    const back = await open(0, 't1', 'R');
    back.send({ type: 'resume', epoch, offset });
    await eventually(() => back.frames.some((f) => f.type === 'resumed'), 'resumed');
    expect(back.eventIds()).toEqual(['missed']);
  });

  it('counts offsets per tenant: a tab learns nothing of how much the node delivers to other tenants', async () => {
    const busy = await open(0, 't1', 'A');
    const quiet = await open(0, 't2', 'A');
    const [bitBusy, bitQuiet] = [await bitOf('t1', 'A'), await bitOf('t2', 'A')];
    for (const id of ['b1', 'b2', 'b3'])
      await deliver(prefix(), nodes(0), { id, tenantId: 't1' }, recipients(bitBusy));
    await eventually(() => busy.eventIds().length === 3, 't1 events');
    expect(busy.events().map((e) => e.offset)).toEqual([1, 2, 3]);
    // t1's three deliveries moved nothing in t2's count.
    const late = await open(0, 't2', 'A');
    expect([quiet.welcome?.offset, late.welcome?.offset]).toEqual([0, 0]);
    await deliver(prefix(), nodes(0), { id: 'q1', tenantId: 't2' }, recipients(bitQuiet));
    await eventually(() => late.eventIds().includes('q1'), 'q1');
    expect(quiet.events().map((e) => [e.id, e.offset])).toEqual([['q1', 1]]);
    // A resume in t2 from its welcome replays t2's event only.
    const back = await open(0, 't2', 'A');
    back.send({ type: 'resume', epoch: quiet.welcome?.epoch, offset: 0 });
    await eventually(() => back.frames.some((f) => f.type === 'resumed'), 'resumed');
    expect(back.eventIds()).toEqual(['q1']);
  });

  it('drops a delivery whose recipients header is not a bitmap, counts it, and keeps serving', async () => {
    const a = await open(0, 't1', 'A');
    const bitA = await bitOf('t1', 'A');
    for (const header of [Buffer.from('not a bitmap'), Buffer.alloc(0), 'a string'])
      await deliver(
        prefix(),
        nodes(0),
        { id: 'bad', tenantId: 't1' },
        { [DeliveryHeader.Recipients]: header, [DeliveryHeader.IdMap]: stamp },
      );
    await deliver(prefix(), nodes(0), { id: 'good', tenantId: 't1' }, recipients(bitA));
    await eventually(() => a.eventIds().includes('good'), 'the next delivery');
    expect(a.eventIds()).toEqual(['good']);
    expect(
      await counter(state.gateways[0] as Gateway, 'warren_gateway_refused_total', { reason: 'malformed' }),
    ).toBe(3);
    expect(a.closeCode).toBeUndefined();
  });

  it('drops a node-routed delivery without the id-map stamp: its bits may be another server’s', async () => {
    const a = await open(0, 't1', 'A');
    const bitA = await bitOf('t1', 'A');
    const { [DeliveryHeader.Recipients]: bits } = recipients(bitA);
    await deliver(
      prefix(),
      nodes(0),
      { id: 'unstamped', tenantId: 't1' },
      { [DeliveryHeader.Recipients]: bits },
    );
    await deliver(prefix(), nodes(0), { id: 'stamped', tenantId: 't1' }, recipients(bitA));
    await eventually(() => a.eventIds().includes('stamped'), 'the stamped delivery');
    expect(a.eventIds()).toEqual(['stamped']);
    const gateway = state.gateways[0] as Gateway;
    expect(
      await counter(gateway, 'warren_gateway_dropped_deliveries_total', { reason: 'id_map_changed' }),
    ).toBe(1);
  });
});

describe('a bit given to another user after Redis lost id-map writes', () => {
  const { state, open } = twoNodes('reassigned', { presence: { heartbeatMs: 200 } });
  let redis: Redis;
  beforeEach(() => {
    redis = new Redis(inject('redisUrl'));
  });
  afterEach(async () => {
    await redis.quit();
  });

  it('is noticed on the next heartbeat: the old holder leaves it, is announced under a new one, and is told to resynchronise', async () => {
    const keys = new Keys(state.prefix);
    const x = await open(0, 't1', 'X');
    const bit = Number(await redis.hget(keys.ids('t1'), 'X'));
    // What a failover that lost X's assignment looks like: the map no longer knows X, and Y got X's bit.
    await redis.hdel(keys.ids('t1'), 'X');
    await redis.hset(keys.ids('t1'), 'Y', String(bit));
    await redis.hset(keys.reverseIds('t1'), String(bit), 'Y');
    const y = await open(1, 't1', 'Y');
    expect(Number(await redis.hget(keys.ids('t1'), 'Y'))).toBe(bit);

    const nodeX = state.gateways[0] as Gateway;
    await eventually(async () => {
      const now = await redis.hget(keys.ids('t1'), 'X');
      return now !== null && Number(now) !== bit;
    }, 'X announced again under a bit of its own');
    const newBit = Number(await redis.hget(keys.ids('t1'), 'X'));
    expect(await redis.getbit(keys.online('t1', nodeX.nodeId), bit)).toBe(0);
    expect(await redis.getbit(keys.online('t1', nodeX.nodeId), newBit)).toBe(1);

    const both = [`n.${nodeX.nodeId}`, `n.${(state.gateways[1] as Gateway).nodeId}`];
    await state.probe.deliver(state.prefix, both, { id: 'for-y', tenantId: 't1' }, recipients(bit));
    await state.probe.deliver(state.prefix, both, { id: 'for-x', tenantId: 't1' }, recipients(newBit));
    await eventually(() => x.eventIds().includes('for-x') && y.eventIds().includes('for-y'), 'both');
    expect(x.eventIds()).toEqual(['for-x']);
    expect(y.eventIds()).toEqual(['for-y']);
    // X's events went to a bit that was not X's until then.
    await eventually(
      () => x.frames.some((f) => f.type === 'error' && f.code === 'events_missed'),
      'events_missed to X’s tab',
    );
  });
});

describe('an event larger than the backpressure limit', () => {
  // 64 KiB of unsent bytes allowed per tab; the event is 1.5 MiB. Five tabs of one user on one node: the
  // first ones are written at once, the rest wait for the next turn (the writer's slice is spent).
  const { state, open } = twoNodes('oversized', { gateway: { maxBackpressureBytes: 64 * 1024 } });

  it('still reaches tabs that keep up, and the events after it too', async () => {
    const tabs: TestTab[] = [];
    for (let i = 0; i < 5; i += 1) tabs.push(await open(0, 't1', 'A'));
    const big = 'x'.repeat(1.5 * 1024 * 1024);
    await state.probe.deliver(state.prefix, ['u.t1.A'], { id: 'big', tenantId: 't1', data: { big } });
    await state.probe.deliver(state.prefix, ['u.t1.A'], { id: 'small', tenantId: 't1', data: { n: 1 } });
    await eventually(() => tabs.every((t) => t.eventIds().includes('small')), 'every tab gets both');
    for (const tab of tabs) {
      expect(tab.eventIds()).toEqual(['big', 'small']);
      expect((tab.events()[0]?.data as { big: string }).big.length).toBe(big.length);
      expect(tab.closeCode).toBeUndefined();
    }
  });
});

describe('a node declared dead while it was alive', () => {
  const { state, open } = twoNodes('forgotten', { presence: { heartbeatMs: 200 } });

  it('announces its users again on its next heartbeat, with the tenants it holds recorded for cleanup, and tells their tabs to resynchronise', async () => {
    const redis = new Redis(inject('redisUrl'));
    try {
      const keys = new Keys(state.prefix);
      const gateway = state.gateways[0] as Gateway;
      const tab = await open(0, 't1', 'A');
      const bit = Number(await redis.hget(keys.ids('t1'), 'A'));
      expect(await redis.smembers(keys.nodeTenants(gateway.nodeId))).toEqual(['t1']);

      // What a resolver or another gateway does to a node that stopped beating for a while.
      await new PresenceStore(withWarrenCommands(redis), keys).forgetNode(gateway.nodeId);
      expect(await redis.getbit(keys.online('t1', gateway.nodeId), bit)).toBe(0);

      await eventually(
        async () => (await redis.getbit(keys.online('t1', gateway.nodeId), bit)) === 1,
        'A announced online again',
      );
      // Recorded again too: without it, the node's real death later would leave A's bit behind.
      await eventually(
        async () => (await redis.smembers(keys.nodeTenants(gateway.nodeId))).includes('t1'),
        'the node’s tenants recorded again',
      );
      // Events resolved while A counted as offline never reached the node: the tab is told so, and a
      // resume from before cannot pretend otherwise.
      await eventually(
        () => tab.frames.some((f) => f.type === 'error' && f.code === 'events_missed'),
        'events_missed',
      );
      expect(tab.closeCode).toBeUndefined();
      const again = await open(0, 't1', 'A');
      again.send({ type: 'resume', epoch: tab.welcome?.epoch ?? '', offset: tab.welcome?.offset ?? 0 });
      await eventually(
        () => again.frames.some((f) => f.type === 'error' && f.code === 'resume_unavailable'),
        'resume_unavailable',
      );
    } finally {
      await redis.quit();
    }
  });
});
