import { describe, expect, it } from 'vitest';
import roaring from 'roaring';
import { chunkBits, chunkKeys } from '../../../src/resolver/delivery-publisher.js';

const keys = (n: number): string[] => Array.from({ length: n }, (_, i) => `u.acme.user-${i}`);

/** Header bytes of a chunk's CC list as amqplib encodes it: a type byte and a 4-byte length per entry. */
const ccBytes = (chunk: string[]): number => chunk.slice(1).reduce((sum, k) => sum + 5 + k.length, 0);

describe('chunkKeys', () => {
  it('keeps every recipient exactly once, in order', () => {
    const all = keys(5000);
    expect(chunkKeys(all, 65_536).flat()).toEqual(all);
    expect(chunkKeys(all, 65_536, 7).flat()).toEqual(all);
  });

  it('fits each CC list in the header budget, less the room kept for other headers', () => {
    const chunks = chunkKeys(keys(5000), 16_384);
    expect(chunks.length).toBeGreaterThan(1);
    for (const chunk of chunks) expect(ccBytes(chunk)).toBeLessThanOrEqual(16_384 - 1024);
    // Chunks are filled: the next key would not have fitted.
    const first = chunks[0] ?? [];
    const next = chunks[1]?.[0] ?? '';
    expect(ccBytes([...first, next])).toBeGreaterThan(16_384 - 1024);
  });

  it('caps the recipients per message; one per message when the cap is 1', () => {
    const chunks = chunkKeys(keys(2500), 1_000_000, 1000);
    expect(chunks.map((c) => c.length)).toEqual([1000, 1000, 500]);
    expect(chunkKeys(keys(3), 65_536, 1)).toEqual([['u.acme.user-0'], ['u.acme.user-1'], ['u.acme.user-2']]);
  });

  it('sends a single recipient with no CC at all', () => {
    expect(chunkKeys(['u.acme.ann'], 65_536)).toEqual([['u.acme.ann']]);
    expect(chunkKeys([], 65_536)).toEqual([]);
  });
});

describe('chunkBits', () => {
  const { RoaringBitmap32 } = roaring;
  const size = (b: InstanceType<typeof RoaringBitmap32>) => b.getSerializationSizeInBytes('portable');
  const spread = (n: number) => new RoaringBitmap32(Array.from({ length: n }, (_, i) => i * 977));

  it('returns the bitmap itself when it fits', () => {
    const bits = spread(100);
    expect(chunkBits(bits, 65_536)).toEqual([bits]);
    expect(chunkBits(bits, 65_536)[0]).toBe(bits);
  });

  it('splits into pieces that each fit the budget and together hold every bit once', () => {
    const bits = spread(20_000);
    expect(size(bits)).toBeGreaterThan(16_384);
    const chunks = chunkBits(bits, 16_384);
    expect(chunks.length).toBeGreaterThan(1);
    for (const chunk of chunks) expect(size(chunk)).toBeLessThanOrEqual(16_384);
    expect(chunks.reduce((n, c) => n + c.size, 0)).toBe(bits.size);
    expect(RoaringBitmap32.orMany(chunks).isEqual(bits)).toBe(true);
  });

  it('honours a count limit, down to one recipient per message', () => {
    const bits = spread(2500);
    const chunks = chunkBits(bits, 1_000_000, 1000);
    expect(chunks.map((c) => c.size)).toEqual([834, 834, 832]);
    expect(chunkBits(spread(3), 65_536, 1).map((c) => c.toArray())).toEqual([[0], [977], [1954]]);
  });
});
