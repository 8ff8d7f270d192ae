import type { ConsumeMessage } from 'amqplib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WarrenPublisher } from '../../src/sdk/publisher/index.js';
import {
  BrokerProbe,
  cleanRedis,
  connectPublisher,
  eventually,
  testConfig,
  testPrefix,
} from '../support/harness.js';

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
});

describe('publisher SDK: close', () => {
  it('can be called again, at once or later, and each call resolves once everything is closed', async () => {
    const prefix = testPrefix('sdk-close');
    const warren = await connectPublisher(testConfig(prefix));
    try {
      await Promise.all([warren.close(), warren.close()]);
      await warren.close();
    } finally {
      const probe = await BrokerProbe.open();
      await probe.deleteExchangesAndQueues(prefix);
      await probe.close();
      await cleanRedis(prefix);
    }
  });
});
