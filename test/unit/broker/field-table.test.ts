import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { fieldTableBytes } from '../../../src/broker/field-table.js';

// amqplib's own encoder (not among its package exports): the bound is checked against what it writes.
const { encodeTable } = createRequire(import.meta.url)('../../../node_modules/amqplib/lib/codec.js') as {
  encodeTable(buffer: Buffer, table: unknown, offset: number): number;
};

const encoded = (table: Record<string, unknown>): number => encodeTable(Buffer.alloc(1 << 20), table, 0);

describe('fieldTableBytes', () => {
  const tables: Record<string, Record<string, unknown>> = {
    empty: {},
    strings: { a: 'x', 'ünïcode-kéy': 'välue ✓ 🙂', long: 'y'.repeat(70_000) },
    numbers: { byte: 1, short: 1000, int: 100_000, long: 2 ** 40, double: 1.5, huge: 2 ** 64, negative: -5 },
    others: { yes: true, no: false, nothing: null, skipped: undefined, bytes: Buffer.alloc(300) },
    nested: { list: [1, 'two', [3, { four: 4 }], null], table: { inner: { deeper: 'x' } } },
    typed: {
      at: { '!': 'timestamp', value: 1_700_000_000 },
      dec: { '!': 'decimal', value: { places: 2, digits: 5 } },
    },
  };
  for (const [name, table] of Object.entries(tables)) {
    it(`is at least what amqplib encodes: ${name}`, () => {
      expect(fieldTableBytes(table)).toBeGreaterThanOrEqual(encoded(table));
      // A bound close enough to be of use: a few bytes per number at most.
      expect(fieldTableBytes(table)).toBeLessThanOrEqual(encoded(table) + 8 * 16);
    });
  }
});
