import amqp from 'amqplib';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, inject, it, vi } from 'vitest';
import { collectStatus } from '../../src/cli/status.js';
import { Keys } from '../../src/store/keys.js';
import { cleanRedis, testConfig, testPrefix } from '../support/harness.js';
import { TcpProxy } from '../support/tcp-proxy.js';

// `warren status` asks RabbitMQ about each queue on a channel of its own; the broker may drop the
// connection between two of those questions (a restart, a network cut).

describe('warren status when the broker drops its connection mid-command', () => {
  let prefix = '';
  let proxy: TcpProxy | undefined;

  afterEach(async () => {
    vi.restoreAllMocks();
    await proxy?.close();
    proxy = undefined;
    await cleanRedis(prefix);
  });

  it('still answers, with the queues it could not ask about shown unknown', async () => {
    prefix = testPrefix('status-drop');
    const redis = new Redis(inject('redisUrl'));
    // Five gateways that beat just now: fourteen queues (the resolver's four, two per node) to ask about.
    const [time] = await redis.time();
    const now = Number(time) * 1000;
    for (let i = 0; i < 5; i += 1) await redis.zadd(new Keys(prefix).nodes(), now, `node-${i}`);
    await redis.quit();

    const rabbitmqUrl = inject('rabbitmqUrl');
    proxy = await TcpProxy.toUrl(new URL(rabbitmqUrl));
    const cutting = proxy;
    // The real broker, through the proxy; the connection is cut as the third question's channel is asked
    // for: what is asked from then on meets a dropped connection.
    const connect = amqp.connect.bind(amqp);
    vi.spyOn(amqp, 'connect').mockImplementation(async (...args: Parameters<typeof amqp.connect>) => {
      const model = await connect(...args);
      const createChannel = model.createChannel.bind(model);
      let asked = 0;
      vi.spyOn(model, 'createChannel').mockImplementation(() => {
        asked += 1;
        if (asked === 3) cutting.cut();
        return createChannel();
      });
      return model;
    });
    const errors: unknown[] = [];
    const record = (error: unknown): void => void errors.push(error);
    process.on('uncaughtException', record);
    try {
      const status = await collectStatus(testConfig(prefix, { rabbitmq: { url: proxy.url(rabbitmqUrl) } }));
      // Give a late 'error' event from the dropped connection its turn.
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(status.gateways).toHaveLength(5);
      // The resolver's four, and each gateway's queue, its dropped queue and that one's lost mark.
      expect(status.queues).toHaveLength(4 + 5 * 3);
      expect(status.queues.filter((q) => q.messages === null).length).toBeGreaterThan(0);
    } finally {
      process.off('uncaughtException', record);
    }
    expect(errors).toEqual([]);
  });
});
