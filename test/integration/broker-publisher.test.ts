import amqp, { type ChannelModel } from 'amqplib';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import type { BrokerConnection } from '../../src/broker/connection.js';
import { Publisher } from '../../src/broker/publisher.js';
import { sleep } from '../../src/shared/lifecycle.js';
import { silentLogger } from '../../src/shared/logger.js';
import { eventually, testBrokerConnection, testPrefix } from '../support/harness.js';
import { TcpProxy } from '../support/tcp-proxy.js';

/** A publisher on a connection of its own, connected. */
async function connected(
  name: string,
  url?: string,
): Promise<{ broker: BrokerConnection; publisher: Publisher }> {
  const broker = testBrokerConnection(name, url);
  const publisher = new Publisher(broker, silentLogger());
  await publisher.start();
  await broker.start();
  return { broker, publisher };
}

describe('publisher', () => {
  const queue = `${testPrefix('publisher')}.q`;
  let model: ChannelModel;

  beforeAll(async () => {
    model = await amqp.connect(inject('rabbitmqUrl'));
    const admin = await model.createChannel();
    await admin.assertQueue(queue, { durable: false });
    await admin.close();
  });
  afterAll(async () => {
    const admin = await model.createChannel();
    await admin.deleteQueue(queue);
    await model.close();
  });

  it('opens a new confirm channel when the broker closes its channel but not the connection', async () => {
    const { broker, publisher } = await connected('publisher');
    let disconnects = 0;
    broker.on('disconnected', () => (disconnects += 1));
    try {
      await publisher.publish('', queue, Buffer.from('before'));
      // An exchange that does not exist: the broker closes the channel (404), the connection stays.
      await expect(
        publisher.publish(`${queue}.no-such-exchange`, 'k', Buffer.from('lost')),
      ).rejects.toThrow();
      await eventually(async () => {
        try {
          await publisher.publish('', queue, Buffer.from('after'));
          return true;
        } catch {
          return false;
        }
      }, 'a publish confirmed on a new channel');
      expect(disconnects).toBe(0);
      const check = await model.createChannel();
      const { messageCount } = await check.checkQueue(queue);
      await check.close();
      expect(messageCount).toBeGreaterThanOrEqual(2);
    } finally {
      await publisher.close();
      await broker.close();
    }
  });

  it('a publish that may wait waits for a channel the broker closed to be reopened', async () => {
    const { broker, publisher } = await connected('publisher-reopen');
    try {
      await expect(
        publisher.publish(`${queue}.no-such-exchange`, 'k', Buffer.from('lost')),
      ).rejects.toThrow();
      // The connection is up, the channel is being reopened: this waits for it instead of failing.
      await publisher.publish('', queue, Buffer.from('waited'), { waitForConnectionMs: 5000 });
    } finally {
      await publisher.close();
      await broker.close();
    }
  });

  it('fails a mandatory publish no queue takes, which the broker confirms all the same', async () => {
    const { broker, publisher } = await connected('publisher-mandatory');
    const check = await model.createChannel();
    await check.purgeQueue(queue);
    try {
      const nowhere = `${queue}.no-such-queue`;
      // Without `mandatory` the broker's confirm is all there is to go by.
      await publisher.publish('', nowhere, Buffer.from('dropped'));
      await expect(
        publisher.publish('', nowhere, Buffer.from('returned'), { mandatory: true }),
      ).rejects.toMatchObject({ code: 'WARREN_ERR_UNROUTABLE' });
      // Routed, among returned ones on the same channel: each is told apart by its own header.
      const outcomes = await Promise.allSettled(
        [nowhere, queue, nowhere, queue].map((to, i) =>
          publisher.publish('', to, Buffer.from(`m${i}`), { mandatory: true, headers: { n: i } }),
        ),
      );
      expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'fulfilled', 'rejected', 'fulfilled']);
      const got = await check.get(queue, { noAck: true });
      // The caller's headers are kept.
      expect(got && got.properties.headers?.['n']).toBe(1);
    } finally {
      await check.purgeQueue(queue);
      await check.close();
      await publisher.close();
      await broker.close();
    }
  });

  it('gives up on a confirm that does not come, and closes without waiting for it', async () => {
    const target = new URL(inject('rabbitmqUrl'));
    const proxy = await TcpProxy.toUrl(target);
    const { broker, publisher } = await connected('publisher-stalled', proxy.url(target));
    try {
      await publisher.publish('', queue, Buffer.from('confirmed'), { confirmTimeoutMs: 2000 });
      // The broker stops answering (as under a resource alarm): the confirm never comes.
      proxy.stall();
      await expect(
        publisher.publish('', queue, Buffer.from('unconfirmed'), { confirmTimeoutMs: 300 }),
      ).rejects.toMatchObject({ code: 'WARREN_ERR_TIMEOUT' });
      // Closing does not wait for the confirm (or the close) that never comes: past its 5 s bound it goes,
      // the broker still silent (a close that waited for it would hang until this test's timeout).
      await publisher.close();
      expect(proxy.open).toBeGreaterThan(0);
      await expect(publisher.publish('', queue, Buffer.from('late'))).rejects.toMatchObject({
        code: 'WARREN_ERR_CLOSED',
      });
    } finally {
      proxy.flow();
      await broker.close();
      await proxy.close();
    }
  });

  it('fails a publish still unconfirmed when close() gives up on the silent broker, by the time it returns', async () => {
    const target = new URL(inject('rabbitmqUrl'));
    const proxy = await TcpProxy.toUrl(target);
    const { broker, publisher } = await connected('publisher-close-unconfirmed', proxy.url(target));
    try {
      proxy.stall();
      // No confirm timeout of its own: only the close can end its wait.
      let settled = false;
      const publishing = publisher
        .publish('', queue, Buffer.from('unconfirmed'))
        .finally(() => (settled = true));
      publishing.catch(() => {});
      await publisher.close();
      // Rejected within close(); its handlers run a few microtasks on.
      await new Promise((resolve) => setImmediate(resolve));
      expect(settled).toBe(true);
      // The broker may or may not have it: the caller is told to send it again (on another publisher).
      await expect(publishing).rejects.toMatchObject({ code: 'WARREN_ERR_CLOSED', retryable: true });
    } finally {
      proxy.flow();
      await broker.close();
      await proxy.close();
    }
  });

  it('fails a publish at once while the broker blocks the connection, when asked to', async () => {
    const { broker, publisher } = await connected('publisher-blocked');
    try {
      // What amqplib reports when RabbitMQ raises a memory alarm (raised here without one).
      broker.model?.emit('blocked', 'low on memory');
      await expect(
        publisher.publish('', queue, Buffer.from('x'), { failIfBlocked: true }),
      ).rejects.toMatchObject({
        code: 'WARREN_ERR_BROKER_UNAVAILABLE',
        message: expect.stringContaining('low on memory') as unknown,
      });
      // Without the option (the resolver) it waits instead; here the broker is not really blocked.
      await publisher.publish('', queue, Buffer.from('waits'));
      broker.model?.emit('unblocked');
      await publisher.publish('', queue, Buffer.from('after'), { failIfBlocked: true });
    } finally {
      await publisher.close();
      await broker.close();
    }
  });

  it('forgets a block with the connection it was raised on: a publish waits for the next one', async () => {
    const target = new URL(inject('rabbitmqUrl'));
    const proxy = await TcpProxy.toUrl(target);
    const { broker, publisher } = await connected('publisher-blocked-cut', proxy.url(target));
    try {
      broker.model?.emit('blocked', 'low on memory');
      proxy.refuse();
      proxy.cut();
      await eventually(() => broker.model === undefined, 'the connection seen lost');
      expect(broker.blocked).toBeUndefined();
      let settled = false;
      const publishing = publisher
        .publish('', queue, Buffer.from('after the cut'), {
          failIfBlocked: true,
          waitForConnectionMs: 20_000,
        })
        .finally(() => (settled = true));
      await sleep(200);
      // Waiting for the next connection, not failed for a block the broker no longer holds against it.
      expect(settled).toBe(false);
      proxy.accept();
      await publishing;
    } finally {
      await publisher.close();
      await broker.close();
      await proxy.close();
    }
  });

  it('tells a publish waiting for the connection that it was closed, at once', async () => {
    const broker = testBrokerConnection('publisher-closed', 'amqp://guest:guest@127.0.0.1:1');
    const publisher = new Publisher(broker, silentLogger());
    await publisher.start();
    void broker.start().catch(() => {});
    const waiting = publisher.publish('', queue, Buffer.from('x'), { waitForConnectionMs: 60_000 });
    await broker.close();
    await expect(waiting).rejects.toMatchObject({ code: 'WARREN_ERR_CLOSED' });
  });
});
