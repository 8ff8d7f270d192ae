import { Redis } from 'ioredis';
import type { ConsumeMessage } from 'amqplib';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { WarrenPublisher, type MembershipChangeInput } from '../../src/sdk/publisher/index.js';
import { silentLogger } from '../../src/shared/logger.js';
import { Keys } from '../../src/store/keys.js';
import {
  BrokerProbe,
  cleanRedis,
  connectPublisher,
  eventually,
  removeInstallation,
  startTestResolver,
  testConfig,
  testPrefix,
} from '../support/harness.js';
import { TcpProxy } from '../support/tcp-proxy.js';

// These publishers run without a resolver: the warning saying so is not what they test.
const quiet = silentLogger();

describe('publisher SDK: publishEvent validates before sending anything', () => {
  const prefix = testPrefix('sdk');
  let warren: WarrenPublisher;
  let probe: BrokerProbe;
  const published: ConsumeMessage[] = [];

  beforeAll(async () => {
    warren = await connectPublisher(testConfig(prefix));
    probe = await BrokerProbe.open();
    const channel = await probe.model.createChannel();
    const { queue } = await channel.assertQueue('', { exclusive: true });
    await channel.bindQueue(queue, `${prefix}.events`, '#');
    await channel.consume(queue, (m) => m && published.push(m), { noAck: true });
  });
  afterAll(async () => {
    await warren.close();
    await probe.deleteExchangesAndQueues(prefix);
    await probe.close();
    await cleanRedis(prefix);
  });

  const refusal = (input: unknown) =>
    warren.publishEvent(input as Parameters<WarrenPublisher['publishEvent']>[0]).then(
      () => undefined,
      (error: Error & { code?: string }) => ({ code: error.code, message: error.message }),
    );

  it('refuses a malformed event, naming every problem, and sends nothing', async () => {
    const refused = await refusal({
      id: 'has.dot',
      tenantId: '',
      type: 'message.created',
      audience: { teams: ['icu*'] },
    });
    expect(refused?.code).toBe('WARREN_ERR_INVALID_EVENT');
    for (const field of ['id', 'tenantId', 'audience']) expect(refused?.message).toContain(field);

    const cyclic: Record<string, unknown> = {};
    cyclic['self'] = cyclic;
    for (const data of [{ count: 10n }, cyclic]) {
      const unserialisable = await refusal({
        id: 'evt-1',
        tenantId: 'acme',
        type: 'message.created',
        audience: { users: ['ann'] },
        data,
      });
      expect(unserialisable).toMatchObject({
        code: 'WARREN_ERR_INVALID_EVENT',
        message: expect.stringContaining('not serialisable as JSON') as unknown,
      });
    }

    // A valid one goes out, and it is the only one that did.
    await warren.publishEvent({
      id: 'evt-ok',
      tenantId: 'acme',
      type: 'message.created',
      audience: { users: ['ann'] },
      data: { text: 'hi' },
    });
    await eventually(() => published.length > 0, 'the valid event on the exchange');
    expect(published.map((m) => m.properties.messageId)).toEqual(['evt-ok']);
  });

  it('applies a membership change typed as the SDK exports it, as the README and the exchange write it', async () => {
    // The type a service writes its changes against: without `kind`, which the SDK refuses at run time.
    const change: MembershipChangeInput = { op: 'add', tenantId: 'acme', userId: 'u42', groupId: 'nurses' };
    await expect(warren.applyMembership(change)).resolves.toBe(true);
    await expect(warren.applyMembership(change)).resolves.toBe(false);
    const fromRows: MembershipChangeInput[] = [
      { op: 'remove', tenantId: 'acme', userId: 'u42', groupId: 'nurses' },
    ];
    for (const row of fromRows) await expect(warren.applyMembership(row)).resolves.toBe(true);
  });
});

describe('publisher SDK: a prefix no resolver reads', () => {
  it('warns, as a process warning without a logger of the caller’s, when no resolver reads its events', async () => {
    const prefix = testPrefix('sdk-unread');
    const config = testConfig(prefix);
    const warnings: Error[] = [];
    const onWarning = (w: Error): number => warnings.push(w);
    process.on('warning', onWarning);
    const connect = () =>
      WarrenPublisher.connect({ rabbitmqUrl: config.rabbitmq.url, redisUrl: config.redis.url, prefix });
    try {
      // A prefix nothing runs under (the servers' WARREN_PREFIX is another): events would wait for good.
      const lone = await connect();
      await lone.close();
      await eventually(async () => warnings.length === 1, 'a warning');
      expect((warnings[0] as Error & { code?: string }).code).toBe('WARREN_NO_RESOLVER');
      expect(warnings[0]?.message).toBe(
        `no resolver reads ${prefix}.resolver: published events wait there until one does ` +
          `(if Warren is running, its WARREN_PREFIX is not this publisher's prefix "${prefix}")`,
      );
      // With a resolver reading, nothing to say.
      const resolver = await startTestResolver(config);
      try {
        const read = await connect();
        await read.close();
        await new Promise((r) => setTimeout(r, 100));
        expect(warnings).toHaveLength(1);
      } finally {
        await resolver.close();
      }
    } finally {
      process.off('warning', onWarning);
      await removeInstallation(prefix, {});
    }
  });
});

describe('publisher SDK: options', () => {
  it('refuses numbers that are no timeout or size, naming every one, before connecting', async () => {
    const refused = await WarrenPublisher.connect({
      // Nothing listens here: the refusal comes before any connection is tried.
      rabbitmqUrl: 'amqp://127.0.0.1:1',
      redisUrl: 'redis://127.0.0.1:1',
      confirmTimeoutMs: Infinity,
      connectTimeoutMs: 0,
      claimCheckTtlSec: 1.5,
      redisTimeoutMs: -1,
      redisSocketTimeoutMs: 500,
      // 0: publish at once or fail; allowed.
      publishTimeoutMs: 0,
      // A brace would take keys out of the tenant's hash slot.
      prefix: 'warren}x',
    }).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(TypeError);
    for (const name of [
      'confirmTimeoutMs',
      'connectTimeoutMs',
      'claimCheckTtlSec',
      'redisTimeoutMs',
      'redisSocketTimeoutMs',
    ])
      expect(String(refused)).toContain(name);
    expect(String(refused)).toContain('prefix must match');
    expect(String(refused)).not.toContain('publishTimeoutMs');
  });

  it('refuses URLs the servers’ configuration refuses, naming each, before connecting', async () => {
    const rejections: unknown[] = [];
    const onRejection = (reason: unknown): void => void rejections.push(reason);
    process.on('unhandledRejection', onRejection);
    try {
      // A database path that is no number: ioredis selected NaN after connect rejected, an unhandled
      // rejection that ended the service's process, however it handled the rejection.
      const refused = await WarrenPublisher.connect({
        rabbitmqUrl: inject('rabbitmqUrl'),
        redisUrl: `${inject('redisUrl')}/warren`,
      }).catch((error: unknown) => error);
      expect(refused).toMatchObject({ code: 'WARREN_ERR_CONFIG' });
      expect(String(refused)).toContain('redisUrl names a database that is not a number');
      // Each problem named, the password never: neither is tried, however long connectTimeoutMs is.
      const urls = await WarrenPublisher.connect({
        rabbitmqUrl: 'http://svc:hunter2@127.0.0.1:5672',
        redisUrl: 'http://127.0.0.1:6379',
        payloadRedisUrl: 'redis://[bad',
      }).catch((error: unknown) => error);
      expect(urls).toMatchObject({ code: 'WARREN_ERR_CONFIG', retryable: false });
      expect(String(urls)).toContain(
        'rabbitmqUrl must be an amqp:// or amqps:// URL (got "http://***@127.0.0.1:5672")',
      );
      expect(String(urls)).toContain('redisUrl must be a redis://, rediss:// or unix:// URL');
      expect(String(urls)).toContain('payloadRedisUrl is not a valid URL');
      expect(String(urls)).not.toContain('hunter2');
      await new Promise((r) => setTimeout(r, 200));
      expect(rejections).toEqual([]);
    } finally {
      process.off('unhandledRejection', onRejection);
    }
  });

  it('leaves no listener on a Redis client of the caller’s once closed, however many publishers used it', async () => {
    const prefix = testPrefix('sdk-callers-redis');
    const redis = new Redis(inject('redisUrl'));
    const before = redis.listenerCount('ready');
    const closeBefore = redis.listenerCount('close');
    try {
      for (let i = 0; i < 3; i += 1) {
        const warren = await WarrenPublisher.connect({
          rabbitmqUrl: inject('rabbitmqUrl'),
          redis,
          prefix,
          logger: quiet,
        });
        expect(await warren.addUserToTeam('acme', `u${i}`, 'icu')).toBe(true);
        await warren.close();
      }
      expect(redis.listenerCount('ready')).toBe(before);
      expect(redis.listenerCount('close')).toBe(closeBefore);
    } finally {
      await removeInstallation(prefix, {});
      await redis.quit();
    }
  });

  it('uses a payloads’ client of the caller’s that connects lazily, on first use', async () => {
    const prefix = testPrefix('sdk-lazy-payloads');
    const payloadRedis = new Redis(inject('redisUrl'), { lazyConnect: true });
    const warren = await WarrenPublisher.connect({
      logger: quiet,
      rabbitmqUrl: inject('rabbitmqUrl'),
      redisUrl: inject('redisUrl'),
      payloadRedis,
      prefix,
    });
    try {
      expect(payloadRedis.status).toBe('wait');
      const jobId = await warren.putPayload('acme', { doc: 1 });
      expect(await payloadRedis.get(new Keys(prefix).job('acme', jobId))).toBe('{"doc":1}');
    } finally {
      await removeInstallation(prefix, { warren });
      payloadRedis.disconnect();
    }
  });
});

describe('publisher SDK: Redis that takes the connection and never answers', () => {
  it('rejects membership changes and large events after redisTimeoutMs, never applies them later, and works again once it answers', async () => {
    const prefix = testPrefix('sdk-redis-hang');
    const redisUrl = new URL(inject('redisUrl'));
    const proxy = await TcpProxy.toUrl(redisUrl);
    const warren = await WarrenPublisher.connect({
      logger: quiet,
      rabbitmqUrl: inject('rabbitmqUrl'),
      redisUrl: proxy.url(redisUrl),
      prefix,
      claimCheckBytes: 10,
      redisTimeoutMs: 300,
    });
    try {
      proxy.stall();
      const change = warren.addUserToTeam('acme', 'ann', 'icu').catch((error: unknown) => error);
      const event = warren
        .publishEvent({
          id: 'evt-big',
          tenantId: 'acme',
          type: 'doc.attached',
          audience: { users: ['ann'] },
          data: { text: 'more than ten bytes' },
        })
        .catch((error: unknown) => error);
      for (const refused of await Promise.all([change, event])) {
        expect(refused).toMatchObject({ code: 'WARREN_ERR_TIMEOUT' });
        expect(String(refused)).toMatch(/timed out after 300 ms/);
      }
      // The application undoes the change it was told timed out, through another client (another instance
      // of the service), which reaches Redis.
      const other = await WarrenPublisher.connect({
        logger: quiet,
        rabbitmqUrl: inject('rabbitmqUrl'),
        redisUrl: inject('redisUrl'),
        prefix,
      });
      await other.removeUserFromTeam('acme', 'ann', 'icu');
      await other.close();
      // Redis answers again: what the stalled client had sent or queued arrives now, before this change.
      proxy.flow();
      expect(await warren.addUserToTeam('acme', 'bob', 'icu')).toBe(true);
      // The change given up on was not applied late, after the removal made since.
      const redis = new Redis(inject('redisUrl'));
      const keys = new Keys(prefix);
      const bits = await redis.hgetall(keys.ids('acme'));
      const members = await redis.getBuffer(keys.teamUsers('acme', 'icu'));
      await redis.quit();
      const member = (user: string): boolean => {
        const bit = bits[user];
        if (bit === undefined || !members) return false;
        const byte = members[Math.floor(Number(bit) / 8)] ?? 0;
        return (byte & (0x80 >> (Number(bit) % 8))) !== 0;
      };
      expect(member('bob')).toBe(true);
      expect(member('ann')).toBe(false);
    } finally {
      await removeInstallation(prefix, { warren });
      await proxy.close();
    }
  });
});

describe('publisher SDK: close', () => {
  it('tells a publish made while it closes that the publisher is closed, not to try again', async () => {
    const prefix = testPrefix('sdk-closing');
    const warren = await connectPublisher(testConfig(prefix));
    try {
      const closing = warren.close();
      const refused = await warren
        .publishEvent({ id: 'late', tenantId: 'acme', type: 'x', audience: { users: ['ann'] } })
        .catch((error: unknown) => error);
      expect(refused).toMatchObject({ code: 'WARREN_ERR_CLOSED', retryable: false });
      await closing;
    } finally {
      await removeInstallation(prefix, {});
    }
  });

  it('can be called again, at once or later, and each call resolves once everything is closed', async () => {
    const prefix = testPrefix('sdk-close');
    const broker = new URL(inject('rabbitmqUrl'));
    const redis = new URL(inject('redisUrl'));
    const toBroker = await TcpProxy.toUrl(broker);
    const toRedis = await TcpProxy.toUrl(redis);
    const warren = await WarrenPublisher.connect({
      logger: quiet,
      rabbitmqUrl: toBroker.url(broker),
      redisUrl: toRedis.url(redis),
      prefix,
    });
    try {
      expect(toBroker.open).toBeGreaterThan(0);
      expect(toRedis.open).toBeGreaterThan(0);
      await Promise.all([warren.close(), warren.close()]);
      // Both calls resolved with every connection it opened closed.
      await eventually(() => toBroker.open === 0 && toRedis.open === 0, 'connections closed');
      await warren.close();
      await expect(
        warren.publishEvent({ id: 'late', tenantId: 'acme', type: 'x', audience: { users: ['ann'] } }),
      ).rejects.toMatchObject({ code: 'WARREN_ERR_CLOSED' });
    } finally {
      await toBroker.close();
      await toRedis.close();
      await removeInstallation(prefix, {});
    }
  });
});
