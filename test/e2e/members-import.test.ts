import { execFileSync, spawn, spawnSync } from 'node:child_process';
import {
  closeSync,
  constants,
  createWriteStream,
  mkdtempSync,
  openSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { findPackageRoot } from '../../src/config/load.js';
import type { EventInput, WarrenPublisher } from '../../src/sdk/publisher/index.js';
import { Keys } from '../../src/store/keys.js';
import { MAX_BAD_LINES_KEPT } from '../../src/store/membership-import.js';
import {
  eventually,
  openTab,
  startTestStack,
  testConfig,
  testPrefix,
  type TestStack,
  type TestTab,
  token,
} from '../support/harness.js';

// `warren members import FILE` as an operator runs it, from the TypeScript sources (a stale build cannot
// hide a change), configured by WARREN_* variables only. What it imported is checked the way a user
// would notice: by who receives an event afterwards, through a resolver that was already running.

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function warrenMembersImport(prefix: string, args: string[], input?: string): Promise<Run> {
  const root = findPackageRoot();
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', join(root, 'src/cli/warren.ts'), 'members', 'import', ...args],
    {
      cwd: root,
      env: {
        PATH: process.env['PATH'] ?? '',
        WARREN_PREFIX: prefix,
        WARREN_REDIS_URL: inject('redisUrl'),
        WARREN_RABBITMQ_URL: inject('rabbitmqUrl'),
      },
      stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    },
  );
  if (input !== undefined) child.stdin?.end(input);
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
}

describe('warren members import', () => {
  const prefix = testPrefix('import');
  const config = testConfig(prefix);
  const dir = mkdtempSync(join(tmpdir(), 'warren-import-'));
  const users = ['ann', 'bob', 'cid', 'dan'];
  const tabs = new Map<string, TestTab>();
  let stack: TestStack;
  let warren: WarrenPublisher;
  let n = 0;

  beforeAll(async () => {
    stack = await startTestStack(config);
    const { gateway } = stack;
    warren = stack.warren;
    for (const user of users) {
      tabs.set(user, await openTab(gateway.port, await token({ sub: user, tid: 'acme' })));
    }
    tabs.set('globex/ann', await openTab(gateway.port, await token({ sub: 'ann', tid: 'globex' })));
  });
  afterAll(async () => {
    for (const tab of tabs.values()) tab.ws.terminate();
    await stack.close();
    rmSync(dir, { recursive: true, force: true });
  });

  function file(name: string, text: string): string {
    const path = join(dir, name);
    writeFileSync(path, text);
    return path;
  }

  /** Who of acme's users (and globex's ann) receives an event sent to `audience` in `tenantId`. */
  async function reach(audience: EventInput['audience'], tenantId = 'acme'): Promise<string[]> {
    n += 1;
    const id = `e${n}`;
    await warren.publishEvent({ id, tenantId, type: 'test.event', audience });
    for (const tid of ['acme', 'globex']) {
      await warren.publishEvent({
        id: `m${n}-${tid}`,
        tenantId: tid,
        type: 'test.marker',
        audience: { users },
      });
    }
    const all = [...tabs.entries()];
    await eventually(
      () =>
        all.every(([key, tab]) =>
          tab.eventIds().includes(`m${n}-${key.startsWith('globex') ? 'globex' : 'acme'}`),
        ),
      `markers m${n}`,
    );
    return all.filter(([, tab]) => tab.eventIds().includes(id)).map(([key]) => key);
  }

  const summary =
    /^Imported (\d+) row\(s\) for (\d+) tenant\(s\) in \d+\.\d s \((\d+) changed memberships, (\d+) already as requested\)\.$/m;

  it('imports a JSONL file; a resolver that had the team cached sees the new members at once', async () => {
    await warren.addUserToTeam('acme', 'dan', 'icu');
    expect(await reach({ teams: ['icu'] })).toEqual(['dan']);

    const jsonl = file(
      'members.jsonl',
      [
        { tenantId: 'acme', userId: 'ann', teamId: 'icu' },
        { op: 'remove', tenantId: 'acme', userId: 'dan', teamId: 'icu' },
        { op: 'add', tenantId: 'acme', userId: 'bob', groupId: 'nurses' },
        { op: 'add', tenantId: 'acme', groupId: 'nurses', teamId: 'ward' },
        { tenantId: 'acme', userId: 'ann', teamId: 'icu' },
        { tenantId: 'globex', userId: 'ann', teamId: 'icu' },
      ]
        .map((row) => JSON.stringify(row))
        .join('\n') + '\n',
    );
    const run = await warrenMembersImport(prefix, [jsonl]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout.match(summary)?.slice(1)).toEqual(['6', '2', '5', '1']);

    expect(await reach({ teams: ['icu'] })).toEqual(['ann']);
    expect(await reach({ teams: ['ward'] })).toEqual(['bob']);
    expect(await reach({ teams: ['icu'] }, 'globex')).toEqual(['globex/ann']);
  });

  it('imports a CSV file: quoted cells, comments, blank lines, the tenant from --tenant', async () => {
    const csv = file(
      'members.csv',
      [
        'userId,teamId,groupId',
        'cid,lab,',
        '"dan","lab",""',
        '# from the HR export',
        '',
        ',lab,doctors',
        'ann,,doctors',
      ].join('\r\n'),
    );
    const run = await warrenMembersImport(prefix, [csv, '--tenant', 'acme']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout.match(summary)?.slice(1)).toEqual(['4', '1', '4', '0']);
    expect(await reach({ teams: ['lab'] })).toEqual(['ann', 'cid', 'dan']);
  });

  it('imports from a pipe, which it reads once, applying each tenant’s rows in order', async () => {
    const rows = [
      { tenantId: 'acme', userId: 'dan', teamId: 'pipe' },
      { tenantId: 'globex', userId: 'ann', teamId: 'pipe' },
      { tenantId: 'acme', userId: 'cid', teamId: 'pipe' },
      // Added, then removed further down: it ends removed.
      { op: 'remove', tenantId: 'acme', userId: 'dan', teamId: 'pipe' },
    ];
    // A named pipe, as `<(zcat members.jsonl.gz)` gives: it can be read once only.
    const fifo = join(dir, 'members.fifo');
    execFileSync('mkfifo', [fifo]);
    const running = warrenMembersImport(prefix, [fifo, '--format', 'jsonl']);
    const writer = createWriteStream(fifo);
    writer.on('error', () => {});
    // Opening a pipe to write waits for a reader: one that failed before it opened the pipe must not leave
    // the test waiting, so a reader of the test's own then takes its place.
    let opened = false;
    writer.once('open', () => (opened = true));
    void running.then(() => {
      if (!opened) closeSync(openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK));
    });
    for (const row of rows) {
      writer.write(JSON.stringify(row) + '\n');
      await new Promise((r) => setTimeout(r, 5));
    }
    writer.end();
    const run = await running;
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout.match(summary)?.slice(1)).toEqual(['4', '2', '4', '0']);
    expect(await reach({ teams: ['pipe'] })).toEqual(['cid']);
    expect(await reach({ teams: ['pipe'] }, 'globex')).toEqual(['globex/ann']);
  });

  it('imports a JSONL file saved with a byte-order mark', async () => {
    const jsonl = file(
      'bom.jsonl',
      '\uFEFF' + JSON.stringify({ tenantId: 'acme', userId: 'cid', teamId: 'bom' }),
    );
    const run = await warrenMembersImport(prefix, [jsonl]);
    expect(run.code, run.stderr).toBe(0);
    expect(await reach({ teams: ['bom'] })).toEqual(['cid']);
  });

  it('with --dry-run validates and reports, and imports nothing', async () => {
    const good = file(
      'dry.jsonl',
      JSON.stringify({ tenantId: 'acme', userId: 'cid', teamId: 'drylab' }) + '\n',
    );
    const run = await warrenMembersImport(prefix, ['--dry-run', good]);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain('Dry run: 1 valid row(s) for 1 tenant(s); nothing was imported.');
    const bad = file(
      'dry-bad.jsonl',
      JSON.stringify({ tenantId: 'acme', userId: 'c.d', teamId: 'drylab' }) + '\n',
    );
    const failed = await warrenMembersImport(prefix, ['--dry-run', bad]);
    expect(failed.code).toBe(1);
    expect(failed.stderr).toContain(`${bad}:1: `);
    expect(failed.stdout).toContain(
      'Dry run: 0 valid row(s) for 0 tenant(s), 1 bad line(s); nothing was imported.',
    );
    expect(await reach({ teams: ['drylab'] })).toEqual([]);
  });

  it('reports every bad JSONL line by number, exits non-zero, imports nothing', async () => {
    const lines = [
      JSON.stringify({ tenantId: 'acme', userId: 'ann', teamId: 'er' }),
      '{"tenantId": "acme", "userId": "bob", ',
      JSON.stringify({ tenantId: 'acme', userId: 'bob', teamId: 'er' }),
      JSON.stringify({ tenantId: 'acme', userId: 'cid.x', teamId: 'er' }),
      JSON.stringify({ tenantId: 'acme', userId: 'cid', teamId: 'er', groupId: 'nurses' }),
      '',
      JSON.stringify({ op: 'toggle', tenantId: 'acme', userId: 'dan', teamId: 'er' }),
      JSON.stringify(['acme', 'dan', 'er']),
      JSON.stringify({ tenantId: 'acme', userId: 'dan', teamId: 'er' }),
      // null is not "absent": a removal whose op came out null must not turn into an add.
      JSON.stringify({ op: null, tenantId: 'acme', userId: 'eve', teamId: 'er' }),
      // Every problem of a line, not only its first kind.
      JSON.stringify({ op: 'del', userId: 'fay', teamId: 'er', groupId: 'nurses' }),
    ];
    const jsonl = file('bad.jsonl', lines.join('\n') + '\n');
    const run = await warrenMembersImport(prefix, [jsonl]);
    expect(run.code).not.toBe(0);
    expect(run.stdout).toBe('');
    expect(reported(run.stderr, jsonl)).toEqual([
      [2, has('not valid JSON')],
      [4, has('userId must be 1 to 120 letters, digits, _ or - (got cid.x)')],
      [5, has('a line must name exactly two of userId, teamId, groupId (got three)')],
      [7, has('op must be add or remove (got toggle)')],
      [8, has('not a JSON object')],
      [10, has('op must be add or remove (got null)')],
      [11, has('op must be add or remove (got del)')],
    ]);
    expect(run.stderr).toContain(
      `${jsonl}:11: op must be add or remove (got del); ` +
        'tenantId is missing (give each row a tenantId, or pass --tenant); ' +
        'a line must name exactly two of userId, teamId, groupId (got three)\n',
    );
    expect(run.stderr).toContain('7 bad line(s) of 10; nothing was imported.');
    expect(await reach({ teams: ['er'] })).toEqual([]);
  });

  it('reports every bad CSV line by number, exits non-zero, imports nothing (unless told to skip them)', async () => {
    const csv = file(
      'bad.csv',
      [
        'op,tenantId,userId,teamId',
        'add,acme,ann,or',
        'add,acme,bob',
        'add,acme,cid,or',
        'join,acme,dan,or',
        'add,acme,dan,o r',
        'add,acme,bob,or,extra',
        // A cleared op or tenant cell is not a default: not an add, not the --tenant tenant.
        ',acme,eve,or',
        'remove,,ann,or',
      ].join('\n'),
    );
    const run = await warrenMembersImport(prefix, [csv, '--tenant', 'acme']);
    expect(run.code).not.toBe(0);
    expect(reported(run.stderr, csv)).toEqual([
      [3, has('expected 4 cells, found 3')],
      [5, has('op must be add or remove (got join)')],
      [6, has('teamId must be 1 to 120 letters, digits, _ or - (got "o r")')],
      [7, has('expected 4 cells, found 5')],
      [8, has('empty op')],
      [9, has('empty tenantId')],
    ]);
    expect(run.stderr).toContain('6 bad line(s) of 8; nothing was imported.');
    expect(await reach({ teams: ['or'] })).toEqual([]);

    // The operator's way out: import the good rows, still listing the bad ones.
    const skipping = await warrenMembersImport(prefix, [csv, '--tenant', 'acme', '--skip-invalid']);
    expect(skipping.code, skipping.stderr).toBe(0);
    expect(reported(skipping.stderr, csv).map(([line]) => line)).toEqual([3, 5, 6, 7, 8, 9]);
    expect(skipping.stdout).toMatch(/^Imported 2 row\(s\) .*; skipped 6 bad line\(s\)\.$/m);
    expect(await reach({ teams: ['or'] })).toEqual(['ann', 'cid']);
  });

  it('refuses bad arguments up front: a malformed --tenant, a directory, two files', async () => {
    const csv = file('members-args.csv', ['userId,teamId', 'ann,args'].join('\n'));
    const tenant = await warrenMembersImport(prefix, [csv, '--tenant', 'ac.me']);
    expect(tenant.code).toBe(2);
    expect(tenant.stderr).toContain('--tenant must match');
    const directory = await warrenMembersImport(prefix, [dirname(csv)]);
    expect(directory.code).toBe(2);
    expect(directory.stderr).toContain('is a directory');
    expect(directory.stderr).not.toMatch(/\n\s+at /);
    const two = await warrenMembersImport(prefix, [csv, csv, '--tenant', 'acme']);
    expect(two.code).toBe(2);
    expect(two.stderr).toContain('one file expected, got 2');
    expect(await reach({ teams: ['args'] })).toEqual([]);
  });

  it('reads standard input given as -, skipping indented comments, and says a quoted comma splits a cell', async () => {
    const input = ['userId,teamId', '  # ward 4, night shift', 'ann,stdin', '"bob, jr",stdin'].join('\n');
    const bad = await warrenMembersImport(prefix, ['-', '--format', 'csv', '--tenant', 'acme'], input);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/:4: expected 2 cells, found 3 \(a comma inside quotes counts too/);
    const formatless = await warrenMembersImport(prefix, ['-', '--tenant', 'acme'], input);
    expect(formatless.code).toBe(2);
    expect(formatless.stderr).toContain(
      'standard input has no file name to tell the format by; pass --format',
    );
    const good = ['userId,teamId', '  # ward 4', 'ann,stdin'].join('\n');
    const run = await warrenMembersImport(prefix, ['-', '--format', 'csv', '--tenant', 'acme'], good);
    expect(run.code, run.stderr).toBe(0);
    expect(await reach({ teams: ['stdin'] })).toEqual(['ann']);
  });

  it('refuses a header that names a column twice or has an empty name, before reading any row', async () => {
    const twice = file('twice.csv', ['userId,userId,teamId', 'ann,bob,or'].join('\n'));
    const run = await warrenMembersImport(prefix, [twice, '--tenant', 'acme']);
    expect(run.code).not.toBe(0);
    expect(reported(run.stderr, twice)).toEqual([[1, has('names a column more than once: userId')]]);
    expect(run.stderr).toContain('\n1 bad line(s); nothing was imported.');

    const trailing = file('trailing.csv', ['userId,teamId,', 'ann,or,'].join('\n'));
    const empty = await warrenMembersImport(prefix, [trailing, '--tenant', 'acme']);
    expect(empty.code).not.toBe(0);
    expect(reported(empty.stderr, trailing)).toEqual([[1, has('empty column name')]]);
  });

  it('says that rows of a batch Redis refused half-way may be in, and what to mend before running again', async () => {
    const redis = new Redis(inject('redisUrl'));
    try {
      // Team b's member bitmap, of a tenant of its own, is a key of another type: its row is refused.
      await redis.hset(new Keys(prefix).teamUsers('wrongtype', 'b'), 'x', '1');
      const rows = [
        { tenantId: 'wrongtype', userId: 'alice', teamId: 'a' },
        { tenantId: 'wrongtype', userId: 'bob', teamId: 'b' },
        // Another tenant's batch, never tried: not counted as the refused one's.
        { tenantId: 'wrongtype-other', userId: 'carl', teamId: 'c' },
      ];
      const run = await warrenMembersImport(prefix, [
        file('refused.jsonl', rows.map((row) => JSON.stringify(row)).join('\n') + '\n'),
      ]);
      expect(run.code).toBe(1);
      expect(run.stderr).toContain(
        'Import stopped after 0 of 3 rows (of the 2 in the batch it refused, those before the one refused may be in): ',
      );
      expect(run.stderr).toContain('WRONGTYPE');
      expect(run.stderr).toContain('Mend or delete that key');
      expect(run.stderr).not.toContain('running the same import again completes it');
    } finally {
      await redis.quit();
    }
  });

  it('gives the terminal back its cursor and line wrapping when stopped with Ctrl-C', async (ctx) => {
    if (spawnSync('script', ['--version']).status !== 0) return ctx.skip('no script(1) for a terminal');
    const rows = Array.from({ length: 200_000 }, (_, i) =>
      JSON.stringify({ tenantId: 'ctrlc', userId: `u${i}`, teamId: 'icu' }),
    );
    const path = file('ctrlc.jsonl', rows.join('\n') + '\n');
    const root = findPackageRoot();
    const command = [process.execPath, '--import', 'tsx', join(root, 'src/cli/warren.ts')];
    // On a terminal of its own (script(1)), where the progress bars draw and Ctrl-C is a keystroke.
    const child = spawn(
      'script',
      ['-qfec', [...command, 'members', 'import', path].map((a) => `'${a}'`).join(' '), '/dev/null'],
      {
        cwd: root,
        env: {
          PATH: process.env['PATH'] ?? '',
          WARREN_PREFIX: prefix,
          WARREN_REDIS_URL: inject('redisUrl'),
        },
        stdio: ['pipe', 'pipe', 'ignore'],
      },
    );
    let output = '';
    child.stdout.on('data', (d: Buffer) => {
      // Once a bar is drawn (the cursor hidden), still validating or importing.
      if (!output.includes('\x1b[?25l') && (output += d.toString()).includes('\x1b[?25l'))
        child.stdin.write('\x03');
      else output += d.toString();
    });
    const code = await new Promise((resolve) => child.on('close', resolve));
    expect(code).toBe(130);
    expect(output.lastIndexOf('\x1b[?25h')).toBeGreaterThan(output.lastIndexOf('\x1b[?25l'));
    expect(output.lastIndexOf('\x1b[?7h')).toBeGreaterThan(output.lastIndexOf('\x1b[?7l'));
  });

  it('says how far it got when stopped by a signal while applying, and that running it again completes it', async () => {
    const rows = Array.from({ length: 300_000 }, (_, i) =>
      JSON.stringify({ tenantId: 'sigterm', userId: `u${i}`, teamId: 'icu' }),
    );
    const path = file('sigterm.jsonl', rows.join('\n') + '\n');
    const root = findPackageRoot();
    // As a service manager or a job runner stops it (not on a terminal: no progress bar is drawn).
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', join(root, 'src/cli/warren.ts'), 'members', 'import', path],
      {
        cwd: root,
        env: { PATH: process.env['PATH'] ?? '', WARREN_PREFIX: prefix, WARREN_REDIS_URL: inject('redisUrl') },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const closed = new Promise((resolve) => child.on('close', resolve));
    const redis = new Redis(inject('redisUrl'));
    try {
      // Some batches applied, not all.
      await eventually(
        async () => (await redis.hlen(new Keys(prefix).ids('sigterm'))) > 0,
        'the import applying',
        30_000,
      );
      child.kill('SIGTERM');
      expect(await closed).toBe(143);
    } finally {
      await redis.quit();
    }
    expect(stdout).not.toMatch(summary);
    expect(stderr).toMatch(/Import stopped \(SIGTERM\) after \d+ of 300000 rows/);
    expect(stderr).toContain('running the same import again completes it');
  }, 60_000);

  it('prints every bad line before it exits, its output and errors on one pipe read slowly (2>&1 | less)', async () => {
    const rows = Array.from({ length: 3000 }, (_, i) => JSON.stringify({ tenantId: 'acme', user: `u${i}` }));
    const path = file('slow-reader.jsonl', rows.join('\n') + '\n');
    const root = findPackageRoot();
    const command = [process.execPath, '--import', 'tsx', join(root, 'src/cli/warren.ts')];
    const run = [...command, 'members', 'import', '--dry-run', path].map((a) => `'${a}'`).join(' ');
    const child = spawn('sh', ['-c', `exec ${run} 2>&1`], {
      cwd: root,
      env: { PATH: process.env['PATH'] ?? '', WARREN_PREFIX: prefix },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    const exited = new Promise((resolve) => child.once('exit', resolve));
    // Nothing read for a while: the pipe fills up, and what is left to write waits in the process.
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    let output = '';
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    const code = await new Promise((resolve) => child.once('close', resolve));
    expect(code).toBe(1);
    expect(reported(output, path).map(([line]) => line)).toEqual(rows.map((_, i) => i + 1));
    expect(output).toContain('3000 bad line(s)');
  });

  it('lists the first bad lines of a file of very many and counts the rest, holding none of their reasons', async () => {
    const count = MAX_BAD_LINES_KEPT + 5;
    const path = file('many-bad.jsonl', 'not json\n'.repeat(count));
    const run = await warrenMembersImport(prefix, ['--dry-run', path]);
    expect(run.code).toBe(1);
    expect(reported(run.stderr, path).map(([line]) => line)).toEqual(
      Array.from({ length: MAX_BAD_LINES_KEPT }, (_, i) => i + 1),
    );
    expect(run.stderr).toContain(
      `… and 5 more bad line(s), not listed (the next at line ${MAX_BAD_LINES_KEPT + 1})`,
    );
    expect(run.stdout).toContain(
      `0 valid row(s) for 0 tenant(s), ${count} bad line(s); nothing was imported.`,
    );
  });

  it('says so when a file holds no rows at all', async () => {
    const blank = file('blank.jsonl', '\n\n');
    const run = await warrenMembersImport(prefix, [blank]);
    expect(run.code).toBe(0);
    expect(run.stdout).toContain(`Nothing to import: ${blank} holds no rows.`);
  });
});

const has = (fragment: string): string => expect.stringContaining(fragment) as unknown as string;

/** The `FILE:LINE: reason` lines of the output, as [line, reason]. */
function reported(stderr: string, path: string): [number, string][] {
  const prefix = `${path}:`;
  return stderr
    .split('\n')
    .filter((line) => line.startsWith(prefix))
    .map((line) => {
      const [number, ...rest] = line.slice(prefix.length).split(': ');
      return [Number(number), rest.join(': ')] as [number, string];
    });
}
