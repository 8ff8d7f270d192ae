import type { Channel, Options } from 'amqplib';
import { describe, expect, it } from 'vitest';
import { declareGatewayQueue } from '../../../src/broker/topology.js';

describe('a gateway node’s queues', () => {
  it('keep the records of what the node queue dropped longer than the node queue itself', async () => {
    const declared = new Map<string, Options.AssertQueue | undefined>();
    const channel = {
      assertQueue: async (name: string, options?: Options.AssertQueue) => {
        declared.set(name, options);
        return { queue: name, messageCount: 0, consumerCount: 0 };
      },
      bindQueue: async () => ({}),
    } as unknown as Channel;
    await declareGatewayQueue(channel, 'w.gw.n1', { maxLength: 10, dropped: 'w.gw.n1.dropped' });
    const expires = (name: string) => Number(declared.get(name)?.arguments?.['x-expires']);
    const node = expires('w.gw.n1');
    expect(node).toBeGreaterThan(0);
    // A node back after about that long finds either its queue gone (told as lost), or its records too.
    expect(expires('w.gw.n1.dropped')).toBeGreaterThan(node);
    expect(expires('w.gw.n1.dropped.lost')).toBeGreaterThan(node);
    // The dropped queue's own overflow goes to the lost mark.
    expect(declared.get('w.gw.n1.dropped')?.arguments).toMatchObject({
      'x-dead-letter-exchange': '',
      'x-dead-letter-routing-key': 'w.gw.n1.dropped.lost',
    });
  });
});
