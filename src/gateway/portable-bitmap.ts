/**
 * The roaring portable format (RoaringFormatSpec) as CRoaring writes it: a cookie, the containers' keys and
 * cardinalities, and the containers (arrays of up to 4,096 sorted 16-bit values, 8 KiB bitsets, or runs).
 */
const COOKIE_RUNS = 12347;
const COOKIE_NO_RUNS = 12346;
/** Containers of a cookie with runs carry offsets from this many on; without runs, always. */
const OFFSETS_FROM = 4;
const ARRAY_MAX = 4096;
const BITSET_BYTES = 8192;

/** Bits set in each 16-bit value. */
const BITS_IN_16 = new Uint8Array(1 << 16);
for (let v = 1; v < 1 << 16; v += 1) BITS_IN_16[v] = (BITS_IN_16[v >> 1] as number) + (v & 1);

/** A bitset's words, copied here when they are not 4-byte aligned in the message. */
const scratch = new Uint32Array(BITSET_BYTES / 4);

/**
 * Bits set in the 8 KiB bitset at `at`, counted by 32-bit words (byte order does not change a count), 16
 * bits at a time: about 8 µs a container, where reading each word through a DataView took 12.
 */
function bitsetCount(bytes: Uint8Array, at: number): number {
  const offset = bytes.byteOffset + at;
  let words: Uint32Array;
  if (offset % 4 === 0) words = new Uint32Array(bytes.buffer, offset, BITSET_BYTES / 4);
  else {
    new Uint8Array(scratch.buffer).set(bytes.subarray(at, at + BITSET_BYTES));
    words = scratch;
  }
  let count = 0;
  for (let i = 0; i < words.length; i += 1) {
    const word = words[i] as number;
    count += (BITS_IN_16[word & 0xffff] as number) + (BITS_IN_16[word >>> 16] as number);
  }
  return count;
}

/**
 * Whether `bytes` is a well-formed portable roaring bitmap, checked as CRoaring's own validation does
 * (keys increasing; arrays strictly increasing; a bitset's bits as many as its stated cardinality; runs
 * ascending, apart and within 16 bits), and nothing after it. CRoaring's deserialisation checks only that
 * the bytes are long enough and trusts the rest (it leaves validation to the caller): a bitset holding
 * more bits than its header states deserialises, and listing its bits then writes past the array sized
 * by that header, corrupting the process's memory. Never throws.
 */
export function isPortableBitmap(bytes: Uint8Array): boolean {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const take = (n: number): number | undefined => {
    if (at + n > bytes.byteLength) return undefined;
    const from = at;
    at += n;
    return from;
  };
  const cookieAt = take(4);
  if (cookieAt === undefined) return false;
  const cookie = view.getUint32(cookieAt, true);
  const runs = (cookie & 0xffff) === COOKIE_RUNS;
  let size: number;
  if (runs) size = (cookie >>> 16) + 1;
  else if (cookie === COOKIE_NO_RUNS) {
    const sizeAt = take(4);
    if (sizeAt === undefined) return false;
    size = view.getUint32(sizeAt, true);
  } else return false;
  if (size > 1 << 16) return false;
  const runFlags = runs ? take(Math.ceil(size / 8)) : undefined;
  if (runs && runFlags === undefined) return false;
  const headers = take(4 * size);
  if (headers === undefined) return false;
  if ((!runs || size >= OFFSETS_FROM) && take(4 * size) === undefined) return false;
  let previousKey = -1;
  for (let k = 0; k < size; k += 1) {
    const key = view.getUint16(headers + 4 * k, true);
    if (key <= previousKey) return false;
    previousKey = key;
    const cardinality = view.getUint16(headers + 4 * k + 2, true) + 1;
    const isRun = runFlags !== undefined && ((bytes[runFlags + (k >> 3)] as number) & (1 << (k & 7))) !== 0;
    if (isRun) {
      const countAt = take(2);
      if (countAt === undefined) return false;
      const count = view.getUint16(countAt, true);
      const runsAt = take(4 * count);
      if (count === 0 || runsAt === undefined) return false;
      let lastEnd = 0;
      for (let r = 0; r < count; r += 1) {
        const start = view.getUint16(runsAt + 4 * r, true);
        const end = start + view.getUint16(runsAt + 4 * r + 2, true) + 1;
        if (end > 1 << 16 || start < lastEnd || (start === lastEnd && lastEnd !== 0)) return false;
        lastEnd = end;
      }
    } else if (cardinality > ARRAY_MAX) {
      const bitsAt = take(BITSET_BYTES);
      if (bitsAt === undefined) return false;
      if (bitsetCount(bytes, bitsAt) !== cardinality) return false;
    } else {
      const valuesAt = take(2 * cardinality);
      if (valuesAt === undefined) return false;
      let previous = -1;
      for (let i = 0; i < cardinality; i += 1) {
        const value = view.getUint16(valuesAt + 2 * i, true);
        if (value <= previous) return false;
        previous = value;
      }
    }
  }
  return at === bytes.byteLength;
}
