import { describe, expect, it } from 'vitest';
import { RecentDeliveries, type Recipient } from '../../../src/gateway/recent-deliveries.js';

const users = (n: number, from = 0): Recipient[] =>
  Array.from({ length: n }, (_, i) => ({ key: `u.acme.user-${from + i}`, bit: from + i }));

describe('RecentDeliveries', () => {
  it('remembers which users an event was written to, per tenant', () => {
    const recent = new RecentDeliveries(1000);
    recent.record('acme', 'e1', users(3));
    expect(recent.delivered('acme', 'e1')?.has({ key: 'u.acme.user-1', bit: 1 })).toBe(true);
    expect(recent.delivered('acme', 'e1')?.has({ key: 'u.acme.user-9', bit: 9 })).toBe(false);
    // The same event id in another tenant is another event.
    expect(recent.delivered('globex', 'e1')).toBeUndefined();
    // A user not yet announced (no bit) is remembered by key.
    recent.record('acme', 'e2', [{ key: 'u.acme.new', bit: undefined }]);
    expect(recent.delivered('acme', 'e2')?.has({ key: 'u.acme.new', bit: undefined })).toBe(true);
  });

  it('keeps hundreds of broadcasts to 20,000 local users within the default bound, not ten', () => {
    const recent = new RecentDeliveries(200_000);
    const everyone = users(20_000);
    for (let i = 0; i < 100; i += 1) recent.record('acme', `broadcast-${i}`, everyone);
    for (const id of ['broadcast-0', 'broadcast-99'])
      expect(recent.delivered('acme', id)?.has({ key: 'u.acme.user-12345', bit: 12_345 })).toBe(true);
  });

  it('forgets the oldest events past its bound', () => {
    const recent = new RecentDeliveries(10);
    for (let i = 0; i < 5; i += 1) recent.record('acme', `e${i}`, users(3, i * 3));
    expect(recent.delivered('acme', 'e0')).toBeUndefined();
    expect(recent.delivered('acme', 'e1')).toBeUndefined();
    expect(recent.delivered('acme', 'e2')).toBeDefined();
    expect(recent.delivered('acme', 'e4')?.has({ key: 'u.acme.user-12', bit: 12 })).toBe(true);
  });
});
