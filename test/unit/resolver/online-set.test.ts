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
