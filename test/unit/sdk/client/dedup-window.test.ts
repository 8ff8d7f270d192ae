import { describe, expect, it } from 'vitest';
import { DedupWindow } from '../../../../src/sdk/client/dedup-window.js';

describe('DedupWindow', () => {
  it('admits an id once', () => {
    const seen = new DedupWindow(10);
    expect(seen.admit('a')).toBe(true);
    expect(seen.admit('b')).toBe(true);
    expect(seen.admit('a')).toBe(false);
    expect(seen.admit('b')).toBe(false);
  });

  it('stays bounded: past the capacity the oldest id is forgotten first', () => {
    const seen = new DedupWindow(3);
    for (const id of ['a', 'b', 'c', 'd']) seen.admit(id);
    expect(seen.size).toBe(3);
    expect(seen.admit('d')).toBe(false);
    expect(seen.admit('b')).toBe(false);
    expect(seen.admit('a')).toBe(true);
  });

  it('holds at most `capacity` ids however many pass through', () => {
    const seen = new DedupWindow(100);
    for (let i = 0; i < 10_000; i += 1) seen.admit(`evt_${i}`);
    expect(seen.size).toBe(100);
    expect(seen.admit('evt_9999')).toBe(false);
    expect(seen.admit('evt_9899')).toBe(true);
  });

  it('refuses a capacity that is not a positive integer', () => {
    expect(() => new DedupWindow(0)).toThrow(RangeError);
    expect(() => new DedupWindow(1.5)).toThrow(RangeError);
  });
});
