import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * WebSocket clients for the benches, held by a child process. Two reasons: a client and the gateway socket
 * it talks to cost one file descriptor each, so 10,000 clients against an in-process gateway would need
 * 20,000 descriptors in one process, which is the whole `ulimit -n` (soft and hard) of the bench machine;
 * and clients parsing frames on the gateway's own event loop would bill their cost to the gateway. The
 * child inherits the bench's execArgv (tsx's loader), so it runs the TypeScript source directly.
 */

export type FleetRequest =
  | {
      op: 'open';
      seq: number;
      /** Gateway ports; user i connects to ports[i % ports.length]. */
      ports: number[];
      tenantId: string;
      userIds: string[];
      /** Connections in flight at once (1 = one after the other). */
      concurrency: number;
      secret: string;
    }
  | { op: 'reset'; seq: number }
  | { op: 'expect'; seq: number; count: number }
  | { op: 'count'; seq: number }
  | { op: 'close'; seq: number }
  | { op: 'exit'; seq: number };

export interface OpenResult {
  /** Per client, ms from the socket's `open` event to the `welcome` frame. */
  openToWelcome: number[];
  /** Per client, ms from `new WebSocket` to the `welcome` frame (TCP, upgrade and token check included). */
  totalToWelcome: number[];
  /** From the first `new WebSocket` to the last `welcome`. */
  wallMs: number;
  /** CPU the client process used meanwhile (user + system), to tell when the clients are the limit. */
  cpuMs: number;
  failures: number;
  firstError?: string | undefined;
}

export type FleetReply =
  | { seq: number; open: OpenResult }
  | ({ seq: number } & FleetCounts)
  | { seq: number; pending: true }
  | { seq: number; error: string }
  | { seq: number };

export interface FleetCounts {
  /** Event frames received since the last reset. */
  events: number;
  /** Clients closed by the other side since the last reset. */
  unexpectedCloses: number;
  /** CPU the client process has used since it started (user + system). */
  cpuMs: number;
  /** When the first and the last of those event frames arrived (ms, the client process's clock). */
  firstAt: number;
  lastAt: number;
}

export class ClientFleet {
  private seq = 0;
  private readonly pending = new Map<number, (reply: FleetReply) => void>();

  private constructor(private readonly child: ChildProcess) {
    child.on('message', (reply: FleetReply) => {
      const done = this.pending.get(reply.seq);
      this.pending.delete(reply.seq);
      done?.(reply);
    });
    child.on('exit', () => {
      for (const done of this.pending.values()) done({ seq: -1, error: 'client process exited' });
      this.pending.clear();
    });
  }

  static start(): ClientFleet {
    const worker = fileURLToPath(new URL('./support-client-worker.ts', import.meta.url));
    return new ClientFleet(fork(worker, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  }

  private ask(request: FleetRequest, timeoutMs = 600_000): Promise<FleetReply> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(request.seq);
        reject(new Error(`client process: no answer to ${request.op} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(request.seq, (reply) => {
        clearTimeout(timer);
        if ('error' in reply) reject(new Error(`client process: ${reply.error}`));
        else resolve(reply);
      });
      this.child.send(request);
    });
  }

  async open(options: Omit<Extract<FleetRequest, { op: 'open' }>, 'op' | 'seq'>): Promise<OpenResult> {
    const reply = await this.ask({ op: 'open', seq: ++this.seq, ...options });
    if (!('open' in reply)) throw new Error('client process: unexpected answer to open');
    return reply.open;
  }

  private async counts(op: 'reset' | 'count' | 'close', timeoutMs?: number): Promise<FleetCounts> {
    return (await this.ask({ op, seq: ++this.seq }, timeoutMs)) as FleetCounts;
  }

  /** Zeroes the event counter. */
  reset(): Promise<FleetCounts> {
    return this.counts('reset');
  }

  count(): Promise<FleetCounts> {
    return this.counts('count');
  }

  /** Resolves as soon as the clients have received `count` event frames since the last reset. */
  async expect(count: number, timeoutMs: number): Promise<FleetCounts> {
    return (await this.ask({ op: 'expect', seq: ++this.seq, count }, timeoutMs)) as FleetCounts;
  }

  /** Closes every client (normal closure) and waits for the closes. */
  closeAll(): Promise<FleetCounts> {
    return this.counts('close');
  }

  /** Closes the clients and ends the child process. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    await this.ask({ op: 'exit', seq: ++this.seq }, 30_000).catch(() => this.child.kill());
    await exited;
  }
}
