import { FrameErrorCode, type ServerFrame, type WelcomeFrame } from '../../protocol/frames.js';
import { DedupWindow } from './dedup-window.js';
import { Emitter, type Listener } from './emitter.js';
import { DEFAULT_RECONNECT, fullJitter, type ReconnectOptions } from './reconnect-policy.js';
import { SocketLink, type LinkSettings } from './socket-link.js';
import { canShareTabs, TabShare, type Cursor, type RelayMessage, type Speaker } from './tab-share.js';
import { readClaims, tokenError, TokenSource } from './token-source.js';
import {
  ClientErrorCode,
  ClientState,
  TabRole,
  WarrenClientError,
  type ClientEvents,
  type ClientOptions,
  type Resync,
  type Session,
} from './types.js';
import { UrlRing } from './url-ring.js';

const DEFAULT_DEDUP_WINDOW = 1000;
const DEFAULT_PING_INTERVAL_MS = 25_000;
// Generous: after a deploy a gateway binds thousands of returning users, and a welcome waits for its bind.
const DEFAULT_CONNECT_TIMEOUT_MS = 20_000;

/** `options` without the keys whose value is undefined. */
function definedOnly<T extends object>(options: T): Partial<T> {
  return Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined)) as Partial<T>;
}

// The longest delay a timer takes; a longer one fires at once.
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Options that would make delays (nearly) 0, a reconnect loop against a node that closes at once, or
 * overflow a timer, which fires at once too.
 */
function badOptions(options: ClientOptions, reconnect: ReconnectOptions): string[] {
  const bad: string[] = [];
  const check = (name: string, value: unknown, min: number): void => {
    if (value !== undefined && !(typeof value === 'number' && value >= min && value <= MAX_TIMER_MS))
      bad.push(`${name} must be a number from ${min} to ${MAX_TIMER_MS} (got ${String(value)})`);
  };
  check('reconnect.baseMs', reconnect.baseMs, 10);
  check('reconnect.capMs', reconnect.capMs, Math.max(1000, Number(reconnect.baseMs) || 0));
  // A connection must live this long to reset the backoff: shorter, one that closes at once resets it.
  check('reconnect.stableMs', reconnect.stableMs, 1000);
  // 0 turns these off; below a second they would drop healthy connections or give up every attempt.
  for (const name of ['pingIntervalMs', 'connectTimeoutMs'] as const)
    if (options[name] !== 0) check(name, options[name], 1000);
  check('dedupWindow', options.dedupWindow, 1);
  return bad;
}

/** A token fetched this recently is used as it is when a tab takes over (see `lead`). */
const FRESH_TOKEN_MS = 10_000;

/**
 * A browser's connection to Warren: state, events (each id once), reconnects, and optionally one socket
 * shared by the user's tabs. Create it with `connect()`.
 */
export class WarrenClient {
  private current: ClientState = ClientState.Connecting;
  private currentRole: TabRole = TabRole.Own;
  private readonly emitter = new Emitter<ClientEvents>();
  private readonly seen: DedupWindow;
  /** Events told `payload_unavailable`, so that a replay of the error is not reported twice. */
  private readonly unavailable: DedupWindow;
  private readonly link: LinkSettings;
  private cursor: Cursor | undefined;
  private welcome: WelcomeFrame | undefined;
  private socket: SocketLink | undefined;
  private share: TabShare | undefined;
  /** Failed tries to get the token that names this tab's group, and the timer of the next one. */
  private joinFailures = 0;
  private joinTimer: ReturnType<typeof setTimeout> | undefined;
  /** Aborted by `close()`: gives up a token still being fetched to join the tabs. */
  private readonly closing = new AbortController();
  /**
   * The user this client is for: the one its token named when it joined its tabs, or the first welcome.
   * A relay from anyone else's socket is ignored; a welcome of its own for anyone else closes the client.
   */
  private expected: Speaker | undefined;
  /** The node (a URL of the list) the trusted leader is on. */
  private leaderUrl: string | undefined;
  /**
   * A follower has accepted an `up` of the expected user: only then are relays shown. Not withdrawn by a
   * `down`: while the leader reconnects, a connection it moved from may still bring events (or its gap).
   */
  private leaderTrusted = false;
  /** The leader's last `up` said it still keeps a connection it moved from (see RelayMessage `moving`). */
  private leaderMoving = false;
  /** Another tab led before this one: taking over, this tab's token may be old (see `lead`). */
  private followed = false;
  /**
   * While a resume is being answered: the highest live offset (after the welcome) received meanwhile. The
   * cursor follows only the replay until it is answered, so a resume cut short (the socket dropped
   * mid-replay) is asked for again from how far the replay got, not from past live events, which would
   * skip the rest of it.
   */
  private resumeSeen: number | undefined;

  constructor(private readonly options: ClientOptions) {
    const Socket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof Socket !== 'function')
      throw new TypeError('no WebSocket implementation: pass options.WebSocket');
    // Options given as undefined keep their defaults (a spread would put undefined over them).
    const reconnect = { ...DEFAULT_RECONNECT, ...definedOnly(options.reconnect ?? {}) };
    const bad = badOptions(options, reconnect);
    if (bad.length > 0) throw new TypeError(`warren client: ${bad.join('; ')}`);
    this.seen = new DedupWindow(options.dedupWindow ?? DEFAULT_DEDUP_WINDOW);
    this.unavailable = new DedupWindow(options.dedupWindow ?? DEFAULT_DEDUP_WINDOW);
    this.link = {
      urls: new UrlRing(options.url),
      tokens: new TokenSource(options.getToken),
      reconnect,
      tokenTransport: options.tokenTransport ?? 'protocol',
      pingIntervalMs: options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS,
      connectTimeoutMs: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
      WebSocket: Socket,
      random: Math.random,
      now: Date.now,
    };
    if (options.shareAcrossTabs && canShareTabs()) void this.joinTabs();
    else this.openSocket();
  }

  get state(): ClientState {
    return this.current;
  }

  get role(): TabRole {
    return this.currentRole;
  }

  /** Who the gateway says this connection is, once connected. */
  get session(): Session | undefined {
    const w = this.welcome;
    return w && { userId: w.userId, tenantId: w.tenantId, gateway: w.gateway, connectionId: w.connectionId };
  }

  /** Adds a listener; returns the function that removes it. */
  on<K extends keyof ClientEvents>(name: K, listener: Listener<ClientEvents[K]>): () => void {
    return this.emitter.on(name, listener);
  }

  off<K extends keyof ClientEvents>(name: K, listener: Listener<ClientEvents[K]>): void {
    this.emitter.off(name, listener);
  }

  /** Closes the socket (a follower tab takes over if this one led) and stops reconnecting. */
  close(): void {
    if (this.current === ClientState.Closed) return;
    if (this.share?.leading) this.share.post({ k: 'down' });
    clearTimeout(this.joinTimer);
    this.closing.abort();
    this.socket?.close();
    this.share?.close();
    this.setState(ClientState.Closed);
    this.emitter.clear();
  }

  /** The one place the state changes. */
  private setState(to: ClientState, code?: number): void {
    const from = this.current;
    if (from === to || from === ClientState.Closed) return;
    this.current = to;
    this.emitter.emit('state', code === undefined ? { from, to } : { from, to, code });
  }

  private setRole(role: TabRole): void {
    if (this.currentRole === role) return;
    this.currentRole = role;
    this.emitter.emit('role', role);
  }

  /** Not narrowed away by the compiler: listeners called since the last check may have closed the client. */
  private isClosed(): boolean {
    return this.current === ClientState.Closed;
  }

  private connectionLost(code?: number): void {
    if (this.current === ClientState.Connected) this.setState(ClientState.Reconnecting, code);
  }

  private openSocket(): void {
    // Listeners run on the way here (`state`, `role`, `error`) and may have closed the client.
    if (this.isClosed()) return;
    const socket = new SocketLink(this.link, {
      frame: (frame) => this.fromSocket(frame),
      moved: (welcome) => this.moved(welcome),
      // Followers are told the leader can go without losing anything any more.
      settled: () => {
        if (this.share?.leading && this.current === ClientState.Connected) this.announce();
      },
      down: (code) => {
        this.connectionLost(code);
        this.share?.post({ k: 'down', code });
      },
      error: (error) => {
        this.emitter.emit('error', error);
        this.relayFailure(error);
      },
    });
    this.socket = socket;
    socket.start();
  }

  /** Followers hear of the leader's failed attempts as their own: they are waiting on that socket too. */
  private relayFailure(error: WarrenClientError): void {
    const who = this.expected;
    if (!this.share?.leading || !who) return;
    if (error.code === ClientErrorCode.Socket || error.code === ClientErrorCode.Token)
      this.share.post({ k: 'failed', who, code: error.code, message: error.message });
  }

  private async joinTabs(): Promise<void> {
    let token: string;
    try {
      token = await this.link.tokens.getWithin(false, this.link.connectTimeoutMs, this.closing.signal);
    } catch (cause) {
      if (this.current === ClientState.Closed) return;
      this.emitter.emit('error', tokenError(cause));
      // A listener may have closed the client on that error (a user signed out).
      if (this.isClosed()) return;
      // The group is named by the token: asked again with backoff, so that a token endpoint down while the
      // page loaded does not leave this tab on a socket of its own for its whole life.
      const { baseMs, capMs } = this.link.reconnect;
      this.joinFailures += 1;
      const delay = fullJitter(this.joinFailures, baseMs, capMs, this.link.random);
      this.joinTimer = setTimeout(() => void this.joinTabs(), delay);
      return;
    }
    if (this.current === ClientState.Closed) return;
    const claims = readClaims(token);
    const group = typeof this.options.shareAcrossTabs === 'string' ? this.options.shareAcrossTabs : '';
    // Sharing across users would hand one user's events to another: a token that does not say whose it is
    // (every token the gateway accepts is a JWT naming `tid` and `sub`) keeps this tab on its own socket.
    if (!claims?.sub || !claims.tid) {
      this.openSocket();
      return;
    }
    this.expected = { sub: claims.sub, tid: claims.tid };
    // The user is part of the name, even with a group given: tabs of different users never meet on one
    // channel.
    const name = `warren|${this.link.urls.describe()}|${claims.tid}|${claims.sub}|${group}`;
    const alone = (cause: unknown): void => {
      this.share?.close();
      this.share = undefined;
      this.emitter.emit(
        'error',
        new WarrenClientError(
          ClientErrorCode.Share,
          'cannot share across tabs here; this tab keeps its own socket',
          {
            cause,
          },
        ),
      );
      if (this.current === ClientState.Closed) return;
      this.setRole(TabRole.Own);
      this.openSocket();
    };
    try {
      this.share = new TabShare(name, {
        lead: () => {
          this.setRole(TabRole.Leader);
          this.connectionLost();
          // A leader whose tab was closed (or crashed) could not say so: the other followers hear it from
          // here, and show `reconnecting` until this tab's socket is up.
          this.share?.post({ k: 'down' });
          // It went with a connection it moved from still open: what that node had on its way is lost.
          if (this.leaderMoving) {
            this.leaderMoving = false;
            this.resync({ reason: 'history_gap' });
            if (this.isClosed()) return;
          }
          // To the node the last leader was on: offsets (and so a resume) mean something only there.
          if (this.leaderUrl !== undefined) this.link.urls.moveTo(this.leaderUrl);
          // After another tab led (it spoke, or the token this tab joined with is no longer new: a leader
          // frozen in the background says nothing): with a token asked for now, as the user may have
          // signed out since, or someone else signed in. Leading from the start, the token is new.
          if (this.followed || this.link.tokens.ageMs() > FRESH_TOKEN_MS) this.link.tokens.forget();
          this.openSocket();
        },
        // Only once another tab is known to lead: a tab told `follower` that leads a moment later would
        // have an application show "via another tab" (or stand down) for a connection it holds itself.
        follow: () => this.setRole(TabRole.Follower),
        hello: () => this.announce(),
        relay: (message) => this.fromLeader(message),
        refused: alone,
      });
      this.share.start();
    } catch (error) {
      // BroadcastChannel refused (an opaque origin).
      alone(error);
    }
  }

  /** The user this tab's socket belongs to. */
  private speaker(): Speaker | undefined {
    const w = this.welcome;
    return w && { tid: w.tenantId, sub: w.userId };
  }

  private isExpected(who: Speaker | undefined): boolean {
    if (!who) return false;
    const expected = this.expected;
    return expected !== undefined && who.sub === expected.sub && who.tid === expected.tid;
  }

  /** Tells followers where the leader stands; `moved`: on another node, with no gap (see `moved`). */
  private announce(moved = false): void {
    const welcome = this.welcome;
    const who = this.speaker();
    if (this.current === ClientState.Connected && welcome && who) {
      const url = this.link.urls.listed();
      this.share?.post({
        k: 'up',
        who,
        welcome,
        cursor: this.cursor,
        ...(url === undefined ? {} : { url }),
        ...(moved ? { moved } : {}),
        ...(this.socket?.moving() ? { moving: true } : {}),
      });
    } else this.share?.post({ k: 'down' });
  }

  /**
   * The socket moved to another node before the one it was on closed (`handoff`): every event routed since
   * reaches this tab through one or the other, so there is nothing to resume and nothing to resynchronise.
   * The cursor starts over at the new node's welcome.
   */
  private moved(welcome: WelcomeFrame): void {
    const who = { tid: welcome.tenantId, sub: welcome.userId };
    if (!this.isExpected(who)) {
      this.identityChanged(who);
      return;
    }
    // A resume still unanswered on the old node: its replay (or its refusal) comes through the old
    // connection only, which is left before it may be through. Said while the old welcome still names
    // the speaker, so that followers (who share the resume) hear it too.
    if (this.resumeSeen !== undefined) {
      this.resync({ reason: 'history_gap' });
      if (this.isClosed()) return;
    }
    this.welcome = welcome;
    this.resumeSeen = undefined;
    this.cursor = { epoch: welcome.epoch, offset: welcome.offset };
    this.setState(ClientState.Connected);
    this.announce(true);
  }

  private fromSocket(frame: ServerFrame): void {
    if (frame.type === 'welcome') {
      const who = { tid: frame.tenantId, sub: frame.userId };
      // Without tab sharing, the first welcome says who this client is for.
      this.expected ??= who;
      // The token now names someone else (another person signed in on this browser): this page was made
      // for the first user, so nothing of the new one's is shown, and the client closes (a leader hands
      // its tabs on; they elect one of their own user, or close too when their tokens changed as well).
      // Checked before the welcome is taken in: no resume, no cursor or dedup carried across users.
      if (!this.isExpected(who)) {
        this.identityChanged(who);
        return;
      }
      this.welcomed(frame);
      this.announce();
      return;
    }
    const who = this.speaker();
    if (this.handle(frame) && who) this.share?.post({ k: 'frame', who, frame });
  }

  private identityChanged(who: Speaker): void {
    const was = this.expected;
    this.emitter.emit(
      'error',
      new WarrenClientError(
        ClientErrorCode.IdentityChanged,
        `the token now names ${who.tid}/${who.sub}, not ${was?.tid ?? '?'}/${was?.sub ?? '?'}: client closed; reload the page or connect again for the new user`,
      ),
    );
    this.close();
  }

  private welcomed(welcome: WelcomeFrame): void {
    const prev = this.cursor;
    this.welcome = welcome;
    this.resumeSeen = undefined;
    if (prev && prev.epoch === welcome.epoch) {
      // Same node: ask for what was delivered since the last offset this tab (or its old leader) saw.
      if (prev.offset < welcome.offset) {
        this.resumeSeen = prev.offset;
        this.socket?.send({ type: 'resume', ...prev });
      }
    } else {
      if (prev) this.resync({ reason: 'new_node' });
      this.cursor = { epoch: welcome.epoch, offset: welcome.offset };
    }
    this.setState(ClientState.Connected);
  }

  private fromLeader(message: RelayMessage): void {
    if (message.k === 'hello') return;
    this.followed = true;
    if (message.k === 'down') {
      this.connectionLost(message.code);
      return;
    }
    const { welcome } = message.k === 'up' ? message : { welcome: undefined };
    if (
      !this.isExpected(message.who) ||
      (welcome && (welcome.userId !== message.who.sub || welcome.tenantId !== message.who.tid))
    ) {
      // Ignored, and only that: trust in the leader is not withdrawn, or one stray message on the channel
      // would silence the real leader's relays until its next `up`. Every relay names its user and is
      // checked on its own.
      this.emitter.emit(
        'error',
        new WarrenClientError(ClientErrorCode.ShareMismatch, 'a sibling tab relayed another user; ignored'),
      );
      return;
    }
    switch (message.k) {
      case 'up': {
        const before = this.cursor;
        this.leaderTrusted = true;
        this.leaderUrl = message.url;
        this.leaderMoving = message.moving === true;
        this.welcome = message.welcome;
        const cursor = message.cursor && { ...message.cursor };
        this.cursor = cursor;
        // The leader's resume, if it is still being answered, is this tab's too (see `resumeSeen`).
        this.resumeSeen =
          cursor && cursor.epoch === message.welcome.epoch && cursor.offset < message.welcome.offset
            ? cursor.offset
            : undefined;
        // A leader now on another node: this tab's own history ends here. Told by this tab itself, from its
        // own cursor (the leader's `new_node`, ignored below, would say it twice, or to a tab that had no
        // history there).
        if (before && before.epoch !== message.welcome.epoch && !message.moved)
          this.emitter.emit('resync', { reason: 'new_node' });
        this.setState(ClientState.Connected);
        return;
      }
      case 'frame':
        if (this.leaderTrusted) this.handle(message.frame);
        return;
      case 'failed':
        if (message.code === ClientErrorCode.Socket || message.code === ClientErrorCode.Token)
          this.emitter.emit(
            'error',
            new WarrenClientError(message.code, `the tab holding the connection: ${message.message}`),
          );
        return;
      case 'resync':
        // `new_node` is worked out from the leader's `up` (above).
        if (!this.leaderTrusted || message.resync.reason === 'new_node') return;
        if (message.resync.reason === 'history_gap') this.resumeDone(this.welcome?.offset ?? 0);
        if (message.offset !== undefined) this.advance(message.offset);
        this.emitter.emit('resync', message.resync);
        return;
    }
  }

  /** Handles a frame other than welcome; true when it was news worth relaying. */
  private handle(frame: ServerFrame): boolean {
    switch (frame.type) {
      case 'event':
        this.advance(frame.offset);
        if (!this.seen.admit(frame.id)) return false;
        this.emitter.emit('event', { id: frame.id, type: frame.eventType, data: frame.data });
        return true;
      case 'resumed':
        // Replayed up to the offset the connection was welcomed at; what came later came live.
        this.resumeDone(frame.offset);
        return true;
      case 'error':
        if (frame.code === FrameErrorCode.ResumeUnavailable) {
          // From the welcome on, this connection has everything: do not ask again from the old offset
          // (a quiet user would be told to resynchronise on every reconnect to this node).
          this.resumeDone(this.welcome?.offset ?? 0);
          this.resync({ reason: 'history_gap' });
          return false;
        }
        if (frame.code === FrameErrorCode.EventsMissed) {
          // Past the gap: a later reconnect to this node (this tab's, or a follower's taking over)
          // resumes from here instead of being refused.
          // Also with a resume still unanswered: the node refuses any resume from before the gap.
          const offset = typeof frame.offset === 'number' ? frame.offset : undefined;
          if (offset !== undefined) this.resumeDone(offset);
          this.resync({ reason: 'history_gap' }, offset);
          return false;
        }
        // Once per event: a resume (or a redelivery) may bring it again. Not for an event already shown,
        // and kept apart from the events' own ids: a later copy of the event whose payload is read after
        // all (a redelivery, another node) is still shown.
        if (
          frame.code === FrameErrorCode.PayloadUnavailable &&
          frame.id !== undefined &&
          (this.seen.has(frame.id) || !this.unavailable.admit(frame.id))
        )
          return false;
        this.emitter.emit(
          'error',
          frame.code === FrameErrorCode.PayloadUnavailable
            ? new WarrenClientError(ClientErrorCode.PayloadUnavailable, frame.message, {
                ...(frame.id === undefined ? {} : { eventId: frame.id }),
              })
            : new WarrenClientError(ClientErrorCode.Server, `${frame.code}: ${frame.message}`),
        );
        return true;
      default:
        return false;
    }
  }

  private advance(offset: number): void {
    if (!this.cursor || typeof offset !== 'number') return;
    if (this.resumeSeen !== undefined && offset > (this.welcome?.offset ?? Infinity)) {
      // Live, after the welcome: counted once the replay of what came before it is complete.
      if (offset > this.resumeSeen) this.resumeSeen = offset;
    } else if (offset > this.cursor.offset) {
      // Replayed (in order) or live: a replay cut short is asked again from how far it got.
      this.cursor.offset = offset;
    }
  }

  private resumeDone(upTo: number): void {
    const seen = this.resumeSeen ?? 0;
    this.resumeSeen = undefined;
    if (this.cursor) this.cursor.offset = Math.max(this.cursor.offset, upTo, seen);
  }

  private resync(resync: Resync, offset?: number): void {
    this.emitter.emit('resync', resync);
    const who = this.speaker();
    if (who) this.share?.post({ k: 'resync', who, resync, ...(offset === undefined ? {} : { offset }) });
  }
}
