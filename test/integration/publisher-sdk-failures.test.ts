import { Redis } from 'ioredis';
import { describe, expect, inject, it, vi } from 'vitest';
import { BrokerConnection } from '../../src/broker/connection.js';
import { Publisher } from '../../src/broker/publisher.js';
import { ErrorCode, isWarrenError } from '../../src/shared/errors.js';
import { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { silentLogger } from '../../src/shared/logger.js';
import { Keys } from '../../src/store/keys.js';
import { BrokerProbe, removeInstallation, testPrefix } from '../support/harness.js';
import { RedisAclUser } from '../support/redis-acl-user.js';
import { TcpProxy } from '../support/tcp-proxy.js';

// What the publisher SDK tells a service when a call cannot be done, and what it leaves behind then.
const quiet = silentLogger();
const large = { text: 'x'.repeat(200) };
const event = (id: string, data?: unknown) => ({
  id,
  tenantId: 'acme',
  type: 'doc.attached',
  audience: { users: ['ann'] },
  ...(data === undefined ? {} : { data }),
});
const connect = (prefix: string, options: Parameters<typeof WarrenPublisher.connect>[0] = {}) =>
  WarrenPublisher.connect({
    logger: quiet,
    rabbitmqUrl: inject('rabbitmqUrl'),
    redisUrl: inject('redisUrl'),
    prefix,
    ...options,
  });

/** A publisher reaching the broker through a proxy the test can cut, stall or silence. */
async function connectThroughProxy(
  prefix: string,
  options: Parameters<typeof WarrenPublisher.connect>[0] = {},
): Promise<{ warren: WarrenPublisher; proxy: TcpProxy }> {
  const broker = new URL(inject('rabbitmqUrl'));
  const proxy = await TcpProxy.toUrl(broker);
  return { proxy, warren: await connect(prefix, { rabbitmqUrl: proxy.url(broker), ...options }) };
}

async function jobKeys(prefix: string): Promise<string[]> {
  const redis = new Redis(inject('redisUrl'));
  try {
    return await redis.keys(`{${prefix}:acme}:job:*`);
  } finally {
    await redis.quit();
  }
}

describe('publisher SDK: calls it cannot do', () => {
  it('refuses every call after close() with WARREN_ERR_CLOSED, storing nothing', async () => {
    const prefix = testPrefix('sdk-closed');
    const redis = new Redis(inject('redisUrl'));
    // A client of the caller's stays connected after close(): nothing may be written through it.
    const warren = await connect(prefix, { redis, claimCheckBytes: 10 });
    await warren.close();
    try {
      const calls = {
        small: warren.publishEvent(event('e-small', { a: 1 })),
        large: warren.publishEvent(event('e-large', large)),
        member: warren.addUserToTeam('acme', 'ann', 'icu'),
        payload: warren.putPayload('acme', large),
        revoke: warren.revokeUser('acme', 'ann'),
      };
      for (const [name, call] of Object.entries(calls))
        await expect(call, name).rejects.toMatchObject({ code: 'WARREN_ERR_CLOSED' });
      expect(await jobKeys(prefix)).toEqual([]);
    } finally {
      await redis.quit();
      await removeInstallation(prefix, {});
    }
  });

  it('stores no payload for an event the broker cannot take now, and one copy for its retries', async () => {
    const prefix = testPrefix('sdk-away');
    const { warren, proxy } = await connectThroughProxy(prefix, {
      claimCheckBytes: 10,
      publishTimeoutMs: 0,
    });
    try {
      proxy.refuse();
      proxy.cut();
      await new Promise((resolve) => setTimeout(resolve, 300));
      // A service retrying the same event through the outage, as the README invites.
      for (let i = 0; i < 5; i += 1)
        await expect(warren.publishEvent(event('evt-same', large))).rejects.toMatchObject({
          code: 'WARREN_ERR_BROKER_UNAVAILABLE',
          retryable: true,
        });
      expect(await jobKeys(prefix)).toEqual([]);
      proxy.accept();
      // Back: published, and again (a retry after a lost confirm): one copy of the payload either way.
      await expect
        .poll(
          () =>
            warren.publishEvent(event('evt-same', large)).then(
              () => true,
              () => false,
            ),
          {
            timeout: 15_000,
          },
        )
        .toBe(true);
      await warren.publishEvent(event('evt-same', large));
      expect(await jobKeys(prefix)).toHaveLength(1);
      // Another event's payload, even the same bytes, gets a key of its own.
      await warren.publishEvent(event('evt-other', large));
      expect(await jobKeys(prefix)).toHaveLength(2);
    } finally {
      proxy.accept();
      await removeInstallation(prefix, { warren });
      await proxy.close();
    }
  });

  it('says why Redis refused a call, and that trying again cannot help', async () => {
    const prefix = testPrefix('sdk-refused');
    const warren = await connect(prefix);
    const redis = new Redis(inject('redisUrl'));
    try {
      // A key of the wrong type where the tenant's change log goes.
      await redis.set(new Keys(prefix).log('acme'), 'not a stream');
      await expect(warren.addUserToTeam('acme', 'ann', 'icu')).rejects.toMatchObject({
        code: 'WARREN_ERR_REDIS_REFUSED',
        retryable: false,
        message: expect.stringMatching(
          /^Redis refused applying the membership change in Redis: WRONGTYPE/,
        ) as unknown,
      });
    } finally {
      await redis.quit();
      await removeInstallation(prefix, { warren });
    }
  });

  it('says that trying again cannot help when a Redis ACL denies a command it needs', async () => {
    const prefix = testPrefix('sdk-noperm');
    const user = await RedisAclUser.create(prefix, ['set']);
    const warren = await connect(prefix, { redisUrl: user.url });
    try {
      await expect(warren.putPayload('acme', large)).rejects.toMatchObject({
        code: 'WARREN_ERR_REDIS_REFUSED',
        retryable: false,
        message: expect.stringContaining('NOPERM') as unknown,
      });
    } finally {
      await removeInstallation(prefix, { warren });
      await user.remove();
    }
  });

  it('tells a revocation cut short by close() that the publisher closed, not that a permission is missing', async () => {
    const prefix = testPrefix('sdk-revoke-close');
    const warren = await connect(prefix);
    try {
      // The first opens the notices' channel; close() comes while the second stores its revocation.
      await warren.revokeUser('acme', 'ann', { ttlSec: 60 });
      const revoking = warren.revokeUser('acme', 'bob', { ttlSec: 60 });
      const closing = warren.close();
      await expect(revoking).rejects.toMatchObject({
        code: 'WARREN_ERR_CLOSED',
        retryable: false,
        message: expect.stringContaining('the publisher was closed first') as unknown,
      });
      await closing;
    } finally {
      await removeInstallation(prefix, {});
    }
  });

  it('gives up a first revocation within publishTimeoutMs on a broker that stopped answering', async () => {
    const prefix = testPrefix('sdk-revoke-silent');
    const { warren, proxy } = await connectThroughProxy(prefix, {
      publishTimeoutMs: 1000,
      confirmTimeoutMs: 1000,
    });
    try {
      // The notices' channel is opened at first use: on a silent connection nothing answers that either.
      proxy.blackhole();
      const started = Date.now();
      await expect(warren.revokeUser('acme', 'ann', { ttlSec: 60 })).rejects.toMatchObject({
        code: 'WARREN_ERR_BROKER_UNAVAILABLE',
        retryable: true,
      });
      // Not when the heartbeat gives the connection up (about 30 s on; never with heartbeat=0).
      expect(Date.now() - started).toBeLessThan(5000);
    } finally {
      await warren.close();
      await proxy.close();
      await removeInstallation(prefix, {});
    }
  });

  it('connects within connectTimeoutMs on a broker that stops answering once the connection is set up', async () => {
    const prefix = testPrefix('sdk-silent-after-connect');
    const url = new URL(inject('rabbitmqUrl'));
    const proxy = await TcpProxy.toUrl(url);
    // Silent from the moment the connection is set up, before `connect` asks whether a resolver reads.
    const start = BrokerConnection.prototype.start;
    const silenced = vi.spyOn(BrokerConnection.prototype, 'start').mockImplementation(async function (
      this: BrokerConnection,
      ...args
    ) {
      await start.apply(this, args);
      proxy.stall();
    });
    let warren: WarrenPublisher | undefined;
    try {
      const started = Date.now();
      warren = await connect(prefix, { rabbitmqUrl: proxy.url(url), connectTimeoutMs: 2000 });
      // Not when the heartbeat gives the connection up (about 20 s on).
      expect(Date.now() - started).toBeLessThan(4000);
    } finally {
      silenced.mockRestore();
      proxy.refuse();
      proxy.cut();
      await warren?.close();
      await proxy.close();
      await removeInstallation(prefix, {});
    }
  });

  it('refuses a payload that JSON cannot carry, rather than storing null', async () => {
    const prefix = testPrefix('sdk-payload');
    const warren = await connect(prefix);
    try {
      await expect(warren.putPayload('acme', 10n)).rejects.toMatchObject({
        code: 'WARREN_ERR_INVALID_EVENT',
        message: expect.stringContaining('not serialisable as JSON') as unknown,
      });
      await expect(warren.putPayload('acme', () => 1)).rejects.toMatchObject({
        code: 'WARREN_ERR_INVALID_EVENT',
        message: 'payload: a function is not a JSON value',
      });
      expect(await jobKeys(prefix)).toEqual([]);
    } finally {
      await removeInstallation(prefix, { warren });
    }
  });

  it('gives up connecting to a Redis that takes the connection and never answers', async () => {
    const prefix = testPrefix('sdk-silent-redis');
    const redisUrl = new URL(inject('redisUrl'));
    const proxy = await TcpProxy.toUrl(redisUrl);
    proxy.stall();
    try {
      const connecting = connect(prefix, {
        redisUrl: proxy.url(redisUrl),
        connectTimeoutMs: 1000,
        // Off: only connectTimeoutMs bounds the attempt.
        redisSocketTimeoutMs: 0,
      });
      await expect(connecting).rejects.toMatchObject({
        code: 'WARREN_ERR_REDIS_UNAVAILABLE',
        message: expect.stringContaining('timed out after') as unknown,
      });
    } finally {
      proxy.cut();
      await proxy.close();
      await removeInstallation(prefix, {});
    }
  });
});

describe('publisher SDK: events no queue takes', () => {
  it('rejects an event routed to no queue (declareTopology: false), and declares the topology again otherwise', async () => {
    const prefix = testPrefix('sdk-unroutable');
    const admin = await connect(prefix);
    const probe = await BrokerProbe.open();
    const publishOnly = await connect(prefix, { declareTopology: false });
    try {
      await probe.channel.deleteQueue(`${prefix}.resolver`);
      await expect(publishOnly.publishEvent({ ...event('evt-lost'), type: 'x' })).rejects.toMatchObject({
        code: 'WARREN_ERR_UNROUTABLE',
        retryable: true,
        message: expect.stringContaining(`${prefix}.resolver is missing`) as unknown,
      });
      // A publisher that declares: the queue is declared again and the event is in it.
      await admin.publishEvent({ ...event('evt-kept'), type: 'x' });
      expect((await probe.channel.checkQueue(`${prefix}.resolver`)).messageCount).toBe(1);
    } finally {
      await publishOnly.close();
      await probe.close();
      await removeInstallation(prefix, { warren: admin });
    }
  });

  it('declares the events exchange again when it was deleted, and the event reaches the resolver queue', async () => {
    const prefix = testPrefix('sdk-no-exchange');
    const warren = await connect(prefix);
    const probe = await BrokerProbe.open();
    try {
      // The resolver queue's binding goes with it: nothing routes events until the exchange is declared.
      await probe.channel.deleteExchange(`${prefix}.events`);
      await warren.publishEvent({ ...event('evt-kept'), type: 'x' });
      expect((await probe.channel.checkQueue(`${prefix}.resolver`)).messageCount).toBe(1);
    } finally {
      await probe.close();
      await removeInstallation(prefix, { warren });
    }
  });

  it('says what failed, with a code, when declaring the topology again fails', async () => {
    const prefix = testPrefix('sdk-redeclare');
    const warren = await connect(prefix);
    const probe = await BrokerProbe.open();
    try {
      // The resolver queue deleted and made again by hand, unbound and without Warren's arguments.
      await probe.channel.deleteQueue(`${prefix}.resolver`);
      await probe.channel.assertQueue(`${prefix}.resolver`, { durable: true });
      await expect(warren.publishEvent({ ...event('evt-x'), type: 'x' })).rejects.toMatchObject({
        code: 'WARREN_ERR_UNROUTABLE',
        retryable: false,
        // The broker's 406, told as what differs from what Warren declares.
        message: expect.stringMatching(
          /declaring .*\.resolver again failed: queue .*\.resolver exists with x-dead-letter-exchange unset where Warren declares .*\.dlx/,
        ) as unknown,
      });
    } finally {
      await probe.close();
      await removeInstallation(prefix, { warren });
    }
  });

  it('gives up declaring the topology again within confirmTimeoutMs on a broker that stopped answering', async () => {
    const prefix = testPrefix('sdk-redeclare-silent');
    const { warren, proxy } = await connectThroughProxy(prefix, {
      publishTimeoutMs: 1000,
      confirmTimeoutMs: 1000,
    });
    const probe = await BrokerProbe.open();
    // The broker goes silent once it has told that no queue took the event, before it is declared again.
    const publish = Publisher.prototype.publish;
    const silenced = vi.spyOn(Publisher.prototype, 'publish').mockImplementation(async function (
      this: Publisher,
      ...args
    ) {
      try {
        return await publish.apply(this, args);
      } catch (error) {
        if (isWarrenError(error, ErrorCode.Unroutable)) proxy.stall();
        throw error;
      }
    });
    try {
      await probe.channel.deleteQueue(`${prefix}.resolver`);
      const started = Date.now();
      await expect(warren.publishEvent({ ...event('evt-silent'), type: 'x' })).rejects.toMatchObject({
        code: 'WARREN_ERR_UNROUTABLE',
        retryable: true,
        message: expect.stringMatching(
          /declaring .*\.resolver again failed: .*timed out after 1000 ms/,
        ) as unknown,
      });
      // Not when the heartbeat gives the connection up (about 20 s on; never with heartbeat=0).
      expect(Date.now() - started).toBeLessThan(4000);
    } finally {
      silenced.mockRestore();
      proxy.refuse();
      proxy.cut();
      await probe.close();
      await warren.close();
      await proxy.close();
      await removeInstallation(prefix, {});
    }
  });

  it('claim-checks data that would make the event larger than the resolver takes, whatever claimCheckBytes says', async () => {
    const prefix = testPrefix('sdk-too-large');
    const warren = await connect(prefix, { claimCheckBytes: 64 * 1024 * 1024 });
    const probe = await BrokerProbe.open();
    try {
      await warren.publishEvent(event('evt-17m', { blob: 'x'.repeat(17 * 1024 * 1024) }));
      await warren.publishEvent(event('evt-1m', { blob: 'x'.repeat(1024 * 1024) }));
      const bodies: Record<string, unknown>[] = [];
      for (let i = 0; i < 2; i += 1) {
        const message = await probe.channel.get(`${prefix}.resolver`, { noAck: true });
        if (message) bodies.push(JSON.parse(message.content.toString()) as Record<string, unknown>);
      }
      expect(bodies.map((b) => [b['id'], 'jobId' in b, 'data' in b])).toEqual([
        ['evt-17m', true, false],
        ['evt-1m', false, true],
      ]);
    } finally {
      await probe.close();
      await removeInstallation(prefix, { warren });
    }
  }, 60_000);
});

describe('publisher SDK: the broker connection lost during a publish', () => {
  /** Publishes `id` on a connection that then drops before the broker has read it, let alone confirmed it. */
  async function publishAcrossADrop(
    warren: WarrenPublisher,
    proxy: TcpProxy,
    id: string,
  ): Promise<PromiseSettledResult<void>> {
    proxy.stallToServer();
    // Settled from the start: a rejection while the test still waits is not unhandled.
    const settled = Promise.allSettled([warren.publishEvent(event(id))]);
    await new Promise((resolve) => setTimeout(resolve, 200));
    proxy.refuse();
    proxy.cut();
    proxy.flow();
    await new Promise((resolve) => setTimeout(resolve, 500));
    proxy.accept();
    const [outcome] = await settled;
    return outcome;
  }

  it('sends an event again once the connection is back, within publishTimeoutMs, when it was lost before the confirm', async () => {
    const prefix = testPrefix('sdk-lost-confirm');
    const { warren, proxy } = await connectThroughProxy(prefix, { publishTimeoutMs: 10_000 });
    const probe = await BrokerProbe.open();
    try {
      const outcome = await publishAcrossADrop(warren, proxy, 'evt-across-drop');
      // As a publish made while the connection is down: it waits for the connection, not fails.
      expect(outcome).toMatchObject({ status: 'fulfilled' });
      const queued = await probe.channel.get(`${prefix}.resolver`, { noAck: true });
      expect(queued && JSON.parse(queued.content.toString())).toMatchObject({ id: 'evt-across-drop' });
    } finally {
      await warren.close();
      await proxy.close();
      await probe.close();
      await removeInstallation(prefix, {});
    }
  });

  it('says the broker was lost, retryable, with publishTimeoutMs 0', async () => {
    const prefix = testPrefix('sdk-lost-confirm-0');
    const { warren, proxy } = await connectThroughProxy(prefix, { publishTimeoutMs: 0 });
    try {
      const outcome = await publishAcrossADrop(warren, proxy, 'evt-lost');
      expect(outcome).toMatchObject({
        status: 'rejected',
        reason: { code: 'WARREN_ERR_BROKER_UNAVAILABLE', retryable: true },
      });
    } finally {
      await warren.close();
      await proxy.close();
      await removeInstallation(prefix, {});
    }
  });
});
