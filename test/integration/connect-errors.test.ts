import { describe, expect, inject, it } from 'vitest';
import { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { silentLogger } from '../../src/shared/logger.js';
import { createRedis } from '../../src/store/redis.js';

// A service that cannot reach its broker or Redis is told why, soon, without its password.

describe('connecting to services that refuse', () => {
  it('the publisher SDK gives up on an unreachable broker after connectTimeoutMs, saying why', async () => {
    const started = Date.now();
    const error = (await WarrenPublisher.connect({
      rabbitmqUrl: 'amqp://svc:hunter2@127.0.0.1:1',
      redisUrl: inject('redisUrl'),
      connectTimeoutMs: 500,
    }).catch((e: unknown) => e)) as Error & { code?: string };
    expect(error.code).toBe('WARREN_ERR_BROKER_UNAVAILABLE');
    expect(error.message).toMatch(
      /cannot connect to RabbitMQ at amqp:\/\/\*\*\*@127\.0\.0\.1:1 within 500 ms/,
    );
    expect(error.message).toContain('ECONNREFUSED');
    expect(error.message).not.toContain('hunter2');
    // Given up, not left retrying in the background (the test would not end otherwise).
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('the publisher SDK reports credentials the broker refuses', async () => {
    const url = new URL(inject('rabbitmqUrl'));
    url.password = 'not-the-password';
    const error = (await WarrenPublisher.connect({
      rabbitmqUrl: url.toString(),
      redisUrl: inject('redisUrl'),
      connectTimeoutMs: 1500,
    }).catch((e: unknown) => e)) as Error & { code?: string };
    expect(error.code).toBe('WARREN_ERR_BROKER_UNAVAILABLE');
    expect(error.message).toContain('ACCESS');
    expect(error.message).not.toContain('not-the-password');
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
});
