import { describe, expect, it } from 'vitest';
import { settlesWithin, sleep } from '../../../src/shared/lifecycle.js';

describe('settlesWithin', () => {
  it('is true for a promise that fulfils in time', async () => {
    await expect(settlesWithin(sleep(5), 1000)).resolves.toBe(true);
  });

  it('is false for one still pending at the bound (this one never settles)', async () => {
    await expect(settlesWithin(new Promise(() => {}), 50)).resolves.toBe(false);
  });

  it('throws the rejection of one that fails in time', async () => {
    await expect(settlesWithin(Promise.reject(new Error('refused')), 1000)).rejects.toThrow('refused');
  });
});
