import amqp, { type Channel, type ChannelModel } from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { Consumer, type Delivery } from '../../src/broker/consumer.js';
import { silentLogger } from '../../src/shared/logger.js';
import { eventually, testBrokerConnection, testPrefix } from '../support/harness.js';

// Acks are batched per turn (one `multiple` ack for the settled head of the window, single acks behind a
// message still in progress). Against the real broker: a double or unknown ack would close the channel
// (PRECONDITION_FAILED), a lost ack would show as a redelivery once the channel goes.

describe('consumer acks', () => {
  const queue = `${testPrefix('acks')}.q`;
  let model: ChannelModel;
  let admin: Channel;

  beforeAll(async () => {
    model = await amqp.connect(inject('rabbitmqUrl'));
    admin = await model.createChannel();
    await admin.assertQueue(queue, { durable: false });
  });
  afterAll(async () => {
    await admin.deleteQueue(queue);
    await model.close();
  });

  async function consume(prefetch: number, handle: (d: Delivery) => void, from = queue) {
    const broker = testBrokerConnection('acks');
    const errors: string[] = [];
    broker.on('disconnected', () => errors.push('disconnected'));
    const consumer = new Consumer(broker, { queue: from, prefetch }, handle, silentLogger());
    await consumer.start();
    await broker.start();
    return { broker, consumer, errors };
  }

  const publish = (n: number) => {
    for (let i = 0; i < n; i += 1) admin.sendToQueue(queue, Buffer.from(String(i)));
  };

  it('keeps the window moving past a message still in progress, and settles each message exactly once', async () => {
    const received: Delivery[] = [];
    const held: Delivery[] = [];
    const { broker, consumer, errors } = await consume(4, (d) => {
      received.push(d);
      const n = Number(d.message.content.toString());
      if (n === 1) held.push(d);
      else if (n === 5 && !d.message.fields.redelivered) d.requeue();
      else d.ack();
    });
    publish(30);
    // With a prefetch of 4, all 30 arrive only if the acks behind message 1 reach the broker.
    await eventually(() => received.length >= 31, 'every message, and message 5 again after its requeue');
    held[0]?.ack();
    await eventually(async () => (await admin.checkQueue(queue)).messageCount === 0, 'queue empty');
    // Closing the channel would requeue anything not acked: nothing comes back.
    await consumer.close();
    await broker.close();
    const { messageCount } = await admin.checkQueue(queue);
    expect(messageCount).toBe(0);
    expect(errors).toEqual([]);
    const redelivered = received
      .filter((d) => d.message.fields.redelivered)
      .map((d) => d.message.content.toString());
    expect(redelivered).toEqual(['5']);
    expect(received).toHaveLength(31);
  });

  it('does not start consuming once closed while it was still subscribing', async () => {
    const broker = testBrokerConnection('acks-closed');
    let release = (): void => {};
    let preparing = false;
    const consumer = new Consumer(
      broker,
      {
        queue,
        prefetch: 1,
        prepare: async () => {
          preparing = true;
          await new Promise<void>((resolve) => (release = resolve));
        },
      },
      (d) => d.ack(),
      silentLogger(),
    );
    await consumer.start();
    const started = broker.start();
    try {
      await eventually(() => preparing, 'subscribing');
      await consumer.close();
      release();
      await started;
      await new Promise((r) => setTimeout(r, 100));
      expect((await admin.checkQueue(queue)).consumerCount).toBe(0);
    } finally {
      await broker.close();
    }
  });

  it('rejects a message whose handler throws, to the dead-letter exchange, and keeps consuming', async () => {
    const throwing = `${queue}.throwing`;
    const dlx = `${queue}.dlx`;
    const dead = `${queue}.dead`;
    await admin.assertExchange(dlx, 'fanout', { durable: false, autoDelete: true });
    await admin.assertQueue(dead, { durable: false });
    await admin.bindQueue(dead, dlx, '');
    await admin.assertQueue(throwing, { durable: false, arguments: { 'x-dead-letter-exchange': dlx } });
    const handled: string[] = [];
    const { broker, consumer } = await consume(
      1,
      (d) => {
        const body = d.message.content.toString();
        if (body === 'bug') throw new Error('a bug in the handler');
        handled.push(body);
        d.ack();
      },
      throwing,
    );
    try {
      for (const body of ['first', 'bug', 'after']) admin.sendToQueue(throwing, Buffer.from(body));
      // With a prefetch of 1, 'after' arrives only once 'bug' was settled.
      await eventually(() => handled.includes('after'), 'the message after the one that threw');
      await eventually(async () => (await admin.checkQueue(dead)).messageCount === 1, 'dead-lettered');
      const deadMessage = await admin.get(dead, { noAck: true });
      expect(deadMessage && deadMessage.content.toString()).toBe('bug');
      expect(handled).toEqual(['first', 'after']);
    } finally {
      await consumer.close();
      await broker.close();
      await admin.deleteQueue(throwing);
      await admin.deleteQueue(dead);
    }
  });
});
