import { afterEach, beforeEach, vi } from 'vitest';
import type { ServerFrame } from '../../../../src/protocol/frames.js';
import type { WarrenClient } from '../../../../src/sdk/client/index.js';

// Stand-ins for what a browser gives tabs that share a connection: WebSockets to a gateway that welcomes
// whoever the token names, and Web Locks granted one holder at a time. BroadcastChannel is Node's own.

/** A JWT-shaped token the client can read claims from (only the gateway verifies signatures). */
export function tokenFor(tid: string, sub: string): string {
  const part = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'none' })}.${part({ tid, sub, exp: Math.floor(Date.now() / 1000) + 3600 })}.x`;
}

/** A token the client cannot read (not a JWT): only the fake gateway knows whose it is. */
export const opaqueFor = (sub: string): string => `opaque-${sub}`;

function claimsOf(protocols: string | string[]): { tid: string; sub: string } {
  const bearer = [protocols].flat().find((p) => p.startsWith('bearer.')) ?? '';
  if (bearer.startsWith('bearer.opaque-')) return { tid: 'acme', sub: bearer.slice('bearer.opaque-'.length) };
  const payload = bearer.slice('bearer.'.length).split('.')[1] ?? '';
  return JSON.parse(Buffer.from(payload, 'base64url').toString()) as { tid: string; sub: string };
}

/** A stand-in browser WebSocket whose gateway welcomes whoever the token names. */
export class FakeSocket {
  static all: FakeSocket[] = [];
  /** The epoch of the node the next sockets reach, and the offset they are welcomed at. */
  static epoch = 'e';
  static welcomeOffset = 0;
  /** Whether the gateway refuses the next sockets before their welcome (a browser then sees 1006). */
  static refuse = false;
  readonly sent: unknown[] = [];
  readyState = 0;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number }) => void) | null = null;
  readonly user: { tid: string; sub: string };

  constructor(
    readonly url: string,
    readonly protocols: string | string[],
  ) {
    this.user = claimsOf(protocols);
    FakeSocket.all.push(this);
    setTimeout(
      () =>
        FakeSocket.refuse
          ? this.end(1006)
          : this.receive({
              type: 'welcome',
              connectionId: 'c',
              userId: this.user.sub,
              tenantId: this.user.tid,
              gateway: 'g',
              epoch: FakeSocket.epoch,
              offset: FakeSocket.welcomeOffset,
            }),
      0,
    );
  }

  send(text: string): void {
    this.sent.push(JSON.parse(text));
  }

  close(): void {
    this.readyState = 3;
  }

  receive(frame: ServerFrame): void {
    this.readyState = 1;
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  event(id: string): void {
    this.receive({ type: 'event', id, eventType: 'note', data: { for: this.user.sub }, offset: 1 });
  }

  end(code: number): void {
    this.readyState = 3;
    this.onclose?.({ code });
  }
}

/** Web Locks as browsers grant them: one holder per name, the next request in line when it lets go. */
export function installLocks(): void {
  const queues = new Map<string, { grant: () => void; signal?: AbortSignal }[]>();
  const held = new Set<string>();
  const next = (name: string): void => {
    const waiter = queues.get(name)?.shift();
    if (waiter) waiter.grant();
  };
  const request = (
    name: string,
    options: { signal?: AbortSignal; ifAvailable?: boolean },
    callback: (lock: { name: string } | null) => unknown,
  ): Promise<unknown> =>
    new Promise((resolve, reject) => {
      // Not queued: the callback is told at once, with no lock, that another holder has it.
      if (options.ifAvailable && held.has(name)) {
        Promise.resolve(callback(null)).then(resolve, reject);
        return;
      }
      const grant = (): void => {
        held.add(name);
        Promise.resolve(callback({ name }))
          .then(resolve, reject)
          .finally(() => {
            held.delete(name);
            next(name);
          });
      };
      options.signal?.addEventListener('abort', () => {
        const queue = queues.get(name) ?? [];
        const at = queue.findIndex((w) => w.grant === grant);
        if (at >= 0) queue.splice(at, 1);
        reject(new DOMException('aborted', 'AbortError'));
      });
      if (!held.has(name)) grant();
      else queues.set(name, [...(queues.get(name) ?? []), { grant, signal: options.signal }]);
    });
  vi.stubGlobal('navigator', { locks: { request } });
}

/**
 * Fresh fakes for every test of the calling `describe`: a gateway that welcomes, locks no tab holds. Returns
 * the list to put each test's clients in: they are closed after it, and every stub and timer mock undone.
 */
export function useTabFakes(): WarrenClient[] {
  const clients: WarrenClient[] = [];
  beforeEach(() => {
    FakeSocket.all = [];
    FakeSocket.epoch = 'e';
    FakeSocket.welcomeOffset = 0;
    FakeSocket.refuse = false;
    installLocks();
  });
  afterEach(() => {
    for (const c of clients.splice(0)) c.close();
    vi.unstubAllGlobals();
    // A failed assertion must not leave Math.random mocked, or fake timers on, for the tests after it.
    vi.restoreAllMocks();
    vi.useRealTimers();
  });
  return clients;
}
