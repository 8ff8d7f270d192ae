import { describe, expect, it } from 'vitest';
import { queueMismatch } from '../../../src/broker/queue-mismatch.js';

// The broker's 406 to a queue declared otherwise than the one there, as amqplib reports RabbitMQ 3.10's.

const refused = (detail: string): Error =>
  Object.assign(
    new Error(
      `Operation failed: QueueDeclare; 406 (PRECONDITION-FAILED) with message "PRECONDITION_FAILED - ${detail}"`,
    ),
    { code: 406 },
  );

const shared = {
  consumed: ['warren.resolver', 'warren.resolver.membership', 'warren.resolver.retry'],
  dead: 'warren.dead',
};

describe('queueMismatch', () => {
  it('names the queue, the type it has, the configured one, and both ways out', () => {
    const error = queueMismatch(
      refused(
        "inequivalent arg 'x-queue-type' for queue 'warren.resolver' in vhost '/': received 'classic' but current is 'quorum'",
      ),
      'classic',
      {},
      shared,
    );
    expect(error?.code).toBe('WARREN_ERR_TOPOLOGY_MISMATCH');
    expect(error?.retryable).toBe(false);
    expect(error?.message).toMatch(
      /^queue warren\.resolver exists as a quorum queue, but rabbitmq\.queueType/,
    );
    expect(error?.message).toMatch(/WARREN_RABBITMQ_QUEUE_TYPE.* is classic/);
    expect(error?.message).toMatch(/Set it back to quorum/);
    expect(error?.message).toMatch(/rabbitmqctl delete_queue warren\.resolver/);
  });

  it('takes a queue declared without a type for the classic one it is', () => {
    const error = queueMismatch(
      refused(
        "inequivalent arg 'x-queue-type' for queue 'warren.dead' in vhost '/': received the value 'quorum' of type 'longstr' but current is none",
      ),
      'quorum',
      {},
      shared,
    );
    expect(error?.message).toMatch(/^queue warren\.dead exists as a classic queue, but .* is quorum/);
  });

  it('on a change of type, tells to empty and delete every shared queue, and to save the dead letters first', () => {
    // Warren declares the dead-letter queue first: a migration's first mismatch is always about it.
    const error = queueMismatch(
      refused(
        "inequivalent arg 'x-queue-type' for queue 'warren.dead' in vhost '/': received the value 'quorum' of type 'longstr' but current is none",
      ),
      'quorum',
      {},
      shared,
    );
    // Nobody reads the dead-letter queue: waiting for the resolvers to empty it would wait for ever.
    expect(error?.message).not.toMatch(/resolvers empty it/);
    expect(error?.message).toMatch(/save what warren\.dead holds/);
    for (const queue of [...shared.consumed, shared.dead])
      expect(error?.message).toContain(`rabbitmqctl delete_queue ${queue}`);
    expect(error?.message).toMatch(
      /let the resolvers empty warren\.resolver, warren\.resolver\.membership and warren\.resolver\.retry/,
    );
  });

  it('names another argument that differs, with both values', () => {
    const error = queueMismatch(
      refused(
        "inequivalent arg 'x-delivery-limit' for queue 'warren.resolver' in vhost '/': received the value '1000000' of type 'long' but current is none",
      ),
      'quorum',
      {},
      shared,
    );
    expect(error?.code).toBe('WARREN_ERR_TOPOLOGY_MISMATCH');
    expect(error?.message).toMatch(
      /^queue warren\.resolver exists with x-delivery-limit unset where Warren declares 1000000 \(rabbitmq\.queueType/,
    );
  });

  it('passes on anything else', () => {
    expect(
      queueMismatch(Object.assign(new Error('ACCESS_REFUSED'), { code: 403 }), 'quorum', {}, shared),
    ).toBeUndefined();
    expect(
      queueMismatch(
        refused("invalid property 'non-durable' for queue 'q' in vhost '/'"),
        'quorum',
        {},
        shared,
      ),
    ).toBeUndefined();
    expect(queueMismatch(undefined, 'classic', {}, shared)).toBeUndefined();
  });
});
