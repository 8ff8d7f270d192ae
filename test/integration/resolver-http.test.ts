import { createServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { BrokerProbe, cleanRedis, startTestResolver, testConfig, testPrefix } from '../support/harness.js';

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
