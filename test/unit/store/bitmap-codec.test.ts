import { describe, expect, it } from 'vitest';
import { bitsOfRedisBitmap, redisBitmapOf } from '../../../src/store/bitmap-codec.js';

describe('Redis bitmap codec', () => {
  it('reads bit 0 as the most significant bit of the first byte, as SETBIT writes it', () => {
    expect([...bitsOfRedisBitmap(Buffer.from([0x80]))]).toEqual([0]);
    expect([...bitsOfRedisBitmap(Buffer.from([0x01]))]).toEqual([7]);
    expect([...bitsOfRedisBitmap(Buffer.from([0x00, 0x00, 0x00, 0x00, 0x40]))]).toEqual([33]);
  });

  it('round-trips random sparse and dense sets, including lengths that are not a multiple of four', () => {
    for (const [size, density] of [
      [1, 1],
      [37, 0.5],
      [1_000, 0.01],
      [100_003, 0.2],
      [65_536, 1],
    ] as const) {
      const bits = new Set<number>();
      for (let i = 0; i < size; i += 1) if (Math.random() < density) bits.add(i);
      const sorted = [...bits].sort((a, b) => a - b);
      expect([...bitsOfRedisBitmap(redisBitmapOf(sorted))]).toEqual(sorted);
    }
  });

  it('handles an empty bitmap', () => {
    expect(bitsOfRedisBitmap(Buffer.alloc(0)).length).toBe(0);
    expect(bitsOfRedisBitmap(Buffer.alloc(12)).length).toBe(0);
  });
});
