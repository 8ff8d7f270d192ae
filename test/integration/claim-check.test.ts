import { randomBytes } from 'node:crypto';
import type { ConsumeMessage } from 'amqplib';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, inject, it } from 'vitest';
import type { WarrenConfig } from '../../src/config/schema.js';
import { PAYLOAD_CACHE_ENTRY_BYTES, PayloadFetcher } from '../../src/gateway/payload-fetcher.js';
import { startGateway, type Gateway } from '../../src/gateway/main.js';
import type { Resolver } from '../../src/resolver/main.js';
import { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { silentLogger } from '../../src/shared/logger.js';
import { Keys } from '../../src/store/keys.js';
import { createRedis, type WarrenRedis } from '../../src/store/redis.js';
import { RedisTap, SpyQueue } from '../bench/claim-probes.js';
import { TcpProxy } from '../support/tcp-proxy.js';
import {
  BrokerProbe,
  cleanRedis,
  counter,
  eventually,
  openTab,
  startTestResolver,
  testConfig,
  testPrefix,
  token,
  type TestTab,
  removeInstallation,
} from '../support/harness.js';

const TTL_SEC = 120;

/** A payload of about `bytes` serialised bytes, shaped like a document (many small records), unique per call. */
function document(bytes: number): { data: unknown; json: string } {
  const pages = Math.max(1, Math.ceil(bytes / 1000));
  const data = {
    kind: 'scan',
    marker: randomBytes(8).toString('hex'),
    pages: Array.from({ length: pages }, (_, i) => ({ page: i, text: randomBytes(750).toString('base64') })),
  };
  return { data, json: JSON.stringify(data) };
}

interface Tab {
  tab: TestTab;
  /** Every frame as the socket delivered it, before any parsing. */
  raw: string[];
  node: number;
}

describe('claim check over two gateway nodes, a resolver and the publisher SDK', () => {
  let prefix: string;
  let config: Readonly<WarrenConfig>;
  let taps: RedisTap[];
  let gateways: Gateway[];
  let logs: Record<string, unknown>[][];
  let resolver: Resolver;
  let warren: WarrenPublisher;
  let probe: BrokerProbe;
  let deliveries: SpyQueue;
  let events: SpyQueue;
  let dead: ConsumeMessage[];
  let redis: Redis;
  let tabs: Tab[];

  beforeEach(async () => {
    prefix = testPrefix('claim');
    config = testConfig(prefix, { claimCheck: { ttlSec: TTL_SEC } });
    const redisUrl = inject('redisUrl');
    taps = [await RedisTap.start(redisUrl), await RedisTap.start(redisUrl)];
    logs = [[], []];
    gateways = [];
    for (const [i, tap] of taps.entries()) {
      const sink = logs[i] as Record<string, unknown>[];
      const logger = pino(
        { level: 'warn' },
        { write: (line: string) => void sink.push(JSON.parse(line) as Record<string, unknown>) },
      );
      gateways.push(
        await startGateway(testConfig(prefix, { redis: { url: tap.url(redisUrl) } }), { logger }),
      );
    }
    resolver = await startTestResolver(config);
    warren = await WarrenPublisher.connect({
      rabbitmqUrl: config.rabbitmq.url,
      redisUrl,
      prefix,
      claimCheckTtlSec: TTL_SEC,
    });
    probe = await BrokerProbe.open();
    deliveries = await SpyQueue.open(probe.model, `${prefix}.deliveries`);
    events = await SpyQueue.open(probe.model, `${prefix}.events`);
    dead = await probe.deadLetters(prefix);
    redis = new Redis(redisUrl);
    tabs = [];
  });

  afterEach(async () => {
    for (const t of tabs) t.tab.ws.terminate();
    await removeInstallation(prefix, { warren, resolvers: [resolver], gateways });
    await Promise.all(taps.map((t) => t.close()));
    await probe.close();
    await redis.quit();
  });

  async function open(node: number, tid: string, sub: string): Promise<Tab> {
    const gateway = gateways[node];
    if (!gateway) throw new Error('no such node');
    const tab = await openTab(gateway.port, await token({ sub, tid }));
    const t: Tab = { tab, raw: [], node };
    tab.ws.on('message', (data) => t.raw.push(data.toString()));
    tabs.push(t);
    return t;
  }

  const jobKey = (tenantId: string, jobId: string) => new Keys(prefix).job(tenantId, jobId);
  const errors = (t: Tab) => t.tab.frames.filter((f) => f.type === 'error');
  const jobOf = (eventId: string) => deliveries.of(eventId)[0]?.headers['x-warren-job'] as string | undefined;
  const deadCode = (eventId: string) =>
    dead.find((m) => m.properties.messageId === eventId)?.properties.headers?.['x-warren-code'] as unknown;
  const publish = (
    id: string,
    tenantId: string,
    audience: { teams?: string[]; users?: string[] },
    body: { data: unknown } | { jobId: string },
    type = 'doc.attached',
  ) => warren.publishEvent({ id, tenantId, type, audience, ...body });

  it('fans a 1 MB payload out to 50 users over 2 nodes: identical bytes, one Redis read per node, small broker messages', async () => {
    const users = Array.from({ length: 50 }, (_, i) => `user-${String(i).padStart(2, '0')}`);
    for (const u of users) await warren.addUserToTeam('t1', u, 'ward');
    const recipients: Tab[] = [];
    for (const [i, u] of users.entries()) recipients.push(await open(i < 25 ? 0 : 1, 't1', u));
    // More tabs for some users, also on the other node: still one read per node.
    recipients.push(
      await open(1, 't1', 'user-00'),
      await open(0, 't1', 'user-01'),
      await open(0, 't1', 'user-01'),
    );
    const outsider = await open(0, 't1', 'not-in-ward');
    const otherTenant = await open(1, 't2', 'user-00');

    const { data, json } = document(1_000_000);
    expect(json.length).toBeGreaterThan(1_000_000);
    await publish('big-1', 't1', { teams: ['ward'] }, { data });
    await eventually(
      () => recipients.every((t) => t.tab.eventIds().includes('big-1')),
      'every tab of the 50 users gets big-1',
      20_000,
    );

    // Exactly the published bytes, in every tab: the frame ends with `"data":<payload as published>}`.
    for (const t of recipients) {
      const frames = t.raw.filter((r) => r.includes('"id":"big-1"'));
      expect(frames).toHaveLength(1);
      expect((frames[0] as string).endsWith(`"data":${json}}`)).toBe(true);
      expect(t.tab.events().find((e) => e.id === 'big-1')?.data).toEqual(data);
    }

    const jobId = jobOf('big-1');
    expect(jobId).toMatch(/^[A-Za-z0-9_-]+$/);
    for (const [i, gateway] of gateways.entries()) {
      expect(await counter(gateway, 'warren_gateway_payload_fetches_total'), `node ${i} metric`).toBe(1);
      // Counted on the wire between the node and Redis, not by the node itself.
      expect((taps[i] as RedisTap).jobReads(jobId), `node ${i} GETs seen by the tap`).toBe(1);
      expect((taps[i] as RedisTap).bytesFromRedis).toBeLessThan(2 * json.length);
    }
    const ttl = await redis.ttl(jobKey('t1', jobId as string));
    expect(ttl).toBeGreaterThan(0);
    expect(ttl).toBeLessThanOrEqual(TTL_SEC);

    // On the broker the event and its delivery carry the job id, not the megabyte.
    const [event] = events.of('big-1');
    expect(event?.bodyBytes).toBeLessThan(512);
    expect(JSON.parse(event?.content.toString() ?? '{}')).toMatchObject({ jobId });
    const copies = deliveries.of('big-1');
    expect(copies).toHaveLength(1);
    for (const copy of copies) {
      expect(copy.bodyBytes).toBe(0);
      // Routed to the two nodes (the other one in CC), the 50 recipients as a bitmap: one small message.
      expect(copy.cc).toBe(1);
      expect(copy.bodyBytes + copy.headerBytes).toBeLessThan(512);
    }

    // Marker last: anything misrouted to the outsiders would have arrived before it.
    await probe.deliver(prefix, ['u.t1.not-in-ward', 'u.t2.user-00'], { id: 'marker', tenantId: 't1' });
    await eventually(() => outsider.tab.eventIds().includes('marker'), 'marker');
    expect(outsider.tab.eventIds()).toEqual(['marker']);
    expect(otherTenant.tab.eventIds()).toEqual([]);
    for (const t of [...recipients, outsider, otherTenant]) expect(t.tab.closeCode).toBeUndefined();
  }, 60_000);

  it('sends payload_unavailable with the event id when the payload is gone, logs and counts it, and keeps serving', async () => {
    const ann = await open(0, 't1', 'ann');
    const annToo = await open(1, 't1', 'ann');

    // A delivery naming a job that was deleted between resolving and fetching.
    const jobId = await warren.putPayload('t1', { note: 'will be deleted' });
    await redis.del(jobKey('t1', jobId));
    await probe.deliver(prefix, ['u.t1.ann'], { id: 'gone-1', tenantId: 't1', jobId });
    await eventually(() => [ann, annToo].every((t) => errors(t).length === 1), 'error frame on both nodes');
    for (const t of [ann, annToo]) {
      expect(errors(t)[0]).toMatchObject({ type: 'error', code: 'payload_unavailable', id: 'gone-1' });
      expect(t.tab.eventIds()).not.toContain('gone-1');
    }
    for (const [i, gateway] of gateways.entries()) {
      expect(await counter(gateway, 'warren_gateway_payload_unavailable_total', { reason: 'missing' })).toBe(
        1,
      );
      expect(logs[i]).toContainEqual(
        expect.objectContaining({ eventId: 'gone-1', jobId, tenantId: 't1', reason: 'missing', tabs: 1 }),
      );
    }

    // Expired by its TTL: the resolver refuses an event naming it; a delivery naming it gets the error.
    const shortLived = await warren.putPayload('t1', { note: 'one second' }, { ttlSec: 1 });
    await eventually(
      async () => (await redis.exists(jobKey('t1', shortLived))) === 0,
      'payload expired',
      5000,
    );
    await publish('late-1', 't1', { users: ['ann'] }, { jobId: shortLived });
    await probe.deliver(prefix, ['u.t1.ann'], { id: 'gone-2', tenantId: 't1', jobId: shortLived });
    await eventually(() => deadCode('late-1') !== undefined, 'late-1 dead-lettered');
    expect(deadCode('late-1')).toBe('job_not_found');
    await eventually(() => errors(ann).length === 2, 'second error frame');
    expect(errors(ann)[1]).toMatchObject({ code: 'payload_unavailable', id: 'gone-2' });

    // The node keeps serving: a later claim-checked event and a later inline one both arrive.
    const { data } = document(40_000);
    await publish('after-big', 't1', { users: ['ann'] }, { data });
    await publish('after-small', 't1', { users: ['ann'] }, { data: { ok: 1 } });
    await eventually(
      () =>
        [ann, annToo].every(
          (t) => t.tab.eventIds().includes('after-big') && t.tab.eventIds().includes('after-small'),
        ),
      'later events',
    );
    expect(ann.tab.events().find((e) => e.id === 'after-big')?.data).toEqual(data);
    expect(ann.tab.eventIds()).not.toContain('late-1');
    for (const t of [ann, annToo]) expect(t.tab.closeCode).toBeUndefined();
  });

  it('never lets an event of tenant t2 reach a payload of tenant t1, in the resolver, in Redis or in a node cache', async () => {
    const alice = await open(0, 't1', 'alice');
    const bobHere = await open(0, 't2', 'bob');
    const bobThere = await open(1, 't2', 'bob');
    const secret = `phi-${randomBytes(12).toString('hex')}`;
    const jobId = await warren.putPayload('t1', { secret });

    // t1 reads it first, so node 0 has t1's payload in its cache when t2 names the same job id.
    await publish('own', 't1', { users: ['alice'] }, { jobId });
    await eventually(() => alice.tab.eventIds().includes('own'), 'alice gets her own payload');
    expect(alice.tab.events()[0]?.data).toEqual({ secret });

    await publish('steal', 't2', { users: ['bob'] }, { jobId });
    await eventually(() => deadCode('steal') !== undefined, 'steal dead-lettered');
    expect(deadCode('steal')).toBe('job_not_found');
    expect(deliveries.of('steal')).toHaveLength(0);

    // A (buggy or hostile) delivery for t2 naming t1's job id: both nodes look under t2's key, find nothing.
    await probe.deliver(prefix, ['u.t2.bob'], { id: 'steal-direct', tenantId: 't2', jobId });
    await eventually(() => [bobHere, bobThere].every((t) => errors(t).length === 1), 'error frames for bob');
    for (const t of [bobHere, bobThere]) {
      expect(errors(t)[0]).toMatchObject({ code: 'payload_unavailable', id: 'steal-direct' });
      expect(t.tab.eventIds()).toEqual([]);
      expect(t.raw.some((r) => r.includes(secret))).toBe(false);
    }
    expect(await counter(gateways[0] as Gateway, 'warren_gateway_payload_unavailable_total')).toBe(1);
  });

  it('publishes "jobless" (putPayload, then an event naming the job id), claim-checks above the threshold and keeps small payloads inline', async () => {
    const ann = await open(0, 't1', 'ann');
    const jobs = async () => (await redis.keys(`{${prefix}:t1}:job:*`)).length;

    const report = document(200_000);
    const jobId = await warren.putPayload('t1', report.data);
    await publish('jobless', 't1', { users: ['ann'] }, { jobId }, 'report.ready');

    const above = document(20_000);
    expect(above.json.length).toBeGreaterThan(16_384);
    await publish('above', 't1', { users: ['ann'] }, { data: above.data });
    expect(await jobs()).toBe(2);

    const below = { text: 'x'.repeat(15_000) };
    expect(JSON.stringify(below).length).toBeLessThan(16_384);
    await publish('below', 't1', { users: ['ann'] }, { data: below }, 'note.created');
    expect(await jobs()).toBe(2);

    await eventually(
      () => ['jobless', 'above', 'below'].every((id) => ann.tab.eventIds().includes(id)),
      'three events',
    );
    const byId = (id: string) => ann.tab.events().find((e) => e.id === id)?.data;
    expect(byId('jobless')).toEqual(report.data);
    expect(byId('above')).toEqual(above.data);
    expect(byId('below')).toEqual(below);

    const body = (id: string) =>
      JSON.parse(events.of(id)[0]?.content.toString() ?? '{}') as Record<string, unknown>;
    expect(body('jobless')).toEqual(expect.objectContaining({ jobId }));
    expect(body('above')).not.toHaveProperty('data');
    expect(body('above')['jobId']).toEqual(expect.any(String));
    expect(body('below')).toMatchObject({ data: below });
    expect(body('below')).not.toHaveProperty('jobId');

    expect(jobOf('jobless')).toBe(jobId);
    expect(jobOf('above')).toBe(body('above')['jobId']);
    expect(jobOf('below')).toBeUndefined();
    expect(deliveries.of('jobless')[0]?.bodyBytes).toBe(0);
    expect(deliveries.of('below')[0]?.content.toString()).toBe(JSON.stringify(below));
    expect(await redis.ttl(jobKey('t1', body('above')['jobId'] as string))).toBeGreaterThan(TTL_SEC - 30);
  });

  it('claim-checks in the resolver a large event a service published straight to the exchange', async () => {
    const ann = await open(1, 't1', 'ann');
    const big = document(30_000);
    const event = {
      id: 'raw-big',
      tenantId: 't1',
      type: 'doc.attached',
      audience: { users: ['ann'] },
      data: big.data,
    };
    await probe.publishEvent(prefix, event);
    await eventually(() => ann.tab.eventIds().includes('raw-big'), 'raw-big delivered');
    expect(ann.tab.events()[0]?.data).toEqual(big.data);
    const [copy] = deliveries.of('raw-big');
    expect(copy?.bodyBytes).toBe(0);
    expect(copy?.headers['x-warren-job']).toEqual(expect.any(String));
    expect(await counter(gateways[1] as Gateway, 'warren_gateway_payload_fetches_total')).toBe(1);
    const claimChecked = await resolver.metrics.getSingleMetric('warren_resolver_claim_checked_total')?.get();
    expect(claimChecked?.values[0]?.value).toBe(1);

    // The service publishes it again (its confirm got lost, say): the same payload key, not a second copy.
    await probe.publishEvent(prefix, event);
    await eventually(() => deliveries.of('raw-big').length === 2, 'the second copy routed');
    expect(deliveries.of('raw-big')[1]?.headers['x-warren-job']).toBe(copy?.headers['x-warren-job']);
    expect(await redis.keys(jobKey('t1', '*'))).toHaveLength(1);
    expect(ann.tab.eventIds()).toEqual(['raw-big']);

    // A service reuses the id for another document to another user of the same node, which has ann's
    // payload cached: bob gets his own document, never ann's.
    const bob = await open(1, 't1', 'bob');
    const other = document(30_000);
    const reused = { ...event, audience: { users: ['bob'] }, data: other.data };
    await probe.publishEvent(prefix, reused);
    await eventually(() => bob.tab.eventIds().includes('raw-big'), 'the reused id delivered to bob');
    expect(bob.tab.events()[0]?.data).toEqual(other.data);
    expect(deliveries.of('raw-big')[2]?.headers['x-warren-job']).not.toBe(copy?.headers['x-warren-job']);
    expect(ann.tab.eventIds()).toEqual(['raw-big']);
  });

  it('writes a claim-checked event once per user when a second copy arrives while the payload is being read', async () => {
    const ann = await open(0, 't1', 'ann');
    const jobId = await warren.putPayload('t1', document(100_000).data);
    await probe.deliver(prefix, ['u.t1.ann'], { id: 'twice', tenantId: 't1', jobId });
    await probe.deliver(prefix, ['u.t1.ann'], { id: 'twice', tenantId: 't1', jobId });
    await probe.deliver(prefix, ['u.t1.ann'], { id: 'after', tenantId: 't1', jobId });
    await eventually(() => ann.tab.eventIds().includes('after'), 'after');
    expect(ann.tab.eventIds()).toEqual(['twice', 'after']);
    expect(await counter(gateways[0] as Gateway, 'warren_gateway_payload_fetches_total')).toBe(1);
  });

  it('keeps each user’s events in order while a claim-checked payload is read, and other users’ going', async () => {
    const ann = await open(0, 't1', 'ann');
    const bob = await open(0, 't1', 'bob');
    const jobId = await warren.putPayload('t1', document(1_000_000).data);
    await probe.deliver(prefix, ['u.t1.ann'], { id: 'large', tenantId: 't1', jobId });
    // Inline, right behind it: written at once to bob, behind the large one to ann.
    await probe.deliver(prefix, ['u.t1.ann', 'u.t1.bob'], { id: 'small', tenantId: 't1', data: { n: 1 } });
    await probe.deliver(prefix, ['u.t1.ann'], { id: 'missing', tenantId: 't1', jobId: 'no-such-job' });
    await probe.deliver(prefix, ['u.t1.ann'], { id: 'last', tenantId: 't1', data: { n: 2 } });
    await eventually(() => ann.tab.eventIds().includes('last'), 'last');
    expect(ann.tab.eventIds()).toEqual(['large', 'small', 'last']);
    // Offsets are given on arrival, so they increase at every tab: a resume from the last one loses nothing.
    const offsets = ann.tab.events().map((e) => e.offset);
    expect(offsets).toEqual([...offsets].sort((x, y) => x - y));
    const kinds = ann.tab.frames.filter((f) => f.type === 'event' || f.type === 'error');
    expect(kinds.map((f) => f.id)).toEqual(['large', 'small', 'missing', 'last']);
    expect(bob.tab.eventIds()).toEqual(['small']);
  });

  it('keeps each user’s order when users’ lines hold different events behind the same payload', async () => {
    const ann = await open(0, 't1', 'ann');
    const bob = await open(0, 't1', 'bob');
    const jobId = await warren.putPayload('t1', document(1_000_000).data);
    // Published back to back (each publish is sent before the previous one's confirm is awaited), so the
    // two small ones arrive while the payload is still being read.
    await Promise.all([
      probe.deliver(prefix, ['u.t1.ann', 'u.t1.bob'], { id: 'large', tenantId: 't1', jobId }),
      probe.deliver(prefix, ['u.t1.bob'], { id: 'for-bob', tenantId: 't1', data: { n: 1 } }),
      probe.deliver(prefix, ['u.t1.ann', 'u.t1.bob'], { id: 'for-both', tenantId: 't1', data: { n: 2 } }),
    ]);
    await eventually(() => bob.tab.eventIds().length === 3 && ann.tab.eventIds().length === 2, 'all');
    expect(bob.tab.eventIds()).toEqual(['large', 'for-bob', 'for-both']);
    expect(ann.tab.eventIds()).toEqual(['large', 'for-both']);
  });

  it('welcomes a tab behind a payload still being read, so a resume from its welcome misses nothing', async () => {
    // A node of its own whose payloads' Redis (the same server, through a proxy) the test can hold still,
    // so the payload read waits for the test while new tabs are still checked (their revocations).
    const target = new URL(inject('redisUrl'));
    const proxy = await TcpProxy.toUrl(target);
    const node = await startGateway(testConfig(prefix, { claimCheck: { redisUrl: proxy.url(target) } }), {
      logger: silentLogger(),
    });
    try {
      const tabOf = async () => openTab(node.port, await token({ sub: 'ann', tid: 't1' }));
      const first = await tabOf();
      const jobId = await warren.putPayload('t1', document(100_000).data);
      const before = await counter(node, 'warren_gateway_deliveries_total');
      proxy.stall();
      await probe.deliver(prefix, ['u.t1.ann'], { id: 'held', tenantId: 't1', jobId });
      await probe.deliver(prefix, ['u.t1.ann'], { id: 'behind', tenantId: 't1', data: { n: 1 } });
      await eventually(
        async () => (await counter(node, 'warren_gateway_deliveries_total')) === before + 2,
        'both deliveries at the node, the payload read held',
      );
      // Ann's later tabs need no payload (she is online already): welcomed while the read waits.
      const staying = await tabOf();
      const leaving = await tabOf();
      const cursor = leaving.welcome?.offset as number;
      await leaving.close();
      proxy.flow();
      await eventually(() => first.eventIds().length === 2, 'the first tab gets both');
      // Welcomed before them, the staying tab gets both live, in order.
      await eventually(() => staying.eventIds().length === 2, 'the staying tab gets both');
      expect(staying.eventIds()).toEqual(['held', 'behind']);
      // The tab that left had seen neither: resumed from its welcome, a new tab gets both, in order.
      const back = await tabOf();
      back.send({ type: 'resume', epoch: back.welcome?.epoch, offset: cursor });
      await eventually(() => back.frames.some((f) => f.type === 'resumed'), 'resumed');
      expect(back.eventIds()).toEqual(['held', 'behind']);
      for (const t of [first, staying, back]) t.ws.terminate();
    } finally {
      proxy.flow();
      // Closed while its Redis still answers (it goes offline there and deletes its queue).
      await node.close();
      await proxy.close();
    }
  });

  it('holds up only its own user behind a slow read, until the queue passes its limit: then the whole node', async () => {
    const PREFETCH = 4;
    const LIMIT = 2;
    const target = new URL(inject('redisUrl'));
    const proxy = await TcpProxy.toUrl(target);
    const node = await startGateway(
      testConfig(prefix, {
        redis: { url: proxy.url(target) },
        gateway: { prefetch: PREFETCH, lineLimit: LIMIT },
      }),
      { logger: silentLogger() },
    );
    try {
      const ann = await openTab(node.port, await token({ sub: 'ann', tid: 't1' }));
      const bob = await openTab(node.port, await token({ sub: 'bob', tid: 't1' }));
      const jobId = await warren.putPayload('t1', document(10_000).data);
      const arrived = () => counter(node, 'warren_gateway_deliveries_total');
      const before = await arrived();
      proxy.stall();
      await probe.deliver(prefix, ['u.t1.ann'], { id: 'held', tenantId: 't1', jobId });
      const behind = Array.from({ length: 10 }, (_, i) => `behind-${i}`);
      const toAnn = (id: string) => probe.deliver(prefix, ['u.t1.ann'], { id, tenantId: 't1', data: {} });
      // Within the limit: ann's events wait behind her read, bob's go on.
      for (const id of behind.slice(0, LIMIT)) await toAnn(id);
      await probe.deliver(prefix, ['u.t1.bob'], { id: 'bob-1', tenantId: 't1', data: {} });
      await eventually(() => bob.eventIds().includes('bob-1'), 'bob not held up by ann’s read');
      expect(ann.eventIds()).toEqual([]);
      // Past it: the rest keep their prefetch slots, the window fills and the node takes nothing more.
      for (const id of behind.slice(LIMIT)) await toAnn(id);
      await probe.deliver(prefix, ['u.t1.bob'], { id: 'bob-2', tenantId: 't1', data: {} });
      // The read, ann's first LIMIT (acked), bob-1, then PREFETCH - 1 held beside the read.
      const taken = 1 + LIMIT + 1 + (PREFETCH - 1);
      await eventually(async () => (await arrived()) - before === taken, 'the prefetch window full');
      await new Promise((r) => setTimeout(r, 300));
      expect((await arrived()) - before).toBe(taken);
      expect(bob.eventIds()).toEqual(['bob-1']);
      proxy.flow();
      await eventually(() => ann.eventIds().length === 11 && bob.eventIds().length === 2, 'everything');
      expect(ann.eventIds()).toEqual(['held', ...behind]);
      expect(bob.eventIds()).toEqual(['bob-1', 'bob-2']);
      for (const t of [ann, bob]) t.ws.terminate();
    } finally {
      proxy.flow();
      await node.close();
      await proxy.close();
    }
  });

  it('writes a large fan-out a few tabs per turn of the event loop, keeping every tab in order', async () => {
    const holders: Tab[] = [];
    for (let i = 0; i < 40; i += 1) holders.push(await open(0, 't1', `holder-${i}`));
    const bystander = await open(0, 't1', 'bystander');
    // The gateway runs in this process: sample its write counter once per turn of the event loop.
    const perTurn: number[] = [];
    let sampling = true;
    let last = 0;
    const sample = (): void => {
      void counter(gateways[0] as Gateway, 'warren_gateway_tab_writes_total').then((now) => {
        perTurn.push(now - last);
        last = now;
        if (sampling) setImmediate(sample);
      });
    };
    sample();
    const keys = holders.map((_, i) => `u.t1.holder-${i}`);
    const big = { blob: randomBytes(1_500_000).toString('base64') }; // 2 MB frames: 80 MB for 40 tabs
    await probe.deliver(prefix, keys, { id: 'big-a', tenantId: 't1', data: big });
    await probe.deliver(prefix, ['u.t1.bystander'], { id: 'small-b', tenantId: 't1', data: { n: 1 } });
    await probe.deliver(prefix, keys, { id: 'small-c', tenantId: 't1', data: { n: 2 } });
    await probe.deliver(prefix, keys, { id: 'big-d', tenantId: 't1', data: big });
    await eventually(
      () => holders.every((t) => t.tab.eventIds().length === 3),
      'every holder has three events',
      20_000,
    );
    sampling = false;

    for (const t of holders) {
      expect(t.tab.eventIds()).toEqual(['big-a', 'small-c', 'big-d']);
      const offsets = t.tab.events().map((e) => e.offset);
      expect(offsets).toEqual([...offsets].sort((x, y) => x - y));
      expect(t.tab.events()[2]?.data).toEqual(big);
    }
    expect(bystander.tab.eventIds()).toEqual(['small-b']);
    expect(perTurn.reduce((sum, n) => sum + n, 0)).toBe(40 * 3 + 1);
    // 4 MiB of large frames per turn is two or three 2 MB frames, so 160 MB take dozens of turns; written
    // in one go, the four deliveries would take four.
    expect(perTurn.filter((n) => n > 0).length).toBeGreaterThanOrEqual(20);
    for (const t of [...holders, bystander]) expect(t.tab.closeCode).toBeUndefined();
  }, 60_000);
});

describe('payload fetcher on a real Redis', () => {
  let prefix: string;
  let redis: WarrenRedis;
  let tap: RedisTap;
  let keys: Keys;

  beforeEach(async () => {
    prefix = testPrefix('fetcher');
    keys = new Keys(prefix);
    tap = await RedisTap.start(inject('redisUrl'));
    redis = await createRedis({
      url: tap.url(inject('redisUrl')),
      name: 'fetcher-test',
      logger: silentLogger(),
      autoPipelining: true,
    });
  });

  afterEach(async () => {
    await redis.quit();
    await tap.close();
    await cleanRedis(prefix);
  });

  /** What a cached payload of tenant t1 counts against the bound: its bytes, its key and bookkeeping. */
  const cost = (id: string, bytes: number): number =>
    bytes + keys.job('t1', id).length + PAYLOAD_CACHE_ENTRY_BYTES;

  function fetcher(maxBytes: number, maxAgeMs?: number): { f: PayloadFetcher; fetches: () => number } {
    let n = 0;
    const f = new PayloadFetcher(redis, keys, { maxBytes, onFetch: () => (n += 1), maxAgeMs });
    return { f, fetches: () => n };
  }

  it('merges concurrent reads of one job into one GET and serves later ones from the cache', async () => {
    await redis.set(keys.job('t1', 'j1'), 'x'.repeat(50_000));
    const { f, fetches } = fetcher(1_000_000);
    const all = await Promise.all(Array.from({ length: 20 }, () => f.get('t1', 'j1')));
    expect(new Set(all).size).toBe(1);
    expect(all[0]?.length).toBe(50_000);
    expect(await f.get('t1', 'j1')).toBe(all[0]);
    expect(fetches()).toBe(1);
    expect(tap.jobReads('j1')).toBe(1);
    expect(await f.get('t2', 'j1')).toBeUndefined();
  });

  it('keeps a payload in memory of its own, not in the socket read it arrived in', async () => {
    await redis.set(keys.job('t1', 'doc'), 'd'.repeat(20_000));
    await redis.set(keys.job('t1', 'note'), 'n'.repeat(100));
    const { f } = fetcher(1_000_000);
    // Read together, the two replies may arrive in one read of the socket.
    const [doc, note] = await Promise.all([f.get('t1', 'doc'), f.get('t1', 'note')]);
    expect(doc?.byteLength).toBe(20_000);
    expect(doc?.buffer.byteLength).toBe(20_000);
    expect(note?.toString()).toBe('n'.repeat(100));
    expect(note?.buffer.byteLength).toBe(100);
    expect(f.cachedBytes).toBe(cost('doc', 20_000) + cost('note', 100));
  });

  it('keeps the cache within its byte bound, dropping the least recently used payload first', async () => {
    for (const id of ['a', 'b', 'c']) await redis.set(keys.job('t1', id), id.repeat(400));
    // Room for two of them, not three.
    const bound = cost('a', 400) * 2 + 200;
    const { f } = fetcher(bound);
    await f.get('t1', 'a');
    await f.get('t1', 'b');
    await f.get('t1', 'a'); // a is now the most recent
    await f.get('t1', 'c'); // three over the bound: b goes
    expect(f.cachedBytes).toBe(cost('a', 400) + cost('c', 400));
    expect(tap.jobReads()).toBe(3);
    await f.get('t1', 'a');
    await f.get('t1', 'c');
    expect(tap.jobReads()).toBe(3);
    await f.get('t1', 'b');
    expect(tap.jobReads('b')).toBe(2);
    expect(f.cachedBytes).toBeLessThanOrEqual(bound);
  });

  it('counts each entry’s key and bookkeeping, not only its payload: tiny payloads cannot pile up by the thousand', async () => {
    // Payloads of a byte each (a service may put any JSON value): counted by their bytes alone, a 4 KiB
    // bound would keep every one of them, each costing the node hundreds of bytes.
    const jobs = Array.from({ length: 200 }, (_, i) => `tiny-${i}`);
    for (const job of jobs) await redis.set(keys.job('t1', job), String(job.length % 10));
    const maxBytes = 4096;
    const { f, fetches } = fetcher(maxBytes);
    for (const job of jobs) expect((await f.get('t1', job))?.toString()).toBe(String(job.length % 10));
    expect(f.cachedBytes).toBeLessThanOrEqual(maxBytes);
    // Read again: only as many as fit with their keys were kept.
    for (const job of jobs) await f.get('t1', job);
    const kept = jobs.length * 2 - fetches();
    expect(kept).toBeLessThanOrEqual(Math.floor(maxBytes / keys.job('t1', 'tiny-0').length));
  });

  it('reads again once a cached payload is older than the maximum age, and never caches a missing one', async () => {
    await redis.set(keys.job('t1', 'old'), 'payload');
    const { f } = fetcher(1_000_000, 50);
    expect((await f.get('t1', 'old'))?.toString()).toBe('payload');
    await redis.del(keys.job('t1', 'old'));
    expect(f.cachedBytes).toBe(cost('old', 7));
    await new Promise((r) => setTimeout(r, 80));
    // Gone from memory on the sweep, whether or not anyone asks for it again.
    f.sweep();
    expect(f.cachedBytes).toBe(0);
    expect(await f.get('t1', 'old')).toBeUndefined();
    expect(await f.get('t1', 'old')).toBeUndefined();
    expect(tap.jobReads('old')).toBe(3);
    expect(f.cachedBytes).toBe(0);
  });

  it('keeps nothing of a read that ends after close: its caller gets the payload, the cache stays empty', async () => {
    await redis.set(keys.job('t1', 'late'), 'payload');
    const { f } = fetcher(1_000_000);
    const reading = f.get('t1', 'late');
    f.close();
    expect((await reading)?.toString()).toBe('payload');
    expect(f.cachedBytes).toBe(0);
  });

  it('fails a read that Redis does not answer in time, and reads afresh once it answers again', async () => {
    const target = new URL(inject('redisUrl'));
    const proxy = await TcpProxy.toUrl(target);
    const stalling = await createRedis({
      url: proxy.url(target),
      name: 'fetcher-stall',
      logger: silentLogger(),
    });
    try {
      await redis.set(keys.job('t1', 'slow'), 'payload');
      const f = new PayloadFetcher(stalling, keys, {
        maxBytes: 1_000_000,
        onFetch: () => {},
        timeoutMs: 200,
      });
      proxy.stall();
      await expect(f.get('t1', 'slow')).rejects.toThrow(/timed out after 200 ms/);
      proxy.flow();
      expect((await f.get('t1', 'slow'))?.toString()).toBe('payload');
      f.close();
    } finally {
      stalling.disconnect();
      await proxy.close();
    }
  });
});
