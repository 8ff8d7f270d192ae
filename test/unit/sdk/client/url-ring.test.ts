import { describe, expect, it } from 'vitest';
import { UrlRing } from '../../../../src/sdk/client/url-ring.js';

describe('UrlRing', () => {
  it('starts a list at a random entry and walks it round', () => {
    const ring = new UrlRing(['ws://a', 'ws://b', 'ws://c'], () => 0.5);
    const seen = [ring.current()];
    for (let i = 0; i < 3; i += 1) {
      ring.advance();
      seen.push(ring.current());
    }
    expect(seen).toEqual(['ws://b', 'ws://c', 'ws://a', 'ws://b']);
  });

  it('keeps a single URL and calls a function for every attempt', () => {
    const single = new UrlRing('ws://lb');
    single.advance();
    expect(single.current()).toBe('ws://lb');
    let n = 0;
    const fn = new UrlRing(() => `ws://n${++n}`);
    expect([fn.current(), fn.current()]).toEqual(['ws://n1', 'ws://n2']);
  });

  it('refuses an empty list', () => {
    expect(() => new UrlRing([])).toThrow(RangeError);
  });
});
