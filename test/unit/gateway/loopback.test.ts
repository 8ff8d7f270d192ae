import { describe, expect, it } from 'vitest';
import { isLoopback } from '../../../src/gateway/demo/demo-routes.js';

describe('isLoopback (the dev endpoints answer only this machine)', () => {
  it('accepts loopback addresses in every form uWS may give them', () => {
    for (const a of [
      '127.0.0.1',
      '127.1.2.3',
      '::1',
      '0000:0000:0000:0000:0000:0000:0000:0001',
      '::ffff:127.0.0.1',
      '0000:0000:0000:0000:0000:ffff:7f00:0001',
    ])
      expect(isLoopback(a), a).toBe(true);
  });

  it('refuses every other address', () => {
    for (const a of [
      '192.0.2.2',
      '10.0.0.1',
      '::ffff:10.0.0.1',
      'fd00::2',
      '::',
      '0000:0000:0000:0000:0000:ffff:0a00:0001',
      '',
      'localhost',
    ])
      expect(isLoopback(a), a).toBe(false);
  });
});
