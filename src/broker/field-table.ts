/**
 * At most how many bytes amqplib encodes `table` (message headers) into: for a copy of a message whose
 * headers came from another client, before publishing it. A header frame over the negotiated frame size
 * makes the broker close the whole connection, and amqplib throws on a table over its 64 KiB
 * encoding buffer. An upper bound: a number counts as the widest integer it could be written as.
 */
export function fieldTableBytes(table: Readonly<Record<string, unknown>>): number {
  let bytes = 4;
  for (const [key, value] of Object.entries(table)) {
    if (value !== undefined) bytes += 1 + Buffer.byteLength(key) + fieldBytes(value);
  }
  return bytes;
}

function fieldBytes(value: unknown): number {
  // One byte of type tag before every value.
  if (typeof value === 'string') return 1 + 4 + Buffer.byteLength(value);
  if (typeof value === 'number' || typeof value === 'bigint') return 1 + 8;
  if (typeof value === 'boolean' || value === null || value === undefined) return 1 + 1;
  if (Buffer.isBuffer(value)) return 1 + 4 + value.length;
  if (Array.isArray(value)) return 1 + 4 + value.reduce((sum: number, v) => sum + fieldBytes(v), 0);
  if (typeof value === 'object') {
    // amqplib's typed value (`{ '!': 'timestamp', value }`, a decimal): its own value, at most that wide.
    if (Object.hasOwn(value, '!')) {
      const inner = (value as { value?: unknown }).value;
      return typeof inner === 'string' ? 1 + 4 + Buffer.byteLength(inner) : 1 + 8;
    }
    return 1 + fieldTableBytes(value as Record<string, unknown>);
  }
  return 1 + 8;
}
