import { describe, expect, it } from 'vitest';
import { DeliveryHistory } from '../../../src/gateway/history.js';

const frame = (bytes: number) => new Uint8Array(bytes);

describe('DeliveryHistory', () => {
  it('replays a user’s frames after an offset, up to the offset the tab was welcomed at', () => {
    const history = new DeliveryHistory('e', 100, 1024);
    const frames = [1, 2, 3, 4].map(() => frame(10));
    frames.forEach((f, i) => history.add('t', history.next('t'), i === 1 ? ['u.t.B'] : ['u.t.A'], f));
    expect(history.since('e', 't', 0, 'u.t.A')).toEqual([frames[0], frames[2], frames[3]]);
    expect(history.since('e', 't', 1, 'u.t.A', 3)).toEqual([frames[2]]);
    expect(history.since('e', 't', 3, 'u.t.A', 3)).toEqual([]);
    expect(history.since('other-node', 't', 1, 'u.t.A')).toBeUndefined();
  });

  it('replays from any offset exactly what a scan of every entry would', () => {
    const history = new DeliveryHistory('e', 1000, 1 << 20);
    const kept: { offset: number; key: string; frame: Uint8Array }[] = [];
    for (let i = 0; i < 60; i += 1) {
      const offset = history.next('t');
      // Not every delivery is kept for these users: offsets in history have gaps.
      if (i % 3 === 2) continue;
      const key = i % 2 === 0 ? 'u.t.A' : 'u.t.B';
      // Each frame its own: a replay of the wrong entries must not compare equal.
      const f = Uint8Array.from([offset]);
      history.add('t', offset, [key], f);
      kept.push({ offset, key, frame: f });
    }
    for (let from = 0; from <= history.offset('t'); from += 1) {
      for (const upTo of [history.offset('t'), Math.min(history.offset('t'), from + 7)]) {
        const expected = kept
          .filter((k) => k.offset > from && k.offset <= upTo && k.key === 'u.t.A')
          .map((k) => k.frame);
        expect(history.since('e', 't', from, 'u.t.A', upTo)).toEqual(expected);
      }
    }
  });

  it('refuses every resume from before a gap the node found, even from the offset just before it', () => {
    const history = new DeliveryHistory('e', 100, 1 << 20);
    history.add('t', history.next('t'), ['u.t.A'], frame(10));
    history.add('t', history.next('t'), ['u.t.A'], frame(10));
    // The gap takes an offset of its own: what came before it may have missed deliveries it never got.
    history.markGap();
    expect(history.offset('t')).toBe(3);
    expect(history.since('e', 't', 1, 'u.t.A')).toBeUndefined();
    expect(history.since('e', 't', 2, 'u.t.A')).toBeUndefined();
    const after = frame(10);
    history.add('t', history.next('t'), ['u.t.A'], after);
    // A tab told of the gap (at its offset) resumes from there.
    expect(history.since('e', 't', 3, 'u.t.A')).toEqual([after]);
    expect(history.since('e', 't', 4, 'u.t.A')).toEqual([]);
  });

  it('marks a gap in the tenants named only: the others still resume across it, their count unmoved', () => {
    const history = new DeliveryHistory('e', 100, 1 << 20);
    history.add('a', history.next('a'), ['u.a.A'], frame(10));
    const kept = frame(10);
    history.add('b', history.next('b'), ['u.b.B'], kept);
    history.markGap(['a']);
    expect(history.offset('a')).toBe(2);
    expect(history.since('e', 'a', 1, 'u.a.A')).toBeUndefined();
    expect(history.offset('b')).toBe(1);
    expect(history.since('e', 'b', 0, 'u.b.B')).toEqual([kept]);
  });

  it('answers that it cannot replay across a frame too large to keep, instead of skipping it', () => {
    const history = new DeliveryHistory('e', 100, 1024);
    history.add('t', history.next('t'), ['u.t.A'], frame(10));
    history.add('t', history.next('t'), ['u.t.A'], frame(2048));
    const after = frame(10);
    history.add('t', history.next('t'), ['u.t.A'], after);
    // Offset 1 was seen; 2 is not kept, so a replay from 1 would silently miss it.
    expect(history.since('e', 't', 1, 'u.t.A')).toBeUndefined();
    expect(history.since('e', 't', 2, 'u.t.A')).toEqual([after]);
  });

  it('keeps entries in offset order when an earlier offset is added late (a claim-checked payload read)', () => {
    const history = new DeliveryHistory('e', 100, 1024);
    const [late, small] = [frame(10), frame(20)];
    const lateOffset = history.next('t');
    history.add('t', history.next('t'), ['u.t.A'], small);
    history.add('t', lateOffset, ['u.t.A'], late);
    expect(history.since('e', 't', 0, 'u.t.A')).toEqual([late, small]);
    expect(history.since('e', 't', 1, 'u.t.A')).toEqual([small]);
  });

  it('refuses a resume from before frames it dropped, even when an older offset is added after them', () => {
    const history = new DeliveryHistory('e', 100, 1024);
    const late = history.next('t'); // 1: a payload still being read
    history.add('t', history.next('t'), ['u.t.A'], frame(10)); // 2
    history.add('t', history.next('t'), ['u.t.A'], frame(2048)); // 3: too large to keep, history starts after it
    history.add('t', late, ['u.t.A'], frame(10));
    // From 0, offsets 2 and 3 would be missing: not a silent gap, an answer that history does not reach.
    expect(history.since('e', 't', 0, 'u.t.A')).toBeUndefined();
    expect(history.since('e', 't', 3, 'u.t.A')).toEqual([]);
  });

  it('says it cannot resume at all when it keeps nothing, unless nothing was missed', () => {
    const history = new DeliveryHistory('e', 0, 1024);
    history.add('t', history.next('t'), ['u.t.A'], frame(10));
    expect(history.since('e', 't', 0, 'u.t.A')).toBeUndefined();
    expect(history.since('e', 't', 1, 'u.t.A')).toEqual([]);
  });

  it('replays nothing kept longer ago than the window: from a cursor that old it cannot resume', () => {
    let now = 0;
    // The same deliveries, in a history with the window and in one without.
    const history = new DeliveryHistory('e', 100, 1 << 20, () => now, 60_000);
    const unbounded = new DeliveryHistory('e', 100, 1 << 20, () => now);
    for (const h of [history, unbounded]) h.add('t', h.next('t'), ['u.t.ann'], frame(1));
    now = 70_000;
    for (const h of [history, unbounded]) h.add('t', h.next('t'), ['u.t.ann'], frame(2));
    now = 100_000;
    // From before the first delivery (kept 100 s ago): a cursor that old is refused, not replayed in part.
    expect(history.since('e', 't', 0, 'u.t.ann')).toBeUndefined();
    // From after it, the second (30 s old) is replayed.
    expect(history.since('e', 't', 1, 'u.t.ann')).toEqual([frame(2)]);
    // Without a window, everything kept.
    expect(unbounded.since('e', 't', 0, 'u.t.ann')).toHaveLength(2);
    // Deliveries to others do not count: bob, whose last event is old, resumes after a blip as usual
    // while ann's old event lies in his span.
    history.add('t', history.next('t'), ['u.t.bob'], frame(3));
    expect(history.since('e', 't', 0, 'u.t.bob')).toEqual([frame(3)]);
    history.close();
  });

  it('lets go of frames older than its maximum age, and answers resumes as it did with them', () => {
    let now = 0;
    const history = new DeliveryHistory('e', 100, 1 << 20, () => now, 60_000);
    const [old, recent] = [frame(1000), frame(2000)];
    history.add('t', history.next('t'), ['u.t.ann'], old);
    now = 50_000;
    history.add('t', history.next('t'), ['u.t.ann'], recent);
    const before = history.heldBytes;
    now = 70_000;
    history.sweep();
    // A quiet node adds nothing that would push the old frame out: the sweep lets it go.
    expect(history.heldBytes).toBe(before - 1000);
    expect(history.since('e', 't', 0, 'u.t.ann')).toBeUndefined();
    expect(history.since('e', 't', 1, 'u.t.ann')).toEqual([recent]);
    now = 200_000;
    history.sweep();
    expect(history.heldBytes).toBe(before - 3000);
    history.close();
    expect(history.heldBytes).toBe(0);
  });

  it('counts recipient lists against its byte bound, not only frames', () => {
    const history = new DeliveryHistory('e', 100, 100 * 1024);
    const keys = Array.from({ length: 1000 }, (_, i) => `u.t.user-${i}`);
    for (let i = 0; i < 3; i += 1) history.add('t', history.next('t'), keys, frame(10));
    // Three 10-byte frames, but a thousand recipients each (about 46 KB of heap a list): the first no
    // longer fits.
    expect(history.since('e', 't', 0, 'u.t.user-7')).toBeUndefined();
    expect(history.since('e', 't', 1, 'u.t.user-7')).toHaveLength(2);
    // Keys of the longest ids (244 characters) cost their length: 300 of them, about 83 KB, leave room for
    // nothing else.
    const long = Array.from({ length: 300 }, (_, i) => `u.t.${String(i).padEnd(120, 'x')}`.padEnd(244, 'y'));
    history.add('t', history.next('t'), long, frame(10));
    expect(history.since('e', 't', 2, long[0] as string)).toBeUndefined();
    expect(history.since('e', 't', 3, long[0] as string)).toHaveLength(1);
  });

  it('forgets the oldest frames past its entry and byte limits, and then says so', () => {
    const history = new DeliveryHistory('e', 2, 1024);
    for (let i = 0; i < 3; i += 1) history.add('t', history.next('t'), ['u.t.A'], frame(10));
    expect(history.since('e', 't', 0, 'u.t.A')).toBeUndefined();
    expect(history.since('e', 't', 1, 'u.t.A')).toHaveLength(2);
  });

  it('counts offsets per tenant: no tenant’s offsets show how much the node delivered to another', () => {
    const history = new DeliveryHistory('e', 3, 1 << 20);
    const [a1, a2, b1] = [frame(10), frame(11), frame(12)];
    history.add('acme', history.next('acme'), ['u.acme.ann'], a1);
    history.add('acme', history.next('acme'), ['u.acme.ann'], a2);
    // Another tenant's first delivery is its offset 1, whatever the node delivered before.
    expect(history.offset('zen')).toBe(0);
    const zenFirst = history.next('zen');
    expect(zenFirst).toBe(1);
    history.add('zen', zenFirst, ['u.zen.ann'], b1);
    // A key of one tenant with an offset of the other never replays across them.
    expect(history.since('e', 'acme', 0, 'u.acme.ann')).toEqual([a1, a2]);
    expect(history.since('e', 'zen', 0, 'u.zen.ann')).toEqual([b1]);
    expect(history.since('e', 'zen', 0, 'u.acme.ann')).toEqual([]);
    // The node's bound evicts the oldest of all tenants, and only that tenant's resumes stop reaching back.
    history.add('zen', history.next('zen'), ['u.zen.ann'], frame(13));
    expect(history.since('e', 'acme', 0, 'u.acme.ann')).toBeUndefined();
    expect(history.since('e', 'acme', 1, 'u.acme.ann')).toEqual([a2]);
    expect(history.since('e', 'zen', 0, 'u.zen.ann')).toHaveLength(2);
    // A gap is every tenant's, each at an offset of its own.
    history.markGap();
    expect([history.offset('acme'), history.offset('zen')]).toEqual([3, 3]);
    expect(history.since('e', 'zen', 2, 'u.zen.ann')).toBeUndefined();
    expect(history.since('e', 'zen', 3, 'u.zen.ann')).toEqual([]);
  });

  it('keeps a late claim-checked entry in its tenant’s order among other tenants’ entries', () => {
    const history = new DeliveryHistory('e', 100, 1 << 20);
    const late = history.next('acme');
    const [b, a2, a1] = [frame(1), frame(2), frame(3)];
    history.add('zen', history.next('zen'), ['u.zen.bo'], b);
    history.add('acme', history.next('acme'), ['u.acme.ann'], a2);
    history.add('acme', late, ['u.acme.ann'], a1);
    expect(history.since('e', 'acme', 0, 'u.acme.ann')).toEqual([a1, a2]);
    expect(history.since('e', 'acme', 1, 'u.acme.ann')).toEqual([a2]);
  });
});
