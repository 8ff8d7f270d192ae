import { describe, expect, it } from 'vitest';
import { PING_BURST, PingBudget } from '../../../src/gateway/tab.js';

describe('PingBudget', () => {
  it('gives a burst, then one ping a second, and never more than the burst after a quiet spell', () => {
    let now = 1_000_000;
    const budget = new PingBudget(() => now);
    const takes = (n: number) => Array.from({ length: n }, () => budget.take());
    expect(takes(PING_BURST + 1)).toEqual([...Array<boolean>(PING_BURST).fill(true), false]);
    now += 999;
    expect(budget.take()).toBe(false);
    now += 1;
    expect(takes(2)).toEqual([true, false]);
    now += 2500;
    expect(takes(3)).toEqual([true, true, false]);
    // Half a second of the last refill carried over: one more at 3 s, not 3.5 s.
    now += 500;
    expect(budget.take()).toBe(true);
    now += 60_000;
    expect(takes(PING_BURST + 1)).toEqual([...Array<boolean>(PING_BURST).fill(true), false]);
  });

  it('keeps answering a client pinging every 25 s after its clock was set back', () => {
    let now = 10 * 60_000;
    const budget = new PingBudget(() => now);
    for (let i = 0; i < 4; i += 1) {
      expect(budget.take()).toBe(true);
      now += 25_000;
    }
    now -= 10 * 60_000;
    for (let i = 0; i < 16; i += 1) {
      expect(budget.take(), `ping ${i} after the step`).toBe(true);
      now += 25_000;
    }
  });
});
