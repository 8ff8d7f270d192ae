import { describe, expect, it } from 'vitest';
import { SlicedWriter } from '../../../src/gateway/sliced-writer.js';
import type { Tab } from '../../../src/gateway/tab.js';

const MiB = 1024 * 1024;

/** A tab whose socket never sends anything: every written byte stays buffered. */
class StalledTab {
  buffered = 0;
  closed = false;
  closeCode: number | undefined;
  readonly frames: Uint8Array[] = [];

  constructor(private readonly limit: number) {}

  write(frame: Uint8Array): boolean {
    if (this.closed) return false;
    this.frames.push(frame);
    this.buffered += frame.byteLength;
    if (this.buffered > this.limit) {
      this.end(4009);
      return false;
    }
    return true;
  }

  wouldOverflow(pending: number): boolean {
    return !this.closed && this.buffered + pending > this.limit;
  }

  end(code: number): void {
    this.closed = true;
    this.closeCode ??= code;
  }
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('SlicedWriter', () => {
  it('holds large frames back past the slice, in order per tab, and closes a tab whose backlog passes its limit', async () => {
    const tabs = Array.from({ length: 4 }, () => new StalledTab(6 * MiB));
    const writer = new SlicedWriter(() => {});
    const frames = Array.from({ length: 5 }, (_, i) => new Uint8Array(MiB).fill(i));
    for (const frame of frames) writer.write(tabs as unknown as Tab[], frame);

    // One turn writes about 4 MiB of large frames in all: most of the 20 MiB is held back, not written.
    const writtenFirstTurn = tabs.reduce((sum, t) => sum + t.buffered, 0);
    expect(writtenFirstTurn).toBeLessThanOrEqual(5 * MiB);
    for (let i = 0; i < 20; i += 1) await turn();

    for (const tab of tabs) {
      // 5 MiB fits a 6 MiB limit: every frame arrives, in order.
      expect(tab.closed).toBe(false);
      expect(tab.frames.map((f) => f[0])).toEqual([0, 1, 2, 3, 4]);
    }
    // Two more frames each: the second is held back, and with it 7 MiB would be pending against a 6 MiB
    // limit, so the tab is closed as too slow there and then instead of the frame joining a backlog.
    writer.write(tabs as unknown as Tab[], new Uint8Array(MiB));
    writer.write(tabs as unknown as Tab[], new Uint8Array(MiB));
    for (const tab of tabs) {
      expect(tab.closeCode).toBe(4009);
      expect(tab.buffered).toBeLessThanOrEqual(6 * MiB);
    }
  });

  it('writes a small frame at once to a tab with nothing held back', () => {
    const busy = new StalledTab(64 * MiB);
    const idle = new StalledTab(64 * MiB);
    const writer = new SlicedWriter(() => {});
    for (let i = 0; i < 6; i += 1) writer.write([busy as unknown as Tab], new Uint8Array(MiB));
    writer.write([idle as unknown as Tab], new Uint8Array(100));
    expect(idle.frames).toHaveLength(1);
    expect(busy.frames.length).toBeLessThan(6);
  });

  it('spreads a wave of replays of small frames over turns, every turn within the slice', async () => {
    const tabs = Array.from({ length: 20 }, () => new StalledTab(64 * MiB));
    const writer = new SlicedWriter(() => {});
    // 20 tabs resuming ~3.9 MiB of 1 KiB events each: 78 MiB in all.
    const replay = Array.from({ length: 4000 }, (_, i) => new Uint8Array(1024).fill(i % 256));
    for (const tab of tabs) writer.writeAll(tab as unknown as Tab, replay);
    const total = () => tabs.reduce((sum, t) => sum + t.buffered, 0);
    let before = 0;
    const perTurn: number[] = [];
    for (let i = 0; i < 40 && total() < 20 * 4000 * 1024; i += 1) {
      perTurn.push(total() - before);
      before = total();
      await turn();
    }
    perTurn.push(total() - before);
    expect(Math.max(...perTurn)).toBeLessThanOrEqual(4 * MiB + 1024);
    expect(total()).toBe(20 * 4000 * 1024);
    for (const tab of tabs) expect(tab.frames.map((f) => f[0])).toEqual(replay.map((f) => f[0]));
  });

  it('takes held-back tabs in turn: a wave of resuming tabs each gets its first frames within a few turns', async () => {
    const tabs = Array.from({ length: 10 }, () => new StalledTab(64 * MiB));
    const writer = new SlicedWriter(() => {});
    // 8 MiB of replay each, 80 MiB in all: about four frames a turn.
    for (const tab of tabs)
      writer.writeAll(
        tab as unknown as Tab,
        Array.from({ length: 8 }, (_, i) => new Uint8Array(MiB).fill(i)),
      );
    for (let i = 0; i < 3; i += 1) await turn();
    // Drained one tab after the other, the last would wait about 18 turns for its first byte.
    for (const tab of tabs) expect(tab.frames.length).toBeGreaterThan(0);
    for (let i = 0; i < 30; i += 1) await turn();
    for (const tab of tabs) expect(tab.frames.map((f) => f[0])).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  it('lets a tab past its large frame of a broadcast take its small events at once again', async () => {
    const tabs = Array.from({ length: 20 }, () => new StalledTab(64 * MiB));
    const writer = new SlicedWriter(() => {});
    writer.write(tabs as unknown as Tab[], new Uint8Array(MiB).fill(1));
    writer.write(tabs as unknown as Tab[], new Uint8Array(300).fill(2));
    for (let i = 0; i < 8; i += 1) {
      await turn();
      // Whoever has the broadcast has the small event behind it too, and nothing held back.
      for (const tab of tabs.filter((t) => t.frames.length > 0)) {
        expect(tab.frames.map((f) => f[0])).toEqual([1, 2]);
        expect(writer.held(tab as unknown as Tab).bytes).toBe(0);
      }
    }
    for (const tab of tabs) expect(tab.frames).toHaveLength(2);
  });

  it('spreads a replay of small frames over turns, in order, and says what it holds back', async () => {
    const resuming = new StalledTab(64 * MiB);
    const other = new StalledTab(64 * MiB);
    const writer = new SlicedWriter(() => {});
    // 12.5 MiB of 64 KiB frames: each small enough to skip the slice when written live, not in a replay.
    const replay = Array.from({ length: 200 }, (_, i) => new Uint8Array(64 * 1024).fill(i));
    writer.writeAll(resuming as unknown as Tab, replay);
    expect(resuming.buffered).toBeLessThanOrEqual(4 * MiB + 64 * 1024);
    const held = writer.held(resuming as unknown as Tab);
    expect(held).toEqual({ bytes: 200 * 64 * 1024 - resuming.buffered, largest: 64 * 1024 });
    // Another user's small event is not held up behind it.
    writer.write([other as unknown as Tab], new Uint8Array(100));
    expect(other.frames).toHaveLength(1);

    for (let i = 0; i < 10; i += 1) await turn();
    expect(resuming.frames.map((f) => f[0])).toEqual(replay.map((_, i) => i));
    expect(writer.held(resuming as unknown as Tab)).toEqual({ bytes: 0, largest: 0 });
  });

  it('slices a fan-out of a small frame to so many tabs that it passes the slice, and still writes other users’ small events at once', async () => {
    // A 32 KiB event to 2,000 local tabs: 64 MiB of socket writes, as much as a 1 MiB one to 64 tabs.
    const tabs = Array.from({ length: 2000 }, () => new StalledTab(64 * MiB));
    const other = new StalledTab(64 * MiB);
    const writer = new SlicedWriter(() => {});
    writer.write(tabs as unknown as Tab[], new Uint8Array(32 * 1024).fill(1));
    const firstTurn = tabs.reduce((sum, t) => sum + t.buffered, 0);
    expect(firstTurn).toBeLessThanOrEqual(4 * MiB + 32 * 1024);
    // Another user's small event is not held up behind it; the fan-out's own tabs keep their order.
    writer.write([other as unknown as Tab], new Uint8Array(100).fill(9));
    expect(other.frames).toHaveLength(1);
    writer.write(tabs as unknown as Tab[], new Uint8Array(100).fill(2));
    for (let i = 0; i < 40; i += 1) await turn();
    for (const tab of tabs) expect(tab.frames.map((f) => f[0])).toEqual([1, 2]);
  });
});
