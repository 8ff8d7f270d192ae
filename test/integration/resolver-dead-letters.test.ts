import type { ConfirmChannel, ConsumeMessage, GetMessage } from 'amqplib';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { Gateway } from '../../src/gateway/main.js';
import type { Resolver } from '../../src/resolver/main.js';
import type { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { Keys } from '../../src/store/keys.js';
import {
  BrokerProbe,
  capturingLogger,
  cleanRedis,
  counter,
  connectPublisher,
  eventually,
  openTab,
  removeInstallation,
  startTestGateway,
  startTestResolver,
  startTestStack,
  testConfig,
  testPrefix,
  type TestStack,
  type TestTab,
  token,
} from '../support/harness.js';
import { RedisAclUser } from '../support/redis-acl-user.js';

const valid = {
  id: 'evt-valid',
  tenantId: 'acme',
  type: 'note.created',
  audience: { users: ['ann'] },
  data: { ok: true },
};

interface Case {
  name: string;
  body: Buffer | string | unknown;
  exchange?: 'events' | 'membership';
  /** Sent straight to the resolver's queue (the default exchange), as a shovel or a stray client could. */
  direct?: true;
  routingKey?: string;
  contentType?: string;
  code: string;
  /** A fragment the dead-letter reason must contain. */
  reason: string;
  /** A fragment of the body it must not repeat (reasons go to logs and headers; bodies are health data). */
  secret?: string;
}

/** Lowered from its default (16 MiB) for the test; every other case is under it. */
const MAX_MESSAGE_BYTES = 512 * 1024;
const event = (patch: Record<string, unknown>) => ({ ...valid, ...patch });
const caseOf = (m: ConsumeMessage): number => Number(m.properties.headers?.['x-test-case']);

const cases: Case[] = [
  { name: 'not JSON', body: '{"id": "e1", ', code: 'not_json', reason: 'not JSON' },
  { name: 'empty body', body: '', code: 'not_json', reason: 'not JSON' },
  {
    name: 'plain text',
    body: 'patient Jane Roe, ward 3',
    code: 'not_json',
    reason: 'not JSON',
    secret: 'Jane',
  },
  {
    name: 'broken JSON',
    body: '{"diagnosis": "flu" "ward": 3}',
    code: 'not_json',
    reason: 'after the first 20 characters',
    secret: 'flu',
  },
  {
    name: 'binary body',
    body: Buffer.from([0xff, 0xfe, 0x00, 0x81, 0x13]),
    code: 'not_json',
    reason: 'UTF-8',
  },
  {
    name: 'wrong content type',
    body: valid,
    contentType: 'text/plain',
    code: 'not_json',
    reason: 'content-type',
  },
  { name: 'JSON null', body: null, code: 'invalid_event', reason: '(root)' },
  { name: 'JSON array', body: [valid], code: 'invalid_event', reason: '(root)' },
  { name: 'JSON string', body: '"an event"', code: 'invalid_event', reason: '(root)' },
  { name: 'missing id', body: event({ id: undefined }), code: 'invalid_event', reason: 'id' },
  {
    name: 'missing tenantId',
    body: event({ tenantId: undefined }),
    code: 'invalid_event',
    reason: 'tenantId',
  },
  { name: 'missing type', body: event({ type: undefined }), code: 'invalid_event', reason: 'type' },
  {
    name: 'missing audience',
    body: event({ audience: undefined }),
    code: 'invalid_event',
    reason: 'audience',
  },
  { name: 'empty audience', body: event({ audience: {} }), code: 'invalid_event', reason: 'at least one' },
  {
    name: 'only exceptUsers',
    body: event({ audience: { exceptUsers: ['ann'] } }),
    code: 'invalid_event',
    reason: 'at least one',
  },
  { name: 'id is a number', body: event({ id: 42 }), code: 'invalid_event', reason: 'id' },
  {
    name: 'teams is a string',
    body: event({ audience: { teams: 'icu' } }),
    code: 'invalid_event',
    reason: 'teams',
  },
  {
    name: 'dotted tenant id',
    body: event({ tenantId: 'acme.x' }),
    routingKey: 'acme.x.note.created',
    code: 'invalid_event',
    reason: 'tenantId',
  },
  {
    name: 'wildcard user id',
    body: event({ audience: { users: ['*'] } }),
    code: 'invalid_event',
    reason: 'audience.users.0',
  },
  {
    name: 'hash team id',
    body: event({ audience: { teams: ['#'] } }),
    code: 'invalid_event',
    reason: 'teams',
  },
  {
    name: 'empty team id',
    body: event({ audience: { teams: [''] } }),
    code: 'invalid_event',
    reason: 'teams',
  },
  {
    name: 'id longer than 120',
    body: event({ audience: { users: ['u'.repeat(121)] } }),
    code: 'invalid_event',
    reason: 'users',
  },
  {
    name: 'oversized users list',
    body: event({ audience: { users: Array.from({ length: 10_001 }, (_, i) => `u${i}`) } }),
    code: 'invalid_event',
    reason: 'at most 10000',
  },
  {
    name: 'misspelt exceptUsers',
    body: event({ audience: { users: ['ann'], exceptUser: ['ann'] } }),
    code: 'invalid_event',
    reason: 'exceptUser',
  },
  {
    name: 'unknown top-level field',
    body: event({ tennant: 'x' }),
    code: 'invalid_event',
    reason: 'tennant',
  },
  {
    name: 'data and jobId',
    body: event({ jobId: 'job1' }),
    code: 'invalid_event',
    reason: 'either data or jobId',
  },
  {
    name: 'event type with a space',
    body: event({ type: 'note created' }),
    routingKey: 'acme.note created',
    code: 'invalid_event',
    reason: 'type',
  },
  {
    name: 'routing key of another tenant',
    body: valid,
    routingKey: 'globex.note.created',
    code: 'routing_mismatch',
    reason: 'does not match',
  },
  {
    name: 'valid event sent to the resolver queue by name, past the events exchange',
    body: valid,
    direct: true,
    code: 'routing_mismatch',
    reason: 'events are published to',
  },
  {
    name: 'unknown job id',
    body: event({ data: undefined, jobId: 'nosuchjob' }),
    code: 'job_not_found',
    reason: 'nosuchjob',
  },
  {
    name: 'type too long for a routing key',
    body: event({ type: Array.from({ length: 5 }, () => 'x'.repeat(60)).join('.') }),
    direct: true,
    code: 'invalid_event',
    reason: 'routing key of 255',
  },
  {
    name: 'data nested too deep to serialise',
    body: JSON.stringify({ ...valid, data: null }).replace(
      '"data":null',
      `"data":${'['.repeat(100_000)}${']'.repeat(100_000)}`,
    ),
    code: 'invalid_event',
    reason: 'cannot be serialised',
  },
  {
    name: 'body over resolver.maxMessageBytes',
    body: event({ data: { note: 'x'.repeat(MAX_MESSAGE_BYTES) } }),
    code: 'too_large',
    reason: 'over resolver.maxMessageBytes',
    secret: 'xxxx',
  },
  {
    name: 'membership: unknown op',
    exchange: 'membership',
    body: { op: 'toggle', tenantId: 'acme', userId: 'ann', teamId: 'icu' },
    code: 'invalid_membership',
    reason: 'op',
  },
  {
    name: 'membership: three ids',
    exchange: 'membership',
    body: { op: 'add', tenantId: 'acme', userId: 'ann', teamId: 'icu', groupId: 'g' },
    code: 'invalid_membership',
    reason: 'exactly two',
  },
  {
    // Every problem at once, not the first kind only: a reader fixing the op would be refused again.
    name: 'membership: unknown op and three ids',
    exchange: 'membership',
    body: { op: 'toggle', tenantId: 'acme', userId: 'ann', teamId: 'icu', groupId: 'g' },
    code: 'invalid_membership',
    reason: 'exactly two',
  },
  {
    name: 'membership: one id',
    exchange: 'membership',
    body: { op: 'add', tenantId: 'acme', userId: 'ann' },
    code: 'invalid_membership',
    reason: 'exactly two',
  },
  {
    name: 'membership: routing key of another tenant',
    exchange: 'membership',
    routingKey: 'globex',
    body: { op: 'add', tenantId: 'acme', userId: 'ann', teamId: 'icu' },
    code: 'routing_mismatch',
    reason: 'globex is not acme',
  },
  {
    name: 'membership: dotted team',
    exchange: 'membership',
    body: { op: 'add', tenantId: 'acme', userId: 'ann', teamId: 'a.b' },
    code: 'invalid_membership',
    reason: 'teamId',
  },
];

describe('malformed input is dead-lettered with its reason, and resolving goes on', () => {
  const prefix = testPrefix('dead');
  const config = testConfig(prefix, { resolver: { maxMessageBytes: MAX_MESSAGE_BYTES } });
  let stack: TestStack;
  let warren: WarrenPublisher;
  let probe: BrokerProbe;
  let ann: TestTab;
  const resolverLog = capturingLogger('info');

  beforeAll(async () => {
    stack = await startTestStack(config, { resolverLogger: resolverLog.logger });
    warren = stack.warren;
    probe = await BrokerProbe.open();
    ann = await openTab(stack.gateway.port, await token({ sub: 'ann', tid: 'acme' }));
  });
  afterAll(async () => {
    ann.ws.terminate();
    await probe.close();
    await stack.close();
  });

  it(`dead-letters ${cases.length} kinds of malformed message, each with a reason`, async () => {
    expect(cases.length).toBeGreaterThanOrEqual(20);
    const dead = await probe.deadLetters(prefix);
    const channel = await probe.model.createChannel();

    for (const [i, c] of cases.entries()) {
      const exchange = c.direct ? '' : `${prefix}.${c.exchange ?? 'events'}`;
      const routingKey = c.direct
        ? `${prefix}.resolver`
        : (c.routingKey ?? (c.exchange === 'membership' ? 'acme' : 'acme.note.created'));
      const content = Buffer.isBuffer(c.body)
        ? c.body
        : Buffer.from(typeof c.body === 'string' ? c.body : JSON.stringify(c.body));
      channel.publish(exchange, routingKey, content, {
        contentType: c.contentType ?? 'application/json',
        headers: { 'x-test-case': i },
        // What traces a message back to its sender: kept on the dead letter.
        correlationId: `request-${i}`,
        appId: 'billing',
        timestamp: 1_795_000_000 + i,
        type: 'note.created',
        contentEncoding: 'identity',
      });
      // After each malformed message, a valid one: the resolver must still resolve it.
      await warren.publishEvent({ ...valid, id: `valid-${i}` });
    }

    await eventually(() => dead.length >= cases.length, `${cases.length} dead letters`, 20_000).catch(
      (error: Error) => {
        const seen = new Set(dead.map((m) => caseOf(m)));
        const missing = cases.filter((_, i) => !seen.has(i)).map((c) => c.name);
        throw new Error(`${error.message}; missing ${missing.join(', ')}`);
      },
    );
    await eventually(() => ann.eventIds().length >= cases.length, 'every valid event delivered', 20_000);
    // Exactly once each: nothing was redelivered in this run, so a second copy would be a bug.
    expect(dead.map(caseOf).sort((a, b) => a - b)).toEqual(cases.map((_, i) => i));
    expect(ann.eventIds()).toEqual(cases.map((_, i) => `valid-${i}`));

    for (const message of dead) {
      const headers = message.properties.headers ?? {};
      const c = cases[Number(headers['x-test-case'])];
      if (!c) throw new Error('dead letter without its test case header');
      const reason = String(headers['x-warren-reason']);
      expect({ name: c.name, code: headers['x-warren-code'] }).toEqual({ name: c.name, code: c.code });
      expect(reason, c.name).toContain(c.reason);
      if (c.secret) expect(reason, c.name).not.toContain(c.secret);
      expect(headers['x-warren-original-exchange']).toBe(
        c.direct ? '' : `${prefix}.${c.exchange ?? 'events'}`,
      );
      const i = Number(headers['x-test-case']);
      expect(message.properties, c.name).toMatchObject({
        correlationId: `request-${i}`,
        appId: 'billing',
        timestamp: 1_795_000_000 + i,
        type: 'note.created',
        contentEncoding: 'identity',
        contentType: c.contentType ?? 'application/json',
      });
    }
    await channel.close();
    // Every dead letter counts by its code; only the events among them count as an event outcome.
    const events = cases.filter((c) => c.exchange !== 'membership').length;
    expect(events).toBeLessThan(cases.length);
    await eventually(
      async () => (await counter(stack.resolver, 'warren_resolver_dead_letters_total')) === cases.length,
      'every dead letter counted',
    );
    expect(await counter(stack.resolver, 'warren_resolver_events_total', { outcome: 'dead_lettered' })).toBe(
      events,
    );
  });

  it('sets aside a valid membership change that can never be applied, and applies the ones behind it', async () => {
    const dead = await probe.deadLetters(prefix);
    const channel = await probe.model.createChannel();
    // Team `broken` has a key of the wrong type in Redis: every attempt fails (WRONGTYPE).
    const redis = new Redis(inject('redisUrl'));
    await redis.hset(new Keys(prefix).teamUsers('acme', 'broken'), 'not', 'a bitmap');
    await redis.quit();
    const change = (teamId: string) =>
      Buffer.from(JSON.stringify({ op: 'add', tenantId: 'acme', userId: 'ann', teamId }));
    channel.publish(`${prefix}.membership`, 'acme', change('broken'), { contentType: 'application/json' });
    channel.publish(`${prefix}.membership`, 'acme', change('ward'), { contentType: 'application/json' });

    await eventually(() => dead.length === 1, 'the change dead-lettered', 15_000);
    const headers = dead[0]?.properties.headers ?? {};
    expect(headers['x-warren-code']).toBe('apply_failed');
    expect(String(headers['x-warren-reason'])).toContain('WRONGTYPE');
    // The change behind it was applied: an event to `ward` reaches ann.
    await eventually(async () => {
      await warren.publishEvent({ ...valid, id: `ward-${Date.now()}`, audience: { teams: ['ward'] } });
      return ann.eventIds().some((id) => id.startsWith('ward-'));
    }, 'the next change applied');
    await channel.close();
  });

  it('dead-letters an event whose audience Redis refuses to read, and routes the tenant’s others', async () => {
    const dead = await probe.deadLetters(prefix);
    // Team `corrupt` has a key of the wrong type: reading its members fails (WRONGTYPE) however often.
    const redis = new Redis(inject('redisUrl'));
    await redis.hset(new Keys(prefix).teamUsers('acme', 'corrupt'), 'not', 'a bitmap');
    await redis.quit();
    await warren.publishEvent({
      ...valid,
      id: 'to-corrupt',
      audience: { teams: ['corrupt'], users: ['ann'] },
    });
    await warren.publishEvent({ ...valid, id: 'beside-corrupt' });
    await eventually(() => dead.length === 1, 'the event dead-lettered', 15_000);
    const headers = dead[0]?.properties.headers ?? {};
    expect(JSON.parse(dead[0]?.content.toString() ?? '{}')).toMatchObject({ id: 'to-corrupt' });
    expect(headers['x-warren-code']).toBe('resolve_failed');
    expect(String(headers['x-warren-reason'])).toContain('WRONGTYPE');
    await eventually(() => ann.eventIds().includes('beside-corrupt'), 'the tenant’s next event delivered');
    expect(ann.eventIds()).not.toContain('to-corrupt');
  });

  it('never dead-letters events of a tenant whose change log Redis refuses to read, nor lets them hold up other tenants', async () => {
    const dead = await probe.deadLetters(prefix);
    const before = dead.length;
    const gus = await openTab(stack.gateway.port, await token({ sub: 'gus', tid: 'globex' }));
    const toGus = (id: string) =>
      warren.publishEvent({ ...valid, id, tenantId: 'globex', audience: { users: ['gus'] } });
    // The resolver has read globex's log: the refusal hits a view in use, not its first snapshot.
    await toGus('globex-before');
    await eventually(() => gus.eventIds().includes('globex-before'), 'globex resolved before');

    // The log every globex event is resolved against turns into a key of the wrong type (moved aside, to
    // be put back as it was): no event of the tenant can be resolved, and none is at fault.
    const redis = new Redis(inject('redisUrl'));
    const log = new Keys(prefix).log('globex');
    await redis.rename(log, `${log}:saved`);
    await redis.hset(log, 'not', 'a stream');
    // More than the resolver's prefetch window (256): sent back to the head of its queue, they would take
    // the whole window pass after pass, and the other tenant's event behind them would never be resolved.
    const stuck = Array.from({ length: 300 }, (_, i) => `while-refused-${i}`);
    await Promise.all(stuck.map(toGus));
    await warren.publishEvent({ ...valid, id: 'acme-meanwhile' });
    await eventually(() => ann.eventIds().includes('acme-meanwhile'), 'the other tenant’s event delivered');
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(dead.slice(before)).toEqual([]);
    expect(gus.eventIds()).toEqual(['globex-before']);

    await redis.del(log);
    await redis.rename(`${log}:saved`, log);
    await redis.quit();
    await eventually(
      () => gus.eventIds().length >= stuck.length + 1,
      'the events delivered once Redis reads the log again',
      20_000,
    );
    // Each once (in whatever order the retry queue gave them back).
    expect([...gus.eventIds()].sort()).toEqual(['globex-before', ...stuck].sort());
    expect(dead.slice(before)).toEqual([]);
    // Operators were told, once in a while, and told again when it passed.
    const told = (msg: RegExp) =>
      resolverLog.lines.filter((line) => line['tenantId'] === 'globex' && msg.test(String(line['msg'])));
    expect(told(/refuses to read the tenant’s state/).length).toBeGreaterThan(0);
    expect(told(/refuses to read the tenant’s state/).length).toBeLessThan(10);
    expect(told(/reads the tenant’s state again/)).toHaveLength(1);
    gus.ws.terminate();
  });

  // Last here: deleting the queue ends the probe's reader on it.
  it('declares the dead-letter queue again when it was deleted, and the dead letter keeps its reason', async () => {
    const channel = await probe.model.createChannel();
    await channel.deleteQueue(`${prefix}.dead`);
    channel.publish(`${prefix}.events`, 'acme.note.created', Buffer.from('{"not":"an event"'), {
      contentType: 'application/json',
    });
    await warren.publishEvent({ ...valid, id: 'after-the-queue-went' });
    await eventually(() => ann.eventIds().includes('after-the-queue-went'), 'the next event delivered');
    await eventually(() => probe.queueExists(`${prefix}.dead`), 'the dead-letter queue declared again');
    const dead: GetMessage[] = [];
    await eventually(async () => {
      const message = await channel.get(`${prefix}.dead`, { noAck: true });
      if (message) dead.push(message);
      return dead.length > 0;
    }, 'the dead letter in it');
    expect(dead[0]?.properties.headers?.['x-warren-code']).toBe('not_json');
    await channel.close();
  });
});

describe('an event queued right behind malformed messages', () => {
  const prefix = testPrefix('poison');
  const config = testConfig(prefix);
  let gateway: Gateway;
  let resolver: Resolver | undefined;
  let probe: BrokerProbe;

  beforeAll(async () => {
    // The gateway declares the topology; the resolver starts only once the queue holds the messages.
    gateway = await startTestGateway(config);
    probe = await BrokerProbe.open();
  });
  afterAll(async () => {
    await resolver?.close();
    await gateway.close();
    await probe.deleteExchangesAndQueues(prefix, [gateway.queue]);
    await probe.close();
    await cleanRedis(prefix);
  });

  it('is resolved at once, not left waiting for the next message to arrive', async () => {
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 'acme' }));
    const channel = probe.channel as ConfirmChannel;
    const json = { contentType: 'application/json' };
    channel.publish(`${prefix}.events`, 'acme.note.created', Buffer.from('{"id":'), json);
    channel.publish(`${prefix}.membership`, 'acme', Buffer.from('{"op":"toggle"}'), json);
    channel.publish(
      `${prefix}.events`,
      'acme.note.created',
      Buffer.from(JSON.stringify({ ...valid, id: 'behind-poison' })),
      json,
    );
    await channel.waitForConfirms();

    // A starting consumer gets the three in one burst; nothing is published after them.
    resolver = await startTestResolver(config);
    await eventually(() => ann.eventIds().includes('behind-poison'), 'the event behind the poison', 5000);
    expect(ann.eventIds()).toEqual(['behind-poison']);
    ann.ws.terminate();
  });
});

describe('a dead-letter exchange deleted under a resolver', () => {
  const prefix = testPrefix('dlx-gone');
  const config = testConfig(prefix);
  let resolver: Resolver;
  let probe: BrokerProbe;

  beforeAll(async () => {
    resolver = await startTestResolver(config);
    probe = await BrokerProbe.open();
  });
  afterAll(async () => {
    await resolver.close();
    await probe.deleteExchangesAndQueues(prefix);
    await probe.close();
    await cleanRedis(prefix);
  });

  it('is declared again, and the dead letter reaches the dead-letter queue with its reason', async () => {
    const channel = await probe.model.createChannel();
    // The exchange alone (its binding goes with it): the queue stays, and the queues' own dead-letter
    // exchange is gone too, so a plain reject would drop the message.
    await channel.deleteExchange(`${prefix}.dlx`);
    channel.publish(`${prefix}.events`, 'acme.note.created', Buffer.from('{"not":"an event"'), {
      contentType: 'application/json',
    });
    const dead: GetMessage[] = [];
    await eventually(async () => {
      const message = await channel.get(`${prefix}.dead`, { noAck: true });
      if (message) dead.push(message);
      return dead.length > 0;
    }, 'the dead letter in the dead-letter queue');
    expect(dead[0]?.properties.headers?.['x-warren-code']).toBe('not_json');
    await channel.close();
  });
});

describe('a resolver whose Redis ACL denies a command a membership change needs', () => {
  it('holds the change until the ACL is mended, then applies it: set aside, a removal would leave its user a member', async () => {
    const prefix = testPrefix('dead-noperm');
    // Taking a membership term is an INCR: the ACL forbids it.
    const user = await RedisAclUser.create(prefix, ['incr']);
    const admin = new Redis(inject('redisUrl'));
    const config = testConfig(prefix, { redis: { url: user.url } });
    const resolverLog = capturingLogger('warn');
    const resolver = await startTestResolver(config, resolverLog.logger);
    const probe = await BrokerProbe.open();
    // Each failed attempt at the change logs one line: the ACL's (then 2 s apart), or, taken for any other
    // refusal, "not applied; requeued" (whose fifth, instead, dead-letters the change).
    const attempts = (): number =>
      resolverLog.lines.filter((line) => /ACL denies|membership change not applied/.test(String(line['msg'])))
        .length;
    try {
      const dead = await probe.deadLetters(prefix);
      const channel = await probe.model.createChannel();
      const change = { op: 'add', tenantId: 'acme', userId: 'ann', teamId: 'icu' };
      channel.publish(`${prefix}.membership`, 'acme', Buffer.from(JSON.stringify(change)), {
        contentType: 'application/json',
      });
      await channel.close();
      // ann's bit in icu's direct members: a key that exists once the change is applied.
      const applied = async (): Promise<boolean> =>
        (await admin.exists(new Keys(prefix).teamUsers('acme', 'icu'))) === 1;
      // Five attempts failed, as many as a refusal of the change itself gets before it is set aside (or
      // that dead letter).
      await eventually(() => attempts() >= 5 || dead.length > 0, 'five attempts at the change', 20_000);
      expect(dead).toEqual([]);
      expect(await applied()).toBe(false);

      await user.allow('incr');
      await eventually(applied, 'the change applied', 10_000);
      expect(dead).toEqual([]);
    } finally {
      await probe.close();
      await removeInstallation(prefix, { resolvers: [resolver] });
      await user.remove();
      await admin.quit();
    }
  }, 40_000);
});

describe('a resolver holding a membership change its Redis ACL denies', () => {
  it('routes events meanwhile: the change waits between its attempts, the events do not', async () => {
    const prefix = testPrefix('dead-noperm-events');
    // Taking a membership term is an INCR: the ACL forbids it; reading what events need is allowed.
    const user = await RedisAclUser.create(prefix, ['incr']);
    // One unacked event at a time: each batch of events then shows whether it waited for the change.
    const config = testConfig(prefix, { resolver: { prefetch: 1 } });
    const resolverLog = capturingLogger('error');
    const gateway = await startTestGateway(config);
    const resolver = await startTestResolver(
      testConfig(prefix, { resolver: { prefetch: 1 }, redis: { url: user.url } }),
      resolverLog.logger,
    );
    const warren = await connectPublisher(config);
    const probe = await BrokerProbe.open();
    const ann = await openTab(gateway.port, await token({ sub: 'ann', tid: 'acme' }));
    const denials = () => resolverLog.lines.filter((line) => /ACL denies/.test(String(line['msg']))).length;
    try {
      const channel = await probe.model.createChannel();
      const change = { op: 'add', tenantId: 'acme', userId: 'ann', teamId: 'icu' };
      channel.publish(`${prefix}.membership`, 'acme', Buffer.from(JSON.stringify(change)), {
        contentType: 'application/json',
      });
      await channel.close();
      await eventually(() => denials() > 0, 'the change denied');
      const ids = Array.from({ length: 6 }, (_, i) => `while-denied-${i}`);
      for (const id of ids) await warren.publishEvent({ ...valid, id });
      await eventually(() => ids.every((id) => ann.eventIds().includes(id)), 'the events delivered', 30_000);
      // The change is tried again every 2 s. Held behind those waits, each event took one of them.
      expect(denials()).toBeLessThan(4);
    } finally {
      ann.ws.terminate();
      await probe.close();
      await removeInstallation(prefix, { warren, resolvers: [resolver], gateways: [gateway] });
      await user.remove();
    }
  }, 60_000);
});

/**
 * A resolver of its own for a describe block, logging to a capture, and a broker probe; both gone with the
 * installation after the block.
 */
function resolverOfItsOwn(name: string, overrides: Parameters<typeof testConfig>[1] = {}) {
  const prefix = testPrefix(name);
  const own = { prefix, log: capturingLogger('info') } as {
    prefix: string;
    log: ReturnType<typeof capturingLogger>;
    resolver: Resolver;
    probe: BrokerProbe;
  };
  beforeAll(async () => {
    own.resolver = await startTestResolver(testConfig(prefix, overrides), own.log.logger);
    own.probe = await BrokerProbe.open();
  });
  afterAll(async () => {
    await own.probe.close();
    await removeInstallation(prefix, { resolvers: [own.resolver] });
  });
  return own;
}

describe('a resolver on the smallest AMQP frame rabbitmq.frameMax allows (8 KiB)', () => {
  const own = resolverOfItsOwn('small-frame', { rabbitmq: { frameMax: 8192 } });
  // Headers that just fit in the frame they arrive in: a copy with Warren's own added would not.
  const filling = { trace: 'x'.repeat(8050) };
  const connectionLost = () =>
    own.log.lines.filter((l) => l['msg'] === 'broker connection lost; reconnecting');

  it('dead-letters a malformed event whose headers fill the frame, with its reason, without them', async () => {
    const dead = await own.probe.deadLetters(own.prefix);
    const users = Array.from({ length: 200 }, (_, i) => `not.an.id.${i}`);
    await own.probe.publishEvent(own.prefix, { ...valid, id: 'full-headers', audience: { users } }, filling);
    await eventually(() => dead.length > 0, 'the dead letter');
    // Once: the broker did not close the connection over it, which would have had it back again.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(dead).toHaveLength(1);
    const headers = dead[0]?.properties.headers ?? {};
    expect(headers['x-warren-code']).toBe('invalid_event');
    expect(String(headers['x-warren-reason'])).toContain('audience.users.0');
    expect(headers['x-warren-original-routing-key']).toBe('acme.note.created');
    expect(headers['trace']).toBeUndefined();
    expect(Number(headers['x-warren-headers-dropped'])).toBeGreaterThan(8050);
    expect(connectionLost()).toEqual([]);
  });

  it('puts an event whose headers fill the frame aside in the retry queue, and routes it when it comes back', async () => {
    // Redis refuses to read the tenant's change log (a key of the wrong type): its events wait in the
    // retry queue, a copy of each published there.
    const redis = new Redis(inject('redisUrl'));
    const log = new Keys(own.prefix).log('initech');
    await redis.hset(log, 'not', 'a stream');
    try {
      await own.probe.publishEvent(own.prefix, { ...valid, id: 'aside', tenantId: 'initech' }, filling);
      await eventually(
        async () => (await counter(own.resolver, 'warren_resolver_events_total', { outcome: 'retried' })) > 0,
        'the event put aside',
      );
    } finally {
      await redis.del(log);
      await redis.quit();
    }
    await eventually(
      async () =>
        (await counter(own.resolver, 'warren_resolver_events_total', { outcome: 'no_recipients' })) > 0,
      'the event resolved once it came back',
      15_000,
    );
    expect(connectionLost()).toEqual([]);
  });
});

describe('a malformed event whose reason runs to hundreds of kilobytes', () => {
  const own = resolverOfItsOwn('long-reason');

  it('is logged with no more of its reason than the dead letter’s header holds', async () => {
    const dead = await own.probe.deadLetters(own.prefix);
    // A reason naming every unknown field: hundreds of kilobytes.
    const fields = Object.fromEntries(Array.from({ length: 50_000 }, (_, i) => [`field${i}`, 1]));
    await own.probe.publishEvent(own.prefix, { ...valid, id: 'many-fields', ...fields });
    await eventually(() => dead.length > 0, 'the dead letter');
    const header = String(dead[0]?.properties.headers?.['x-warren-reason']);
    expect(header).toContain('field0');
    const logged = own.log.lines.filter(
      (l) => l['msg'] === 'message dead-lettered' && String(l['reason']).includes('field0'),
    );
    expect(logged).toHaveLength(1);
    expect(Buffer.byteLength(String(logged[0]?.['reason']))).toBeLessThanOrEqual(2000);
    expect(logged[0]?.['reason']).toBe(header);
  });
});
