import roaring from 'roaring';
import { describe, expect, it } from 'vitest';
import { isPortableBitmap } from '../../../src/gateway/portable-bitmap.js';

const { RoaringBitmap32 } = roaring;

const portable = (bitmap: InstanceType<typeof RoaringBitmap32>): Buffer => {
  const bytes = bitmap.serialize('portable');
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
};

/** 1 + 5,001 values in the first container: a bitset, with no runs (so no run container either). */
const bitsetOf = (): Buffer => {
  const values = [5];
  for (let v = 10_000; v <= 15_000; v += 1) values.push(v);
  return portable(new RoaringBitmap32(values));
};

describe('isPortableBitmap', () => {
  it('takes what roaring serialises: arrays, bitsets, runs, many containers, none', () => {
    const runs = new RoaringBitmap32([1, 2, 3]);
    runs.addRange(100_000, 180_000);
    runs.runOptimize();
    const many = new RoaringBitmap32();
    for (let c = 0; c < 40; c += 1) many.add(c * 65_536 + 7);
    for (const bitmap of [new RoaringBitmap32(), new RoaringBitmap32([5]), runs, many])
      expect(isPortableBitmap(portable(bitmap))).toBe(true);
    expect(isPortableBitmap(bitsetOf())).toBe(true);
  });

  it('refuses a bitset holding more bits than its header states', () => {
    const bytes = bitsetOf();
    // Cookie, container count, key and cardinality, offset: the bitset's first byte is at 16; bit 6 is unset.
    bytes[16] = (bytes[16] as number) | 0x40;
    expect(isPortableBitmap(bytes)).toBe(false);
  });

  it('refuses arrays out of order, keys out of order, overlapping runs, short or trailing bytes', () => {
    const array = portable(new RoaringBitmap32([1, 2, 3]));
    // Cookie, count, one header, one offset: values from 16.
    const unsorted = Buffer.from(array);
    unsorted.writeUInt16LE(9, 16);
    expect(isPortableBitmap(unsorted)).toBe(false);

    const twoKeys = portable(new RoaringBitmap32([1, 65_537]));
    const sameKey = Buffer.from(twoKeys);
    sameKey.writeUInt16LE(0, 12);
    expect(isPortableBitmap(sameKey)).toBe(false);

    const run = new RoaringBitmap32();
    run.addRange(10, 20);
    run.addRange(30, 40);
    run.runOptimize();
    const runs = portable(run);
    // Run cookie (count in its high half), run flags, one header; no offsets below 4 containers; then the
    // run count and the runs (start, length - 1).
    const overlapping = Buffer.from(runs);
    overlapping.writeUInt16LE(15, 4 + 1 + 4 + 2 + 4);
    expect(isPortableBitmap(runs)).toBe(true);
    expect(isPortableBitmap(overlapping)).toBe(false);

    expect(isPortableBitmap(array.subarray(0, array.length - 1))).toBe(false);
    expect(isPortableBitmap(Buffer.concat([array, Buffer.from([0])]))).toBe(false);
    expect(isPortableBitmap(Buffer.from('not a bitmap'))).toBe(false);
    expect(isPortableBitmap(Buffer.alloc(0))).toBe(false);
  });
});
