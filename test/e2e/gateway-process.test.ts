import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, inject, it } from 'vitest';
import { collectStatus } from '../../src/cli/status.js';
import type { Resolver } from '../../src/resolver/main.js';
import type { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import {
  BrokerProbe,
  TEST_SECRET,
  cleanRedis,
  connectPublisher,
  eventually,
  freePort,
  openTab,
  startTestResolver,
  testConfig,
  testPrefix,
  token,
  type TestTab,
} from '../support/harness.js';
import { DeliverySpy } from '../support/delivery-spy.js';
import { TcpProxy } from '../support/tcp-proxy.js';
import { WarrenProcess } from '../support/warren-process.js';

// `warren gateway` as an operator runs it: configured by environment only, stopped by a signal or killed.

function gatewayEnv(prefix: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    WARREN_PREFIX: prefix,
    WARREN_RABBITMQ_URL: inject('rabbitmqUrl'),
    WARREN_REDIS_URL: inject('redisUrl'),
    WARREN_JWT_SECRET: TEST_SECRET,
    WARREN_GATEWAY_HOST: '127.0.0.1',
    WARREN_GATEWAY_PORT: '0',
    ...extra,
  };
}

describe('warren gateway as a process', () => {
  let prefix = '';
  const processes: WarrenProcess[] = [];
  const tabs: TestTab[] = [];
  let resolver: Resolver | undefined;
  let warren: WarrenPublisher | undefined;
  let probe: BrokerProbe | undefined;
  let spy: DeliverySpy | undefined;

  afterEach(async () => {
    for (const tab of tabs.splice(0)) tab.ws.terminate();
    const queues = processes.map((p) => String(p.logged('listening')?.['queue']));
    for (const p of processes.splice(0)) await p.kill();
    await spy?.close();
    await warren?.close();
    await resolver?.close();
    // A killed node leaves its queue behind (the broker would expire it after a minute); the topology the
    // nodes declared stays too, whether or not the test opened a probe of its own.
    probe ??= await BrokerProbe.open();
    await probe.deleteExchangesAndQueues(prefix, queues);
    await probe.close();
    await cleanRedis(prefix);
    warren = resolver = probe = spy = undefined;
  });

  it('drains on SIGTERM: tabs get 4100, queue and bindings are removed, the process exits 0', async () => {
    prefix = testPrefix('sigterm');
    const gw = WarrenProcess.start(
      ['gateway'],
      gatewayEnv(prefix, { WARREN_GATEWAY_DRAIN_WINDOW_MS: '200' }),
    );
    processes.push(gw);
    const port = await gw.listening();
    const queue = String(gw.logged('listening')?.['queue']);
    probe = await BrokerProbe.open();
    tabs.push(await openTab(port, await token({ sub: 'ann', tid: 'acme' })));
    tabs.push(await openTab(port, await token({ sub: 'bob', tid: 'acme' })));
    expect(await probe.routes(prefix, 'u.acme.ann')).toBe(true);

    gw.child.kill('SIGTERM');
    expect(await tabs[0]?.closed).toBe(4100);
    expect(await tabs[1]?.closed).toBe(4100);
    expect(await gw.exited).toBe(0);
    expect(await probe.queueExists(queue)).toBe(false);
    expect(await probe.queueExists(`${queue}.dropped`)).toBe(false);
    expect(await probe.queueExists(`${queue}.dropped.lost`)).toBe(false);
    expect(await probe.routes(prefix, 'u.acme.ann')).toBe(false);
    expect(gw.logged('drained')).toBeDefined();
  });

  it('exits at once on a second SIGTERM while draining, with SIGTERM’s code', async () => {
    prefix = testPrefix('sigterm-twice');
    const gw = WarrenProcess.start(
      ['gateway'],
      gatewayEnv(prefix, { WARREN_GATEWAY_DRAIN_WINDOW_MS: '20000' }),
    );
    processes.push(gw);
    const port = await gw.listening();
    // Two tabs: the drain closes one at once and waits most of its window before the other.
    tabs.push(await openTab(port, await token({ sub: 'ann', tid: 'acme' })));
    tabs.push(await openTab(port, await token({ sub: 'bob', tid: 'acme' })));
    gw.child.kill('SIGTERM');
    await eventually(() => gw.logged('stopping') !== undefined, 'the drain under way');
    gw.child.kill('SIGTERM');
    const late = new Promise<string>((r) => setTimeout(() => r('still draining'), 5000));
    expect(await Promise.race([gw.exited, late])).toBe(143);
  });

  it('stops on SIGTERM and on Ctrl-C while still waiting for RabbitMQ at start-up, also as a container’s PID 1', async (ctx) => {
    prefix = testPrefix('pid1');
    for (const [signal, code] of [
      ['SIGTERM', 143],
      ['SIGINT', 130],
    ] as const) {
      const gw = WarrenProcess.start(
        ['gateway'],
        gatewayEnv(prefix, { WARREN_RABBITMQ_URL: 'amqp://guest:guest@127.0.0.1:1' }),
        { pid1: true },
      );
      if (!gw) return ctx.skip('no PID namespace can be made here (unshare, as root)');
      processes.push(gw);
      await eventually(
        () => gw.lines.some((l) => l.includes('"msg":"broker connect failed"')),
        'the gateway waiting for RabbitMQ',
      );
      const late = new Promise<string>((r) => setTimeout(() => r(`still running after ${signal}`), 5000));
      expect(await Promise.race([gw.stop(signal), late])).toBe(code);
    }
  });

  it('exits 1 with the reason when its port is taken, leaving no node behind', async () => {
    prefix = testPrefix('port-taken');
    // A port named, as operators do: uSockets would share it (SO_REUSEPORT) unless told not to, and the
    // second node would take every other connection.
    const port = await freePort();
    const first = WarrenProcess.start(['gateway'], gatewayEnv(prefix, { WARREN_GATEWAY_PORT: String(port) }));
    processes.push(first);
    expect(await first.listening()).toBe(port);
    const second = WarrenProcess.start(
      ['gateway'],
      gatewayEnv(prefix, { WARREN_GATEWAY_PORT: String(port) }),
    );
    processes.push(second);
    expect(await second.exited).toBe(1);
    expect(second.lines.join('\n')).toContain(
      `cannot listen on 127.0.0.1:${port} (is another process listening on it? Stop it, or set gateway.port, WARREN_GATEWAY_PORT)`,
    );
    // Only the first node counts as alive: the second took its heartbeat back before exiting.
    const config = testConfig(prefix);
    expect((await collectStatus(config)).gateways.map((g) => g.id)).toEqual([
      first.logged('listening')?.['nodeId'],
    ]);
  });

  it('shares its port with another gateway when both set gateway.reusePort', async () => {
    prefix = testPrefix('port-shared');
    const port = await freePort();
    const env = gatewayEnv(prefix, {
      WARREN_GATEWAY_PORT: String(port),
      WARREN_GATEWAY_REUSE_PORT: 'true',
      WARREN_PRESENCE_HEARTBEAT_MS: '200',
    });
    const nodes = [WarrenProcess.start(['gateway'], env), WarrenProcess.start(['gateway'], env)];
    processes.push(...nodes);
    for (const node of nodes) expect(await node.listening()).toBe(port);
    // The kernel spreads connections over both (by a hash of each connection's addresses): of 20 tabs,
    // all on one node would be one chance in half a million.
    const tabs: TestTab[] = [];
    for (let i = 0; i < 20; i += 1)
      tabs.push(await openTab(port, await token({ sub: `u${i}`, tid: 'acme' })));
    const ids = nodes.map((n) => n.logged('listening')?.['nodeId']);
    await eventually(async () => {
      const { gateways } = await collectStatus(testConfig(prefix));
      const users = ids.map((id) => gateways.find((g) => g.id === id)?.users ?? 0);
      return users.every((u) => u > 0) && users.reduce((a, b) => a + b, 0) === 20;
    }, 'tabs on both nodes');
    for (const tab of tabs) tab.ws.terminate();
  });

  it('will not take the queue of a running gateway of the same fixed id', async () => {
    prefix = testPrefix('same-id');
    const env = gatewayEnv(prefix, { WARREN_GATEWAY_ID: 'gw-a', WARREN_PRESENCE_HEARTBEAT_MS: '200' });
    const first = WarrenProcess.start(['gateway'], env);
    processes.push(first);
    const port = await first.listening();
    const ann = await openTab(port, await token({ sub: 'ann', tid: 'acme' }));
    tabs.push(ann);

    // The second stops at once, with the reason: retrying, it would take the queue the moment the first's
    // reader blinked.
    const second = WarrenProcess.start(['gateway'], env);
    processes.push(second);
    // 78: a configuration error (EX_CONFIG), as for any other bad setting.
    expect(await second.exited).toBe(78);
    expect(second.lines.join('\n')).toContain('gateway.id gw-a: a running gateway of that id reads');
    expect(second.logged('listening')).toBeUndefined();
    // The first keeps its queue (read by it alone), its presence, its bindings and every delivery.
    probe = await BrokerProbe.open();
    const { consumerCount } = await probe.channel.checkQueue(`${prefix}.gw.gw-a`);
    expect(consumerCount).toBe(1);
    await eventually(async () => {
      const { gateways } = await collectStatus(testConfig(prefix));
      return gateways.length === 1 && gateways[0]?.id === 'gw-a' && gateways[0].users === 1;
    }, 'gw-a alone, still counting ann');
    await probe.deliver(prefix, ['u.acme.ann'], { id: 'still-mine', tenantId: 'acme' });
    await eventually(() => ann.eventIds().includes('still-mine'), 'the delivery at ann’s tab');
    // Had the second cleared gw-a's presence, the first would have found itself declared dead at its next
    // beat (every 200 ms) and announced ann again, which the checks above cannot tell from never losing it.
    await new Promise((r) => setTimeout(r, 1000));
    expect(first.lines.join('\n')).toContain('"msg":"listening"');
    expect(first.lines.join('\n')).not.toContain('declared dead');
  }, 60_000);

  it('exits 1 when another process took its fixed id while it was cut off from the broker', async () => {
    prefix = testPrefix('id-taken');
    const target = new URL(inject('rabbitmqUrl'));
    const proxy = await TcpProxy.toUrl(target);
    try {
      const env = gatewayEnv(prefix, { WARREN_GATEWAY_ID: 'gw-b', WARREN_GATEWAY_DRAIN_WINDOW_MS: '0' });
      const first = WarrenProcess.start(['gateway'], { ...env, WARREN_RABBITMQ_URL: proxy.url(target) });
      processes.push(first);
      const ann = await openTab(await first.listening(), await token({ sub: 'ann', tid: 'acme' }));
      tabs.push(ann);
      proxy.refuse();
      proxy.cut();
      probe = await BrokerProbe.open();
      await eventually(
        async () => (await probe!.channel.checkQueue(`${prefix}.gw.gw-b`)).consumerCount === 0,
        'the broker sees the first one gone',
      );
      const second = WarrenProcess.start(['gateway'], env);
      processes.push(second);
      await second.listening();
      proxy.accept();
      expect(await ann.closed).toBe(4100);
      expect(await first.exited).toBe(1);
      expect(first.lines.join('\n')).toContain('gateway.id gw-b: another process started with this id');
      // The second keeps reading its queue.
      expect((await probe.channel.checkQueue(`${prefix}.gw.gw-b`)).consumerCount).toBe(1);
      expect(second.child.exitCode).toBeNull();
    } finally {
      await proxy.close();
    }
  }, 60_000);

  it('warren token prints a token the gateway accepts, with the issuer and audience it requires', async () => {
    prefix = testPrefix('token-cli');
    const env = gatewayEnv(prefix, {
      WARREN_JWT_ISSUER: 'https://id.example',
      WARREN_JWT_AUDIENCE: 'warren',
    });
    const gw = WarrenProcess.start(['gateway'], env);
    processes.push(gw);
    const port = await gw.listening();
    const minted = WarrenProcess.start(['token', '--tenant', 'acme', '--user', 'ann', '--ttl', '120'], env);
    expect(await minted.exited).toBe(0);
    const jwt = minted.lines.join('').trim();
    const tab = await openTab(port, jwt);
    expect(tab.welcome).toMatchObject({ userId: 'ann', tenantId: 'acme' });
    tab.ws.terminate();
    // What it cannot do, it says: bad arguments (2), and no secret to sign with (78, a configuration error).
    const bad = WarrenProcess.start(['token', '--tenant', 'a.b'], env);
    expect(await bad.exited).toBe(2);
    expect(bad.lines.join('\n')).toContain('--tenant must match');
    expect(bad.lines.join('\n')).toContain('--user is required');
    const { WARREN_JWT_SECRET: _secret, ...withoutSecret } = env;
    const unsigned = WarrenProcess.start(['token', '--tenant', 'acme', '--user', 'ann'], withoutSecret);
    expect(await unsigned.exited).toBe(78);
    expect(unsigned.lines.join('\n')).toContain(
      'warren token signs with jwt.secret (WARREN_JWT_SECRET, HS256), which is not set: set it to the secret your gateways verify with',
    );
  });

  it('warren revoke closes the user’s tabs, and names the setting to mend when Redis does not answer', async () => {
    prefix = testPrefix('revoke-cli');
    const env = gatewayEnv(prefix);
    const gw = WarrenProcess.start(['gateway'], env);
    processes.push(gw);
    const port = await gw.listening();
    const tab = await openTab(port, await token({ sub: 'ann', tid: 'acme' }));
    const revoke = WarrenProcess.start(['revoke', '--tenant', 'acme', '--user', 'ann', '--ttl', '60'], env);
    processes.push(revoke);
    expect(await revoke.exited).toBe(0);
    expect(revoke.lines.join('\n')).toMatch(/^revoked ann of acme: /);
    expect(await tab.closed).toBe(4001);
    // An operator runs the command, configured as the servers are: told of the SDK's `redisUrl` option,
    // they would look for a setting the command does not have.
    const down = WarrenProcess.start(['revoke', '--tenant', 'acme', '--user', 'ann'], {
      ...env,
      WARREN_REDIS_URL: `redis://127.0.0.1:${await freePort()}`,
    });
    processes.push(down);
    expect(await down.exited).toBe(1);
    const said = down.lines.join('\n');
    expect(said).toMatch(/^WARREN_ERR_REDIS_UNAVAILABLE: cannot connect to Redis at /);
    expect(said).toContain('set redis.url (WARREN_REDIS_URL) to the server to use');
    expect(said).toContain('Nothing was revoked: run warren revoke again once it answers');
    expect(said).not.toContain('redisUrl');
  });

  it('refuses arguments it would ignore: warren gateway --port 9 does not start on another port', async () => {
    const gateway = WarrenProcess.start(['gateway', '--port', '9'], gatewayEnv(testPrefix('args')));
    processes.push(gateway);
    expect(await gateway.exited).toBe(2);
    expect(gateway.lines.join('\n')).toContain('takes no arguments (got --port 9)');
  });

  it('answers --help for every command with that command’s usage, and runs nothing', async () => {
    const env = gatewayEnv(testPrefix('help'));
    const asked = [
      ['gateway', '--help'],
      ['members', 'import', '-h'],
      ['revoke', '--tenant', 'acme', '--help'],
      ['explain', '--help'],
      ['status', '--help'],
      ['help', 'token'],
    ].map((args) => WarrenProcess.start(args, env));
    processes.push(...asked);
    expect(await Promise.all(asked.map((p) => p.exited))).toEqual([0, 0, 0, 0, 0, 0]);
    const [gateway, members, revoke, explain, status, token] = asked.map((p) => p.lines.join('\n'));
    expect(gateway).toContain('warren gateway                 run a gateway node');
    expect(members).toContain('warren members import FILE');
    expect(members).toContain('--dry-run');
    expect(revoke).toMatch(/warren revoke --tenant ID --user ID \[--ttl SECONDS\]/);
    expect(explain).toContain('warren explain --tenant ID');
    expect(status).toContain('warren status [--json]');
    expect(token).toContain('warren token --tenant ID');
    // One command's usage, not every command's.
    expect(revoke).not.toContain('explain');
    // A bad argument names the problem and shows the usage of the command it was given to.
    const bad = WarrenProcess.start(['status', '--bogus'], env);
    processes.push(bad);
    expect(await bad.exited).toBe(2);
    expect(bad.lines.join('\n')).toContain("Unknown option '--bogus'");
    expect(bad.lines.join('\n')).toContain('warren status [--json]');
    expect(bad.lines.join('\n')).not.toContain('members import');
    // Names every object has are no commands.
    const inherited = WarrenProcess.start(['constructor', '--help'], env);
    const helpInherited = WarrenProcess.start(['help', 'toString'], env);
    processes.push(inherited, helpInherited);
    expect(await inherited.exited).toBe(2);
    expect(inherited.lines.join('\n')).toContain('unknown command "constructor --help"');
    expect(await helpInherited.exited).toBe(0);
    expect(helpInherited.lines.join('\n')).toContain('Usage: warren <command> [options]');
  });

  it('warren status lists the gateway, its users and every queue with its depth and readers', async () => {
    prefix = testPrefix('status');
    const env = gatewayEnv(prefix, { WARREN_PRESENCE_HEARTBEAT_MS: '200' });
    const gw = WarrenProcess.start(['gateway'], env);
    processes.push(gw);
    const port = await gw.listening();
    const nodeId = String(gw.logged('listening')?.['nodeId']);
    const config = testConfig(prefix, { presence: { heartbeatMs: 200 } });
    resolver = await startTestResolver(config);
    probe = await BrokerProbe.open();
    tabs.push(await openTab(port, await token({ sub: 'ann', tid: 'acme' })));
    tabs.push(await openTab(port, await token({ sub: 'ann', tid: 'acme' })));
    // bob's only tab, closed: his key stays bound for the grace period (30 s), but he is offline, and the
    // node's users are those online there, as the tenants' are.
    const bob = await openTab(port, await token({ sub: 'bob', tid: 'acme' }));
    await eventually(
      async () => (await collectStatus(config)).gateways[0]?.connections === 3,
      'bob’s tab counted',
    );
    await bob.close();
    // An event without id or audience: dead-lettered, and left in the dead-letter queue for an operator.
    await probe.publishEvent(prefix, { tenantId: 'acme', type: 'test.event' });
    await eventually(async () => {
      const status = await collectStatus(config);
      const dead = status.queues.find((q) => q.queue === `${prefix}.dead`);
      return status.gateways[0]?.connections === 2 && dead?.messages === 1;
    }, 'bob’s tab gone and the dead letter queued');
    // A beat after the one that counted bob's tab gone: the numbers as they stay through his grace period.
    await new Promise((r) => setTimeout(r, 400));

    const json = WarrenProcess.start(['status', '--json'], env);
    processes.push(json);
    expect(await json.exited).toBe(0);
    const status = JSON.parse(json.lines.join('\n')) as Awaited<ReturnType<typeof collectStatus>>;
    expect(status.gateways).toMatchObject([{ id: nodeId, alive: true, connections: 2, users: 1 }]);
    expect(status.tenants).toEqual([{ id: 'acme', online: 1 }]);
    expect(status.queues).toEqual([
      { queue: `${prefix}.resolver`, messages: 0, consumers: 1 },
      { queue: `${prefix}.resolver.membership`, messages: 0, consumers: 1 },
      { queue: `${prefix}.resolver.retry`, messages: 0, consumers: 0 },
      { queue: `${prefix}.dead`, messages: 1, consumers: 0 },
      { queue: `${prefix}.gw.${nodeId}`, messages: 0, consumers: 1 },
      { queue: `${prefix}.gw.${nodeId}.dropped`, messages: 0, consumers: 1 },
      { queue: `${prefix}.gw.${nodeId}.dropped.lost`, messages: 0, consumers: 1 },
    ]);

    // The same as tables for a person; a queue that is not there shows dashes, not an error.
    await probe.channel.deleteQueue(`${prefix}.resolver.retry`);
    const text = WarrenProcess.start(['status'], env);
    processes.push(text);
    expect(await text.exited).toBe(0);
    const rows = text.lines.map((line) => line.trim().split(/\s{2,}/));
    expect(rows).toContainEqual([nodeId, 'yes', expect.stringMatching(/^\d+ s ago$/), '2', '1']);
    expect(rows).toContainEqual(['acme', '1']);
    expect(rows).toContainEqual([`${prefix}.dead`, '1', '0']);
    expect(rows).toContainEqual([`${prefix}.resolver.retry`, '-', '-']);
    expect(rows).toContainEqual([`${prefix}.gw.${nodeId}.dropped`, '0', '1']);
  }, 60_000);

  it('warren status says when it finds nothing of its prefix: more likely a wrong prefix than an idle installation', async () => {
    prefix = testPrefix('status-nothing');
    const status = WarrenProcess.start(['status'], {
      WARREN_PREFIX: prefix,
      WARREN_RABBITMQ_URL: inject('rabbitmqUrl'),
      WARREN_REDIS_URL: inject('redisUrl'),
    });
    processes.push(status);
    expect(await status.exited).toBe(0);
    expect(status.lines).toContain(
      `nothing of prefix ${prefix} in Redis or RabbitMQ: no gateway, tenant or queue of it. Wrong prefix ` +
        '(WARREN_PREFIX), or not the Redis and RabbitMQ Warren runs on?',
    );
  });

  it('warren status says why it cannot reach the broker, without a stack trace or the password', async () => {
    // A gateway alive in Redis: during a broker outage, what Redis tells is what an operator needs.
    prefix = testPrefix('status-no-broker');
    const gw = WarrenProcess.start(['gateway'], gatewayEnv(prefix));
    processes.push(gw);
    await gw.listening();
    const nodeId = gw.logged('listening')?.['nodeId'] as string;
    const status = WarrenProcess.start(['status'], {
      WARREN_PREFIX: prefix,
      WARREN_RABBITMQ_URL: 'amqp://ops:hunter2@127.0.0.1:1',
      WARREN_REDIS_URL: inject('redisUrl'),
    });
    expect(await status.exited).toBe(1);
    const output = status.lines.join('\n');
    const rows = status.lines.map((line) => line.trim().split(/\s{2,}/));
    expect(rows).toContainEqual([nodeId, 'yes', expect.stringMatching(/^\d+ s ago$/), '0', '0']);
    // Where the queues' table would be, why there is none: an empty table there read as "no queues".
    expect(rows).not.toContainEqual(['queue', 'messages', 'consumers']);
    const said = status.lines.indexOf('queues: unknown, RabbitMQ could not be asked (below)');
    expect(said).toBeGreaterThan(status.lines.findIndex((line) => line.startsWith('tenant')));
    expect(status.lines[said + 1]).toMatch(
      /^WARREN_ERR_BROKER_UNAVAILABLE: cannot connect to RabbitMQ at amqp:\/\/\*\*\*@127\.0\.0\.1:1: /,
    );
    expect(output).toContain('ECONNREFUSED');
    expect(output).not.toContain('hunter2');
    expect(output).not.toMatch(/\n\s+at /);
  });

  it('warren health probes the port the gateway’s WARREN_CONFIG gives, and fails once it is gone', async () => {
    prefix = testPrefix('health');
    const port = await freePort();
    const dir = mkdtempSync(join(tmpdir(), 'warren-health-'));
    const file = join(dir, 'warren.yaml');
    writeFileSync(file, `gateway:\n  host: 0.0.0.0\n  port: ${port}\n`);
    const env: Record<string, string> = { ...gatewayEnv(prefix), WARREN_CONFIG: file };
    delete env['WARREN_GATEWAY_PORT'];
    delete env['WARREN_GATEWAY_HOST'];
    const gw = WarrenProcess.start(['gateway'], env);
    processes.push(gw);
    expect(await gw.listening()).toBe(port);

    const health = WarrenProcess.start(['health', 'gateway'], { WARREN_CONFIG: file });
    expect(await health.exited).toBe(0);
    await gw.stop();
    const down = WarrenProcess.start(['health', 'gateway'], { WARREN_CONFIG: file });
    expect(await down.exited).toBe(1);
    expect(down.lines.join('\n')).toContain(`http://127.0.0.1:${port}/healthz`);
  });

  it('warren health probes a gateway on a port browsers (and fetch) refuse to reach', async () => {
    prefix = testPrefix('health-port');
    // The ports on fetch's blocked list a process needs no privilege to listen on; the first one free here.
    const blocked = [
      6666, 6667, 6668, 6669, 6665, 10080, 6000, 6566, 6679, 6697, 1719, 1720, 1723, 2049, 3659, 4045, 4190,
      5060, 5061,
    ];
    let port: number | undefined;
    for (const candidate of blocked) {
      const free = await new Promise<boolean>((resolve) => {
        const probe = createServer();
        probe.once('error', () => resolve(false));
        probe.listen(candidate, '127.0.0.1', () => probe.close(() => resolve(true)));
      });
      if (free) {
        port = candidate;
        break;
      }
    }
    if (port === undefined)
      throw new Error(`none of fetch's blocked ports is free here: ${blocked.join(', ')}`);
    // What the test is about: fetch would not even try it.
    await expect(fetch(`http://127.0.0.1:${port}/healthz`)).rejects.toMatchObject({
      cause: { message: 'bad port' },
    });
    const env = { ...gatewayEnv(prefix), WARREN_GATEWAY_PORT: String(port) };
    const gw = WarrenProcess.start(['gateway'], env);
    processes.push(gw);
    expect(await gw.listening()).toBe(port);
    const health = WarrenProcess.start(['health', 'gateway'], env);
    expect(await health.exited).toBe(0);
    await gw.stop();
  });

  it('warren status gives up on a broker host that never answers, after rabbitmq.connectTimeoutMs', async () => {
    const server = createServer(() => {});
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const status = WarrenProcess.start(['status'], {
        WARREN_RABBITMQ_URL: `amqp://127.0.0.1:${(server.address() as AddressInfo).port}`,
        WARREN_RABBITMQ_CONNECT_TIMEOUT_MS: '500',
        WARREN_REDIS_URL: inject('redisUrl'),
      });
      expect(await status.exited).toBe(1);
      expect(status.lines.join('\n')).toContain('connect ETIMEDOUT');
    } finally {
      server.close();
    }
  });

  it('a node killed without cleaning up stops counting its users once its heartbeat expires', async () => {
    prefix = testPrefix('crash');
    // Short heartbeat and expiry so the test is quick; with the defaults (5 s / 15 s) the same path takes
    // at most 15 s plus the resolvers' one-second liveness poll.
    const presence = { WARREN_PRESENCE_HEARTBEAT_MS: '200', WARREN_PRESENCE_EXPIRY_MS: '1000' };
    const doomed = WarrenProcess.start(['gateway'], gatewayEnv(prefix, presence));
    const survivor = WarrenProcess.start(['gateway'], gatewayEnv(prefix, presence));
    processes.push(doomed, survivor);
    const [doomedPort, survivorPort] = await Promise.all([doomed.listening(), survivor.listening()]);
    const config = testConfig(prefix, { presence: { heartbeatMs: 200, expiryMs: 1000 } });
    resolver = await startTestResolver(config);
    warren = await connectPublisher(config);
    probe = await BrokerProbe.open();

    // A spy queue sees every delivery the resolver routes, with its recipients.
    spy = await DeliverySpy.start(prefix);
    const recipients = (id: string): string[] => spy?.recipients(id) ?? [];

    tabs.push(await openTab(doomedPort, await token({ sub: 'ann', tid: 'acme' })));
    const bob = await openTab(survivorPort, await token({ sub: 'bob', tid: 'acme' }));
    tabs.push(bob);
    expect((await collectStatus(config)).tenants).toEqual([{ id: 'acme', online: 2 }]);
    const audience = { users: ['ann', 'bob'] };
    await warren.publishEvent({ id: 'before', tenantId: 'acme', type: 'test.event', audience });
    await eventually(() => recipients('before').length > 0, 'routed before the crash');
    expect(recipients('before')).toEqual(['u.acme.ann', 'u.acme.bob']);

    await doomed.kill();
    await eventually(
      async () => (await collectStatus(config)).tenants[0]?.online === 1,
      'the dead node’s user no longer counted online',
      10_000,
    );
    // Resolvers stop counting it too: the next event is routed to bob only.
    await eventually(
      async () => {
        const id = `after-${(spy?.messages.length ?? 0).toString()}`;
        await warren!.publishEvent({ id, tenantId: 'acme', type: 'test.event', audience });
        await eventually(() => recipients(id).length > 0, id);
        return recipients(id).join() === 'u.acme.bob';
      },
      'events no longer routed to the dead node’s user',
      10_000,
    );
    expect(bob.closeCode).toBeUndefined();
  });
});
