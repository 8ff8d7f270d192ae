import { describe, expect, it } from 'vitest';
import { CONFIG_FIELDS } from '../../../src/config/fields.js';
import { loadConfig } from '../../../src/config/load.js';
import { badOptions } from '../../../src/sdk/publisher/options.js';
import { isWarrenError } from '../../../src/shared/errors.js';

// rabbitmq.queueType: what the shared durable queues are declared as.

describe('rabbitmq.queueType', () => {
  it('is classic unless set', () => {
    expect(loadConfig({ env: {} }).rabbitmq.queueType).toBe('classic');
  });

  it('is read from WARREN_RABBITMQ_QUEUE_TYPE, above the WARREN_CONFIG file', () => {
    expect(loadConfig({ env: { WARREN_RABBITMQ_QUEUE_TYPE: 'quorum' } }).rabbitmq.queueType).toBe('quorum');
    expect(loadConfig({ env: {}, overrides: { rabbitmq: { queueType: 'quorum' } } }).rabbitmq.queueType).toBe(
      'quorum',
    );
    const field = CONFIG_FIELDS.find((f) => f.path.join('.') === 'rabbitmq.queueType');
    expect(field).toMatchObject({ env: 'WARREN_RABBITMQ_QUEUE_TYPE', enum: ['classic', 'quorum'] });
  });

  it('refuses any other type, naming the variable and the types it takes', () => {
    let error: unknown;
    try {
      loadConfig({ env: { WARREN_RABBITMQ_QUEUE_TYPE: 'stream' } });
    } catch (caught) {
      error = caught;
    }
    expect(isWarrenError(error, 'WARREN_ERR_CONFIG')).toBe(true);
    expect((error as Error).message).toMatch(/WARREN_RABBITMQ_QUEUE_TYPE/);
    expect((error as Error).message).toMatch(/classic.*quorum/);
  });

  it('has its counterpart in the publisher SDK, checked before connecting', () => {
    expect(badOptions({ queueType: 'quorum' })).toEqual([]);
    expect(badOptions({ queueType: 'Quorum' as 'quorum' })).toEqual([
      'queueType must be classic or quorum, as WARREN_RABBITMQ_QUEUE_TYPE (got "Quorum")',
    ]);
  });
});
