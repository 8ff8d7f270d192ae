#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { findPackageRoot, loadConfig } from '../config/load.js';
import { ID_PATTERN, isValidId } from '../protocol/ids.js';
import { errorMessage, isWarrenError } from '../shared/errors.js';
// Its types only are imported with it: nothing heavy loads for `warren health`.
import { DEFAULT_REVOCATION_TTL_SEC } from '../store/revocation-store.js';
import { exitOnStopSignals } from './signals.js';

// Each command's modules load when it runs: `warren health`, run by the container every few seconds, must
// not load uWebSockets.js, roaring and amqplib to send one HTTP request.

// Each command's lines of the usage, by command name: `warren <command> --help` prints its own.
const COMMANDS: Readonly<Record<string, string>> = {
  gateway: `  gateway                 run a gateway node (WebSocket, /healthz, /readyz, /metrics)`,
  resolver: `  resolver                run a resolver worker (run several for throughput)`,
  dev: `  dev                     gateway and resolver in one process, nothing to configure`,
  members: `  members import FILE     bulk-load memberships from JSONL or CSV (FILE - reads standard input)
      --format jsonl|csv    default: from the file extension (needed with -)
      --tenant ID           tenant for rows that do not name one
      --skip-invalid        import the valid rows even if some are bad
      --dry-run             validate and report every bad line; import nothing`,
  token: `  token --tenant ID --user ID [--ttl SECONDS]
                          print a token the gateways accept (signed with WARREN_JWT_SECRET;
                          default lifetime 3600 s), for trying an installation out`,
  revoke: `  revoke --tenant ID --user ID [--ttl SECONDS]
                          close the user's open tabs (4001) and refuse the tokens issued to them
                          until now, for SECONDS (default 86400; at least your tokens' lifetime)`,
  explain: `  explain --tenant ID --user ID [--team ID]... [--group ID]... [--json]
                          why a user would or would not receive an event to those teams and
                          groups: their bit, the gateways holding them online, each membership
                          (direct or through which group); exit 1 when it would not, 2 when it
                          cannot tell (bad arguments, Redis not answering)`,
  status: `  status [--json]         gateways alive, connections, users online per tenant, queue depths`,
  health: `  health [gateway|resolver]
                          exit 0 if this machine's gateway (or resolver) answers /healthz, at the
                          port its configuration gives; without a role, that of the container's
                          main process (for HEALTHCHECK)`,
};

const CONFIGURATION = `Configuration: config/default.yaml, then the file named by WARREN_CONFIG, then WARREN_* variables.
See README.md for every key.`;

const USAGE = `Usage: warren <command> [options]

Commands:
${Object.values(COMMANDS).join('\n')}
  help [COMMAND]          this text, or one command's

${CONFIGURATION}`;

/** One command's usage; the whole usage for a name that is not a command. */
function usageOf(command: string | undefined): string {
  const lines = command !== undefined && Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : undefined;
  return lines === undefined ? USAGE : `Usage:\n${lines.replace(/^ {2}/, '  warren ')}\n\n${CONFIGURATION}`;
}

/** `-h` or `--help` among a command's arguments (before a `--`, after which arguments are taken as given). */
function asksForHelp(args: string[]): boolean {
  const end = args.indexOf('--');
  return (end < 0 ? args : args.slice(0, end)).some((arg) => arg === '--help' || arg === '-h');
}

function version(): string {
  const pkg = JSON.parse(readFileSync(join(findPackageRoot(), 'package.json'), 'utf8')) as {
    version: string;
  };
  return pkg.version;
}

/** What is wrong with the `--tenant ID --user ID` (required, valid ids) of a command taking no positionals. */
function userArgProblems(values: { tenant?: string; user?: string }, positionals: string[]): string[] {
  const problems: string[] = [];
  if (positionals.length > 0) problems.push(`unexpected ${positionals.join(' ')}`);
  for (const name of ['tenant', 'user'] as const) {
    const value = values[name];
    if (value === undefined) problems.push(`--${name} is required`);
    else if (!isValidId(value)) problems.push(`--${name} must match ${ID_PATTERN.source}`);
  }
  return problems;
}

/**
 * `--tenant ID --user ID [--ttl SECONDS]` (`token`, `revoke`): the values, or undefined once every problem
 * is printed with the usage. The lifetime is a whole number of seconds from 1 to a year.
 */
function userTtlArgs(
  command: string,
  args: string[],
  defaultTtl: number,
): { tenant: string; user: string; ttlSec: number } | undefined {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { tenant: { type: 'string' }, user: { type: 'string' }, ttl: { type: 'string' } },
  });
  const problems = userArgProblems(values, positionals);
  const ttlSec = values.ttl === undefined ? defaultTtl : Number(values.ttl);
  if (!/^\d+$/.test(values.ttl ?? String(defaultTtl)) || !(ttlSec >= 1 && ttlSec <= 31_536_000))
    problems.push(`--ttl must be a whole number of seconds from 1 to 31536000 (got ${values.ttl})`);
  if (problems.length > 0) {
    console.error(`warren ${command}: ${problems.join('; ')}\n\n${usageOf(command)}`);
    return undefined;
  }
  return { tenant: values.tenant as string, user: values.user as string, ttlSec };
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command !== undefined && Object.hasOwn(COMMANDS, command) && asksForHelp(rest)) {
    console.log(usageOf(command));
    return 0;
  }
  // Servers take their settings from WARREN_* and WARREN_CONFIG only: `warren gateway --port 9` must not
  // start on the configured port as if the flag had been read.
  if ((command === 'gateway' || command === 'resolver' || command === 'dev') && rest.length > 0) {
    console.error(
      `warren ${command}: takes no arguments (got ${rest.join(' ')}); set WARREN_* variables or ` +
        `WARREN_CONFIG instead, e.g. WARREN_GATEWAY_PORT=9000\n\n${usageOf(command)}`,
    );
    return 2;
  }
  switch (command) {
    case 'gateway': {
      const config = loadConfig({ require: ['jwt'] });
      return (await import('./gateway.js')).runGateway(config);
    }
    case 'resolver': {
      const config = loadConfig();
      return (await import('./resolver.js')).runResolver(config);
    }
    case 'dev': {
      const config = loadConfig({ require: ['jwtFile'] });
      return (await import('./dev.js')).runDev(config);
    }
    case 'members': {
      const [sub, ...args] = rest;
      if (sub !== 'import') {
        console.error(
          `warren members: ${sub === undefined ? 'a subcommand is needed' : `unknown subcommand "${sub}"`}` +
            ` (import)\n\n${usageOf('members')}`,
        );
        return 2;
      }
      const { values, positionals } = parseArgs({
        args,
        allowPositionals: true,
        options: {
          format: { type: 'string' },
          tenant: { type: 'string' },
          'skip-invalid': { type: 'boolean', default: false },
          'dry-run': { type: 'boolean', default: false },
        },
      });
      const file = positionals[0];
      if (!file || positionals.length > 1) {
        console.error(
          `warren members import: one file expected, got ${positionals.length}\n\n${usageOf('members')}`,
        );
        return 2;
      }
      if (values.tenant !== undefined && !isValidId(values.tenant)) {
        console.error(`warren members import: --tenant must match ${ID_PATTERN.source}`);
        return 2;
      }
      const format = values.format;
      if (format !== undefined && format !== 'jsonl' && format !== 'csv') {
        console.error(`warren members import: --format must be jsonl or csv, not ${format}`);
        return 2;
      }
      const config = loadConfig();
      return (await import('./members-import.js')).runMembersImport(config, {
        file,
        ...(format ? { format } : {}),
        ...(values.tenant ? { tenant: values.tenant } : {}),
        skipInvalid: values['skip-invalid'] ?? false,
        dryRun: values['dry-run'] ?? false,
      });
    }
    case 'token': {
      const args = userTtlArgs('token', rest, 3600);
      return args ? (await import('./token.js')).runToken(loadConfig(), args) : 2;
    }
    case 'revoke': {
      const args = userTtlArgs('revoke', rest, DEFAULT_REVOCATION_TTL_SEC);
      return args ? (await import('./revoke.js')).runRevoke(loadConfig(), args) : 2;
    }
    case 'explain': {
      const { values, positionals } = parseArgs({
        args: rest,
        allowPositionals: true,
        options: {
          tenant: { type: 'string' },
          user: { type: 'string' },
          team: { type: 'string', multiple: true },
          group: { type: 'string', multiple: true },
          json: { type: 'boolean', default: false },
        },
      });
      const problems = userArgProblems(values, positionals);
      for (const name of ['team', 'group'] as const)
        for (const value of values[name] ?? [])
          if (!isValidId(value)) problems.push(`--${name} ${value} must match ${ID_PATTERN.source}`);
      if (problems.length > 0) {
        console.error(`warren explain: ${problems.join('; ')}\n\n${usageOf('explain')}`);
        return 2;
      }
      const config = loadConfig();
      return (await import('./explain.js')).runExplain(config, {
        tenant: values.tenant as string,
        user: values.user as string,
        teams: values.team ?? [],
        groups: values.group ?? [],
        json: values.json ?? false,
      });
    }
    case 'status': {
      const { values } = parseArgs({ args: rest, options: { json: { type: 'boolean', default: false } } });
      const config = loadConfig();
      return (await import('./status.js')).runStatus(config, { json: values.json ?? false });
    }
    case 'health': {
      const [role, ...extra] = rest;
      if (extra.length > 0 || (role !== undefined && role !== 'gateway' && role !== 'resolver')) {
        console.error(
          `warren health: takes gateway, resolver or nothing (got ${rest.join(' ')})\n\n${usageOf('health')}`,
        );
        return 2;
      }
      const config = loadConfig();
      return (await import('./health.js')).runHealth(config, role);
    }
    case '--version':
    case 'version':
      console.log(version());
      return 0;
    case 'help':
      console.log(usageOf(rest[0]));
      return 0;
    case undefined:
    case '--help':
    case '-h':
      console.log(USAGE);
      return 0;
  }
  console.error(`warren: unknown command "${argv.join(' ')}"\n\n${USAGE}`);
  return 2;
}

/**
 * Exits with `code` `afterMs` after what was written to stdout and stderr has gone out, even if a handle a
 * close step left open (a client still reconnecting after its close timed out, a connection opened before
 * a failure) is still up. Not before: writes to a pipe that stdout and stderr share (`2>&1 | less`, a
 * service manager's log) wait in the process at the reader's pace, and an exit drops them.
 */
function exitOnceWritten(code: number, afterMs: number): void {
  process.exitCode = code;
  const written = (stream: NodeJS.WriteStream): Promise<void> =>
    // Called once the writes before it are out (or the stream failed: nothing more to wait for).
    new Promise((resolve) => stream.write('', () => resolve()));
  void Promise.all([written(process.stdout), written(process.stderr)]).then(() =>
    setTimeout(() => process.exit(code), afterMs).unref(),
  );
}

function fail(code: number): void {
  exitOnceWritten(code, 200);
}

/**
 * The exit code of a command that failed, where 1 is one of its answers: `explain` exits 1 when the user
 * would not be reached, so a Redis that does not answer exits 2 there (as `grep` tells trouble from no
 * match), or a script would read an outage as "not reached".
 */
const FAILED: Readonly<Record<string, number>> = { explain: 2 };

exitOnStopSignals();
main(process.argv.slice(2)).then(
  (code) => {
    // Done (stopped after a signal, or a one-shot command).
    exitOnceWritten(code, 1000);
  },
  (error: unknown) => {
    if (isWarrenError(error, 'WARREN_ERR_CONFIG')) {
      console.error(error.message);
      return fail(78);
    }
    const code = (error as { code?: unknown } | null)?.code;
    if (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS')) {
      console.error(`warren: ${(error as Error).message}\n\n${usageOf(process.argv[2])}`);
      return fail(2);
    }
    // A Warren error says what to do; anything else is unexpected and keeps its stack.
    console.error(
      isWarrenError(error)
        ? `${error.code}: ${error.message}`
        : `warren: ${error instanceof Error && error.stack ? error.stack : errorMessage(error)}`,
    );
    const command = process.argv[2];
    fail(command !== undefined && Object.hasOwn(FAILED, command) ? (FAILED[command] ?? 1) : 1);
  },
);
