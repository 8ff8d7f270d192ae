import { answers } from './services.js';
import type { TestProject } from 'vitest/node';

/**
 * Finds the RabbitMQ and Redis the integration tests run against (DESIGN.md §8): the URLs in
 * WARREN_TEST_RABBITMQ_URL / WARREN_TEST_REDIS_URL, else the services on 127.0.0.1 when they answer,
 * else containers started with testcontainers when Docker is there. Never a mock.
 */

declare module 'vitest' {
  export interface ProvidedContext {
    rabbitmqUrl: string;
    redisUrl: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const stops: (() => Promise<unknown>)[] = [];
  let rabbitmqUrl = process.env['WARREN_TEST_RABBITMQ_URL'];
  let redisUrl = process.env['WARREN_TEST_REDIS_URL'];
  if (!rabbitmqUrl && (await answers(5672))) rabbitmqUrl = 'amqp://guest:guest@127.0.0.1:5672';
  if (!redisUrl && (await answers(6379))) redisUrl = 'redis://127.0.0.1:6379';
  if (!rabbitmqUrl || !redisUrl) {
    const { GenericContainer, Wait } = await import('testcontainers').catch(() => {
      throw new Error('RabbitMQ/Redis not reachable on 127.0.0.1 and testcontainers is not installed');
    });
    try {
      if (!rabbitmqUrl) {
        const c = await new GenericContainer('rabbitmq:3.13-alpine')
          .withExposedPorts(5672)
          .withWaitStrategy(Wait.forLogMessage('Server startup complete'))
          .start();
        stops.push(() => c.stop());
        rabbitmqUrl = `amqp://guest:guest@${c.getHost()}:${c.getMappedPort(5672)}`;
      }
      if (!redisUrl) {
        const c = await new GenericContainer('redis:7-alpine').withExposedPorts(6379).start();
        stops.push(() => c.stop());
        redisUrl = `redis://${c.getHost()}:${c.getMappedPort(6379)}`;
      }
    } catch (error) {
      throw new Error(
        `No RabbitMQ/Redis for the tests: none on 127.0.0.1, none in WARREN_TEST_*_URL, and Docker failed: ${String(error)}`,
        { cause: error },
      );
    }
  }
  project.provide('rabbitmqUrl', rabbitmqUrl);
  project.provide('redisUrl', redisUrl);
  return async () => {
    for (const stop of stops) await stop();
  };
}
