import { Redis } from 'ioredis';
import { inject, it, expect } from 'vitest';
import { startGateway } from '../../src/gateway/main.js';
import { startResolver } from '../../src/resolver/main.js';
import { Keys } from '../../src/store/keys.js';
import {
  capturingLogger,
  connectPublisher,
  eventually,
  openTab,
  removeInstallation,
  testConfig,
  testPrefix,
  token,
} from '../support/harness.js';
import { TcpProxy } from '../support/tcp-proxy.js';
import { hasRedisServer, SecondRedis } from '../support/second-redis.js';

/** The lines a process's Redis clients logged about their connection, as `level msg`. */
function redisLines(lines: Record<string, unknown>[]): string[] {
  return lines
    .filter((l) => typeof l['msg'] === 'string' && /^redis /.test(l['msg']) && Number(l['level']) >= 30)
    .map((l) => `${String(l['level'])} ${String(l['msg'])}`);
}

it('says once that Redis went away and once that it came back, however many reconnects it took', async () => {
  const prefix = testPrefix('redis-outage-log');
  const target = new URL(inject('redisUrl'));
  const proxy = await TcpProxy.toUrl(target);
  const config = testConfig(prefix, {
    redis: { url: proxy.url(target) },
    presence: { heartbeatMs: 500, expiryMs: 2000 },
    resolver: { metricsPort: 0 },
  });
  const gatewayLog = capturingLogger('info');
  const resolverLog = capturingLogger('info');
  const gateway = await startGateway(config, { logger: gatewayLog.logger });
  const resolver = await startResolver(config, { logger: resolverLog.logger });
  // The publisher on Redis directly: only the servers lose it.
  const warren = await connectPublisher(testConfig(prefix));
  const readyz = async (port: number | undefined) =>
    (await fetch(`http://127.0.0.1:${String(port)}/readyz`)).status;
  const event = (id: string) => ({ id, tenantId: 't1', type: 'x', audience: { users: ['ann'] } });
  try {
    const tab = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
    await warren.publishEvent(event('before'));
    await eventually(() => tab.eventIds().includes('before'), 'the event before the outage');
    const gatewayFrom = gatewayLog.lines.length;
    const resolverFrom = resolverLog.lines.length;

    // Redis goes away for several seconds: each client tries again many times meanwhile.
    proxy.refuse();
    proxy.cut();
    await eventually(async () => (await readyz(gateway.port)) === 503, 'the gateway unready');
    await eventually(async () => (await readyz(resolver.metricsPort)) === 503, 'the resolver unready');
    await eventually(() => proxy.refused >= 10, 'reconnect attempts');
    await new Promise((resolve) => setTimeout(resolve, 3000));
    proxy.accept();

    await eventually(async () => (await readyz(gateway.port)) === 200, 'the gateway ready again', 15_000);
    await eventually(
      async () => (await readyz(resolver.metricsPort)) === 200,
      'the resolver ready again',
      15_000,
    );
    // The node could not beat meanwhile: its tab is told it may have missed events (those resolved while
    // resolvers counted it dead), and from then on receives again, without a restart.
    await eventually(
      () => tab.frames.some((f) => f.type === 'error' && f.code === 'events_missed'),
      'events_missed',
      15_000,
    );
    await warren.publishEvent(event('after'));
    await eventually(() => tab.eventIds().includes('after'), 'the event after the outage');
    expect(tab.closeCode).toBeUndefined();

    // One line as it goes, one as it comes back: not a line per attempt.
    for (const lines of [gatewayLog.lines.slice(gatewayFrom), resolverLog.lines.slice(resolverFrom)]) {
      expect(redisLines(lines)).toEqual([
        '40 redis connection lost; reconnecting',
        '30 redis connection restored',
      ]);
    }
    tab.ws.terminate();
  } finally {
    proxy.accept();
    await removeInstallation(prefix, { warren, resolvers: [resolver], gateways: [gateway] });
    await proxy.close();
  }
}, 60_000);

it('a resolver says once that its liveness polls fail, and once that they succeed again', async () => {
  const prefix = testPrefix('liveness-poll-log');
  const keys = new Keys(prefix);
  const redis = new Redis(inject('redisUrl'));
  // The list of nodes unreadable as one: every poll fails at once, as every 10 s with Redis away.
  await redis.hset(keys.nodes(), 'not', 'a sorted set');
  const log = capturingLogger('info');
  const resolver = await startResolver(testConfig(prefix), { logger: log.logger });
  const said = (msg: RegExp) => log.lines.filter((l) => msg.test(String(l['msg']))).length;
  try {
    await eventually(() => said(/^node liveness poll failed/) > 0, 'the first failure');
    // Several polls (one a second) fail meanwhile.
    await new Promise((resolve) => setTimeout(resolve, 3500));
    expect(said(/^node liveness poll failed/)).toBe(1);
    await redis.del(keys.nodes());
    await eventually(() => said(/^node liveness poll succeeds again/) === 1, 'the recovery');
    expect(said(/^node liveness poll failed/)).toBe(1);
  } finally {
    redis.disconnect();
    await removeInstallation(prefix, { resolvers: [resolver] });
  }
}, 30_000);

it('a gateway stopped while Redis is away drains without waiting for it, and its presence is swept', async () => {
  const prefix = testPrefix('redis-outage-drain');
  const target = new URL(inject('redisUrl'));
  const proxy = await TcpProxy.toUrl(target);
  const config = testConfig(prefix, {
    redis: { url: proxy.url(target) },
    presence: { heartbeatMs: 500, expiryMs: 2000 },
    gateway: { drainTimeoutMs: 5000 },
  });
  const log = capturingLogger('info');
  const gateway = await startGateway(config, { logger: log.logger });
  const keys = new Keys(prefix);
  const redis = new Redis(inject('redisUrl'));
  try {
    const tab = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
    expect(await redis.zscore(keys.nodes(), gateway.nodeId)).not.toBeNull();
    proxy.refuse();
    proxy.cut();
    await eventually(
      async () => (await fetch(`http://127.0.0.1:${gateway.port}/readyz`)).status === 503,
      'unready',
    );
    await gateway.close();
    const said = log.lines.map((l) => String(l['msg']));
    // The drain ended on its own, its queues deleted, rather than timing out on the presence it could not
    // forget.
    expect(said).toContain('drained');
    expect(said).not.toContain('drain did not finish');
    await eventually(() => tab.closeCode !== undefined, 'the tab closed');
    // What it left in Redis goes with the next sweep of any process once it is silent past the expiry.
    proxy.accept();
    const other = await startGateway(testConfig(prefix, { presence: { heartbeatMs: 500, expiryMs: 2000 } }), {
      logger: capturingLogger('info').logger,
    });
    try {
      await eventually(async () => (await redis.zscore(keys.nodes(), gateway.nodeId)) === null, 'swept');
    } finally {
      await other.close();
    }
  } finally {
    redis.disconnect();
    proxy.accept();
    await removeInstallation(prefix, { gateways: [gateway] });
    await proxy.close();
  }
}, 60_000);

it('a gateway whose presence writes fail says so once in a while, not once per user and retry', async () => {
  const prefix = testPrefix('presence-failure-log');
  const keys = new Keys(prefix);
  const log = capturingLogger('info');
  // A short grace period: each user's release is tried again every 100 ms while it fails.
  const config = testConfig(prefix, { gateway: { unbindGraceMs: 100 } });
  const gateway = await startGateway(config, { logger: log.logger });
  const redis = new Redis(inject('redisUrl'));
  try {
    const users = ['u1', 'u2', 'u3', 'u4', 'u5'];
    const tabs = await Promise.all(
      users.map(async (sub) => openTab(gateway.port, await token({ sub, tid: 't1' }))),
    );
    // The node's presence in t1 refused by Redis for now (as a Redis away makes each write fail, only
    // at once): every user's offline write and each retry of it fails.
    const online = keys.online('t1', gateway.nodeId);
    await redis.del(online);
    await redis.hset(online, 'not', 'a bitmap');
    const from = log.lines.length;
    for (const tab of tabs) tab.ws.close();
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const failures = log.lines
      .slice(from)
      .filter((l) => Number(l['level']) >= 40 && /fail/.test(String(l['msg'])));
    // Told, with how many, but not for every user and every 100 ms.
    expect(failures.length).toBeGreaterThan(0);
    expect(failures.length).toBeLessThanOrEqual(2);
    // Mended, presence works again without a restart.
    await redis.del(online);
    const again = await openTab(gateway.port, await token({ sub: 'u6', tid: 't1' }));
    expect(again.welcome?.userId).toBe('u6');
    again.ws.terminate();
  } finally {
    redis.disconnect();
    await removeInstallation(prefix, { gateways: [gateway] });
  }
}, 30_000);

it.skipIf(!hasRedisServer)(
  'a gateway on a Redis restarted empty says the server changed, not that it was declared dead, and routes right',
  async () => {
    const second = await SecondRedis.start();
    const prefix = testPrefix('redis-restart-empty');
    const main = new URL(inject('redisUrl'));
    const proxy = await TcpProxy.toUrl(main);
    const config = testConfig(prefix, {
      redis: { url: proxy.url(main) },
      presence: { heartbeatMs: 500, expiryMs: 2000 },
    });
    const log = capturingLogger('info');
    const gateway = await startGateway(config, { logger: log.logger });
    const resolver = await startResolver(config, { logger: capturingLogger('info').logger });
    // Through the same address: the publisher's payloads and memberships are on whichever server is there.
    const warren = await connectPublisher(config);
    const event = (id: string, user: string) => ({
      id,
      tenantId: 't1',
      type: 'x',
      audience: { users: [user] },
    });
    try {
      const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 't1' }));
      const bob = await openTab(gateway.port, await token({ sub: 'bob', tid: 't1' }));
      await warren.publishEvent(event('a1', 'ann'));
      await eventually(() => ann.eventIds().includes('a1'), 'the event before the restart');
      // Redis restarts empty behind the same address: the id map starts again from bit 0.
      proxy.retarget('127.0.0.1', second.port);
      proxy.cut();
      for (let i = 0; i < 10; i += 1) {
        await warren.publishEvent(event(`b${i}`, 'bob'));
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      await eventually(
        () => ann.frames.some((f) => f.type === 'error' && f.code === 'events_missed'),
        'events_missed',
        15_000,
      );
      await warren.publishEvent(event('a2', 'ann'));
      await warren.publishEvent(event('b99', 'bob'));
      await eventually(
        () => ann.eventIds().includes('a2') && bob.eventIds().includes('b99'),
        'the events after the restart',
      );
      // Never another user's event, whatever bits the new id map gave.
      expect(ann.eventIds().filter((id) => id.startsWith('b'))).toEqual([]);
      expect(bob.eventIds().filter((id) => id.startsWith('a'))).toEqual([]);
      const said = log.lines.map((l) => String(l['msg']));
      expect(said.filter((m) => m.startsWith('redis server changed'))).toHaveLength(1);
      expect(said).not.toContain('this node had been declared dead; announcing its users again');
      expect(said).toContain('this node is not listed on the new Redis server; announcing its users again');
      for (const tab of [ann, bob]) tab.ws.terminate();
    } finally {
      await removeInstallation(prefix, { warren, resolvers: [resolver], gateways: [gateway] });
      await proxy.close();
      second.stop();
    }
  },
  60_000,
);
