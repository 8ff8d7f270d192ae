import { Redis } from 'ioredis';
import { afterEach, describe, expect, inject, it } from 'vitest';
import {
  BrokerProbe,
  UpgradeRefused,
  cleanRedis,
  eventually,
  openTab,
  payloadRedisUrl,
  testPrefix,
  token,
  type TestTab,
} from '../support/harness.js';
import { WarrenProcess } from '../support/warren-process.js';

// `warren dev` as `npm start` runs it: one process, nothing configured but where RabbitMQ and Redis are.

describe('warren dev as a process', () => {
  let prefix = '';
  let dev: WarrenProcess | undefined;
  const tabs: TestTab[] = [];
  const redis: Redis[] = [];

  afterEach(async () => {
    for (const tab of tabs.splice(0)) tab.ws.terminate();
    const queue = dev?.logged('listening')?.['queue'];
    await dev?.kill();
    dev = undefined;
    const probe = await BrokerProbe.open();
    await probe.deleteExchangesAndQueues(prefix, queue ? [String(queue)] : []);
    await probe.close();
    for (const client of redis.splice(0)) client.disconnect();
    await cleanRedis(prefix);
    await cleanRedis(prefix, payloadRedisUrl());
  });

  /** What every run here sets: where the services are, and a port of the system's choosing. */
  const devEnv = (extra: Record<string, string>) => ({
    WARREN_PREFIX: prefix,
    WARREN_RABBITMQ_URL: inject('rabbitmqUrl'),
    WARREN_REDIS_URL: inject('redisUrl'),
    WARREN_GATEWAY_HOST: '127.0.0.1',
    WARREN_GATEWAY_PORT: '0',
    ...extra,
  });

  it('warns, and never prints the secret, when it signs demo tokens with a configured one', async () => {
    prefix = testPrefix('dev-secret');
    dev = WarrenProcess.start(
      ['dev'],
      // Beyond loopback: the gateway warns at start about /metrics on the tabs' port too.
      devEnv({ WARREN_JWT_SECRET: 'a-secret-of-the-operator-0123456789', WARREN_GATEWAY_HOST: '0.0.0.0' }),
    );
    await dev.listening();
    await eventually(() => dev!.lines.some((l) => l.includes('Stop with Ctrl-C')), 'the start-up banner');
    expect(
      dev.lines.some((l) => l.startsWith('  Warning: warren dev signs demo tokens with the configured')),
    ).toBe(true);
    expect(dev.lines.some((l) => l.includes('a-secret-of-the-operator'))).toBe(false);
    // The banner in one piece, after the start-up logs (their warnings among them), not split by them.
    const first = dev.lines.indexOf('Warren dev is running.');
    const banner = dev.lines.slice(first, dev.lines.indexOf('  Stop with Ctrl-C.') + 1);
    expect(banner.filter((l) => l.startsWith('{'))).toEqual([]);
    const logged = dev.lines.slice(0, first).join('\n');
    expect(logged).toContain('/metrics is served on the tabs’ port');
    expect(logged).toContain('"msg":"warren dev signs demo tokens with the configured jwt.secret');
  });

  it('says once, in words, that RabbitMQ is not answering, and keeps trying', async () => {
    prefix = testPrefix('dev-no-broker');
    dev = WarrenProcess.start(['dev'], devEnv({ WARREN_RABBITMQ_URL: 'amqp://dev:hunter2@127.0.0.1:1' }));
    const failures = () => dev!.lines.filter((l) => l.includes('"msg":"broker connect failed"')).length;
    await eventually(() => failures() >= 3, 'the resolver trying again');
    const said = dev.lines.filter((l) => l.startsWith('RabbitMQ at '));
    expect(said).toEqual([
      'RabbitMQ at amqp://***@127.0.0.1:1 is not answering (connect ECONNREFUSED 127.0.0.1:1).',
    ]);
    expect(dev.lines).toContain(
      'Start it (or set WARREN_RABBITMQ_URL): warren dev keeps trying, and starts once it answers.',
    );
    expect(dev.child.exitCode).toBeNull();
    // Each attempt's log line names the broker too, without its password.
    expect(dev.lines.find((l) => l.includes('"msg":"broker connect failed"'))).toContain(
      '"url":"amqp://***@127.0.0.1:1"',
    );
    expect(dev.lines.join('\n')).not.toContain('hunter2');
  });

  it('stops with Redis not answering, naming its URL, the cause and the variable to set', async () => {
    prefix = testPrefix('dev-no-redis');
    dev = WarrenProcess.start(['dev'], devEnv({ WARREN_REDIS_URL: 'redis://:hunter2@127.0.0.1:1' }));
    expect(await dev.exited).toBe(1);
    const said = dev.lines.filter((l) => l.startsWith('WARREN_ERR_REDIS_UNAVAILABLE'));
    expect(said).toEqual([
      'WARREN_ERR_REDIS_UNAVAILABLE: cannot connect to Redis at redis://***@127.0.0.1:1: ' +
        'connect ECONNREFUSED 127.0.0.1:1. Check that Redis runs there, or set redis.url (WARREN_REDIS_URL) ' +
        'to the server to use.',
    ]);
    expect(dev.lines.join('\n')).not.toContain('hunter2');
  });

  it('says a running broker refused it, not that it is not answering (a virtual host it will not open)', async () => {
    prefix = testPrefix('dev-no-vhost');
    const url = new URL(inject('rabbitmqUrl'));
    url.pathname = '/no-such-vhost';
    dev = WarrenProcess.start(['dev'], devEnv({ WARREN_RABBITMQ_URL: url.toString() }));
    await eventually(() => dev!.lines.some((l) => l.startsWith('RabbitMQ at ')), 'the words');
    const said = dev.lines.filter((l) => l.startsWith('RabbitMQ at ') || l.startsWith('warren dev keeps'));
    expect(said[0]).toMatch(
      /^RabbitMQ at amqp:\/\/\*\*\*@.* refused the connection \(RabbitMQ refused to open virtual host "no-such-vhost"/,
    );
    expect(said[1]).toBe('warren dev keeps trying, and starts once it is let in.');
    expect(dev.lines.join('\n')).not.toMatch(/not answering|Start it/);
  });

  it('prints a token that works, routes a demo event with its payload through the payload Redis, and stops on Ctrl-C (SIGINT)', async () => {
    prefix = testPrefix('dev-process');
    dev = WarrenProcess.start(
      ['dev'],
      devEnv({
        // Every payload claim-checked, on a Redis of the payloads' own.
        WARREN_CLAIM_CHECK_BYTES: '0',
        WARREN_CLAIM_CHECK_REDIS_URL: payloadRedisUrl(),
        WARREN_GATEWAY_DRAIN_WINDOW_MS: '200',
        // Required claims: the printed token and the demo page's carry them.
        WARREN_JWT_ISSUER: 'https://id.example.test',
        WARREN_JWT_AUDIENCE: 'warren-dev',
      }),
    );
    const port = await dev.listening();
    await eventually(() => dev!.lines.some((l) => l.includes('Stop with Ctrl-C')), 'the start-up banner');
    expect(dev.lines).toContain(`  Demo page: http://localhost:${port}/`);
    expect(dev.lines.some((l) => l.startsWith('  JWT secret (HS256, generated for this run): '))).toBe(true);
    const banner = dev.lines.find((l) =>
      l.startsWith('  Token for user alice of tenant acme-health (1 h): '),
    );
    const printed = banner?.split(' ').at(-1) ?? '';

    const page = await fetch(`http://127.0.0.1:${port}/`);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<title>Warren · dev demo</title>');

    // The printed token opens a tab; one signed with any other secret does not (the secret is this run's).
    const alice = await openTab(port, printed);
    tabs.push(alice);
    expect(alice.welcome).toMatchObject({ type: 'welcome', tenantId: 'acme-health', userId: 'alice' });
    await expect(openTab(port, await token({ sub: 'alice', tid: 'acme-health' }))).rejects.toEqual(
      new UpgradeRefused(401),
    );

    const published = await fetch(`http://127.0.0.1:${port}/dev/publish`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        tenantId: 'acme-health',
        teamId: 'icu',
        text: 'bed 4 needs a check',
        from: 'bob',
      }),
    });
    expect(published.status).toBe(200);
    const { id } = (await published.json()) as { id: string };
    await eventually(() => alice.eventIds().includes(id), 'the demo event at alice’s tab');
    expect(alice.events().find((e) => e.id === id)?.data).toEqual({
      text: 'bed 4 needs a check',
      team: 'icu',
      from: 'bob',
    });
    // Its payload went to the payloads' Redis and nowhere else.
    const jobKeys = `{${prefix}:acme-health}:job:*`;
    const payloads = new Redis(payloadRedisUrl());
    const main = new Redis(inject('redisUrl'));
    redis.push(payloads, main);
    expect(await payloads.keys(jobKeys)).toHaveLength(1);
    expect(await main.keys(jobKeys)).toEqual([]);

    // Ctrl-C: the tab is told to reconnect elsewhere, the node's queue goes, the process exits cleanly.
    const queue = dev.logged('listening')?.['queue'];
    expect(queue).toMatch(new RegExp(`^${prefix}\\.gw\\.`));
    expect(await dev.stop('SIGINT')).toBe(0);
    expect(await alice.closed).toBe(4100);
    const probe = await BrokerProbe.open();
    try {
      expect(await probe.queueExists(String(queue))).toBe(false);
    } finally {
      await probe.close();
    }
  }, 60_000);
});
