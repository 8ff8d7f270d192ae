// Child process of ClientFleet (support-clients.ts): holds the benches' WebSocket clients. See that file for
// why the clients live in a process of their own.
import WebSocket from 'ws';
import { signToken } from './support-warren.js';
import type { FleetCounts, FleetReply, FleetRequest, OpenResult } from './support-clients.js';

const EVENT_PREFIX = Buffer.from('{"type":"event"');
const CLOSE_WAIT_MS = 10_000;

const sockets = new Set<WebSocket>();
let events = 0;
let firstAt = NaN;
let lastAt = NaN;
let unexpectedCloses = 0;
let closingAll = false;
let waiting: { seq: number; count: number } | undefined;

function reply(message: FleetReply): void {
  process.send?.(message);
}

function isEvent(data: WebSocket.RawData): boolean {
  const buffer = Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer);
  return (
    buffer.length >= EVENT_PREFIX.length &&
    buffer.compare(EVENT_PREFIX, 0, EVENT_PREFIX.length, 0, EVENT_PREFIX.length) === 0
  );
}

function counts(): FleetCounts {
  const used = process.cpuUsage();
  return { events, unexpectedCloses, cpuMs: (used.user + used.system) / 1000, firstAt, lastAt };
}

function countEvent(): void {
  lastAt = performance.now();
  if (events === 0) firstAt = lastAt;
  events += 1;
  if (waiting && events >= waiting.count) {
    reply({ seq: waiting.seq, ...counts() });
    waiting = undefined;
  }
}

interface Timing {
  openToWelcome: number;
  totalToWelcome: number;
}

/** One client: resolves at `welcome`, with the times measured on this side of the socket. */
function connect(url: string): Promise<Timing> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    let opened = NaN;
    let welcomed = false;
    const ws = new WebSocket(url, { perMessageDeflate: false });
    sockets.add(ws);
    ws.once('open', () => {
      opened = performance.now();
    });
    ws.on('message', (data) => {
      if (welcomed) {
        if (isEvent(data)) countEvent();
        return;
      }
      const now = performance.now();
      const frame = JSON.parse(data.toString()) as { type?: string };
      if (frame.type !== 'welcome') return;
      welcomed = true;
      resolve({ openToWelcome: now - opened, totalToWelcome: now - started });
    });
    ws.once('unexpected-response', (_req, res) => {
      reject(new Error(`upgrade refused with HTTP ${res.statusCode ?? 0}`));
      ws.terminate();
    });
    ws.once('error', (error) => reject(error));
    ws.once('close', (code) => {
      sockets.delete(ws);
      if (!welcomed) reject(new Error(`closed with ${code} before welcome`));
      else if (!closingAll) unexpectedCloses += 1;
    });
  });
}

async function open(request: Extract<FleetRequest, { op: 'open' }>): Promise<OpenResult> {
  const { ports, tenantId, userIds, concurrency, secret } = request;
  // Tokens are signed before the clock starts: signing is the identity provider's cost, not the gateway's.
  const tokens = await Promise.all(userIds.map((u) => signToken(tenantId, u, secret)));
  const openToWelcome: number[] = [];
  const totalToWelcome: number[] = [];
  const errors: string[] = [];
  let next = 0;
  const cpu = process.cpuUsage();
  const started = performance.now();
  const worker = async (): Promise<void> => {
    for (let i = next++; i < userIds.length; i = next++) {
      const port = ports[i % ports.length] as number;
      try {
        const t = await connect(`ws://127.0.0.1:${port}/ws?token=${tokens[i] as string}`);
        openToWelcome.push(t.openToWelcome);
        totalToWelcome.push(t.totalToWelcome);
      } catch (error) {
        errors.push(error instanceof Error ? error.message : String(error));
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, worker));
  const wallMs = performance.now() - started;
  const used = process.cpuUsage(cpu);
  return {
    openToWelcome,
    totalToWelcome,
    wallMs,
    cpuMs: (used.user + used.system) / 1000,
    failures: errors.length,
    firstError: errors[0],
  };
}

async function closeAll(): Promise<void> {
  closingAll = true;
  const closing = [...sockets].map(
    (ws) =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          ws.terminate();
          resolve();
        }, CLOSE_WAIT_MS);
        ws.once('close', () => {
          clearTimeout(timer);
          resolve();
        });
        ws.close();
      }),
  );
  await Promise.all(closing);
  sockets.clear();
  closingAll = false;
}

process.on('message', (message: FleetRequest) => {
  const { seq } = message;
  const run = async (): Promise<FleetReply> => {
    switch (message.op) {
      case 'open':
        return { seq, open: await open(message) };
      case 'reset':
        events = 0;
        unexpectedCloses = 0;
        firstAt = NaN;
        lastAt = NaN;
        return { seq, ...counts() };
      case 'expect':
        if (events >= message.count) return { seq, ...counts() };
        waiting = { seq, count: message.count };
        return { seq, pending: true };
      case 'count':
        return { seq, ...counts() };
      case 'close':
        await closeAll();
        return { seq, ...counts() };
      case 'exit':
        await closeAll();
        setImmediate(() => process.exit(0));
        return { seq };
    }
  };
  run().then(
    (answer) => {
      if (!('pending' in answer)) reply(answer);
    },
    (error: unknown) => reply({ seq, error: error instanceof Error ? error.message : String(error) }),
  );
});
process.on('disconnect', () => process.exit(0));
