import type { WarrenRedis } from './redis.js';

/** Entries kept per tenant log; a resolver that falls further behind reloads the tenant instead. */
export const LOG_MAX_LEN = 100_000;

export type LogOp = 'tu' | 'gu' | 'gt' | 'on' | 'off' | 'nd' | 'rl';

export interface LogEntry {
  id: string;
  seq: number;
  op: LogOp;
  a: string;
  b: string;
  c: string;
}

export interface LogPosition {
  cursor: string;
  seq: number;
}

type RawEntry = [id: string, fields: string[]];

function toEntry([id, fields]: RawEntry): LogEntry {
  const entry: LogEntry = { id, seq: 0, op: 'rl', a: '', b: '', c: '' };
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const value = fields[i + 1] as string;
    switch (fields[i]) {
      case 's':
        entry.seq = Number(value);
        break;
      case 'o':
        entry.op = value as LogOp;
        break;
      case 'a':
        entry.a = value;
        break;
      case 'b':
        entry.b = value;
        break;
      case 'c':
        entry.c = value;
        break;
    }
  }
  return entry;
}

/** Where the log ends now. Read it *before* loading a snapshot: re-applying entries is idempotent. */
export async function logHead(redis: WarrenRedis, logKey: string, seqKey: string): Promise<LogPosition> {
  const [last, seq] = await Promise.all([
    redis.xrevrange(logKey, '+', '-', 'COUNT', 1) as Promise<RawEntry[]>,
    redis.get(seqKey),
  ]);
  const top = last[0];
  if (top) {
    const entry = toEntry(top);
    return { cursor: entry.id, seq: entry.seq };
  }
  return { cursor: '0-0', seq: Number(seq ?? 0) };
}

/** Entries after `cursor`, oldest first, at most `count`. */
export async function readLog(
  redis: WarrenRedis,
  logKey: string,
  cursor: string,
  count: number,
): Promise<LogEntry[]> {
  const reply = (await redis.xread('COUNT', count, 'STREAMS', logKey, cursor)) as
    [string, RawEntry[]][] | null;
  const stream = reply?.[0];
  return stream ? stream[1].map(toEntry) : [];
}
