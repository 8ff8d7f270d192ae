import { describe, expect, it } from 'vitest';
import { fulfilsWithin, sleep } from '../../../src/shared/lifecycle.js';

describe('fulfilsWithin', () => {
  it('is true for a promise that fulfils in time', async () => {
    await expect(fulfilsWithin(sleep(5), 1000)).resolves.toBe(true);
  });

  it('is false for one still pending at the bound (this one never settles)', async () => {
    await expect(fulfilsWithin(new Promise(() => {}), 50)).resolves.toBe(false);
  });

  it('is false for one that fails after the bound, and leaves no unhandled rejection', async () => {
    const late = sleep(100).then(() => {
      throw new Error('too late to matter');
    });
    await expect(fulfilsWithin(late, 20)).resolves.toBe(false);
    // vitest fails the run on an unhandled rejection: let this one happen before the test ends.
    await sleep(150);
  });

  it('throws the rejection of one that fails in time', async () => {
    await expect(fulfilsWithin(Promise.reject(new Error('refused')), 1000)).rejects.toThrow('refused');
  });
});
