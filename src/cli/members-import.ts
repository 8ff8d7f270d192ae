import { existsSync, statSync } from 'node:fs';
import { SingleBar, Presets } from 'cli-progress';
import type { WarrenConfig } from '../config/schema.js';
import { errorMessage } from '../shared/errors.js';
import { Keys } from '../store/keys.js';
import {
  applyRows,
  BatchFailed,
  FileChanged,
  formatOf,
  readMembershipFile,
  STDIN,
  validRows,
  type ImportFormat,
  type ImportPlan,
} from '../store/membership-import.js';
import { MembershipStore } from '../store/membership-store.js';
import { closeRedis, refusedByRedis } from '../store/redis.js';
import { commandRedis } from './command-redis.js';

export interface ImportArgs {
  file: string;
  format?: ImportFormat;
  tenant?: string;
  skipInvalid: boolean;
  /** Validate and report only: nothing is written, Redis is not asked. */
  dryRun?: boolean;
}

// Rows per Lua call: large enough to amortise the round trip, small enough not to block Redis long (~20 ms).
const BATCH = 5000;

function bar(label: string): SingleBar {
  return new SingleBar(
    {
      format: `${label} [{bar}] {percentage}% | {value}/{total} | {eta_formatted} left`,
      stream: process.stderr,
      hideCursor: true,
      // Stopped on SIGINT and SIGTERM too (the CLI then exits): Ctrl-C would leave the terminal without
      // its cursor, and without line wrapping, which the bar turns off while it draws.
      gracefulExit: true,
    },
    Presets.shades_classic,
  );
}

export async function runMembersImport(config: Readonly<WarrenConfig>, args: ImportArgs): Promise<number> {
  // `-` for standard input, read once like any other pipe.
  const stdin = args.file === STDIN;
  if (!stdin && !existsSync(args.file)) {
    console.error(`warren members import: no such file: ${args.file}`);
    return 2;
  }
  // A pipe (/dev/stdin, <(zcat …)) is read like a file; a directory is not.
  if (!stdin && statSync(args.file).isDirectory()) {
    console.error(`warren members import: ${args.file} is a directory, not a file`);
    return 2;
  }
  const format = args.format ?? formatOf(args.file);
  if (!format) {
    console.error(
      stdin
        ? 'warren members import: standard input has no file name to tell the format by; pass --format jsonl|csv'
        : 'warren members import: cannot tell the format from the file name; pass --format jsonl|csv',
    );
    return 2;
  }
  const started = performance.now();
  const reading = bar('validating');
  // A pipe has no size to measure the reading against: no bar then (the import's own bar counts rows).
  const sized = !stdin && statSync(args.file).isFile();
  if (sized) reading.start(1, 0);
  const options = { format, ...(args.tenant ? { tenant: args.tenant } : {}) };
  let plan: ImportPlan;
  try {
    plan = await readMembershipFile(args.file, {
      ...options,
      ...(sized
        ? {
            onBytes: (read: number, total: number) => {
              reading.setTotal(total);
              reading.update(read);
            },
          }
        : {}),
    });
  } catch (error) {
    console.error(`warren members import: cannot read ${args.file}: ${errorMessage(error)}`);
    return 1;
  } finally {
    // The cursor comes back whatever happened.
    reading.stop();
  }

  for (const bad of plan.bad) console.error(`${args.file}:${bad.line}: ${bad.reason}`);
  const unlisted = plan.badCount - plan.bad.length;
  if (unlisted > 0) {
    console.error(
      `… and ${unlisted} more bad line(s), not listed (the next at line ` +
        `${plan.badLines.select(plan.bad.length) ?? '?'})`,
    );
  }
  // Bad lines stop the import unless skipped, and then still when nothing valid is left.
  const refused = plan.badCount > 0 && (!args.skipInvalid || plan.valid === 0);
  if (args.dryRun) {
    console.log(
      `Dry run: ${plan.valid} valid row(s) for ${plan.tenants.size} tenant(s)` +
        (plan.badCount > 0 ? `, ${plan.badCount} bad line(s)` : '') +
        '; nothing was imported.',
    );
    return refused ? 1 : 0;
  }
  if (refused) {
    console.error(
      // A bad CSV header is a bad line before any row.
      `\n${plan.badCount} bad line(s)${plan.rows > 0 ? ` of ${plan.rows}` : ''}; nothing was imported.` +
        (plan.valid > 0 ? ' Fix them, or pass --skip-invalid to import the valid rows only.' : ''),
    );
    return 1;
  }

  if (plan.rows === 0) {
    console.log(`Nothing to import: ${args.file} holds no rows.`);
    return 0;
  }
  const redis = await commandRedis(config, 'warren-import');
  const applying = bar('importing ');
  applying.start(plan.valid, 0);
  let done = 0;
  // Stopped by a signal (Ctrl-C, a service manager, a job runner's timeout), the CLI exits once the signal's
  // handlers have run: what was applied stays, and without a word the operator could not tell a half
  // import from a whole one.
  const stopped = (signal: NodeJS.Signals): void => {
    applying.stop();
    console.error(
      `\nImport stopped (${signal}) after ${done} of ${plan.valid} rows (those of a batch on its way to ` +
        'Redis may be in too). Every row is an add or a remove, so running the same import again ' +
        'completes it without doubling anything.',
    );
  };
  process.once('SIGINT', stopped);
  process.once('SIGTERM', stopped);
  try {
    const { applied, changed } = await applyRows(
      new MembershipStore(redis, new Keys(config.prefix)),
      validRows(args.file, options, plan),
      BATCH,
      (n) => {
        done = n;
        applying.update(n);
      },
    );
    applying.stop();
    const seconds = (performance.now() - started) / 1000;
    console.log(
      `Imported ${applied} row(s) for ${plan.tenants.size} tenant(s) in ${seconds.toFixed(1)} s ` +
        `(${changed} changed memberships, ${applied - changed} already as requested)` +
        (plan.badCount > 0 ? `; skipped ${plan.badCount} bad line(s).` : '.'),
    );
    return 0;
  } catch (error) {
    applying.stop();
    // Redis applies a batch's rows up to the one it refuses, and keeps them.
    const failed = error instanceof BatchFailed ? error : undefined;
    const refused = refusedByRedis(failed?.cause ?? error);
    console.error(
      `\nImport stopped after ${done} of ${plan.valid} rows` +
        (refused
          ? ` (of the ${failed?.rows ?? 'next'} in the batch it refused, those before the one refused may be in)`
          : '') +
        `: ${errorMessage(error)}\n` +
        (refused
          ? 'Redis refused a write for good: a key Warren writes holds a value of the wrong type, or ' +
            'the Redis user may not run a command Warren needs (NOPERM: see its ACL). Mend or delete that ' +
            'key (redis-cli TYPE tells), or the ACL, then run the same import again: every row is ' +
            'an add or a remove, so it completes without doubling anything.'
          : error instanceof FileChanged
            ? 'The first rows of each tenant, in file order, may have been applied from the changed file. ' +
              'Check the file, then run the import again: every row is an add or a remove.'
            : 'Every row is an add or a remove, so running the same import again completes it without ' +
              'doubling anything.'),
    );
    return 1;
  } finally {
    process.off('SIGINT', stopped);
    process.off('SIGTERM', stopped);
    await closeRedis(redis);
  }
}
