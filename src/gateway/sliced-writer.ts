import { CloseCode } from '../protocol/close-codes.js';
import type { Tab } from './tab.js';

// Bytes of large frames written to tabs in one turn of the event loop. One 1 MiB payload to 50 local tabs
// is 50 MiB of socket writes, 20-50 ms on the 2-core bench machine; unsliced, every other delivery of the
// node (small events to other users included), its pings and its presence heartbeat waited that long.
const SLICE_BYTES = 4 * 1024 * 1024;
// Frames up to this size are written at once to a tab with nothing queued, whatever the turn has spent.
const SMALL_FRAME_BYTES = 64 * 1024;
// Bytes a tab's held-back frames get at a time before the next tab's turn.
const VISIT_BYTES = 64 * 1024;

interface Backlog {
  frames: Uint8Array[];
  bytes: number;
  /** The largest frame ever held here (a tab may be one frame above its limit, see `Tab.wouldOverflow`). */
  largest: number;
}

/**
 * Writes frames to tabs, at most about SLICE_BYTES of large frames per turn of the event loop; the rest waits
 * for the next turns. Each tab keeps its order: while frames wait for it, later ones queue behind them. A tab
 * with nothing waiting gets a small frame at once, so small events are not held up behind another user's
 * large one (a small frame whose own fan-out passes the slice is sliced too). Held-back frames count against
 * the tab's backpressure limit: a tab whose backlog passes it is closed as too slow (4009), so the backlog is
 * bounded by tabs × that limit.
 */
export class SlicedWriter {
  private readonly waiting = new Map<Tab, Backlog>();
  /** Bytes of large frames written in this turn. */
  private spent = 0;
  private scheduled = false;
  private readonly nextTurn = (): void => {
    this.scheduled = false;
    this.spent = 0;
    this.drain();
  };

  constructor(private readonly onWritten: (tabs: number) => void) {}

  /**
   * One frame to tabs. A small frame goes at once to each tab with nothing held back, unless the fan-out as
   * a whole passes the slice: a 32 KiB event to 2,000 local tabs is 64 MiB of socket writes, as much as a
   * 1 MiB one to 64 tabs, and counts against the slice as that one does.
   */
  write(tabs: readonly Tab[], frame: Uint8Array): void {
    const charged = frame.byteLength * tabs.length > SLICE_BYTES;
    let written = 0;
    for (const tab of tabs) written += this.put(tab, frame, charged);
    this.wrote(written);
  }

  /**
   * Writes a run of frames to one tab (a resume's replay), in order behind whatever waits for it. Every
   * frame counts against the turn's slice, small ones too: a replay of thousands of small events is
   * megabytes all the same.
   */
  writeAll(tab: Tab, frames: readonly Uint8Array[]): void {
    let written = 0;
    for (const frame of frames) written += this.put(tab, frame, true);
    this.wrote(written);
  }

  /**
   * One frame to one tab: behind its backlog if it has one; else written now, unless it counts against a
   * slice already spent (a large frame, or any `charged` one), when it starts a backlog. 1 if written.
   */
  private put(tab: Tab, frame: Uint8Array, charged: boolean): number {
    const backlog = this.waiting.get(tab);
    if (backlog) this.hold(tab, backlog, frame);
    else if ((!charged && frame.byteLength <= SMALL_FRAME_BYTES) || this.spent < SLICE_BYTES)
      return this.send(tab, frame, charged);
    else this.hold(tab, { frames: [], bytes: 0, largest: 0 }, frame);
    return 0;
  }

  private wrote(written: number): void {
    if (written > 0) this.onWritten(written);
    if (this.spent > 0 || this.waiting.size > 0) this.schedule();
  }

  /** What is held back for a tab, not yet in its socket: bytes, and the largest frame among them. */
  held(tab: Tab): { bytes: number; largest: number } {
    const backlog = this.waiting.get(tab);
    return backlog ? { bytes: backlog.bytes, largest: backlog.largest } : { bytes: 0, largest: 0 };
  }

  private hold(tab: Tab, backlog: Backlog, frame: Uint8Array): void {
    if (tab.closed) return;
    const largest = Math.max(backlog.largest, frame.byteLength);
    if (tab.wouldOverflow(backlog.bytes + frame.byteLength, largest)) {
      this.waiting.delete(tab);
      tab.end(CloseCode.TooSlow, 'too slow');
      return;
    }
    backlog.frames.push(frame);
    backlog.bytes += frame.byteLength;
    backlog.largest = largest;
    this.waiting.set(tab, backlog);
  }

  /** `charged`: counts against the slice whatever its size (a replay's frames, and every held-back one). */
  private send(tab: Tab, frame: Uint8Array, charged = false): number {
    if (charged || frame.byteLength > SMALL_FRAME_BYTES) this.spent += frame.byteLength;
    return tab.write(frame, CloseCode.TooSlow) ? 1 : 0;
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.nextTurn);
  }

  /**
   * Writes what is held back, tab by tab in turn, about VISIT_BYTES (at least one frame) at each visit: a
   * tab visited goes to the back of the line, so each of a wave of resuming tabs gets its first frames
   * within a few turns instead of waiting for every tab ahead of it to be drained whole (and overflowing
   * meanwhile).
   */
  private drain(): void {
    let written = 0;
    // One iterator for the whole drain: it visits a tab set again at the back, and skips no hole left by
    // the deletes (a fresh iterator per visit would, costing time in the number of tabs waiting).
    for (const [tab, backlog] of this.waiting) {
      if (this.spent >= SLICE_BYTES) break;
      this.waiting.delete(tab);
      let visit = 0;
      let open = true;
      // A remainder of at most VISIT_BYTES is finished at once, whatever the turn has spent: a tab past
      // its large frame leaves the line, and its next small events are written straight away again.
      while (
        open &&
        backlog.frames.length > 0 &&
        (backlog.bytes <= VISIT_BYTES || (visit < VISIT_BYTES && this.spent < SLICE_BYTES))
      ) {
        const frame = backlog.frames.shift() as Uint8Array;
        backlog.bytes -= frame.byteLength;
        visit += frame.byteLength;
        // Small frames count here too: held back, they are work deferred from earlier turns (a replay's
        // thousands of small events, say). A closed tab (gone, or too slow) gets nothing more.
        if (this.send(tab, frame, true) === 1) written += 1;
        else open = false;
      }
      if (open && backlog.frames.length > 0) this.waiting.set(tab, backlog);
    }
    if (written > 0) this.onWritten(written);
    if (this.waiting.size > 0) this.schedule();
  }
}
