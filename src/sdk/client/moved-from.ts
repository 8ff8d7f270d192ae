import { CloseCode } from '../../protocol/close-codes.js';
import { FrameErrorCode, type ServerFrame } from '../../protocol/frames.js';
import { readFrame } from './read-frame.js';

type Timer = ReturnType<typeof setTimeout>;

/** Ids remembered per connection while connections moved from are kept: a bound, the timer is the other. */
const MAX_IDS = 10_000;

interface Left {
  /** Closes it if nothing else did first. */
  timer: Timer;
  /** Ids of the events it brought since the move. */
  ids: Set<string>;
}

/**
 * The connections a link moved from (`handoff`). Each is kept for what its node routed before the new node
 * bound the user (it reaches the old connection only), until it brings an event the current connection
 * brought too: routed after that bind, so its node has passed every event routed before it (a node writes
 * a user's events in the order they were routed). A quiet user has no such event: the connection is kept
 * until its node closes it (`closeInMs`), or a timer does. A fixed overlap would drop what a node behind
 * its queue, or reading a claim-checked payload, still had on its way.
 */
export class MovedFrom {
  private readonly left = new Map<WebSocket, Left>();
  /** Ids of the events the current connection brought since the last move. */
  private readonly current = new Set<string>();

  /**
   * `frame`: what a connection moved from brings that still counts, without its offsets. `settled`: the
   * last one kept was let go.
   */
  constructor(
    private readonly frame: (frame: ServerFrame) => void,
    private readonly settled: () => void,
  ) {}

  /** Whether a connection moved from is still kept: what it has on its way reaches no other. */
  get size(): number {
    return this.left.size;
  }

  /** Keeps `ws` (no longer the link's) at most `ms`; the connection moved to is the current one now. */
  keep(ws: WebSocket, ms: number): void {
    this.current.clear();
    const left: Left = { ids: new Set(), timer: setTimeout(() => this.drop(ws), ms) };
    this.left.set(ws, left);
    ws.onmessage = (message: MessageEvent) => this.fromLeft(ws, left, message.data);
    ws.onclose = (event: CloseEvent) => this.closedByNode(ws, event.code);
  }

  /**
   * Its node closed it. As it said it would (4100, 4101; 4001 when the token expired first), having told
   * events_missed first if it may not have delivered everything: nothing more to say. Any other close (too
   * slow: frames dropped; the node gone) may have lost what only it had on its way, said nowhere else.
   */
  private closedByNode(ws: WebSocket, code: number): void {
    if (!this.left.has(ws)) return;
    this.drop(ws);
    if (code === CloseCode.Draining || code === CloseCode.LifetimeReached || code === CloseCode.Unauthorized)
      return;
    this.frame({
      type: 'error',
      code: FrameErrorCode.EventsMissed,
      message: `the connection moved from closed with ${code} before it had caught up`,
    });
  }

  /** An event of the current connection: a connection moved from that brought it too has caught up. */
  seen(id: string): void {
    if (this.left.size === 0) return;
    for (const [ws, left] of this.left) if (left.ids.has(id)) this.drop(ws);
    if (this.left.size > 0 && this.current.size < MAX_IDS) this.current.add(id);
  }

  dropAll(): void {
    for (const ws of [...this.left.keys()]) this.drop(ws);
  }

  private drop(ws: WebSocket): void {
    const left = this.left.get(ws);
    if (!left) return;
    clearTimeout(left.timer);
    this.left.delete(ws);
    ws.onmessage = null;
    ws.onclose = null;
    ws.close(1000, 'moved');
    if (this.left.size > 0) return;
    this.current.clear();
    this.settled();
  }

  /**
   * Its events, and its word that it lost some of them (`events_missed`) or could not read one
   * (`payload_unavailable`): said nowhere else, the gap would go unnoticed. Without offsets, which count
   * on the old node only; the rest (a `resumed`, a pong) is of no use any more.
   */
  private fromLeft(ws: WebSocket, left: Left, data: unknown): void {
    const frame = readFrame(data);
    if (!frame) return;
    if (frame.type === 'event') {
      // Shown already by the current connection (the client's dedup window may no longer hold it: a busy
      // user's events pass it while the old node is behind): this one has caught up, and brings no more.
      if (this.current.has(frame.id)) return this.drop(ws);
      this.frame({ ...frame, offset: undefined as unknown as number });
      if (this.left.has(ws) && left.ids.size < MAX_IDS) left.ids.add(frame.id);
    } else if (
      frame.type === 'error' &&
      (frame.code === FrameErrorCode.EventsMissed || frame.code === FrameErrorCode.PayloadUnavailable)
    ) {
      const { offset: _offset, ...rest } = frame;
      this.frame(rest);
    }
  }
}
