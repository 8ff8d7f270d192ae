import { describe, expect, it } from 'vitest';
import type { Publisher, PublishOptions } from '../../../src/broker/publisher.js';
import { BindingCheck } from '../../../src/gateway/binding-check.js';
import { isProbe } from '../../../src/protocol/delivery.js';
import { ErrorCode, WarrenError } from '../../../src/shared/errors.js';
import { silentLogger } from '../../../src/shared/logger.js';

/** A publisher whose publishes end as `outcome` says (the integration tests use the broker's own). */
function check(outcome: () => Promise<void>, skip = () => false) {
  const published: { exchange: string; key: string; options: PublishOptions }[] = [];
  const lost: string[] = [];
  const publisher = {
    publish: (exchange: string, key: string, _body: Buffer, options: PublishOptions) => {
      published.push({ exchange, key, options });
      return outcome();
    },
    close: () => Promise.resolve(),
  } as unknown as Publisher;
  const binding = new BindingCheck(
    publisher,
    { exchange: 'p.deliveries', nodeKey: 'n.abc', periodMs: 1000, skip, lost: (why) => lost.push(why) },
    silentLogger(),
  );
  return { binding, published, lost };
}

describe('BindingCheck', () => {
  it('probes by the node key, mandatory, with a message gateways ignore', async () => {
    const { binding, published, lost } = check(() => Promise.resolve());
    await binding.probe();
    expect(published).toHaveLength(1);
    expect(published[0]).toMatchObject({
      exchange: 'p.deliveries',
      key: 'n.abc',
      options: { mandatory: true },
    });
    expect(isProbe(published[0]?.options.headers)).toBe(true);
    expect(lost).toEqual([]);
  });

  it('takes a probe routed nowhere, or refused for want of the exchange, for bindings lost', async () => {
    const unroutable = check(() => Promise.reject(new WarrenError(ErrorCode.Unroutable, 'no queue took it')));
    await unroutable.binding.probe();
    expect(unroutable.lost).toEqual(['the broker routed the node’s probe nowhere']);

    const notFound = Object.assign(new Error('NOT_FOUND - no exchange'), { code: 404 });
    const gone = check(() =>
      Promise.reject(new WarrenError(ErrorCode.PublishRejected, 'refused', { cause: notFound })),
    );
    await gone.binding.probe();
    expect(gone.lost).toEqual(['the exchange is gone']);
  });

  it('takes nothing else for bindings lost: the broker away, a refusal of another kind, a timeout', async () => {
    const failures = [
      new WarrenError(ErrorCode.BrokerUnavailable, 'not connected', { retryable: true }),
      new WarrenError(ErrorCode.PublishRejected, 'refused', {
        cause: Object.assign(new Error('ACCESS_REFUSED'), { code: 403 }),
      }),
      new WarrenError(ErrorCode.Timeout, 'no confirm'),
      new Error('something else'),
    ];
    for (const failure of failures) {
      const { binding, lost } = check(() => Promise.reject(failure));
      await binding.probe();
      expect(lost).toEqual([]);
    }
  });

  it('does not probe while skipped, nor report a loss found once skipped (a recovery under way mends it)', async () => {
    const skipped = check(
      () => Promise.resolve(),
      () => true,
    );
    await skipped.binding.probe();
    expect(skipped.published).toEqual([]);

    let skip = false;
    const late = check(
      () => {
        skip = true;
        return Promise.reject(new WarrenError(ErrorCode.Unroutable, 'no queue took it'));
      },
      () => skip,
    );
    await late.binding.probe();
    expect(late.published).toHaveLength(1);
    expect(late.lost).toEqual([]);
  });

  it('sends one probe at a time', async () => {
    let confirm: () => void = () => {};
    let calls = 0;
    const { binding, published } = check(() =>
      (calls += 1) === 1 ? new Promise<void>((resolve) => (confirm = resolve)) : Promise.resolve(),
    );
    const first = binding.probe();
    await binding.probe();
    expect(published).toHaveLength(1);
    confirm();
    await first;
    await binding.probe();
    expect(published).toHaveLength(2);
  });
});
