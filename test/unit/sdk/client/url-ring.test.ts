import { describe, expect, it } from 'vitest';
import { UrlRing } from '../../../../src/sdk/client/url-ring.js';
import { Rng } from '../../../support/seeded-rng.js';

describe('UrlRing', () => {
  it('starts a list at a random entry and moves to another one, at random', () => {
    const draws = [0.5, 0, 0.99, 0.5];
    const ring = new UrlRing(['ws://a', 'ws://b', 'ws://c'], () => draws.shift() ?? 0);
    const seen = [ring.current()];
    for (let i = 0; i < 3; i += 1) {
      ring.advance();
      seen.push(ring.current());
    }
    expect(seen).toEqual(['ws://b', 'ws://c', 'ws://b', 'ws://a']);
  });

  it('spreads the browsers of a draining node over the others: a rolling restart leaves no node with them all', () => {
    const nodes = ['ws://a', 'ws://b', 'ws://c'];
    const rng = new Rng(7);
    const rings = Array.from({ length: 300 }, () => new UrlRing(nodes, () => rng.next()));
    // Each node in turn drains (4100): its browsers move on, and it comes back empty.
    for (const node of nodes) for (const ring of rings) if (ring.current() === node) ring.advance();
    const share = (node: string): number => rings.filter((r) => r.current() === node).length / rings.length;
    expect(Math.max(...nodes.map(share))).toBeLessThan(0.75);
    // Never back to the node it left.
    for (const ring of rings) {
      const before = ring.current();
      ring.advance();
      expect(ring.current()).not.toBe(before);
    }
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
