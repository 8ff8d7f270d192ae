import roaring from 'roaring';
import { describe, expect, it } from 'vitest';
import { IdMapConflict, OnlineSet } from '../../../src/resolver/online-set.js';

describe('OnlineSet', () => {
  it('refuses a bit it knows for one user being announced for another (the id map changed under it)', () => {
    const online = new OnlineSet('acme');
    online.on('gw-1', 7, 'ann');
    online.on('gw-2', 7, 'ann');
    expect(() => online.on('gw-2', 7, 'bob')).toThrow(IdMapConflict);
    expect(online.keysOf(online.bitmap)).toEqual(['u.acme.ann']);
  });

  it('forgets a user no node holds any more, and keeps one a dead node still holds', () => {
    const online = new OnlineSet('acme');
    for (let i = 0; i < 1000; i += 1) online.on('gw-1', i, `u${i}`);
    online.on('gw-2', 0, 'u0');
    for (let i = 0; i < 1000; i += 1) online.off('gw-1', i);
    // Only u0 is still held (by gw-2): the other 999 are forgotten, not kept for the life of the view.
    expect([...online.bitOf]).toEqual([['u0', 0]]);
    expect([...online.keyOf]).toEqual([[0, 'u.acme.u0']]);
    // A node declared dead keeps its users' mappings (it may only have paused), not counting them.
    online.setDead(new Set(['gw-2']));
    expect(online.bitmap.size).toBe(0);
    expect(online.bitOf.get('u0')).toBe(0);
    // Gone for good: forgotten.
    online.nodeGone('gw-2');
    expect(online.bitOf.size).toBe(0);
    expect(online.keyOf.size).toBe(0);
    // Back online later, under the same bit or another user under a freed one: learned afresh.
    online.on('gw-1', 5, 'u0');
    expect(online.keysOf(online.bitmap)).toEqual(['u.acme.u0']);
  });

  it('keeps a user moved to a new bit under both while any node holds the old one', () => {
    const online = new OnlineSet('acme');
    online.on('gw-1', 5, 'ann');
    online.on('gw-2', 5, 'ann');
    // The id map gave ann bit 9; gw-1 moves her over first.
    online.on('gw-1', 9, 'ann');
    online.off('gw-1', 5);
    expect(online.bitOf.get('ann')).toBe(9);
    expect(online.formerBits.get('ann')).toEqual([5]);
    // gw-1 closes her last tab: bit 9 is held nowhere, and bit 5 (still on gw-2) is hers again.
    online.off('gw-1', 9);
    expect(online.bitOf.get('ann')).toBe(5);
    expect(online.formerBits.has('ann')).toBe(false);
    expect(online.keysOf(online.bitmap)).toEqual(['u.acme.ann']);
    online.off('gw-2', 5);
    expect(online.bitOf.size + online.keyOf.size + online.formerBits.size).toBe(0);
  });

  it('counts no user of a node declared dead, announced before or after it was, until it is live again', () => {
    const online = new OnlineSet('acme');
    online.on('gw-1', 1, 'ann');
    online.on('gw-2', 1, 'ann');
    online.on('gw-2', 2, 'bob');
    online.setDead(new Set(['gw-2']));
    expect(online.bitmap.toArray()).toEqual([1]);
    // An announcement the dead node's log entry still brings (it wrote it before it stopped beating).
    online.on('gw-2', 3, 'cid');
    expect(online.bitmap.toArray()).toEqual([1]);
    // ann leaves the live node: the dead one's copy of her does not keep her counted.
    online.off('gw-1', 1);
    expect(online.bitmap.toArray()).toEqual([]);
    online.setDead(new Set());
    expect(online.bitmap.toArray()).toEqual([1, 2, 3]);
  });

  it('lists the live nodes holding any of a set of bits', () => {
    const online = new OnlineSet('acme');
    online.on('gw-1', 1, 'ann');
    online.on('gw-2', 2, 'bob');
    online.on('gw-3', 3, 'cid');
    const bits = new roaring.RoaringBitmap32([1, 3]);
    expect(online.nodesHolding(bits).sort()).toEqual(['gw-1', 'gw-3']);
    online.setDead(new Set(['gw-3']));
    expect(online.nodesHolding(bits)).toEqual(['gw-1']);
  });
});
