import { describe, expect, it } from 'vitest';
import { badUrls } from '../../../../src/sdk/publisher/options.js';

describe('publisher SDK URLs', () => {
  it('takes any frame size in the broker URL (its headers are small), unlike the servers', () => {
    expect(badUrls({ rabbitmqUrl: 'amqp://mq:5672/?frameMax=4096' })).toEqual([]);
    expect(badUrls({ rabbitmqUrl: 'mq:5672' })).toEqual([
      'rabbitmqUrl must be an amqp:// or amqps:// URL (got "mq:5672")',
    ]);
  });
});
