import amqp from 'amqplib';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, inject, it, vi } from 'vitest';
import type { Resolver } from '../../src/resolver/main.js';
import type { MembershipChange } from '../../src/protocol/schemas.js';
import { Keys } from '../../src/store/keys.js';
import { MembershipStore, StaleMembershipTerm } from '../../src/store/membership-store.js';
import { createRedis, type WarrenRedis } from '../../src/store/redis.js';
import { ErrorCode } from '../../src/shared/errors.js';
import { silentLogger } from '../../src/shared/logger.js';
import {
  BrokerProbe,
  capturingLogger,
  counter,
  cleanRedis,
  eventually,
  removeInstallation,
  startTestResolver,
  testConfig,
  testPrefix,
  withWarrenRedis,
} from '../support/harness.js';
import { RedisAclUser } from '../support/redis-acl-user.js';
import { TcpProxy } from '../support/tcp-proxy.js';

// Changes published to the membership exchange are applied in the order they were published, however
// many resolvers run: an add followed by a remove of the same pair must end removed. With the changes on
// the competing resolvers' queue, two resolvers applied 181 of 300 such pairs in the wrong order.

const PAIRS = 150;

describe('membership changes from the exchange, with several resolvers', () => {
  const prefix = testPrefix('member-order');
  const config = testConfig(prefix);
  const resolvers: Resolver[] = [];
  let redis: Redis;

  beforeAll(async () => {
    resolvers.push(
      await startTestResolver(config),
      await startTestResolver(config),
      await startTestResolver(config),
    );
    redis = new Redis(inject('redisUrl'));
  });
  afterAll(async () => {
    await Promise.all(resolvers.map((r) => r.close()));
    await redis.quit();
    const probe = await BrokerProbe.open();
    await probe.deleteExchangesAndQueues(prefix);
    await probe.close();
    await cleanRedis(prefix);
  });

  it('are applied in publication order: add-then-remove ends removed, remove-then-add ends added', async () => {
    const model = await amqp.connect(inject('rabbitmqUrl'));
    const channel = await model.createConfirmChannel();
    const publish = (change: Record<string, string>): boolean =>
      channel.publish(`${prefix}.membership`, change['tenantId'] ?? '', Buffer.from(JSON.stringify(change)), {
        contentType: 'application/json',
      });
    // Even users: add then remove (must end out). Odd users: add, remove, add (must end in).
    const expected = new Map<string, boolean>();
    let published = 0;
    for (let i = 0; i < PAIRS; i += 1) {
      const userId = `u${i}`;
      const change = { tenantId: 'acme', userId, teamId: 'icu' };
      publish({ op: 'add', ...change });
      publish({ op: 'remove', ...change });
      published += 2;
      if (i % 2 === 1) {
        publish({ op: 'add', ...change });
        published += 1;
      }
      expected.set(userId, i % 2 === 1);
    }
    await channel.waitForConfirms();
    await model.close();

    await eventually(
      async () => {
        const counts = await Promise.all(
          resolvers.map((r) => counter(r, 'warren_resolver_membership_changes_total')),
        );
        return counts.reduce((a, b) => a + b, 0) === published;
      },
      `${published} changes applied`,
      20_000,
    );
    // Read the outcome from Redis, the source of truth every resolver loads from.
    const keys = new Keys(prefix);
    const bits = await redis.hmget(keys.ids('acme'), ...expected.keys());
    const members = await Promise.all(
      bits.map((bit) => redis.getbit(keys.teamUsers('acme', 'icu'), Number(bit))),
    );
    const wrong = [...expected].filter(([, want], i) => (members[i] === 1) !== want).map(([user]) => user);
    expect(wrong).toEqual([]);
    // Applied under membership terms (the fence below).
    expect(Number(await redis.get(keys.membershipTerm('acme')))).toBeGreaterThan(0);
  });
});

describe('a membership change sent to Redis by a resolver that has since lost the queue', () => {
  it('is refused once another resolver has taken a newer term, so the newer changes stand', async () => {
    await withWarrenRedis('member-term', async (redis, keys) => {
      const [a, b] = [new MembershipStore(redis, keys), new MembershipStore(redis, keys)];
      const change = (op: 'add' | 'remove'): MembershipChange => ({
        op,
        tenantId: 'acme',
        kind: 'user-team',
        userId: 'ann',
        teamId: 'icu',
      });
      // Resolver A holds the queue and applies under its term...
      const termA = await a.newTerm('acme');
      expect(await a.apply(change('add'), termA)).toBe(true);
      // ...then is cut off; the broker gives its next message (an add) to B, which applies it and a
      // removal after it under a newer term.
      const termB = await b.newTerm('acme');
      expect(await b.apply(change('add'), termB)).toBe(false);
      expect(await b.apply(change('remove'), termB)).toBe(true);
      // A's copy of the add reaches Redis only now: refused, and ann stays removed.
      await expect(a.apply(change('add'), termA)).rejects.toBeInstanceOf(StaleMembershipTerm);
      const bit = Number(await redis.hget(keys.ids('acme'), 'ann'));
      expect(await redis.getbit(keys.teamUsers('acme', 'icu'), bit)).toBe(0);
      // Changes made outside the queue (the SDK, imports) carry no term and always apply.
      expect(await a.apply(change('add'))).toBe(true);
    });
  });
});

describe('a resolver cut off from the broker while its membership term is on the way to Redis', () => {
  const prefix = testPrefix('member-late-term');
  const keys = new Keys(prefix);
  const resolvers: Resolver[] = [];
  const proxies: TcpProxy[] = [];
  let redis: Redis | undefined;

  afterEach(async () => {
    vi.restoreAllMocks();
    for (const proxy of proxies) proxy.flow();
    await Promise.all(resolvers.splice(0).map((r) => r.close()));
    await Promise.all(proxies.splice(0).map((p) => p.close()));
    await redis?.quit();
    redis = undefined;
    const probe = await BrokerProbe.open();
    await probe.deleteExchangesAndQueues(prefix);
    await probe.close();
    await cleanRedis(prefix);
  });

  // Resolver A reads the membership queue; its first change of the tenant asks Redis for a term (INCR),
  // which is held up. Cut off from the broker, A loses the change to resolver B, which applies it and a
  // removal after it. A's INCR then lands, after B's: a term newer than B's. Used, it let A apply its
  // stale add over B's removal. `flow`: the INCR arrives late on its connection; `cut`: the connection
  // dies and ioredis resends it on the next.
  it.each(['flow', 'cut'] as const)('never applies the change under it (%s)', async (release) => {
    const redisTarget = new URL(inject('redisUrl'));
    const amqpTarget = new URL(inject('rabbitmqUrl'));
    const redisProxy = await TcpProxy.toUrl(redisTarget);
    proxies.push(redisProxy);
    const amqpProxy = await TcpProxy.toUrl(amqpTarget);
    proxies.push(amqpProxy);
    const termsAsked = vi.spyOn(MembershipStore.prototype, 'newTerm');
    // A subscribes first, so it is the queue's active reader; B waits behind it.
    resolvers.push(
      await startTestResolver(
        testConfig(prefix, {
          redis: { url: redisProxy.url(inject('redisUrl')) },
          rabbitmq: { url: amqpProxy.url(inject('rabbitmqUrl')) },
        }),
      ),
    );
    resolvers.push(await startTestResolver(testConfig(prefix)));
    redis = new Redis(inject('redisUrl'));
    const member = async (): Promise<boolean> => {
      const bit = await redis!.hget(keys.ids('acme'), 'ann');
      return bit !== null && (await redis!.getbit(keys.teamUsers('acme', 'icu'), Number(bit))) === 1;
    };
    const probe = await BrokerProbe.open();
    const publish = async (op: 'add' | 'remove'): Promise<void> => {
      const change = { op, tenantId: 'acme', userId: 'ann', teamId: 'icu' };
      probe.channel.publish(`${prefix}.membership`, 'acme', Buffer.from(JSON.stringify(change)));
      await (probe.channel as unknown as amqp.ConfirmChannel).waitForConfirms();
    };
    try {
      redisProxy.stall();
      await publish('add');
      // A has the add and has sent its INCR (into the stalled proxy); B is idle.
      await eventually(() => termsAsked.mock.calls.length === 1, 'A asking for a term');
      amqpProxy.cut();
      await eventually(member, 'the add applied by B');
      const termB = Number(await redis.get(keys.membershipTerm('acme')));
      await publish('remove');
      await eventually(async () => !(await member()), 'the removal applied by B');

      if (release === 'cut') redisProxy.cut();
      redisProxy.flow();
      await eventually(
        async () => Number(await redis!.get(keys.membershipTerm('acme'))) > termB,
        'A’s term taken after B’s',
      );
      // Closing A waits for what it holds to settle: whatever A was going to apply is applied by then.
      await resolvers.shift()?.close();
      expect(await member()).toBe(false);
    } finally {
      await probe.close();
    }
  });
});

describe('a membership term asked of Redis', () => {
  it('is refused while Redis is not connected, and when the connection closed before the answer', async () => {
    const prefix = testPrefix('term-guard');
    const keys = new Keys(prefix);
    const target = new URL(inject('redisUrl'));
    const proxy = await TcpProxy.toUrl(target);
    const direct = new Redis(inject('redisUrl'));
    let client: WarrenRedis | undefined;
    const term = async () => Number(await direct.get(keys.membershipTerm('acme')));
    try {
      client = await createRedis({ url: proxy.url(target), name: 'term-guard', logger: silentLogger() });
      const redis = client;
      const store = new MembershipStore(redis, keys);
      expect(await store.newTerm('acme')).toBe(1);

      // Sent into a stalled connection that then dies: ioredis resends the INCR on the next connection,
      // where it lands late. The term it takes is not handed out.
      proxy.stall();
      const late = store.newTerm('acme');
      proxy.cut();
      proxy.flow();
      await expect(late).rejects.toMatchObject({ code: ErrorCode.RedisUnavailable });
      await eventually(async () => (await term()) === 2, 'the resent INCR landed');

      // Not connected: refused at once, nothing queued to be sent later.
      proxy.refuse();
      proxy.cut();
      await eventually(() => redis.status !== 'ready', 'disconnected');
      await expect(store.newTerm('acme')).rejects.toMatchObject({ code: ErrorCode.RedisUnavailable });
      proxy.accept();
      await eventually(() => redis.status === 'ready', 'connected again');
      await redis.ping();
      expect(await term()).toBe(2);
    } finally {
      client?.disconnect();
      direct.disconnect();
      await proxy.close();
      await cleanRedis(prefix);
    }
  });
});

describe('a resolver closing while it holds a membership change', () => {
  // Its Redis user may not take a membership term (INCR): the change it holds waits there, unsettled,
  // until it closes. On a quorum queue, a cancel hands the queue over at once and the change held comes
  // back behind the ones the next resolver took meanwhile.
  it.each(['quorum', 'classic'] as const)(
    'hands it back ahead of the changes after it (%s queues)',
    async (queueType) => {
      const prefix = testPrefix(`member-close-${queueType}`);
      const keys = new Keys(prefix);
      const user = await RedisAclUser.create(prefix, ['incr']);
      const log = capturingLogger('error');
      const resolvers: Resolver[] = [];
      const redis = new Redis(inject('redisUrl'));
      const probe = await BrokerProbe.open();
      try {
        // A subscribes first, so it is the queue's active reader; B waits behind it.
        const a = await startTestResolver(
          testConfig(prefix, { rabbitmq: { queueType }, redis: { url: user.url } }),
          log.logger,
        );
        resolvers.push(a);
        const b = await startTestResolver(testConfig(prefix, { rabbitmq: { queueType } }));
        resolvers.push(b);
        for (const op of ['add', 'remove']) {
          const change = { op, tenantId: 'acme', userId: 'ann', teamId: 'icu' };
          probe.channel.publish(`${prefix}.membership`, 'acme', Buffer.from(JSON.stringify(change)));
        }
        await (probe.channel as unknown as amqp.ConfirmChannel).waitForConfirms();
        await eventually(
          () => log.lines.some((line) => /ACL denies/.test(String(line['msg']))),
          'A holding the add',
        );
        await resolvers.shift()?.close();
        await eventually(
          async () => (await counter(b, 'warren_resolver_membership_changes_total')) >= 2,
          'both changes applied by B',
        );
        const bit = await redis.hget(keys.ids('acme'), 'ann');
        // The add, then the remove: ann is no member of icu.
        expect(bit === null ? 0 : await redis.getbit(keys.teamUsers('acme', 'icu'), Number(bit))).toBe(0);
      } finally {
        await probe.close();
        await removeInstallation(prefix, { resolvers });
        await user.remove();
        await redis.quit();
      }
    },
    30_000,
  );
});
