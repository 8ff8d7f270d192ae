import { afterEach, describe, expect, it, vi } from 'vitest';
import type { WebSocket } from 'uWebSockets.js';
import { Tab, type TabSocketData } from '../../../src/gateway/tab.js';

/** A tab on a socket that records what it is sent and how it is closed. */
function tabExpiringAt(expiresAt: number) {
  const sent: string[] = [];
  const closes: number[] = [];
  const ws = {
    send: (frame: string) => (sent.push(frame), 1),
    cork: (run: () => void) => run(),
    getBufferedAmount: () => 0,
    end: (code: number) => closes.push(code),
  } as unknown as WebSocket<TabSocketData>;
  const data: TabSocketData = {
    identity: { userId: 'ann', tenantId: 'acme', expiresAt },
    connectionId: 'c1',
    upgradedAt: 0,
  };
  const tab = new Tab(ws, data, { maxBackpressureBytes: 1 << 20 }, () => {});
  return { tab, sent, closes };
}

const flushed = (): Promise<void> => new Promise((resolve) => queueMicrotask(resolve));

describe('Tab', () => {
  it('writes to a tab whose token is still valid', async () => {
    const { tab, sent, closes } = tabExpiringAt(Date.now() + 60_000);
    expect(tab.write('{"type":"event"}', 4009)).toBe(true);
    await flushed();
    expect(sent).toEqual(['{"type":"event"}']);
    expect(closes).toEqual([]);
  });

  it('writes nothing to a tab whose token has run out before its timer fired, and closes it with 4001', async () => {
    const { tab, sent, closes } = tabExpiringAt(Date.now() - 1);
    expect(tab.write('{"type":"event"}', 4009)).toBe(false);
    await flushed();
    expect(sent).toEqual([]);
    expect(closes).toEqual([4001]);
    expect(tab.closed).toBe(true);
  });

  describe('handOff', () => {
    afterEach(() => vi.useRealTimers());

    it('closes at once when asked again with no time (a superseded node) while the tab is told to move', async () => {
      vi.useFakeTimers();
      const { tab, sent, closes } = tabExpiringAt(Date.now() + 60_000);
      tab.ready = true;
      const moving = tab.handOff('lifetime', 4101, 5000);
      await vi.advanceTimersByTimeAsync(0);
      expect(sent.map((f) => JSON.parse(f) as unknown)).toEqual([
        { type: 'handoff', reason: 'lifetime', closeInMs: 5000 },
      ]);
      // Nothing more reaches it here: waiting out the handoff would only hold the client on a dead node.
      void tab.handOff('draining', 4100, 0);
      expect(closes).toEqual([4100]);
      await moving;
      expect(vi.getTimerCount()).toBe(0);
    });

    it('says events_missed before closing at once a tab told to move: its client may have moved already', async () => {
      vi.useFakeTimers();
      const { tab, sent, closes } = tabExpiringAt(Date.now() + 60_000);
      tab.ready = true;
      void tab.handOff('draining', 4100, 5000);
      await vi.advanceTimersByTimeAsync(0);
      // Superseded: what was routed here before the new node bound the user is the other process's to
      // read now, and reaches no tab; the moved client takes the close for the end of it.
      void tab.handOff('draining', 4100, 0);
      expect(closes).toEqual([4100]);
      expect(sent.map((f) => (JSON.parse(f) as { code?: string }).code)).toEqual([
        undefined,
        'events_missed',
      ]);
    });

    it('says in closeInMs when the close comes, also when the token expires first', async () => {
      vi.useFakeTimers();
      const { tab, sent, closes } = tabExpiringAt(Date.now() + 2000);
      tab.ready = true;
      void tab.handOff('draining', 4100, 5000);
      await vi.advanceTimersByTimeAsync(0);
      expect(sent.map((f) => JSON.parse(f) as unknown)).toEqual([
        { type: 'handoff', reason: 'draining', closeInMs: 2000 },
      ]);
      await vi.advanceTimersByTimeAsync(2000);
      expect(closes).toEqual([4001]);
    });
  });
});
