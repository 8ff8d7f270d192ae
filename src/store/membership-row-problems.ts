import type { z } from 'zod';
import { MEMBERSHIP_ID_FIELDS } from '../protocol/schemas.js';

const COUNTS = ['none', 'one', 'two', 'three'];
/** Past this, a value is cut: a line's problem is read in a terminal, one line each. */
const SHOWN_CHARS = 40;
/**
 * Unknown fields named, past which they are counted: a reason is kept (and printed) for each of thousands
 * of bad lines, and one naming every field of a line of a megabyte would be about as long as the line.
 */
const SHOWN_KEYS = 10;

/** A value as the line has it, short: a plain word bare (`del`), anything else as JSON. */
function shown(value: unknown): string {
  let text: string;
  try {
    text =
      typeof value === 'string' && /^[\w.:@*#/-]+$/.test(value)
        ? value
        : (JSON.stringify(value) ?? 'nothing');
  } catch {
    // JSON.parse takes nesting of any depth, JSON.stringify runs out of stack: one bad line, not a file that
    // cannot be read.
    text = 'a value nested too deeply to show';
  }
  return text.length > SHOWN_CHARS ? `${text.slice(0, SHOWN_CHARS)}…` : text;
}

function valueAt(row: Record<string, unknown>, path: readonly PropertyKey[]): unknown {
  return path.length === 1 ? row[String(path[0])] : undefined;
}

function problem(issue: z.core.$ZodIssue, row: Record<string, unknown>): string {
  const field = issue.path.map(String).join('.');
  const value = valueAt(row, issue.path);
  switch (issue.code) {
    case 'invalid_type':
      if (value === undefined) {
        // The likeliest cause: a file written for one tenant, imported without --tenant.
        const hint = field === 'tenantId' ? ' (give each row a tenantId, or pass --tenant)' : '';
        return `${field} is missing${hint}`;
      }
      return `${field} must be a ${issue.expected} (got ${shown(value)})`;
    case 'invalid_value':
      return `${field} must be ${issue.values.map(String).join(' or ')} (got ${shown(value)})`;
    case 'invalid_format':
      return `${field} must be 1 to 120 letters, digits, _ or - (got ${shown(value)})`;
    case 'unrecognized_keys': {
      const named = issue.keys.slice(0, SHOWN_KEYS).map((key) => shown(key));
      const more = issue.keys.length - named.length;
      return (
        `unknown field${issue.keys.length > 1 ? 's' : ''} ${named.join(', ')}` +
        `${more > 0 ? ` and ${more} more` : ''} ` +
        `(a line has op, tenantId and two of ${MEMBERSHIP_ID_FIELDS.join(', ')})`
      );
    }
    case 'custom': {
      const named = issue.params?.['idsNamed'];
      if (typeof named === 'number')
        return `a line must name exactly two of ${MEMBERSHIP_ID_FIELDS.join(', ')} (got ${COUNTS[named] ?? named})`;
      return `${field || 'the line'}: ${issue.message}`;
    }
    default:
      return `${field || 'the line'}: ${issue.message}`;
  }
}

/**
 * Every problem of a membership file's row, in plain words, with the value the row has where one is
 * wrong: `op must be add or remove (got del); tenantId is missing; …`. The row is the operator's own file,
 * so its values are shown; reasons sent elsewhere (dead letters) use `describeIssues`, which shows none.
 */
export function rowProblems(error: z.ZodError, row: Record<string, unknown>): string {
  return error.issues.map((issue) => problem(issue, row)).join('; ');
}
