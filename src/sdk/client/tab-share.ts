import type { ServerFrame, WelcomeFrame } from '../../protocol/frames.js';
import type { Resync } from './types.js';

/** Where a client stands in its node's delivery sequence, for `resume`. */
export interface Cursor {
  epoch: string;
  offset: number;
}

/** The user a leader's socket belongs to, as its gateway's `welcome` said. */
export interface Speaker {
  tid: string;
  sub: string;
}

/**
 * What tabs of one group say to each other over their BroadcastChannel. Everything a leader relays names
 * the user its socket belongs to, so a follower can refuse what is not its own user's.
 */
export type RelayMessage =
  /** A tab started following: the leader answers with `up` or `down`. */
  | { k: 'hello' }
  /** The leader's socket is welcomed; followers adopt its cursor so they can resume if they take over. */
  | {
      k: 'up';
      who: Speaker;
      welcome: WelcomeFrame;
      cursor: Cursor | undefined;
      /** The leader's node, from a URL list: a tab taking over goes there first, so it can resume. */
      url?: string;
      /** The leader moved to this node with no gap (`handoff`): nothing to resynchronise. */
      moved?: boolean;
      /**
       * It still keeps a connection it moved from: what that node has not written yet reaches no other, so
       * a tab taking over now may miss it.
       */
      moving?: boolean;
    }
  | { k: 'down'; code?: number }
  /** An attempt of the leader's failed before its welcome: followers wait on it and say so as well. */
  | { k: 'failed'; who: Speaker; code: 'socket_failed' | 'token_failed'; message: string }
  | { k: 'frame'; who: Speaker; frame: ServerFrame }
  /** `offset`: where the node's gap is (`events_missed`); a resume from before it would be refused. */
  | { k: 'resync'; who: Speaker; resync: Resync; offset?: number };

export interface ShareHooks {
  /** This tab holds the lock now: open the socket. */
  lead(): void;
  /** Another tab held the lock when this one asked: it follows, and waits in line to take over. */
  follow(): void;
  /** A follower asked the leader for its status. */
  hello(): void;
  /** A follower received a relay from the leader. */
  relay(message: RelayMessage): void;
  /** The browser refused the lock (storage blocked for the site, an opaque origin): no sharing here. */
  refused(error: unknown): void;
}

/** Whether this browsing context can share a connection (Web Locks need a secure context: https or localhost). */
export function canShareTabs(): boolean {
  return typeof BroadcastChannel === 'function' && typeof navigator === 'object' && !!navigator.locks;
}

/**
 * Leader election among same-origin tabs of one group. Every tab queues for an exclusive Web Lock; the one
 * holding it is the leader until its tab closes or it calls close(), and the browser then grants the lock to
 * the next tab in line. That makes the handover immediate and leaves no stale leader behind, which
 * heartbeats over BroadcastChannel alone could not promise.
 */
export class TabShare {
  private readonly channel: BroadcastChannel;
  private readonly abort = new AbortController();
  private release: (() => void) | undefined;
  private closed = false;
  /** Told `follow`: relays are taken from then on (before, this tab may yet lead). */
  private following = false;
  leading = false;

  constructor(
    private readonly name: string,
    private readonly hooks: ShareHooks,
  ) {
    this.channel = new BroadcastChannel(name);
  }

  start(): void {
    this.channel.onmessage = (event: MessageEvent) => this.received(event.data as RelayMessage);
    // First asked only if the lock is free, so that a tab is told `follow` only when another tab does lead:
    // the first tab of a user leads without having been reported a follower first. (`ifAvailable` cannot
    // be given a signal: close() during this request is seen in the callbacks.)
    navigator.locks
      .request(this.name, { ifAvailable: true }, (lock) => {
        if (lock) return this.hold();
        if (this.closed) return undefined;
        this.following = true;
        this.hooks.follow();
        // A listener of `follow` may have closed the client: then it does not queue for the lock.
        if (this.closed) return undefined;
        this.queue();
        this.post({ k: 'hello' });
        return undefined;
      })
      .catch((error: unknown) => this.failed(error));
  }

  /** Waits in line for the lock: the browser grants it when the tab holding it closes. */
  private queue(): void {
    navigator.locks
      .request(this.name, { signal: this.abort.signal }, () => this.hold())
      .catch((error: unknown) => this.failed(error));
  }

  /** Leads until close(): the lock is the leadership. */
  private hold(): Promise<void> | undefined {
    if (this.closed) return undefined;
    // Made before lead() runs, so that a close() from inside it (an application's listener) gives the lock
    // back too.
    const held = new Promise<void>((resolve) => {
      this.release = resolve;
    });
    this.leading = true;
    this.hooks.lead();
    return held;
  }

  /**
   * An AbortError when close() withdraws a request still in the queue. Anything else before this tab led (a
   * SecurityError where site data is blocked) means it never will: it must not wait for good.
   */
  private failed(error: unknown): void {
    if (!this.closed && !this.leading) this.hooks.refused(error);
  }

  post(message: RelayMessage): void {
    if (!this.closed) this.channel.postMessage(message);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort();
    this.release?.();
    this.channel.close();
  }

  private received(message: RelayMessage): void {
    if (typeof message !== 'object' || message === null) return;
    if (this.leading) {
      if (message.k === 'hello') this.hooks.hello();
      return;
    }
    if (this.following && message.k !== 'hello') this.hooks.relay(message);
  }
}
