import { describe, expect, it } from 'vitest';
import { CloseCode } from '../../../../src/protocol/close-codes.js';
import {
  ABNORMAL_CLOSURE,
  fullJitter,
  planReconnect,
  type CloseFacts,
  type ReconnectOptions,
} from '../../../../src/sdk/client/reconnect-policy.js';

const options: ReconnectOptions = { baseMs: 500, capMs: 30_000, stableMs: 10_000 };
const lowest = () => 0;
const highest = () => 0.999_999;

/** A connection that was welcomed and lived long enough to count as healthy. */
const healthy = (code: number): CloseFacts => ({
  code,
  welcomed: true,
  uptimeMs: 60_000,
  attempt: 7,
  failuresBeforeWelcome: 0,
});

/** An attempt that never got its welcome (refused, HTTP 401/503, network). */
const failed = (attempt: number, failuresBeforeWelcome: number): CloseFacts => ({
  code: ABNORMAL_CLOSURE,
  welcomed: false,
  uptimeMs: 0,
  attempt,
  failuresBeforeWelcome,
});

describe('fullJitter', () => {
  it('draws from [0, min(cap, base·2^(attempt-1))) and never beyond the cap', () => {
    expect(fullJitter(1, 500, 30_000, lowest)).toBe(0);
    expect(fullJitter(1, 500, 30_000, highest)).toBe(499);
    expect(fullJitter(3, 500, 30_000, highest)).toBe(1999);
    expect(fullJitter(40, 500, 30_000, highest)).toBe(29_999);
  });
});

describe('planReconnect: close codes', () => {
  it.each([CloseCode.Draining, CloseCode.LifetimeReached])(
    '%i after a healthy connection: promptly (within one base window), to the next URL, same token',
    (code) => {
      const plan = planReconnect(healthy(code), options, highest);
      expect(plan).toMatchObject({ refreshToken: false, nextUrl: true, attempt: 1 });
      expect(plan.delayMs).toBeLessThan(options.baseMs);
    },
  );

  it('4001 fetches a new token before retrying', () => {
    const plan = planReconnect(healthy(CloseCode.Unauthorized), options, highest);
    expect(plan.refreshToken).toBe(true);
    expect(plan.delayMs).toBeLessThan(options.baseMs);
  });

  it.each([CloseCode.TooSlow, CloseCode.RateLimited, CloseCode.MessageTooBig, 1013])(
    '%i backs off: even the luckiest draw waits longer than any prompt reconnect',
    (code) => {
      const backoff = planReconnect(healthy(code), options, lowest);
      const prompt = planReconnect(healthy(CloseCode.Draining), options, highest);
      expect(backoff.delayMs).toBeGreaterThan(prompt.delayMs);
      expect(backoff.delayMs).toBeGreaterThanOrEqual(4 * options.baseMs);
      expect(backoff.refreshToken).toBe(false);
    },
  );

  it('an established connection that dropped (1006) reconnects to the same URL with the same token', () => {
    const plan = planReconnect(healthy(ABNORMAL_CLOSURE), options, highest);
    expect(plan).toMatchObject({ refreshToken: false, nextUrl: false });
    expect(plan.delayMs).toBeLessThan(options.baseMs);
  });
});

describe('planReconnect: failures before welcome (how a browser sees HTTP 401)', () => {
  it('tries the next URL at once, and suspects the token from the second failure in a row', () => {
    const first = planReconnect(failed(0, 0), options, lowest);
    expect(first).toMatchObject({ refreshToken: false, nextUrl: true, failuresBeforeWelcome: 1 });
    const second = planReconnect(failed(first.attempt, first.failuresBeforeWelcome), options, lowest);
    expect(second).toMatchObject({ refreshToken: true, failuresBeforeWelcome: 2 });
  });

  it('a welcome resets the failure count', () => {
    const plan = planReconnect({ ...healthy(ABNORMAL_CLOSURE), failuresBeforeWelcome: 5 }, options, lowest);
    expect(plan.failuresBeforeWelcome).toBe(0);
  });
});

describe('planReconnect: no reconnect storm', () => {
  it('a node that welcomes and closes at once sees the window double each time, up to the cap', () => {
    let facts: CloseFacts = { ...healthy(CloseCode.Draining), uptimeMs: 50 };
    facts.attempt = 0;
    const windows: number[] = [];
    for (let i = 0; i < 12; i += 1) {
      const plan = planReconnect(facts, options, highest);
      windows.push(plan.delayMs + 1);
      facts = { ...facts, attempt: plan.attempt };
    }
    expect(windows.slice(0, 4)).toEqual([500, 1000, 2000, 4000]);
    expect(Math.max(...windows)).toBe(options.capMs);
    expect(windows.at(-1)).toBe(options.capMs);
  });

  it('keeps failing attempts apart however long it goes on (cap, never zero on average)', () => {
    let facts = failed(0, 0);
    let total = 0;
    const n = 50;
    for (let i = 0; i < n; i += 1) {
      const plan = planReconnect(facts, options, () => 0.5);
      expect(plan.delayMs).toBeLessThanOrEqual(options.capMs);
      total += plan.delayMs;
      facts = failed(plan.attempt, plan.failuresBeforeWelcome);
    }
    // Fifty failures in a row are spread over more than ten minutes, not fired in a burst.
    expect(total).toBeGreaterThan(10 * 60_000);
  });

  it('spreads a crowd that lost the same node over the whole window', () => {
    let seed = 42;
    const random = () => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return seed / 2 ** 31;
    };
    const delays = Array.from({ length: 1000 }, () => planReconnect(failed(3, 0), options, random).delayMs);
    const window = options.baseMs * 2 ** 3;
    const buckets = [0, 0, 0, 0];
    for (const d of delays) buckets[Math.min(3, Math.floor((d / window) * 4))]! += 1;
    for (const count of buckets) expect(count).toBeGreaterThan(150);
  });
});
