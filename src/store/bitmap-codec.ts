/**
 * Redis bitmaps number bits from the most significant bit of the first byte (SETBIT key 0 1 sets 0x80).
 * Decoding reads 32-bit big-endian words and skips empty ones, so a sparse 125 kB bitmap (1M users) costs
 * one pass over mostly zero words.
 */
export function bitsOfRedisBitmap(buffer: Uint8Array): Uint32Array {
  const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  const whole = buffer.byteLength & ~3;
  let out = new Uint32Array(256);
  let n = 0;
  const push = (bit: number): void => {
    if (n === out.length) {
      const grown = new Uint32Array(out.length * 2);
      grown.set(out);
      out = grown;
    }
    out[n++] = bit;
  };
  for (let offset = 0; offset < whole; offset += 4) {
    let word = view.getUint32(offset);
    while (word !== 0) {
      const lead = Math.clz32(word);
      push(offset * 8 + lead);
      word = (word & ~(0x8000_0000 >>> lead)) >>> 0;
    }
  }
  for (let offset = whole; offset < buffer.byteLength; offset += 1) {
    const byte = buffer[offset] as number;
    for (let bit = 0; bit < 8; bit += 1) if (byte & (0x80 >> bit)) push(offset * 8 + bit);
  }
  return out.subarray(0, n);
}

/** The Redis bitmap with exactly these bits set (tests and benchmarks build fixtures with it). */
export function redisBitmapOf(bits: Iterable<number>): Buffer {
  let max = -1;
  for (const bit of bits) if (bit > max) max = bit;
  const buffer = Buffer.alloc(max < 0 ? 0 : (max >> 3) + 1);
  for (const bit of bits) buffer[bit >> 3] = (buffer[bit >> 3] as number) | (0x80 >> (bit & 7));
  return buffer;
}
