import type { WarrenRedis } from './redis.js';

/** Entries kept per tenant log; a resolver that falls further behind reloads the tenant instead. */
export const LOG_MAX_LEN = 100_000;

/**
 * How long a log entry is kept (and a log nothing was appended to): a resolver whose view of a tenant was
 * last brought up to date longer ago reloads the tenant instead, as one that fell LOG_MAX_LEN behind does.
 */
export const LOG_MAX_AGE_MS = 3_600_000;

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

/**
 * Where the log ends now. Read it *before* loading a snapshot: re-applying entries is idempotent. Its last
 * entry and the sequence counter are read at one moment (a transaction): with entries missing at the end
 * (deleted from outside), the counter says where the log really is, and the snapshot covers them.
 */
export async function logHead(redis: WarrenRedis, logKey: string, seqKey: string): Promise<LogPosition> {
  const replies = await redis.multi().xrevrange(logKey, '+', '-', 'COUNT', 1).get(seqKey).exec();
  const [last, seq] = resultsOf(replies) as [RawEntry[], string | null];
  const counted = Number(seq ?? 0);
  const top = last[0];
  if (top) {
    const entry = toEntry(top);
    // A counter behind the last entry was lost (it starts again, and the next entry shows a gap).
    return { cursor: entry.id, seq: Math.max(entry.seq, counted) };
  }
  return { cursor: '0-0', seq: counted };
}

/**
 * Entries after `cursor`, oldest first, at most `count`, and the sequence counter at the same moment (a
 * transaction): a reader at the end of the log whose last sequence number is below it knows entries it
 * has not read are gone (the log emptied or deleted from outside), which no later entry might tell.
 */
export async function readLog(
  redis: WarrenRedis,
  logKey: string,
  seqKey: string,
  cursor: string,
  count: number,
): Promise<{ entries: LogEntry[]; seq: number }> {
  const replies = await redis.multi().xread('COUNT', count, 'STREAMS', logKey, cursor).get(seqKey).exec();
  const [reply, seq] = resultsOf(replies) as [[string, RawEntry[]][] | null, string | null];
  const stream = reply?.[0];
  return { entries: stream ? stream[1].map(toEntry) : [], seq: Number(seq ?? 0) };
}

/** The replies of a transaction, or its first error (a key of the wrong type, say). */
function resultsOf(replies: [Error | null, unknown][] | null): unknown[] {
  if (!replies) throw new Error('change log read aborted');
  return replies.map(([error, value]) => {
    if (error) throw error;
    return value;
  });
}
