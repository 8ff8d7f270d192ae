import { afterEach, describe, expect, it, vi } from 'vitest';
import { fullJitterDelay, RetrySchedule } from '../../../src/shared/backoff.js';

/** Just under 1: the largest draw `Math.random` can make. */
const TOP = 1 - Number.EPSILON;

describe('fullJitterDelay', () => {
  it('draws from zero up to, never reaching, base·2^(attempt−1), capped', () => {
    const lowest = (attempt: number) => fullJitterDelay(attempt, 100, 1000, () => 0);
    const highest = (attempt: number) => fullJitterDelay(attempt, 100, 1000, () => TOP);
    expect([1, 2, 5, 30].map(lowest)).toEqual([0, 0, 0, 0]);
    // Doubling from the base until the cap, then the cap for good (however many attempts).
    expect([1, 2, 3, 4, 5, 6, 30, 1000].map(highest)).toEqual([99, 199, 399, 799, 999, 999, 999, 999]);
    // An attempt numbered 0 (or less) is the first.
    expect([0, -3].map(highest)).toEqual([99, 99]);
    expect(fullJitterDelay(3, 100, 1000, () => 0.5)).toBe(200);
  });

  it('gives whole milliseconds within the bound with Math.random, spread over it', () => {
    const draws = Array.from({ length: 2000 }, () => fullJitterDelay(4, 100, 250));
    for (const d of draws) {
      expect(Number.isInteger(d)).toBe(true);
      expect(d).toBeGreaterThanOrEqual(0);
      expect(d).toBeLessThan(250);
    }
    // Uniform over [0, 250): each half holds about a thousand (a thousand ± 150 is over six sigma).
    const low = draws.filter((d) => d < 125).length;
    expect(low).toBeGreaterThan(850);
    expect(low).toBeLessThan(1150);
  });
});

describe('RetrySchedule', () => {
  afterEach(() => void vi.useRealTimers());

  it('waits at least its base and less than base + the jitter bound, one retry pending at a time', () => {
    vi.useFakeTimers();
    vi.spyOn(Math, 'random').mockReturnValue(TOP);
    try {
      const ran: number[] = [];
      const schedule = new RetrySchedule(100, 300);
      expect(schedule.schedule((n) => ran.push(n))).toBe(true);
      expect(schedule.schedule((n) => ran.push(n))).toBe(false);
      vi.advanceTimersByTime(198);
      expect(ran).toEqual([]);
      vi.advanceTimersByTime(1);
      expect(ran).toEqual([1]);
      // The third: 100 + at most min(300, 400) − 1.
      schedule.schedule((n) => ran.push(n));
      vi.advanceTimersByTime(299);
      schedule.schedule((n) => ran.push(n));
      vi.advanceTimersByTime(398);
      expect(ran).toEqual([1, 2]);
      vi.advanceTimersByTime(1);
      expect(ran).toEqual([1, 2, 3]);
      // After a success the next retry is the first again.
      schedule.reset();
      schedule.schedule((n) => ran.push(n));
      vi.advanceTimersByTime(199);
      expect(ran).toEqual([1, 2, 3, 1]);
    } finally {
      vi.restoreAllMocks();
    }
  });
});
