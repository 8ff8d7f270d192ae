import { Agent, get as httpGet, request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { createServer } from 'node:net';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { startGateway, type Gateway } from '../../src/gateway/main.js';
import {
  BrokerProbe,
  UpgradeRefused,
  capturingLogger,
  cleanRedis,
  eventually,
  openTab,
  startTestGateway,
  testConfig,
  testPrefix,
  token,
} from '../support/harness.js';
import { TcpProxy } from '../support/tcp-proxy.js';

// What a load balancer and a monitoring system see of a gateway.

function request(agent: Agent, port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpGet({ host: '127.0.0.1', port, path, agent }, (res) => {
      let body = '';
      res.on('data', (chunk: Buffer) => (body += chunk.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
  });
}

function ask(
  agent: Agent,
  port: number,
  method: string,
  path: string,
): Promise<{ status: number; body: string; headers: IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    // An explicit empty body: this uWS build does not read a chunked one and hangs up.
    const headers = { 'content-length': '0' };
    const req = httpRequest({ host: '127.0.0.1', port, path, method, agent, headers }, (res) => {
      let body = '';
      res.on('data', (chunk: Buffer) => (body += chunk.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, headers: res.headers }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function get(port: number, path: string): Promise<{ status: number; body: string; type: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, body: await res.text(), type: res.headers.get('content-type') ?? '' };
}

describe('gateway HTTP: /healthz, /readyz, /metrics', () => {
  let prefix = '';
  let gateway: Gateway | undefined;
  let proxy: TcpProxy | undefined;

  afterEach(async () => {
    await gateway?.close();
    const probe = await BrokerProbe.open();
    await probe.deleteExchangesAndQueues(prefix, gateway ? [gateway.queue] : []);
    await probe.close();
    await proxy?.close();
    await cleanRedis(prefix);
    gateway = proxy = undefined;
  });

  it('is ready only while the broker is connected, and refuses new sockets while it is not', async () => {
    prefix = testPrefix('http-ready');
    const target = new URL(inject('rabbitmqUrl'));
    proxy = await TcpProxy.toUrl(target);
    gateway = await startTestGateway(testConfig(prefix, { rabbitmq: { url: proxy.url(target) } }));
    const port = gateway.port;

    expect(await get(port, '/healthz')).toMatchObject({ status: 200 });
    const ready = await get(port, '/readyz');
    expect(ready.status).toBe(200);
    expect(JSON.parse(ready.body)).toEqual({
      ready: true,
      broker: true,
      redis: true,
      tokens: true,
      consuming: true,
      draining: false,
    });

    proxy.refuse();
    proxy.cut();
    await eventually(async () => (await get(port, '/readyz')).status === 503, 'not ready without a broker');
    expect(JSON.parse((await get(port, '/readyz')).body)).toMatchObject({ ready: false, broker: false });
    // Alive all the same: an orchestrator must not restart a node for a broker outage.
    expect((await get(port, '/healthz')).status).toBe(200);
    const refused = await openTab(port, await token({ sub: 'ann', tid: 'acme' })).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(UpgradeRefused);
    expect((refused as UpgradeRefused).status).toBe(503);

    proxy.accept();
    await eventually(async () => (await get(port, '/readyz')).status === 200, 'ready again', 15_000);
    const tab = await openTab(port, await token({ sub: 'ann', tid: 'acme' }));
    tab.ws.terminate();
  });

  it('is not ready while Redis is away, and refuses new sockets until it is back', async () => {
    prefix = testPrefix('http-redis');
    // Presence, the id map and revocations are in Redis: a tab welcomed without it could be announced to
    // no resolver, and a revoked token could not be checked.
    const target = new URL(inject('redisUrl'));
    proxy = await TcpProxy.toUrl(target);
    gateway = await startTestGateway(testConfig(prefix, { redis: { url: proxy.url(target) } }));
    const port = gateway.port;
    expect((await get(port, '/readyz')).status).toBe(200);

    proxy.refuse();
    proxy.cut();
    try {
      await eventually(async () => (await get(port, '/readyz')).status === 503, 'not ready without Redis');
      expect(JSON.parse((await get(port, '/readyz')).body)).toMatchObject({
        ready: false,
        broker: true,
        redis: false,
      });
      expect((await get(port, '/healthz')).status).toBe(200);
      const refused = await openTab(port, await token({ sub: 'ann', tid: 'acme' })).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(UpgradeRefused);
      expect((refused as UpgradeRefused).status).toBe(503);
    } finally {
      // Back before anything else, failed or not: the gateway's close and the cleanup need Redis.
      proxy.accept();
    }
    await eventually(async () => (await get(port, '/readyz')).status === 200, 'ready again', 15_000);
    const tab = await openTab(port, await token({ sub: 'ann', tid: 'acme' }));
    tab.ws.terminate();
  });

  it('is not ready while it subscribes again with the broker connection up, until its users are bound and revocations read', async () => {
    prefix = testPrefix('http-resub');
    // Redis through a proxy: stalled, the read of the revocations the node may have missed waits, and so
    // does the end of its recovery.
    const target = new URL(inject('redisUrl'));
    proxy = await TcpProxy.toUrl(target);
    gateway = await startTestGateway(testConfig(prefix, { redis: { url: proxy.url(target) } }));
    const port = gateway.port;
    const tab = await openTab(port, await token({ sub: 'ann', tid: 'acme' }));
    const probe = await BrokerProbe.open();
    try {
      expect((await get(port, '/readyz')).status).toBe(200);
      proxy.stall();
      // The broker connection stays up; only the node's consumer is cancelled with its queue.
      const ch = await probe.model.createChannel();
      await ch.deleteQueue(gateway.queue);
      await ch.close();
      await eventually(async () => (await get(port, '/readyz')).status === 503, 'not ready while recovering');
      expect(JSON.parse((await get(port, '/readyz')).body)).toMatchObject({
        ready: false,
        broker: true,
        consuming: false,
      });

      proxy.flow();
      await eventually(async () => (await get(port, '/readyz')).status === 200, 'ready again', 15_000);
      await probe.deliver(prefix, ['u.acme.ann'], { id: 'after', tenantId: 'acme' });
      await eventually(() => tab.eventIds().includes('after'), 'the tab receives again');
    } finally {
      proxy.flow();
      tab.ws.terminate();
      await probe.close();
    }
  });

  it('serves /metrics on a port of its own when gateway.metricsPort is set, and not on the tabs’ port', async () => {
    prefix = testPrefix('http-ops');
    gateway = await startTestGateway(
      testConfig(prefix, { gateway: { metricsPort: 0, metricsHost: '127.0.0.1' } }),
    );
    const ops = gateway.metricsPort as number;
    expect(ops).toBeGreaterThan(0);
    expect(ops).not.toBe(gateway.port);
    const metrics = await get(ops, '/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.body).toMatch(/^warren_gateway_connections\{node="[0-9a-f]+"\} 0$/m);
    // The tabs' port, reachable by browsers, no longer tells the node's traffic.
    expect((await get(gateway.port, '/metrics')).status).toBe(404);
    // Health checks on both: a load balancer keeps asking the tabs' port.
    for (const port of [ops, gateway.port]) {
      const ready = await get(port, '/readyz');
      expect(ready.status).toBe(200);
      expect(JSON.parse(ready.body)).toMatchObject({ ready: true, broker: true, redis: true });
      expect((await get(port, '/healthz')).status).toBe(200);
    }
  });

  it('warns at start when /metrics is served on a public tabs’ port', async () => {
    prefix = testPrefix('http-ops-warn');
    const warned = (lines: Record<string, unknown>[]) =>
      lines.some((l) => String(l['msg']).startsWith('/metrics is served on the tabs’ port'));
    const open = capturingLogger('warn');
    gateway = await startGateway(testConfig(prefix, { gateway: { host: '0.0.0.0' } }), {
      logger: open.logger,
    });
    expect(warned(open.lines)).toBe(true);
    await gateway.close();
    const apart = capturingLogger('warn');
    gateway = await startGateway(
      testConfig(prefix, { gateway: { host: '0.0.0.0', metricsPort: 0, metricsHost: '127.0.0.1' } }),
      { logger: apart.logger },
    );
    expect(warned(apart.lines)).toBe(false);
  });

  it('refuses to start, naming the key, when gateway.metricsPort is taken', async () => {
    prefix = testPrefix('http-ops-taken');
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const port = (taken.address() as { port: number }).port;
    try {
      const config = testConfig(prefix, { gateway: { metricsPort: port, metricsHost: '127.0.0.1' } });
      await expect(startTestGateway(config)).rejects.toMatchObject({
        code: 'WARREN_ERR_LISTEN',
        message: expect.stringMatching(/gateway\.metricsPort: cannot listen .*another process/),
      });
    } finally {
      taken.close();
    }
  });

  it('is not ready while draining, and serves Prometheus metrics and a JSON 404', async () => {
    prefix = testPrefix('http-drain');
    gateway = await startTestGateway(testConfig(prefix, { gateway: { drainWindowMs: 500 } }));
    const port = gateway.port;
    const tab = await openTab(port, await token({ sub: 'ann', tid: 'acme' }));

    const metrics = await get(port, '/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.type).toMatch(/^text\/plain/);
    expect(metrics.body).toMatch(/^warren_gateway_connections\{node="[0-9a-f]+"\} 1$/m);
    expect(metrics.body).toMatch(/^warren_gateway_binds_total\{node="[0-9a-f]+"\} 1$/m);
    // Each refusal reason has its series from the start, for alerts on rates.
    expect(metrics.body).toMatch(/^warren_gateway_auth_failures_total\{[^}]*reason="signature"[^}]*\} 0$/m);

    for (const method of ['POST', 'HEAD']) {
      const refused = await fetch(`http://127.0.0.1:${port}/metrics`, { method });
      expect([method, refused.status, refused.headers.get('allow')]).toEqual([method, 405, 'GET']);
    }
    const missing = await get(port, '/nope');
    expect(missing.status).toBe(404);
    expect(JSON.parse(missing.body)).toEqual({ error: 'not found' });

    // drain() closes the listener first; a load balancer's kept-alive connection still asks, and must
    // hear "not ready" while the tabs are being moved away.
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    expect((await request(agent, port, '/readyz')).status).toBe(200);
    const draining = gateway.drain();
    const during = await request(agent, port, '/readyz');
    expect(during.status).toBe(503);
    expect(JSON.parse(during.body)).toMatchObject({ ready: false, draining: true });
    expect(await tab.closed).toBe(4100);
    await draining;
    agent.destroy();
  });

  it('answers HEAD like GET without a body, other methods with 405, and a plain GET of /ws with 426', async () => {
    prefix = testPrefix('http-head');
    gateway = await startTestGateway(
      testConfig(prefix, { gateway: { metricsPort: 0, metricsHost: '127.0.0.1' } }),
    );
    for (const port of [gateway.port, gateway.metricsPort as number]) {
      // One kept-alive connection for all of them: a HEAD answer that sent a body, or none of its
      // headers' end, would leave the next answer unreadable.
      const agent = new Agent({ keepAlive: true, maxSockets: 1 });
      try {
        for (const path of ['/healthz', '/readyz']) {
          const got = await ask(agent, port, 'GET', path);
          const head = await ask(agent, port, 'HEAD', path);
          expect(head.status).toBe(200);
          expect(head.body).toBe('');
          expect(head.headers['content-type']).toBe('application/json');
          expect(head.headers['content-length']).toBe(String(Buffer.byteLength(got.body)));
          const post = await ask(agent, port, 'POST', path);
          expect(post.status).toBe(405);
          expect(post.headers.allow).toBe('GET, HEAD');
        }
        // Any other path: no body after a HEAD either, or the next answer on this connection would be
        // read from the wrong bytes.
        for (const path of ['/metrics', '/ws', '/nope']) {
          const head = await ask(agent, port, 'HEAD', path);
          expect({ path, status: head.status >= 400, body: head.body }).toEqual({
            path,
            status: true,
            body: '',
          });
          expect((await ask(agent, port, 'GET', '/healthz')).body).toBe('{"status":"ok"}');
        }
        // Served on the ops port only (gateway.metricsPort is set here): other methods 405 there, saying
        // which one it takes (a 405 must), HEAD included.
        const opsPort = port !== gateway.port;
        for (const method of ['POST', 'HEAD']) {
          const metrics = await ask(agent, port, method, '/metrics');
          expect({ method, status: metrics.status, allow: metrics.headers.allow }).toEqual(
            opsPort ? { method, status: 405, allow: 'GET' } : { method, status: 404, allow: undefined },
          );
        }
        // A path neither listener serves is not found, whatever the method.
        expect((await ask(agent, port, 'POST', '/nope')).status).toBe(404);
      } finally {
        agent.destroy();
      }
    }
    const plain = await get(gateway.port, '/ws');
    expect(plain.status).toBe(426);
    expect(JSON.parse(plain.body)).toEqual({ error: 'WebSocket upgrade required' });
    // The socket's path still upgrades.
    const tab = await openTab(gateway.port, await token({ sub: 'ann', tid: 'acme' }));
    tab.ws.terminate();
  });
});
