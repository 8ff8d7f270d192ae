import { createReadStream, statSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { describeIssues, membershipChangeSchema, type MembershipChange } from '../protocol/schemas.js';
import type { MembershipStore } from './membership-store.js';

export type ImportFormat = 'jsonl' | 'csv';

export interface BadLine {
  line: number;
  reason: string;
}

export interface ImportPlan {
  rows: number;
  valid: number;
  bad: BadLine[];
  byTenant: Map<string, MembershipChange[]>;
}

export interface ReadOptions {
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
  if (unknown.length > 0) return `header has unknown columns: ${unknown.join(', ')}`;
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
 * Reads and validates a whole membership file before anything is applied. Rows default to `op: add` and to
 * the `--tenant` given. CSV needs a header naming its columns (op, tenantId, userId, teamId, groupId).
 */
export async function readMembershipFile(file: string, options: ReadOptions): Promise<ImportPlan> {
  const total = statSync(file).size;
  const stream = createReadStream(file);
  const lines = createInterface({ input: stream, crlfDelay: Infinity });
  const plan: ImportPlan = { rows: 0, valid: 0, bad: [], byTenant: new Map() };
  let header: string[] | undefined;
  let number = 0;
  let lastReport = 0;
  for await (const line of lines) {
    number += 1;
    // Windows tools often save UTF-8 with a byte-order mark, which JSON.parse rejects as a bad first line.
    const text = number === 1 && line.startsWith('\uFEFF') ? line.slice(1) : line;
    if (options.onBytes && number - lastReport >= 10_000) {
      lastReport = number;
      options.onBytes(stream.bytesRead, total);
    }
    if (text.trim() === '' || (options.format === 'csv' && text.startsWith('#'))) continue;
    let row: Record<string, unknown>;
    if (options.format === 'jsonl') {
      try {
        const parsed: unknown = JSON.parse(text);
        if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
          plan.rows += 1;
          plan.bad.push({ line: number, reason: 'not a JSON object' });
          continue;
        }
        row = parsed as Record<string, unknown>;
      } catch {
        plan.rows += 1;
        plan.bad.push({ line: number, reason: 'not valid JSON' });
        continue;
      }
    } else {
      const cells = text.split(',').map(unquote);
      if (!header) {
        const problem = headerProblem(cells);
        if (problem) {
          plan.bad.push({ line: number, reason: problem });
          break;
        }
        header = cells;
        continue;
      }
      plan.rows += 1;
      if (cells.length !== header.length) {
        plan.bad.push({ line: number, reason: `expected ${header.length} cells, found ${cells.length}` });
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
        plan.bad.push({ line: number, reason: `empty ${empty.join(' and ')} (fill in the cell)` });
        continue;
      }
    }
    if (options.format === 'jsonl') plan.rows += 1;
    // Defaults fill in what is absent, never what is there: `"op": null` is a bad line, not an add.
    if (!('op' in row)) row['op'] = 'add';
    if (options.tenant !== undefined && !('tenantId' in row)) row['tenantId'] = options.tenant;
    const result = membershipChangeSchema.safeParse(row);
    if (!result.success) {
      plan.bad.push({ line: number, reason: describeIssues(result.error) });
      continue;
    }
    const change = result.data;
    let list = plan.byTenant.get(change.tenantId);
    if (!list) {
      list = [];
      plan.byTenant.set(change.tenantId, list);
    }
    list.push(change);
    plan.valid += 1;
  }
  if (options.format === 'csv' && !header && plan.bad.length === 0) {
    plan.bad.push({ line: 1, reason: 'the CSV file has no header row' });
  }
  options.onBytes?.(total, total);
  return plan;
}

/**
 * Applies a validated plan in batches, each atomic in Redis and announced to resolvers as a bulk change.
 * Adding and removing are set operations, so running an interrupted import again finishes it.
 */
export async function applyPlan(
  store: MembershipStore,
  plan: ImportPlan,
  batchSize: number,
  onRows: (applied: number) => void,
): Promise<{ applied: number; changed: number }> {
  let applied = 0;
  let changed = 0;
  for (const [tenantId, changes] of plan.byTenant) {
    for (let start = 0; start < changes.length; start += batchSize) {
      const batch = changes.slice(start, start + batchSize);
      changed += await store.applyBulk(tenantId, batch);
      applied += batch.length;
      onRows(applied);
    }
  }
  return { applied, changed };
}
