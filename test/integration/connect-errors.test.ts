import { createServer, type AddressInfo } from 'node:net';
import { describe, expect, inject, it } from 'vitest';
import { startGateway } from '../../src/gateway/main.js';
import { startResolver } from '../../src/resolver/main.js';
import { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { silentLogger } from '../../src/shared/logger.js';
import { closeRedis, createRedis } from '../../src/store/redis.js';
import { TcpProxy } from '../support/tcp-proxy.js';
import { cleanRedis, eventually, testConfig, testPrefix } from '../support/harness.js';

// A service that cannot reach its broker or Redis is told why, soon, without its password.

describe('connecting to services that refuse', () => {
  it('the publisher SDK gives up on a broker that never answers after connectTimeoutMs, saying why, and stops trying', async () => {
    // A "broker" that takes connections and drops them: every attempt is counted.
    let attempts = 0;
    const server = createServer((socket) => {
      attempts += 1;
      socket.destroy();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    try {
      const error = (await WarrenPublisher.connect({
        rabbitmqUrl: `amqp://svc:hunter2@127.0.0.1:${port}`,
        redisUrl: inject('redisUrl'),
        connectTimeoutMs: 800,
      }).catch((e: unknown) => e)) as Error & { code?: string };
      expect(error.code).toBe('WARREN_ERR_BROKER_UNAVAILABLE');
      expect(error.message).toContain(
        `cannot connect to RabbitMQ at amqp://***@127.0.0.1:${port} within 800 ms`,
      );
      expect(error.message).not.toContain('hunter2');
      expect(attempts).toBeGreaterThan(0);
      // Given up: no attempt after the rejection.
      const seen = attempts;
      await new Promise((r) => setTimeout(r, 1500));
      expect(attempts).toBe(seen);
    } finally {
      server.close();
    }
  });

  it('the publisher SDK leaves no connection behind to a broker host that never answers', async () => {
    // Takes the connection and reads, but says nothing, as a hung broker would.
    const server = createServer((socket) => socket.resume());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    const open = () => new Promise<number>((resolve) => server.getConnections((_, n) => resolve(n)));
    try {
      const error = (await WarrenPublisher.connect({
        rabbitmqUrl: `amqp://127.0.0.1:${port}`,
        redisUrl: inject('redisUrl'),
        connectTimeoutMs: 500,
      }).catch((e: unknown) => e)) as Error & { code?: string };
      expect(error.code).toBe('WARREN_ERR_BROKER_UNAVAILABLE');
      // The attempt in flight ends within its own bound (no longer than the give-up): its socket would keep
      // the caller's process alive.
      await eventually(async () => (await open()) === 0, 'no connection left', 2000);
    } finally {
      server.close();
    }
  });

  it('the publisher SDK refuses a broker URL that does not parse, without echoing its password', async () => {
    const error = (await WarrenPublisher.connect({
      rabbitmqUrl: 'amqp://svc:hunter2@rabbit host:5672',
      redisUrl: inject('redisUrl'),
    }).catch((e: unknown) => e)) as Error & { code?: string; input?: string };
    expect(error.code).toBe('WARREN_ERR_CONFIG');
    expect(JSON.stringify({ ...error, message: error.message })).not.toContain('hunter2');
  });

  it('the publisher SDK reports credentials the broker refuses at the first refusal, not retryable', async () => {
    const url = new URL(inject('rabbitmqUrl'));
    url.password = 'not-the-password';
    // Through a proxy of the test's own, which counts the attempts.
    const proxy = await TcpProxy.toUrl(url);
    try {
      const error = (await WarrenPublisher.connect({
        rabbitmqUrl: proxy.url(url),
        redisUrl: inject('redisUrl'),
        // Far beyond the test's run: what ends the wait is the refusal, not the timeout.
        connectTimeoutMs: 25_000,
      }).catch((e: unknown) => e)) as Error & { code?: string; retryable?: boolean };
      expect(error.code).toBe('WARREN_ERR_BROKER_UNAVAILABLE');
      expect(error.message).toContain('ACCESS_REFUSED');
      expect(error.message).toMatch(/: check the user name and password in the URL$/);
      expect(error.message).not.toContain('not-the-password');
      expect(error.retryable).toBe(false);
      expect(proxy.connections).toBe(1);
      // Given up: no attempt after the rejection.
      await new Promise((r) => setTimeout(r, 1000));
      expect(proxy.connections).toBe(1);
    } finally {
      await proxy.close();
    }
  });

  it('a gateway or a resolver whose broker password is refused stops starting at the first refusal', async () => {
    const url = new URL(inject('rabbitmqUrl'));
    url.password = 'not-the-password';
    const proxy = await TcpProxy.toUrl(url);
    const prefix = testPrefix('refused-start');
    try {
      const config = testConfig(prefix, { rabbitmq: { url: proxy.url(url) } });
      for (const start of [
        () => startGateway(config, { logger: silentLogger() }),
        () => startResolver(config, { logger: silentLogger() }),
      ]) {
        const before = proxy.connections;
        const error = (await start().catch((e: unknown) => e)) as Error & {
          code?: string;
          retryable?: boolean;
        };
        expect(error.code).toBe('WARREN_ERR_BROKER_UNAVAILABLE');
        expect(error.message).toContain('ACCESS_REFUSED');
        expect(error.message).not.toContain('not-the-password');
        expect(error.retryable).toBe(false);
        expect(proxy.connections - before).toBe(1);
      }
      // Nothing left retrying.
      const seen = proxy.connections;
      await new Promise((r) => setTimeout(r, 1500));
      expect(proxy.connections).toBe(seen);
    } finally {
      await proxy.close();
      await cleanRedis(prefix);
    }
  });

  it('a virtual host the broker will not open is named, with what to check, not amqplib’s frame name', async () => {
    const url = new URL(inject('rabbitmqUrl'));
    url.pathname = '/warren-no-such-vhost';
    const error = (await WarrenPublisher.connect({
      rabbitmqUrl: url.toString(),
      redisUrl: inject('redisUrl'),
      connectTimeoutMs: 1500,
    }).catch((e: unknown) => e)) as Error & { code?: string; retryable?: boolean };
    expect(error.code).toBe('WARREN_ERR_BROKER_UNAVAILABLE');
    expect(error.message).toContain(
      'RabbitMQ refused to open virtual host "warren-no-such-vhost": it does not exist, the user has no permissions on it',
    );
    expect(error.message).not.toContain('Expected ConnectionOpenOk');
  });

  it('a Redis that refuses the connection is reported with the cause, without the password', async () => {
    const error = (await createRedis({
      url: 'redis://:hunter2@127.0.0.1:1',
      name: 'test',
      logger: silentLogger(),
    }).catch((e: unknown) => e)) as Error;
    expect(error.message).toContain('cannot connect to Redis at redis://***@127.0.0.1:1');
    expect(error.message).toContain('ECONNREFUSED');
    expect(error.message).not.toContain('hunter2');
  });

  it('a server that is not Redis is reported in one sentence, with the setting to correct', async () => {
    // Something else on the port, answering as RabbitMQ does a client that is not AMQP (its protocol
    // header), and keeping the connection: ioredis's own message then ends in a full stop.
    const server = createServer((socket) => socket.once('data', () => socket.write('AMQP\x00\x00\x09\x01')));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    try {
      const error = (await createRedis({
        url: `redis://127.0.0.1:${port}`,
        name: 'test-not-redis',
        logger: silentLogger(),
        urlSetting: 'redis.url (WARREN_REDIS_URL)',
        connectTimeoutMs: 3000,
      }).catch((e: unknown) => e)) as Error & { code?: string };
      expect(error.code).toBe('WARREN_ERR_REDIS_UNAVAILABLE');
      expect(error.message).toContain('Unknown RESP type');
      expect(error.message).not.toContain('..');
      expect(error.message).toMatch(
        /\. Check that Redis runs there, or set redis\.url \(WARREN_REDIS_URL\) to the server to use\.$/,
      );
    } finally {
      server.close();
    }
  });

  it('the publisher SDK names the option to correct when its Redis cannot be reached, not ioredis’s close', async () => {
    const error = (await WarrenPublisher.connect({
      rabbitmqUrl: inject('rabbitmqUrl'),
      redisUrl: 'redis://127.0.0.1:1',
      prefix: testPrefix('redis-refused'),
      connectTimeoutMs: 2000,
    }).catch((e: unknown) => e)) as Error & { code?: string };
    expect(error.code).toBe('WARREN_ERR_REDIS_UNAVAILABLE');
    expect(error.message).toBe(
      'cannot connect to Redis at redis://127.0.0.1:1: connect ECONNREFUSED 127.0.0.1:1. ' +
        'Check that Redis runs there, or set the `redisUrl` option to the server to use.',
    );
  });

  it('a Redis database the server does not have stops start-up, instead of writing to database 0', async () => {
    const url = new URL(inject('redisUrl'));
    url.pathname = '/4096';
    const error = (await createRedis({
      url: url.toString(),
      name: 'test-db',
      logger: silentLogger(),
    }).catch((e: unknown) => e)) as Error & { code?: string };
    expect(error.code).toBe('WARREN_ERR_CONFIG');
    expect(error.message).toContain('refuses database 4096');
  });

  it('a Redis client closes when its server hangs or is away, instead of waiting for it', async () => {
    const target = new URL(inject('redisUrl'));
    const proxy = await TcpProxy.toUrl(target);
    try {
      for (const fail of [() => proxy.stall(), () => (proxy.refuse(), proxy.cut())]) {
        const redis = await createRedis({
          url: proxy.url(target),
          name: 'test-close',
          logger: silentLogger(),
        });
        try {
          fail();
          await closeRedis(redis);
          await eventually(() => redis.status === 'end', 'the client ended');
        } finally {
          // Not left reconnecting after a failure (a no-op once it ended).
          redis.disconnect();
          proxy.flow();
          proxy.accept();
        }
      }
    } finally {
      await proxy.close();
    }
  });

  // The main Redis through a proxy of the test's own: what is left open there is this start's, whatever
  // other tests run meanwhile.
  it.each([
    [
      'a gateway',
      (mainUrl: string) =>
        startGateway(
          testConfig(testPrefix('payload-refused'), {
            redis: { url: mainUrl },
            claimCheck: { redisUrl: 'redis://127.0.0.1:1' },
          }),
          { logger: silentLogger() },
        ),
    ],
    [
      'a resolver',
      (mainUrl: string) =>
        startResolver(
          testConfig(testPrefix('payload-refused'), {
            redis: { url: mainUrl },
            claimCheck: { redisUrl: 'redis://127.0.0.1:1' },
          }),
          { logger: silentLogger() },
        ),
    ],
    [
      'the publisher SDK',
      (mainUrl: string) =>
        WarrenPublisher.connect({
          rabbitmqUrl: inject('rabbitmqUrl'),
          redisUrl: mainUrl,
          payloadRedisUrl: 'redis://127.0.0.1:1',
          prefix: testPrefix('payload-refused'),
        }),
    ],
  ])(
    '%s whose payloads’ Redis refuses does not start, and leaves no client on its main Redis',
    async (_, start: (mainUrl: string) => Promise<unknown>) => {
      const target = new URL(inject('redisUrl'));
      const proxy = await TcpProxy.toUrl(target);
      try {
        await expect(start(proxy.url(target))).rejects.toThrow(
          'cannot connect to Redis at redis://127.0.0.1:1',
        );
        expect(proxy.connections).toBeGreaterThan(0);
        await eventually(() => proxy.open === 0, 'the main client closed');
      } finally {
        await proxy.close();
      }
    },
  );
});
