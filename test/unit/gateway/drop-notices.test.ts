import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { DropNotices } from '../../../src/gateway/drop-notices.js';

describe('DropNotices', () => {
  beforeEach(() => void vi.useFakeTimers());
  afterEach(() => void vi.useRealTimers());

  it('tells a run of lost deliveries once, by reason (counted only for the log), and every later run again', () => {
    const told: string[] = [];
    const notices = new DropNotices(200, (why, counted) => told.push(`${why} | ${counted}`));
    for (let i = 0; i < 5; i += 1) notices.record('queue_full');
    notices.record('rejected');
    vi.advanceTimersByTime(199);
    expect(told).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(told).toEqual([
      "this node's queue was full and the broker dropped deliveries; this node failed on deliveries | " +
        "this node's queue was full and the broker dropped 5 deliveries; this node failed on 1 delivery",
    ]);
    // Counts start again; a later run gets a notice of its own.
    vi.advanceTimersByTime(10_000);
    notices.record('queue_full');
    vi.advanceTimersByTime(200);
    expect(told).toHaveLength(2);
    expect(told[1]).toBe(
      "this node's queue was full and the broker dropped deliveries | " +
        "this node's queue was full and the broker dropped 1 delivery",
    );
  });

  it('says whether a notice still in its window is for a user: one said for, or every one', () => {
    const notices = new DropNotices(200, () => {});
    expect(notices.pendingFor('u.t1.ann')).toBe(false);
    notices.record('queue_full', new Set(['u.t1.ann']));
    expect(notices.pendingFor('u.t1.ann')).toBe(true);
    expect(notices.pendingFor('u.t1.bob')).toBe(false);
    notices.record('rejected');
    expect(notices.pendingFor('u.t1.bob')).toBe(true);
    vi.advanceTimersByTime(200);
    expect(notices.pendingFor('u.t1.ann')).toBe(false);
  });

  it('tells deliveries dropped for the id map apart from those the broker dropped', () => {
    const told: string[] = [];
    const notices = new DropNotices(5000, (why, counted) => told.push(`${why} | ${counted}`));
    notices.record('id_map_changed');
    notices.record('id_map_changed');
    vi.advanceTimersByTime(4999);
    expect(told).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(told).toEqual([
      'deliveries resolved against ids this node could not take as its own were dropped | ' +
        '2 deliveries resolved against ids this node could not take as its own were dropped',
    ]);
    notices.record('id_map_changed');
    notices.record('rejected');
    vi.advanceTimersByTime(5000);
    expect(told[1]).toBe(
      'this node failed on deliveries; deliveries resolved against ids this node could not take as its own were dropped | ' +
        'this node failed on 1 delivery; 1 delivery resolved against ids this node could not take as its own were dropped',
    );
  });

  it('tells the users the lost deliveries were for, or everyone once one did not say', () => {
    const told: (string[] | undefined)[] = [];
    const notices = new DropNotices(200, (_why, _counted, users) => told.push(users && [...users].sort()));
    notices.record('queue_full', new Set(['u.t1.a']));
    notices.record('queue_full', new Set(['u.t1.b', 'u.t1.a']));
    notices.record('rejected', new Set());
    vi.advanceTimersByTime(200);
    expect(told).toEqual([['u.t1.a', 'u.t1.b']]);
    // A window starts empty again; one delivery that does not say whose it was tells every tab.
    notices.record('queue_full', new Set(['u.t1.c']));
    notices.record('queue_full');
    vi.advanceTimersByTime(200);
    expect(told[1]).toBeUndefined();
    expect(told).toHaveLength(2);
    notices.record('queue_full', new Set(['u.t1.d']));
    vi.advanceTimersByTime(200);
    expect(told[2]).toEqual(['u.t1.d']);
  });

  it('tells nothing once closed, also of what was waiting', () => {
    const told: string[] = [];
    const notices = new DropNotices(200, (why, counted) => told.push(`${why} | ${counted}`));
    notices.record('queue_full');
    notices.close();
    notices.record('rejected');
    vi.advanceTimersByTime(1000);
    expect(told).toEqual([]);
  });
});
