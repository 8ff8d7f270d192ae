import { CloseCode } from '../protocol/close-codes.js';
import type { Tab } from './tab.js';

// Bytes of large frames written to tabs in one turn of the event loop. One 1 MiB payload to 50 local tabs
// is 50 MiB of socket writes, 20-50 ms on the 2-core bench machine; unsliced, every other delivery of the
// node (small events to other users included), its pings and its presence heartbeat waited that long.
const SLICE_BYTES = 4 * 1024 * 1024;
// Frames up to this size are written at once to a tab with nothing queued, whatever the turn has spent.
const SMALL_FRAME_BYTES = 64 * 1024;

/**
 * Writes frames to tabs, at most about SLICE_BYTES of large frames per turn of the event loop; the rest
 * waits for the next turns. Each tab keeps its order: while frames wait for it, later ones queue behind
 * them. A tab with nothing waiting gets a small frame at once, so small events are not held up behind
 * another user's large one.
 */
export class SlicedWriter {
  private readonly waiting = new Map<Tab, Uint8Array[]>();
  /** Bytes of large frames written in this turn. */
  private spent = 0;
  private scheduled = false;
  private readonly nextTurn = (): void => {
    this.scheduled = false;
    this.spent = 0;
    this.drain();
  };

  constructor(private readonly onWritten: (tabs: number) => void) {}

  write(tabs: readonly Tab[], frame: Uint8Array): void {
    const large = frame.byteLength > SMALL_FRAME_BYTES;
    let written = 0;
    for (const tab of tabs) {
      const queue = this.waiting.get(tab);
      if (queue) queue.push(frame);
      else if (!large || this.spent < SLICE_BYTES) written += this.send(tab, frame);
      else this.waiting.set(tab, [frame]);
    }
    if (written > 0) this.onWritten(written);
    if (this.spent > 0 || this.waiting.size > 0) this.schedule();
  }

  private send(tab: Tab, frame: Uint8Array): number {
    if (frame.byteLength > SMALL_FRAME_BYTES) this.spent += frame.byteLength;
    return tab.write(frame, CloseCode.TooSlow) ? 1 : 0;
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.nextTurn);
  }

  private drain(): void {
    let written = 0;
    for (const [tab, queue] of this.waiting) {
      if (this.spent >= SLICE_BYTES) break;
      this.waiting.delete(tab);
      for (const frame of queue) {
        // A closed tab (gone, or too slow) gets nothing more.
        if (this.send(tab, frame) === 0) break;
        written += 1;
      }
    }
    if (written > 0) this.onWritten(written);
    if (this.waiting.size > 0) this.schedule();
  }
}
