import { describe, expect, it } from 'vitest';
import { JOB_ID_PATTERN } from '../../../src/protocol/schemas.js';
import { PayloadStore } from '../../../src/store/payload-store.js';

describe('PayloadStore.jobIdFor', () => {
  const secret = Buffer.alloc(32, 7);
  const data = Buffer.from('{"note":"x"}');

  it('gives an event the same job id on every attempt, so a retry overwrites instead of adding a copy', () => {
    const first = PayloadStore.jobIdFor(secret, 'acme', 'evt-1', data);
    expect(PayloadStore.jobIdFor(secret, 'acme', 'evt-1', data)).toBe(first);
    expect(first).toMatch(JOB_ID_PATTERN);
  });

  it('differs per event, per tenant, per secret and per payload', () => {
    const ids = new Set([
      PayloadStore.jobIdFor(secret, 'acme', 'evt-1', data),
      PayloadStore.jobIdFor(secret, 'acme', 'evt-2', data),
      PayloadStore.jobIdFor(secret, 'globex', 'evt-1', data),
      // The separator keeps tenant and event apart: acme + "x\0y" is not "acme\0x" + y.
      PayloadStore.jobIdFor(secret, 'acmeevt', '-1', data),
      PayloadStore.jobIdFor(Buffer.alloc(32, 8), 'acme', 'evt-1', data),
      // An event id reused for other data: a node that cached the first payload must not serve it.
      PayloadStore.jobIdFor(secret, 'acme', 'evt-1', Buffer.from('{"note":"y"}')),
    ]);
    expect(ids.size).toBe(6);
  });
});
