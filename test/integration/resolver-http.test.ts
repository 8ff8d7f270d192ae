import { createServer } from 'node:net';
import { describe, expect, inject, it } from 'vitest';
import {
  BrokerProbe,
  cleanRedis,
  eventually,
  startTestResolver,
  testConfig,
  testPrefix,
} from '../support/harness.js';
import { TcpProxy } from '../support/tcp-proxy.js';

describe('the resolver’s metrics and health listener (resolver.metricsPort)', () => {
  it('serves /metrics, /healthz and /readyz, and none when the port is unset', async () => {
    const prefix = testPrefix('resolver-http');
    const resolver = await startTestResolver(testConfig(prefix, { resolver: { metricsPort: 0 } }));
    const quiet = await startTestResolver(testConfig(prefix));
    try {
      const base = `http://127.0.0.1:${resolver.metricsPort}`;
      const metrics = await fetch(`${base}/metrics`);
      expect(metrics.status).toBe(200);
      // What the README tells operators to alert on.
      const text = await metrics.text();
      expect(text).toContain('warren_resolver_events_total');
      expect(text).toContain('warren_resolver_dead_letters_total');
      expect((await fetch(`${base}/healthz`)).status).toBe(200);
      const ready = await fetch(`${base}/readyz`);
      expect(ready.status).toBe(200);
      expect(await ready.json()).toEqual({ ready: true, broker: true, redis: true, closing: false });
      expect((await fetch(`${base}/nope`)).status).toBe(404);
      expect(quiet.metricsPort).toBeUndefined();
    } finally {
      await resolver.close();
      await quiet.close();
      const probe = await BrokerProbe.open();
      await probe.deleteExchangesAndQueues(prefix);
      await probe.close();
      await cleanRedis(prefix);
    }
  });

  it('is not ready while the broker or Redis is away, and ready again once each is back', async () => {
    const prefix = testPrefix('resolver-ready');
    const [brokerUrl, redisUrl] = [new URL(inject('rabbitmqUrl')), new URL(inject('redisUrl'))];
    const [toBroker, toRedis] = [await TcpProxy.toUrl(brokerUrl), await TcpProxy.toUrl(redisUrl)];
    const resolver = await startTestResolver(
      testConfig(prefix, {
        rabbitmq: { url: toBroker.url(brokerUrl) },
        redis: { url: toRedis.url(redisUrl) },
        resolver: { metricsPort: 0 },
      }),
    );
    const readyz = async () => {
      const res = await fetch(`http://127.0.0.1:${resolver.metricsPort}/readyz`);
      return { status: res.status, ...((await res.json()) as Record<string, unknown>) };
    };
    try {
      expect(await readyz()).toMatchObject({ status: 200, ready: true });
      for (const [name, proxy] of [
        ['broker', toBroker],
        ['redis', toRedis],
      ] as const) {
        proxy.refuse();
        proxy.cut();
        await eventually(async () => (await readyz()).status === 503, `not ready without ${name}`);
        expect(await readyz()).toMatchObject({ ready: false, [name]: false });
        proxy.accept();
        await eventually(async () => (await readyz()).status === 200, `ready with ${name} back`, 15_000);
      }
    } finally {
      toBroker.accept();
      toRedis.accept();
      await resolver.close();
      await Promise.all([toBroker.close(), toRedis.close()]);
      const probe = await BrokerProbe.open();
      await probe.deleteExchangesAndQueues(prefix);
      await probe.close();
      await cleanRedis(prefix);
    }
  });

  it('refuses to start, naming the key, when the port is taken', async () => {
    const prefix = testPrefix('resolver-port');
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const port = (taken.address() as { port: number }).port;
    try {
      const config = testConfig(prefix, { resolver: { metricsPort: port, metricsHost: '127.0.0.1' } });
      await expect(startTestResolver(config)).rejects.toMatchObject({
        code: 'WARREN_ERR_LISTEN',
        message: expect.stringMatching(/resolver\.metricsPort: cannot listen .*another process/),
      });
    } finally {
      taken.close();
      const probe = await BrokerProbe.open();
      await probe.deleteExchangesAndQueues(prefix);
      await probe.close();
      await cleanRedis(prefix);
    }
  });
});
