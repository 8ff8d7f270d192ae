import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, inject, it } from 'vitest';
import { QUEUE_TYPES, type WarrenConfig } from '../../src/config/schema.js';
import type { Gateway } from '../../src/gateway/main.js';
import { startResolver, type Resolver } from '../../src/resolver/main.js';
import { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { Keys } from '../../src/store/keys.js';
import { PayloadStore } from '../../src/store/payload-store.js';
import { closeRedis, createPayloadRedis } from '../../src/store/redis.js';
import { ErrorCode } from '../../src/shared/errors.js';
import { silentLogger } from '../../src/shared/logger.js';
import { TcpProxy } from '../support/tcp-proxy.js';
import {
  BrokerProbe,
  cleanRedis,
  counter,
  eventually,
  openTab,
  payloadRedisUrl,
  removeInstallation,
  startTestGateway,
  startTestStack,
  testConfig,
  testPrefix,
  token,
  type TestStack,
} from '../support/harness.js';

/**
 * `claimCheck.redisUrl`: payloads on a Redis of their own. The tests' Redis server stands in for both,
 * memberships and presence in database 0, payloads in database 1: what matters is that every part looks
 * for a payload where the others put it, and nowhere else.
 */

describe('claim check with payloads on a Redis of their own', () => {
  let prefix: string;
  let config: Readonly<WarrenConfig>;
  let stack: TestStack | undefined;
  let gateway: Gateway;
  let resolver: Resolver;
  let warren: WarrenPublisher;
  let probe: BrokerProbe;
  let main: Redis;
  let payloads: Redis;
  let keys: Keys;

  beforeEach(async () => {
    prefix = testPrefix('payload-redis');
    keys = new Keys(prefix);
    main = new Redis(inject('redisUrl'));
    payloads = new Redis(payloadRedisUrl());
    config = testConfig(prefix, {
      claimCheck: { redisUrl: payloadRedisUrl() },
      resolver: { metricsPort: 0 },
    });
    stack = await startTestStack(config);
    ({ gateway, resolver, warren } = stack);
    probe = await BrokerProbe.open();
  });

  afterEach(async () => {
    // Whatever beforeEach got to: a failed start reports its own error, not this hook's.
    await stack?.close();
    await cleanRedis(prefix, payloadRedisUrl());
    await (probe as BrokerProbe | undefined)?.close();
    await Promise.all([main.quit(), payloads.quit()]);
  });

  const jobs = async (redis: Redis) => (await redis.keys(keys.job('t1', '*'))).length;
  const document = () => ({
    marker: randomBytes(8).toString('hex'),
    text: randomBytes(30_000).toString('base64'),
  });

  it('stores, checks and reads payloads there, from the SDK and from the resolver, and never in the main Redis', async () => {
    await warren.addUserToTeam('t1', 'ann', 'ward');
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));

    // Claim-checked by the SDK above its threshold.
    const bySdk = document();
    await warren.publishEvent({
      id: 'sdk',
      tenantId: 't1',
      type: 'doc.attached',
      audience: { teams: ['ward'] },
      data: bySdk,
    });
    // Claim-checked by the resolver: a service published it straight to the exchange.
    const byResolver = document();
    const raw = {
      id: 'raw',
      tenantId: 't1',
      type: 'doc.attached',
      audience: { users: ['ann'] },
      data: byResolver,
    };
    await probe.publishEvent(prefix, raw);
    // "Jobless": put first, then an event naming the job.
    const jobless = document();
    const jobId = await warren.putPayload('t1', jobless);
    await warren.publishEvent({
      id: 'jobless',
      tenantId: 't1',
      type: 'doc.attached',
      audience: { users: ['ann'] },
      jobId,
    });

    await eventually(() => ann.eventIds().length === 3, 'three events');
    const data = (id: string) => ann.events().find((e) => e.id === id)?.data;
    expect(data('sdk')).toEqual(bySdk);
    expect(data('raw')).toEqual(byResolver);
    expect(data('jobless')).toEqual(jobless);
    expect(await jobs(payloads)).toBe(3);
    expect(await jobs(main)).toBe(0);
    expect(await payloads.exists(keys.job('t1', jobId))).toBe(1);
    expect(await counter(gateway, 'warren_gateway_payload_fetches_total')).toBe(3);
  });

  it('takes a payloads’ client of the service’s own in the SDK, and leaves it open on close', async () => {
    const mine = new Redis(payloadRedisUrl());
    const sdk = await WarrenPublisher.connect({
      rabbitmqUrl: config.rabbitmq.url,
      redisUrl: config.redis.url,
      payloadRedis: mine,
      prefix,
    });
    try {
      const jobId = await sdk.putPayload('t1', { marker: 'mine' });
      expect(await payloads.exists(keys.job('t1', jobId))).toBe(1);
      expect(await main.exists(keys.job('t1', jobId))).toBe(0);
    } finally {
      await sdk.close();
    }
    expect(await mine.ping()).toBe('PONG');
    await mine.quit();
  });

  it('refuses an event naming a job that is only in the main Redis, as it refuses any unknown job', async () => {
    const dead = await probe.deadLetters(prefix);
    await main.set(keys.job('t1', 'misplaced'), JSON.stringify({ secret: 'x' }), 'EX', 60);
    await warren.publishEvent({
      id: 'misplaced',
      tenantId: 't1',
      type: 'doc.attached',
      audience: { users: ['ann'] },
      jobId: 'misplaced',
    });
    await eventually(() => dead.length === 1, 'dead-lettered');
    expect(dead.map((m) => m.properties.headers?.['x-warren-code'])).toEqual(['job_not_found']);
  });

  it('reports the payloads’ Redis in the gateway’s and the resolver’s /readyz', async () => {
    for (const port of [gateway.port, resolver.metricsPort]) {
      const response = await fetch(`http://127.0.0.1:${port}/readyz`);
      expect(response.status).toBe(200);
      expect(await response.json()).toMatchObject({ ready: true, redis: true, payloadRedis: true });
    }
  });
});

const PREFETCH = 4;

// With either queue type: the retry queue's per-message expiry and dead-lettering back hold for quorum too.
describe.each(QUEUE_TYPES)('claim check while the payloads’ own Redis is away (%s queues)', (queueType) => {
  let prefix: string;
  let proxy: TcpProxy;
  let gateway: Gateway;
  let resolver: Resolver;
  let warren: WarrenPublisher;
  let probe: BrokerProbe;
  let logs: { msg: string }[];

  beforeEach(async () => {
    prefix = testPrefix('payload-redis-away');
    const target = new URL(payloadRedisUrl());
    proxy = await TcpProxy.toUrl(target);
    // The gateway and the resolver reach the payloads' Redis through the proxy; the service directly.
    // A small prefetch window: events waiting for the payloads' Redis must not fill it.
    const config = testConfig(prefix, {
      rabbitmq: { queueType },
      claimCheck: { redisUrl: proxy.url(payloadRedisUrl()) },
      resolver: { metricsPort: 0, prefetch: PREFETCH },
    });
    gateway = await startTestGateway(config);
    logs = [];
    resolver = await startResolver(config, {
      logger: pino(
        { level: 'warn' },
        { write: (line: string) => void logs.push(JSON.parse(line) as { msg: string }) },
      ),
    });
    warren = await WarrenPublisher.connect({
      rabbitmqUrl: config.rabbitmq.url,
      redisUrl: config.redis.url,
      payloadRedisUrl: payloadRedisUrl(),
      prefix,
      queueType,
    });
    probe = await BrokerProbe.open();
  });

  afterEach(async () => {
    // Back, for a test that failed while it was away or hung: closing must not wait for it.
    proxy.accept();
    proxy.flow();
    await removeInstallation(prefix, { warren, resolvers: [resolver], gateways: [gateway] });
    await proxy.close();
    await cleanRedis(prefix, payloadRedisUrl());
    await probe.close();
  });

  const readyz = async (port: number | undefined): Promise<Record<string, unknown>> => {
    const response = await fetch(`http://127.0.0.1:${port}/readyz`);
    return { status: response.status, ...((await response.json()) as Record<string, unknown>) };
  };

  it('keeps taking tabs and routing small events; claim-checked ones wait for it and arrive once it is back', async () => {
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
    const doc = { marker: randomBytes(8).toString('hex') };
    const jobId = await warren.putPayload('t1', doc);

    proxy.refuse();
    proxy.cut();
    for (const port of [gateway.port, resolver.metricsPort])
      await eventually(async () => (await readyz(port)).payloadRedis === false, 'payloadRedis: false');
    // Reported, not required: every node shares that Redis, and only claim-checked events need it.
    for (const port of [gateway.port, resolver.metricsPort])
      expect(await readyz(port)).toMatchObject({
        status: 200,
        ready: true,
        redis: true,
        payloadRedis: false,
      });
    const late = await openTab(gateway.port, await token({ sub: 'bob', tid: 't1' }));

    const audience = { users: ['ann', 'bob'] };
    // Together, so that the resolver most likely takes them in one batch. `inline` is large and comes
    // straight to the exchange: the resolver would claim-check it itself.
    const large = { text: randomBytes(30_000).toString('base64') };
    await Promise.all([
      warren.publishEvent({ id: 'big', tenantId: 't1', type: 'doc.attached', audience, jobId }),
      probe.publishEvent(prefix, {
        id: 'inline',
        tenantId: 't1',
        type: 'doc.attached',
        audience,
        data: large,
      }),
      warren.publishEvent({ id: 'small', tenantId: 't1', type: 'note.created', audience, data: { n: 1 } }),
    ]);
    await eventually(() => [ann, late].every((t) => t.eventIds().includes('small')), 'small events routed');
    expect(ann.eventIds()).toEqual(['small']);
    // Only the event that needs the payloads' Redis waited for it: the batch was not retried and requeued.
    const said = logs.map((l) => l.msg);
    expect(said).toContain('cannot check claim-checked payloads; their events put aside, the others routed');
    expect(said).not.toContain('cannot sync; requeueing');
    await eventually(
      () => logs.some((l) => l.msg === 'claim check failed; put aside'),
      'the large inline event put aside',
    );
    await eventually(
      async () => (await counter(resolver, 'warren_resolver_events_total', { outcome: 'retried' })) >= 2,
      'both events put aside',
    );
    expect(await counter(resolver, 'warren_resolver_events_total', { outcome: 'requeued' })).toBe(0);

    proxy.accept();
    await eventually(
      () => [ann, late].every((t) => ['big', 'inline'].every((id) => t.eventIds().includes(id))),
      'the claim-checked events',
    );
    for (const t of [ann, late]) {
      expect(t.events().find((e) => e.id === 'big')?.data).toEqual(doc);
      expect(t.events().find((e) => e.id === 'inline')?.data).toEqual(large);
      expect([...t.eventIds()].sort()).toEqual(['big', 'inline', 'small']);
    }
  });

  it('puts waiting events aside in the retry queue, so more of them than the prefetch window hold up nothing', async () => {
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
    const doc = { marker: randomBytes(8).toString('hex') };
    const jobId = await warren.putPayload('t1', doc);
    const dead = await probe.deadLetters(prefix);
    const channel = await probe.model.createChannel();
    try {
      const retryDepth = async () => (await channel.checkQueue(`${prefix}.resolver.retry`)).messageCount;
      // A queue of the test's own that no exchange routes to: only a `CC` header, kept on a copy published to
      // the default exchange, would put something there.
      const { queue: bystander } = await channel.assertQueue('', { exclusive: true });
      // Consumed as it arrives: the copy's own expiry would take it out of that queue too.
      const leaked: string[] = [];
      await channel.consume(bystander, (m) => m && leaked.push(m.content.toString()), { noAck: true });

      proxy.refuse();
      proxy.cut();
      await eventually(async () => (await readyz(resolver.metricsPort)).payloadRedis === false, 'away');
      const audience = { users: ['ann'] };
      const waiting = Array.from({ length: 3 * PREFETCH }, (_, i) => `big-${i}`);
      for (const id of waiting)
        await warren.publishEvent({ id, tenantId: 't1', type: 'doc.attached', audience, jobId });
      // A raw publisher's routing headers: they must not route the event anywhere when it is put aside.
      await probe.publishEvent(
        prefix,
        { id: 'cc', tenantId: 't1', type: 'doc.attached', audience, jobId },
        { CC: [bystander] },
      );
      waiting.push('cc');
      // Named by no job there is: found out once the payloads' Redis answers again.
      await warren.publishEvent({
        id: 'lost',
        tenantId: 't1',
        type: 'doc.attached',
        audience,
        jobId: 'gone',
      });
      await warren.publishEvent({
        id: 'small',
        tenantId: 't1',
        type: 'note.created',
        audience,
        data: { n: 1 },
      });

      // Behind three windows' worth of waiting events, still routed while the payloads' Redis is away.
      await eventually(() => ann.eventIds().includes('small'), 'the small event, published last');
      expect(ann.eventIds()).toEqual(['small']);
      await eventually(async () => (await retryDepth()) > PREFETCH, 'events waiting in the retry queue');
      expect(await counter(resolver, 'warren_resolver_events_total', { outcome: 'requeued' })).toBe(0);
      expect(dead).toEqual([]);

      proxy.accept();
      await eventually(
        () => waiting.every((id) => ann.eventIds().includes(id)),
        'every waiting event',
        20_000,
      );
      await eventually(() => dead.length === 1, 'the event naming no job dead-lettered', 20_000);
      // Once each, with the payload as published.
      expect([...ann.eventIds()].sort()).toEqual([...waiting, 'small'].sort());
      for (const id of waiting) expect(ann.events().find((e) => e.id === id)?.data).toEqual(doc);
      // Where it was published, not the default exchange it came back by; and how often it waited.
      expect(dead[0]?.properties.headers).toMatchObject({
        'x-warren-code': 'job_not_found',
        'x-warren-original-exchange': `${prefix}.events`,
        'x-warren-original-routing-key': 't1.doc.attached',
      });
      expect(Number(dead[0]?.properties.headers?.['x-warren-attempts'])).toBeGreaterThanOrEqual(1);
      expect(await retryDepth()).toBe(0);
      expect(leaked).toEqual([]);
    } finally {
      await channel.close().catch(() => {});
    }
  }, 60_000);

  it('loses no event put aside while the retry queue is gone, and declares that queue again', async () => {
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
    const doc = { marker: randomBytes(8).toString('hex') };
    const jobId = await warren.putPayload('t1', doc);
    const channel = await probe.model.createChannel();
    try {
      // Deleted by hand: a copy published there would be confirmed and routed nowhere.
      await channel.deleteQueue(`${prefix}.resolver.retry`);
      proxy.refuse();
      proxy.cut();
      await eventually(async () => (await readyz(resolver.metricsPort)).payloadRedis === false, 'away');
      const audience = { users: ['ann'] };
      await warren.publishEvent({ id: 'big', tenantId: 't1', type: 'doc.attached', audience, jobId });
      await eventually(
        () => logs.some((l) => l.msg === 'retry queue did not take an event; requeued after a pause'),
        'the copy returned',
      );
      await eventually(() => probe.queueExists(`${prefix}.resolver.retry`), 'the retry queue declared again');

      proxy.accept();
      await eventually(() => ann.eventIds().includes('big'), 'the event, once the payloads’ Redis is back');
      expect(ann.events().find((e) => e.id === 'big')?.data).toEqual(doc);
      // Once: the returned copy was not a second one.
      expect(ann.eventIds()).toEqual(['big']);
    } finally {
      await channel.close().catch(() => {});
    }
  });

  it('does not hold other events behind a payloads’ Redis that hangs', async () => {
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
    const doc = { marker: randomBytes(8).toString('hex') };
    const jobId = await warren.putPayload('t1', doc);

    // Connected, so it looks reachable, but nothing comes back.
    proxy.stall();
    const audience = { users: ['ann'] };
    await Promise.all([
      warren.publishEvent({ id: 'big', tenantId: 't1', type: 'doc.attached', audience, jobId }),
      warren.publishEvent({ id: 'small', tenantId: 't1', type: 'note.created', audience, data: { n: 1 } }),
    ]);
    await eventually(() => ann.eventIds().includes('small'), 'the small event routed');
    await eventually(
      () => logs.some((l) => l.msg.startsWith('cannot check claim-checked payloads')),
      'the check timed out',
    );
    expect(ann.eventIds()).toEqual(['small']);

    proxy.flow();
    await eventually(() => ann.eventIds().includes('big'), 'the claim-checked event once it answers');
    expect(ann.events().find((e) => e.id === 'big')?.data).toEqual(doc);
  });
});

describe('the payload store on a Redis of its own that hangs', () => {
  it('times a check out once, then refuses the next ones at once until the server answers again', async () => {
    const prefix = testPrefix('payload-store-hung');
    const keys = new Keys(prefix);
    const target = new URL(payloadRedisUrl());
    const proxy = await TcpProxy.toUrl(target);
    const redis = await createPayloadRedis({
      url: proxy.url(payloadRedisUrl()),
      name: 'test-payload-store',
      logger: silentLogger(),
    });
    try {
      const store = new PayloadStore(redis, keys, true);
      const jobId = await store.put('t1', 'payload', 60);
      expect(await store.missing('t1', [jobId, 'absent'])).toEqual(new Set(['absent']));

      proxy.stall();
      // Connected, so it looks ready; the first check waits out its timeout.
      await expect(store.missing('t1', [jobId])).rejects.toMatchObject({ code: ErrorCode.Timeout });
      // The next ones would queue behind the one it has not answered: refused without being sent.
      for (const attempt of [() => store.missing('t1', [jobId]), () => store.put('t1', 'more', 60)])
        await expect(attempt()).rejects.toMatchObject({ code: ErrorCode.RedisUnavailable });

      proxy.flow();
      // Once the hung check is answered, commands go through again.
      await eventually(
        async () => (await store.missing('t1', [jobId]).catch(() => undefined))?.size === 0,
        'checks answered again',
      );
    } finally {
      proxy.flow();
      await closeRedis(redis);
      await proxy.close();
      await cleanRedis(prefix, payloadRedisUrl());
    }
  });
});
