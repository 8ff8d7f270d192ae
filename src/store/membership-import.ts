import { createReadStream, fstatSync, statSync, type Stats } from 'node:fs';
import roaring from 'roaring';
import type { Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { membershipChangeSchema, type MembershipChange } from '../protocol/schemas.js';
import type { MembershipStore } from './membership-store.js';
import { errorMessage } from '../shared/errors.js';
import { rowProblems } from './membership-row-problems.js';

export type ImportFormat = 'jsonl' | 'csv';

export interface BadLine {
  line: number;
  reason: string;
}

export interface ImportPlan {
  rows: number;
  valid: number;
  /** The first MAX_BAD_LINES_KEPT bad lines, with their reasons. */
  bad: BadLine[];
  /** Every bad line, counted: `bad` holds the first of them only. */
  badCount: number;
  /**
   * The number of every bad line, for the second reading to check each verdict against: a bitmap, a few
   * bytes a line at most where a file of millions of bad lines would hold a reason for each in memory.
   */
  badLines: InstanceType<typeof roaring.RoaringBitmap32>;
  /** Tenants the valid rows name. */
  tenants: Set<string>;
  /** The valid rows in file order, kept when the input is not a regular file (a pipe cannot be read again). */
  changes?: MembershipChange[];
  /** The file as it was before it was read: which file, its size, when it last changed. */
  source: FileState;
}

interface FileState {
  dev: number;
  ino: number;
  size: number;
  mtimeMs: number;
  /** Set by the system on every change, also one that puts the modification time back (`cp -p`, `rsync -a`). */
  ctimeMs: number;
}

/** The file name that means standard input, as most tools take it. */
export const STDIN = '-';

function statOf(file: string): Stats {
  return file === STDIN ? fstatSync(0) : statSync(file);
}

function fileState(file: string): FileState {
  const { dev, ino, size, mtimeMs, ctimeMs } = statOf(file);
  return { dev, ino, size, mtimeMs, ctimeMs };
}

/** The file being imported changed after it was validated. */
export class FileChanged extends Error {}

/** A row of a membership file, valid or not; `row: false` for a bad line that is not a row (the header). */
type ImportItem =
  | { kind: 'row'; line: number; change: MembershipChange }
  | { kind: 'bad'; line: number; reason: string; row: boolean };

interface ReadOptions {
  format: ImportFormat;
  /** Tenant for rows that do not name one. */
  tenant?: string;
  onBytes?: (read: number, total: number) => void;
}

const CSV_COLUMNS = new Set(['op', 'tenantId', 'userId', 'teamId', 'groupId']);
/**
 * Columns whose empty cell is a bad line rather than absent (then defaulted): a cleared `op` would turn
 * a removal into an add, a cleared `tenantId` would put the row in the `--tenant` tenant. An empty
 * `teamId` or `groupId` is how a row says which kind of membership it is.
 */
const REQUIRED_WHEN_PRESENT = new Set(['op', 'tenantId']);

/** What is wrong with a CSV header, if anything: unknown, empty or repeated column names. */
function headerProblem(cells: readonly string[]): string | undefined {
  if (cells.some((c) => c === '')) return 'header has an empty column name (a trailing comma?)';
  const unknown = cells.filter((c) => !CSV_COLUMNS.has(c));
  if (unknown.length > 0) {
    const separator = unknown.some((c) => /[;\t|]/.test(c)) ? '; columns are separated by commas' : '';
    return (
      `header has unknown columns: ${unknown.join(', ')} ` +
      `(known: ${[...CSV_COLUMNS].join(', ')}${separator})`
    );
  }
  const repeated = cells.filter((c, i) => cells.indexOf(c) !== i);
  if (repeated.length > 0)
    return `header names a column more than once: ${[...new Set(repeated)].join(', ')}`;
  return undefined;
}

export function formatOf(file: string): ImportFormat | undefined {
  if (/\.(jsonl|ndjson|json)$/i.test(file)) return 'jsonl';
  if (/\.csv$/i.test(file)) return 'csv';
  return undefined;
}

function unquote(cell: string): string {
  const trimmed = cell.trim();
  return trimmed.length >= 2 && trimmed.startsWith('"') && trimmed.endsWith('"')
    ? trimmed.slice(1, -1)
    : trimmed;
}

/**
 * Longest line read as a row. A valid row is under a kilobyte (ids are at most 120 characters); a longer
 * line is a file of another shape (a JSON array, one line of many megabytes), told as such unread, without
 * holding it in memory.
 */
export const MAX_LINE_CHARS = 1024 * 1024;
/**
 * Bad lines whose reasons are kept (and printed); those past it are counted, not kept. A file of the wrong
 * shape (another export, a wrong --format) makes every line a bad one, and millions of reasons held in
 * memory ran the import out of it before it could say so; the first ones tell what is wrong.
 */
export const MAX_BAD_LINES_KEPT = 10_000;
const MAX_LINE_NUMBER = 0xffff_ffff;
/** A line past MAX_LINE_CHARS, in place of its text. */
const TOO_LONG = Symbol('line too long');

/**
 * The lines of a stream of UTF-8 text, ended by LF or CRLF. Not by a lone CR, as readline's are: in JSON a
 * CR between tokens is whitespace, and `grep -n` or an editor would number the lines after it otherwise.
 */
async function* linesOf(stream: Readable): AsyncGenerator<string | typeof TOO_LONG> {
  const decoder = new StringDecoder('utf8');
  // The line so far, in pieces without an LF, joined once when it ends: one string grown chunk by chunk
  // and searched each time is copied whole each time, hours for a line of some hundred megabytes.
  let pieces: string[] = [];
  let length = 0;
  let tooLong = false;
  const take = (text: string): void => {
    if (text === '' || tooLong) return;
    length += text.length;
    // One more for the CR of a CRLF.
    if (length > MAX_LINE_CHARS + 1) {
      tooLong = true;
      pieces = [];
    } else pieces.push(text);
  };
  const end = (): string | typeof TOO_LONG => {
    const line = pieces.join('');
    const over = tooLong;
    pieces = [];
    length = 0;
    tooLong = false;
    if (over) return TOO_LONG;
    const text = line.endsWith('\r') ? line.slice(0, -1) : line;
    return text.length > MAX_LINE_CHARS ? TOO_LONG : text;
  };
  const chunks = stream as AsyncIterable<Buffer | string>;
  for await (const chunk of chunks) {
    const text = typeof chunk === 'string' ? chunk : decoder.write(chunk);
    let start = 0;
    for (let lf = text.indexOf('\n'); lf >= 0; lf = text.indexOf('\n', start)) {
      take(text.slice(start, lf));
      yield end();
      start = lf + 1;
    }
    take(text.slice(start));
  }
  take(decoder.end());
  if (length > 0 || tooLong) yield end();
}

/**
 * Every line of a membership file that holds a row, validated, in file order. Rows default to `op: add` and
 * to the `--tenant` given. CSV needs a header naming its columns (op, tenantId, userId, teamId, groupId);
 * a bad header ends the file.
 */
async function* readRows(file: string, options: ReadOptions): AsyncGenerator<ImportItem> {
  const total = statOf(file).size;
  // Standard input as it is: a pipe from a child process's parent may be a socket, which /dev/stdin is not
  // able to open.
  const stream: Readable & { bytesRead?: number } = file === STDIN ? process.stdin : createReadStream(file);
  const lines = linesOf(stream);
  let header: string[] | undefined;
  let number = 0;
  let lastReport = 0;
  let anyBad = false;
  const bad = (reason: string, row = true): ImportItem => {
    anyBad = true;
    return { kind: 'bad', line: number, reason, row };
  };
  try {
    for await (const line of lines) {
      number += 1;
      if (options.onBytes && number - lastReport >= 10_000) {
        lastReport = number;
        options.onBytes(stream.bytesRead ?? 0, total);
      }
      if (line === TOO_LONG) {
        const csvHeader = options.format === 'csv' && !header;
        yield bad(
          `longer than ${MAX_LINE_CHARS} characters: a membership file holds one row per line` +
            (options.format === 'jsonl' ? ' (JSON Lines, not a JSON array)' : ''),
          !csvHeader,
        );
        // In place of the header: a bad header ends the file.
        if (csvHeader) break;
        continue;
      }
      // Windows tools often save UTF-8 with a byte-order mark, which JSON.parse rejects as a bad first line.
      const text = number === 1 && line.startsWith('\uFEFF') ? line.slice(1) : line;
      if (text.trim() === '' || (options.format === 'csv' && text.trimStart().startsWith('#'))) continue;
      let row: Record<string, unknown>;
      if (options.format === 'jsonl') {
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch {
          yield bad('not valid JSON');
          continue;
        }
        if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
          yield bad('not a JSON object');
          continue;
        }
        row = parsed as Record<string, unknown>;
      } else {
        const cells = text.split(',').map(unquote);
        // A row of empty cells (`,,,,`: what spreadsheets save for a formatted empty row) is a blank line.
        if (cells.every((c) => c === '')) continue;
        if (!header) {
          const problem = headerProblem(cells);
          if (problem) {
            yield bad(problem, false);
            break;
          }
          header = cells;
          continue;
        }
        if (cells.length !== header.length) {
          // Ids never hold a comma or a line break, so CSV quoting is not parsed: say so where it shows.
          const quoted = text.includes('"') ? ' (a comma inside quotes counts too: ids never hold one)' : '';
          yield bad(`expected ${header.length} cells, found ${cells.length}${quoted}`);
          continue;
        }
        row = {};
        const empty: string[] = [];
        header.forEach((column, i) => {
          const cell = cells[i];
          if (cell) row[column] = cell;
          else if (REQUIRED_WHEN_PRESENT.has(column)) empty.push(column);
        });
        if (empty.length > 0) {
          yield bad(`empty ${empty.join(' and ')} (fill in the cell)`);
          continue;
        }
      }
      // Defaults fill in what is absent, never what is there: `"op": null` is a bad line, not an add.
      if (!('op' in row)) row['op'] = 'add';
      if (options.tenant !== undefined && !('tenantId' in row)) row['tenantId'] = options.tenant;
      const result = membershipChangeSchema.safeParse(row);
      if (!result.success) {
        yield bad(rowProblems(result.error, row));
        continue;
      }
      yield { kind: 'row', line: number, change: result.data };
    }
  } finally {
    // Also when the reader stops early (a bad header, a consumer that failed): no file left open.
    stream.destroy();
  }
  options.onBytes?.(total, total);
  if (options.format === 'csv' && !header && !anyBad) {
    number = 1;
    yield bad('the CSV file has no header row', false);
  }
}

/**
 * Reads and validates a whole membership file before anything is applied. A regular file is read again to
 * apply it (`validRows`), so its rows are not kept; those of anything else (a pipe, which cannot be read a
 * second time) are.
 */
export async function readMembershipFile(file: string, options: ReadOptions): Promise<ImportPlan> {
  const plan: ImportPlan = {
    source: fileState(file),
    rows: 0,
    valid: 0,
    bad: [],
    badCount: 0,
    badLines: new roaring.RoaringBitmap32(),
    tenants: new Set(),
    // Standard input is read once, even when it is a file (`< members.csv`).
    ...(file !== STDIN && statSync(file).isFile() ? {} : { changes: [] }),
  };
  for await (const item of readRows(file, options)) {
    if (item.kind === 'bad') {
      if (item.row) plan.rows += 1;
      plan.badCount += 1;
      // Past what the bitmap holds, a bad line's verdict could not be checked on the second reading.
      if (item.line > MAX_LINE_NUMBER) throw new Error(`more than ${MAX_LINE_NUMBER} lines: split the file`);
      plan.badLines.add(item.line);
      if (plan.bad.length < MAX_BAD_LINES_KEPT) plan.bad.push({ line: item.line, reason: item.reason });
      continue;
    }
    plan.rows += 1;
    plan.valid += 1;
    plan.tenants.add(item.change.tenantId);
    plan.changes?.push(item.change);
  }
  return plan;
}

/**
 * The valid rows of a file read again after `plan` was made from it, checked against it: a line whose
 * verdict changed, or a count that differs, means the file changed in between, and the import stops there
 * (what was applied before is applied; running the import again on a fixed file completes it).
 */
/** The valid rows of a validated plan, in file order: kept in it, or read again from the file. */
export function validRows(
  file: string,
  options: ReadOptions,
  plan: ImportPlan,
): Iterable<MembershipChange> | AsyncIterable<MembershipChange> {
  return plan.changes ?? replayRows(file, options, plan);
}

export async function* replayRows(
  file: string,
  options: ReadOptions,
  plan: ImportPlan,
): AsyncGenerator<MembershipChange> {
  const changed = (why: string) => new FileChanged(`${file} changed after it was validated (${why})`);
  const unchanged = () => {
    const now = fileState(file);
    const differs = (Object.keys(now) as (keyof FileState)[]).filter((k) => now[k] !== plan.source[k]);
    if (differs.length > 0) throw changed(`its ${differs.join(', ')} differ`);
  };
  unchanged();
  const { badLines } = plan;
  let valid = 0;
  for await (const item of readRows(file, options)) {
    if (item.kind === 'bad' ? !badLines.has(item.line) : badLines.has(item.line))
      throw changed(`line ${item.line} reads differently now`);
    if (item.kind === 'row') {
      valid += 1;
      yield item.change;
    }
  }
  if (valid !== plan.valid) throw changed(`${valid} valid rows now, ${plan.valid} before`);
  unchanged();
}

/** A batch that failed to apply: how many rows it held (those before a row Redis refused may be in). */
export class BatchFailed extends Error {
  constructor(
    readonly rows: number,
    override readonly cause: unknown,
  ) {
    super(errorMessage(cause), { cause });
    this.name = 'BatchFailed';
  }
}

// Rows held back, over all tenants, before every tenant's batch so far is applied.
const MAX_HELD_BATCHES = 20;

/**
 * How long a batch may take to reach Redis before Redis refuses it (see `MembershipStore.applyBulk`): far
 * above the ~20 ms a batch takes, and below the 30 s after which a silent connection is made again and its
 * unanswered batch resent, so that a resent batch never lands after a removal made meanwhile.
 */
const BATCH_DEADLINE_MS = 10_000;

/**
 * Applies validated rows in batches of up to `batchSize` rows of one tenant, each one script in Redis
 * (which keeps the rows before one it refuses, a key of the wrong type) and announced to resolvers as a
 * bulk change; a tenant's rows are applied in file order. Adding and removing are
 * set operations, so running an interrupted import again finishes it.
 */
export async function applyRows(
  store: MembershipStore,
  rows: Iterable<MembershipChange> | AsyncIterable<MembershipChange>,
  batchSize: number,
  onRows: (applied: number) => void,
): Promise<{ applied: number; changed: number }> {
  let applied = 0;
  let changed = 0;
  let held = 0;
  const pending = new Map<string, MembershipChange[]>();
  const flush = async (tenantId: string, batch: MembershipChange[]) => {
    pending.delete(tenantId);
    held -= batch.length;
    try {
      changed += await store.applyBulk(tenantId, batch, BATCH_DEADLINE_MS);
    } catch (error) {
      throw new BatchFailed(batch.length, error);
    }
    applied += batch.length;
    onRows(applied);
  };
  for await (const change of rows) {
    let batch = pending.get(change.tenantId);
    if (!batch) {
      batch = [];
      pending.set(change.tenantId, batch);
    }
    batch.push(change);
    held += 1;
    if (batch.length >= batchSize) await flush(change.tenantId, batch);
    // Many tenants, few rows each: memory stays bounded all the same.
    else if (held >= MAX_HELD_BATCHES * batchSize)
      for (const [tenantId, rest] of [...pending]) await flush(tenantId, rest);
  }
  for (const [tenantId, rest] of [...pending]) await flush(tenantId, rest);
  return { applied, changed };
}
