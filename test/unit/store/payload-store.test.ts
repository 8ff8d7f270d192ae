import { describe, expect, it } from 'vitest';
import { JOB_ID_PATTERN } from '../../../src/protocol/schemas.js';
import { PayloadStore } from '../../../src/store/payload-store.js';

describe('PayloadStore.jobIdFor', () => {
  const secret = Buffer.alloc(32, 7);

  it('gives an event the same job id on every attempt, so a retry overwrites instead of adding a copy', () => {
    const first = PayloadStore.jobIdFor(secret, 'acme', 'evt-1');
    expect(PayloadStore.jobIdFor(secret, 'acme', 'evt-1')).toBe(first);
    expect(first).toMatch(JOB_ID_PATTERN);
  });

  it('differs per event, per tenant and per secret', () => {
    const ids = new Set([
      PayloadStore.jobIdFor(secret, 'acme', 'evt-1'),
      PayloadStore.jobIdFor(secret, 'acme', 'evt-2'),
      PayloadStore.jobIdFor(secret, 'globex', 'evt-1'),
      // The separator keeps tenant and event apart: acme + "x\0y" is not "acme\0x" + y.
      PayloadStore.jobIdFor(secret, 'acmeevt', '-1'),
      PayloadStore.jobIdFor(Buffer.alloc(32, 8), 'acme', 'evt-1'),
    ]);
    expect(ids.size).toBe(5);
  });
});
