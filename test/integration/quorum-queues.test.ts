import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Channel, ConsumeMessage } from 'amqplib';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it } from 'vitest';
import { declareTopologyOn, QUORUM_DELIVERY_LIMIT, topologyNames } from '../../src/broker/topology.js';
import { startGateway } from '../../src/gateway/main.js';
import { startResolver } from '../../src/resolver/main.js';
import { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { silentLogger } from '../../src/shared/logger.js';
import {
  BrokerProbe,
  cleanRedis,
  eventually,
  openTab,
  startTestStack,
  testConfig,
  testPrefix,
  token,
  type TestStack,
} from '../support/harness.js';

// rabbitmq.queueType: quorum. What Warren relies on of its shared queues, on the real broker with quorum
// queues, and a queue of the other type refused at start-up in words.

const run = promisify(execFile);
const rabbitmqUrl = inject('rabbitmqUrl');
// The queues' types as the broker lists them: needs rabbitmqctl able to reach it (as broker-permissions).
const local =
  ['127.0.0.1', 'localhost'].includes(new URL(rabbitmqUrl).hostname) &&
  (await run('rabbitmqctl', ['-q', 'list_users'], { timeout: 30_000 }).then(
    () => true,
    () => false,
  ));

async function queueTypes(prefix: string): Promise<Map<string, { type: string; arguments: unknown[] }>> {
  const { stdout } = await run(
    'rabbitmqctl',
    ['-q', 'list_queues', 'name', 'type', 'arguments', '--formatter', 'json'],
    { timeout: 30_000, maxBuffer: 64 * 1024 * 1024 },
  );
  const rows = JSON.parse(stdout) as { name: string; type: string; arguments: unknown[] }[];
  return new Map(rows.filter((r) => r.name.startsWith(`${prefix}.`)).map((r) => [r.name, r]));
}

describe('an installation with quorum queues', () => {
  const prefix = testPrefix('quorum');
  const config = testConfig(prefix, { rabbitmq: { queueType: 'quorum' } });
  let stack: TestStack;
  let probe: BrokerProbe;

  beforeAll(async () => {
    stack = await startTestStack(config);
    probe = await BrokerProbe.open();
  });
  afterAll(async () => {
    await stack.close();
    await probe.close();
  });

  it.runIf(local)('declares the shared queues quorum, and the node queue classic', async () => {
    const queues = await queueTypes(prefix);
    const names = topologyNames(prefix);
    for (const queue of [names.resolver, names.memberships, names.resolverRetry, names.dead])
      expect(queues.get(queue)?.type, queue).toBe('quorum');
    // The queues Warren consumes and requeues to carry the limit that keeps a requeue at the head.
    for (const queue of [names.resolver, names.memberships])
      expect(queues.get(queue)?.arguments, queue).toContainEqual([
        'x-delivery-limit',
        expect.any(String) as unknown,
        QUORUM_DELIVERY_LIMIT,
      ]);
    expect(queues.get(stack.gateway.queue)?.type).toBe('classic');
  });

  it('routes an event published through the SDK to a tab, through the resolver and the gateway', async () => {
    await stack.warren.addUserToTeam('acme', 'ann', 'icu');
    const ann = await openTab(stack.gateway.port, await token({ sub: 'ann', tid: 'acme' }));
    await stack.warren.publishEvent({
      id: 'evt-q1',
      tenantId: 'acme',
      type: 'note.created',
      audience: { teams: ['icu'] },
      data: { text: 'hello' },
    });
    await eventually(() => ann.eventIds().includes('evt-q1'), 'the event at the tab');
    expect(ann.events()[0]?.data).toEqual({ text: 'hello' });
    ann.ws.terminate();
  });

  it('dead-letters a malformed event with its reason', async () => {
    const dead = await probe.deadLetters(prefix);
    await probe.publishEvent(prefix, { tenantId: 'acme', type: 'note.created', id: 'evt-bad' });
    await eventually(() => dead.length === 1, 'the dead letter');
    expect(dead[0]?.properties.headers).toMatchObject({
      'x-warren-code': 'invalid_event',
      'x-warren-reason': expect.stringContaining('audience') as unknown,
    });
  });

  it('applies membership changes published to the exchange, in order', async () => {
    const bob = await openTab(stack.gateway.port, await token({ sub: 'bob', tid: 'acme' }));
    const cid = await openTab(stack.gateway.port, await token({ sub: 'cid', tid: 'acme' }));
    // Bob's last: once he is in, the two before it were applied, in the order published.
    const changes = [
      { op: 'add', tenantId: 'acme', userId: 'cid', teamId: 'ward' },
      { op: 'remove', tenantId: 'acme', userId: 'cid', teamId: 'ward' },
      { op: 'add', tenantId: 'acme', userId: 'bob', teamId: 'ward' },
    ];
    for (const change of changes)
      probe.channel.publish(`${prefix}.membership`, 'acme', Buffer.from(JSON.stringify(change)), {
        contentType: 'application/json',
      });
    await (probe.channel as unknown as { waitForConfirms(): Promise<void> }).waitForConfirms();
    const audience = { teams: ['ward'] };
    let n = 0;
    // They travel on a queue of their own, apart from events: applied a little later.
    await eventually(async () => {
      const id = `ward-${(n += 1)}`;
      await stack.warren.publishEvent({ id, tenantId: 'acme', type: 't', audience });
      await new Promise((resolve) => setTimeout(resolve, 200));
      return bob.eventIds().includes(id);
    }, 'bob in team ward');
    await stack.warren.publishEvent({ id: 'ward-final', tenantId: 'acme', type: 't', audience });
    await eventually(() => bob.eventIds().includes('ward-final'), 'ward-final at bob');
    expect(cid.eventIds()).not.toContain('ward-final');
    bob.ws.terminate();
    cid.ws.terminate();
  });
});

/**
 * The queue behaviours Warren's resolver relies on, with its quorum topology and nothing consuming it: the
 * test plays the resolver on a channel of its own.
 */
describe('the quorum topology itself', () => {
  const prefix = testPrefix('quorum-topology');
  const names = topologyNames(prefix);
  let probe: BrokerProbe;
  let channel: Channel;

  beforeAll(async () => {
    probe = await BrokerProbe.open();
    await declareTopologyOn(probe.model, names, { queueType: 'quorum' });
    channel = await probe.model.createChannel();
  });
  afterAll(async () => {
    await channel.close().catch(() => {});
    await probe.deleteExchangesAndQueues(prefix);
    await probe.close();
  });

  const send = async (queue: string, body: string, options: Record<string, unknown> = {}) => {
    probe.channel.sendToQueue(queue, Buffer.from(body), options);
    await (probe.channel as unknown as { waitForConfirms(): Promise<void> }).waitForConfirms();
  };

  it('dead-letters a rejected message to <prefix>.dlx, into <prefix>.dead', async () => {
    const dead = await probe.deadLetters(prefix);
    await send(names.resolver, 'poison');
    const { consumerTag } = await channel.consume(names.resolver, (m) => m && channel.reject(m, false));
    await eventually(() => dead.length === 1, 'the dead letter');
    await channel.cancel(consumerTag);
    expect(dead[0]?.content.toString()).toBe('poison');
    expect(dead[0]?.fields.exchange).toBe(names.dlx);
    expect(dead[0]?.properties.headers?.['x-first-death-reason']).toBe('rejected');
  });

  it('gives a requeued message back first, as often as it is requeued', async () => {
    const got: string[] = [];
    for (const body of ['1', '2', '3']) await send(names.resolver, body);
    await channel.prefetch(1);
    let returns = 30;
    const { consumerTag } = await channel.consume(names.resolver, (m) => {
      if (!m) return;
      got.push(m.content.toString());
      if (m.content.toString() === '1' && returns-- > 0) channel.nack(m, false, true);
      else channel.ack(m);
    });
    await eventually(() => got.length === 33, 'every delivery');
    await channel.cancel(consumerTag);
    // More returns than RabbitMQ 4's default limit (20), and none taken for a poison message.
    expect(got).toEqual([...Array<string>(31).fill('1'), '2', '3']);
  });

  it('sends an event back from the retry queue to the resolver queue once its own expiry passes', async () => {
    const got: ConsumeMessage[] = [];
    const started = Date.now();
    await send(names.resolverRetry, 'later', { expiration: '300', headers: { 'x-warren-attempts': 1 } });
    const { consumerTag } = await channel.consume(names.resolver, (m) => {
      if (!m) return;
      got.push(m);
      channel.ack(m);
    });
    await eventually(() => got.length === 1, 'the event back in the resolver queue');
    await channel.cancel(consumerTag);
    expect(Date.now() - started).toBeGreaterThanOrEqual(290);
    // As the resolver reads one coming back (message-parser's originOf): by the default exchange.
    expect(got[0]?.fields).toMatchObject({ exchange: '', routingKey: names.resolver });
    expect(got[0]?.properties.headers?.['x-warren-attempts']).toBe(1);
  });

  it('gives the membership queue to one consumer at a time', async () => {
    const other = await probe.model.createChannel();
    const byFirst: string[] = [];
    const bySecond: string[] = [];
    const first = await channel.consume(names.memberships, (m) => {
      if (!m) return;
      byFirst.push(m.content.toString());
      channel.ack(m);
    });
    const second = await other.consume(names.memberships, (m) => {
      if (!m) return;
      bySecond.push(m.content.toString());
      other.ack(m);
    });
    for (let i = 0; i < 5; i++) await send(names.memberships, `m${i}`);
    await eventually(() => byFirst.length === 5, 'all to the first');
    await channel.cancel(first.consumerTag);
    for (let i = 0; i < 5; i++) await send(names.memberships, `n${i}`);
    await eventually(() => bySecond.length === 5, 'the rest to the second, once the first went');
    expect(byFirst).toEqual(['m0', 'm1', 'm2', 'm3', 'm4']);
    expect(bySecond).toEqual(['n0', 'n1', 'n2', 'n3', 'n4']);
    await other.cancel(second.consumerTag);
    await other.close();
  });
});

describe('a shared queue of another type than configured', () => {
  let prefix: string;
  let probe: BrokerProbe;

  beforeAll(async () => {
    probe = await BrokerProbe.open();
  });
  afterEach(async () => {
    await probe.deleteExchangesAndQueues(prefix);
    await cleanRedis(prefix);
  });
  afterAll(async () => {
    await probe.close();
  });

  /** How a start ends: its error's code and message, and how long it took. */
  const outcome = async (start: () => Promise<{ close(): Promise<void> }>) => {
    const started = Date.now();
    try {
      const running = await start();
      await running.close();
      return { code: 'started', message: '', ms: Date.now() - started };
    } catch (error) {
      const { code, message } = error as { code?: string; message: string };
      return { code, message, ms: Date.now() - started };
    }
  };

  it('stops a resolver, a gateway and the SDK at once, naming the queue, both types and the way out', async () => {
    prefix = testPrefix('quorum-mismatch');
    await declareTopologyOn(probe.model, topologyNames(prefix), { queueType: 'classic' });
    const config = testConfig(prefix, { rabbitmq: { queueType: 'quorum' } });
    const logger = silentLogger();
    const starts = {
      resolver: () => startResolver(config, { logger }),
      gateway: () => startGateway(config, { logger }),
      sdk: () =>
        WarrenPublisher.connect({
          rabbitmqUrl,
          redisUrl: config.redis.url,
          prefix,
          queueType: 'quorum',
          logger,
        }),
    };
    for (const [who, start] of Object.entries(starts)) {
      const result = await outcome(start);
      expect(result.code, who).toBe('WARREN_ERR_TOPOLOGY_MISMATCH');
      expect(result.message, who).toMatch(
        new RegExp(
          `^queue ${prefix}\\.dead exists as a classic queue, but rabbitmq\\.queueType .* is quorum`,
        ),
      );
      expect(result.message, who).toContain(`rabbitmqctl delete_queue ${prefix}.dead`);
      expect(result.message, who).toContain('Set it back to classic');
      // Not a retry loop: refused at the first declaration.
      expect(result.ms, who).toBeLessThan(5000);
    }
  });

  /** The resolver queue as an operator might declare it: quorum, none of Warren's other arguments. */
  async function declareResolverQueueByHand(): Promise<void> {
    const channel = await probe.model.createChannel();
    await channel.assertQueue(`${prefix}.resolver`, {
      durable: true,
      arguments: { 'x-queue-type': 'quorum' },
    });
    await channel.close();
  }

  it('tells a configuration left classic that an operator declared the resolver queue quorum', async () => {
    prefix = testPrefix('quorum-by-hand');
    await declareResolverQueueByHand();
    const result = await outcome(() => startResolver(testConfig(prefix), { logger: silentLogger() }));
    expect(result.code).toBe('WARREN_ERR_TOPOLOGY_MISMATCH');
    expect(result.message).toMatch(
      new RegExp(`^queue ${prefix}\\.resolver exists as a quorum queue, but .* is classic`),
    );
  });

  it('names another argument a queue declared by hand lacks, with the configured type right', async () => {
    prefix = testPrefix('quorum-args');
    await declareResolverQueueByHand();
    const config = testConfig(prefix, { rabbitmq: { queueType: 'quorum' } });
    const result = await outcome(() => startResolver(config, { logger: silentLogger() }));
    expect(result.code).toBe('WARREN_ERR_TOPOLOGY_MISMATCH');
    expect(result.message).toMatch(new RegExp(`^queue ${prefix}\\.resolver exists with `));
    expect(result.message).toContain(`x-dead-letter-exchange unset where Warren declares ${prefix}.dlx`);
    expect(result.message).toContain('x-delivery-limit unset where Warren declares 1000000');
  });
});
