import {
  appendFileSync,
  closeSync,
  openSync,
  writeSync,
  mkdtempSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { MembershipChange } from '../../../src/protocol/schemas.js';
import type { MembershipStore } from '../../../src/store/membership-store.js';
import {
  applyRows,
  MAX_BAD_LINES_KEPT,
  MAX_LINE_CHARS,
  readMembershipFile,
  replayRows,
} from '../../../src/store/membership-import.js';

const dir = mkdtempSync(join(tmpdir(), 'warren-import-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const rows = (n: number, tenantId = 'acme') =>
  Array.from({ length: n }, (_, i) => JSON.stringify({ tenantId, userId: `u${i}`, teamId: 'icu' })).join(
    '\n',
  ) + '\n';

async function replayed(file: string, plan: Awaited<ReturnType<typeof readMembershipFile>>) {
  const out: MembershipChange[] = [];
  for await (const change of replayRows(file, { format: 'jsonl' }, plan)) out.push(change);
  return out;
}

describe('membership import: validated once, read again to apply', () => {
  it('keeps no rows of a regular file, and gives them back in file order on the second reading', async () => {
    const file = join(dir, 'ok.jsonl');
    writeFileSync(file, rows(3, 'acme') + rows(2, 'globex') + 'not json\n');
    const plan = await readMembershipFile(file, { format: 'jsonl' });
    expect(plan).toMatchObject({ rows: 6, valid: 5, bad: [{ line: 6, reason: 'not valid JSON' }] });
    expect(plan.changes).toBeUndefined();
    expect([...plan.tenants].sort()).toEqual(['acme', 'globex']);
    const again = await replayed(file, plan);
    expect(again.map((c) => `${c.tenantId}/${'userId' in c ? c.userId : ''}`)).toEqual([
      'acme/u0',
      'acme/u1',
      'acme/u2',
      'globex/u0',
      'globex/u1',
    ]);
  });

  it('skips a CSV row of empty cells as a blank line, and counts lines as the file has them', async () => {
    const file = join(dir, 'commas.csv');
    writeFileSync(
      file,
      'op,tenantId,userId,teamId,groupId\r\nadd,acme,ann,icu,\r\n,,,,\r\n\r\nadd,acme,bob,,\r\n',
    );
    const plan = await readMembershipFile(file, { format: 'csv' });
    // Line 5: bob names neither a team nor a group.
    expect(plan).toMatchObject({ valid: 1, bad: [{ line: 5 }] });
  });

  it('ends lines at LF or CRLF only: a lone CR is whitespace inside a JSON row, and lines count as grep -n does', async () => {
    const file = join(dir, 'cr.jsonl');
    const row = (user: string, cr = ''): string =>
      `{"tenantId":"acme","userId":"${user}",${cr}"teamId":"icu"}`;
    writeFileSync(file, `${row('ann')}\r\n${row('bob', '\r')}\nnot json\r\n\u00e9\n${row('cy')}`);
    const plan = await readMembershipFile(file, { format: 'jsonl' });
    expect(plan).toMatchObject({
      rows: 5,
      valid: 3,
      bad: [
        { line: 3, reason: 'not valid JSON' },
        { line: 4, reason: 'not valid JSON' },
      ],
    });
    expect((await replayed(file, plan)).map((c) => ('userId' in c ? c.userId : ''))).toEqual([
      'ann',
      'bob',
      'cy',
    ]);
  });

  it('names the known columns, and the separator, for a header it does not know', async () => {
    const file = join(dir, 'semicolons.csv');
    writeFileSync(file, 'userId;teamId\nann;icu\n');
    const plan = await readMembershipFile(file, { format: 'csv', tenant: 'acme' });
    expect(plan.bad[0]).toEqual({
      line: 1,
      reason:
        'header has unknown columns: userId;teamId (known: op, tenantId, userId, teamId, groupId; columns are separated by commas)',
    });
  });

  it('says that a row without a tenant wants a tenantId or --tenant', async () => {
    const file = join(dir, 'no-tenant.csv');
    writeFileSync(file, 'userId,teamId\nann,icu\n');
    const plan = await readMembershipFile(file, { format: 'csv' });
    expect(plan.bad).toEqual([{ line: 2, reason: expect.stringContaining('or pass --tenant') }]);
    expect((await readMembershipFile(file, { format: 'csv', tenant: 'acme' })).bad).toEqual([]);
  });

  it('reports every problem of a bad line, in plain words, with the value the line has', async () => {
    const file = join(dir, 'problems.jsonl');
    writeFileSync(
      file,
      [
        '{"op":"del","userId":"alice","teamId":"icu","groupId":"nurses"}',
        '{"tenantId":"acme","userId":"ann"}',
        '{"op":null,"tenantId":"acme","userId":"cid.x","teamId":"icu","team":"er"}',
        `{"tenantId":42,"userId":"ann","teamId":"${'x'.repeat(130)}"}`,
      ].join('\n') + '\n',
    );
    const { bad } = await readMembershipFile(file, { format: 'jsonl' });
    expect(bad.map((b) => b.reason.split('; '))).toEqual([
      [
        'op must be add or remove (got del)',
        'tenantId is missing (give each row a tenantId, or pass --tenant)',
        'a line must name exactly two of userId, teamId, groupId (got three)',
      ],
      ['a line must name exactly two of userId, teamId, groupId (got one)'],
      [
        'op must be add or remove (got null)',
        'userId must be 1 to 120 letters, digits, _ or - (got cid.x)',
        'unknown field team (a line has op, tenantId and two of userId, teamId, groupId)',
      ],
      [
        'tenantId must be a string (got 42)',
        `teamId must be 1 to 120 letters, digits, _ or - (got ${'x'.repeat(40)}…)`,
      ],
    ]);
    const csv = join(dir, 'problems.csv');
    writeFileSync(csv, 'op,tenantId,userId,teamId\njoin,acme,dan,o r\n');
    expect((await readMembershipFile(csv, { format: 'csv' })).bad).toEqual([
      {
        line: 2,
        reason:
          'op must be add or remove (got join); teamId must be 1 to 120 letters, digits, _ or - (got "o r")',
      },
    ]);
  });

  it('names a few of a line’s unknown fields, and counts the rest: a reason stays short whatever the line', async () => {
    const file = join(dir, 'wide.jsonl');
    const wide = Object.fromEntries(Array.from({ length: 50_000 }, (_, i) => [`f${i}`, 1]));
    writeFileSync(file, JSON.stringify({ tenantId: 'acme', userId: 'ann', teamId: 'icu', ...wide }) + '\n');
    const { bad } = await readMembershipFile(file, { format: 'jsonl' });
    expect(bad).toEqual([
      {
        line: 1,
        reason:
          'unknown fields f0, f1, f2, f3, f4, f5, f6, f7, f8, f9 and 49990 more ' +
          '(a line has op, tenantId and two of userId, teamId, groupId)',
      },
    ]);
  });

  it('reports a line nested deeper than can be shown as a bad line, and reads on', async () => {
    const file = join(dir, 'deep.jsonl');
    const deep = '['.repeat(200_000) + ']'.repeat(200_000);
    writeFileSync(file, `{"tenantId":"acme","userId":${deep},"teamId":"icu"}\n` + rows(1));
    const plan = await readMembershipFile(file, { format: 'jsonl' });
    expect(plan).toMatchObject({ rows: 2, valid: 1 });
    expect(plan.bad).toEqual([{ line: 1, reason: expect.stringContaining('userId must be a string') }]);
  });

  it('reports a line longer than any row can be (a JSON array on one line) as such, unparsed, and reads on', async () => {
    const file = join(dir, 'array.json');
    const array = JSON.stringify(
      Array.from({ length: 40_000 }, (_, i) => ({ tenantId: 'acme', userId: `u${i}`, teamId: 'icu' })),
    );
    expect(array.length).toBeGreaterThan(MAX_LINE_CHARS);
    writeFileSync(file, `${array}\r\n${rows(1)}`);
    const plan = await readMembershipFile(file, { format: 'jsonl' });
    expect(plan).toMatchObject({ rows: 2, valid: 1 });
    expect(plan.bad).toEqual([
      {
        line: 1,
        reason: `longer than ${MAX_LINE_CHARS} characters: a membership file holds one row per line (JSON Lines, not a JSON array)`,
      },
    ]);
    // As a CSV header it ends the file, as any bad header does.
    const csv = join(dir, 'long-header.csv');
    writeFileSync(csv, `${'userId,'.repeat(MAX_LINE_CHARS / 4)}teamId\nann,icu\n`);
    expect(await readMembershipFile(csv, { format: 'csv', tenant: 'acme' })).toMatchObject({
      rows: 0,
      valid: 0,
      bad: [{ line: 1, reason: expect.stringContaining(`longer than ${MAX_LINE_CHARS} characters`) }],
    });
  });

  it('keeps the reasons of the first bad lines only, and counts and checks every one, however many', async () => {
    const file = join(dir, 'many-bad.jsonl');
    const bad = (i: number) =>
      JSON.stringify({ tenantId: 'acme', userId: `u${i}`.padStart(8, '0'), teamId: 'ic!' });
    const count = MAX_BAD_LINES_KEPT + 5000;
    const lines = Array.from({ length: count }, (_, i) => bad(i));
    writeFileSync(file, rows(1) + lines.join('\n') + '\n' + rows(1));
    const plan = await readMembershipFile(file, { format: 'jsonl' });
    expect(plan).toMatchObject({ rows: count + 2, valid: 2, badCount: count });
    // Memory stays bounded: a file of millions of bad lines does not hold every reason.
    expect(plan.bad).toHaveLength(MAX_BAD_LINES_KEPT);
    expect(plan.bad[0]).toEqual({ line: 2, reason: expect.stringContaining('teamId must be') });
    expect(plan.bad.at(-1)?.line).toBe(MAX_BAD_LINES_KEPT + 1);

    // Read again, a line past those kept turning valid meanwhile is still found, where it is.
    const rowsRead = replayRows(file, { format: 'jsonl' }, plan)[Symbol.asyncIterator]();
    expect((await rowsRead.next()).value).toMatchObject({ userId: 'u0' });
    const target = count - 10;
    const offset = Buffer.byteLength(rows(1) + lines.slice(0, target).join('\n') + '\n');
    const fd = openSync(file, 'r+');
    writeSync(fd, (lines[target] as string).replace('ic!', 'icu'), offset);
    closeSync(fd);
    await expect(
      (async () => {
        for (let r = await rowsRead.next(); !r.done; r = await rowsRead.next());
      })(),
    ).rejects.toThrow(`line ${target + 2} reads differently now`);
  });

  it('stops when the file changed after it was validated, whatever the change', async () => {
    const grown = join(dir, 'grown.jsonl');
    writeFileSync(grown, rows(3));
    let plan = await readMembershipFile(grown, { format: 'jsonl' });
    appendFileSync(grown, 'not json\n');
    await expect(replayed(grown, plan)).rejects.toThrow(`${grown} changed after it was validated`);

    // Same size, every line still valid, its modification time put back (`cp -p`, `rsync -a`): another
    // file in its place, or the same one changed since (its status-change time).
    const replaced = join(dir, 'replaced.jsonl');
    writeFileSync(replaced, rows(3));
    plan = await readMembershipFile(replaced, { format: 'jsonl' });
    const { atime, mtime } = statSync(replaced);
    writeFileSync(`${replaced}.new`, rows(3).replace('u1', 'u9'));
    utimesSync(`${replaced}.new`, atime, mtime);
    renameSync(`${replaced}.new`, replaced);
    await expect(replayed(replaced, plan)).rejects.toThrow(/its dev, ino|its ino/);

    const edited = join(dir, 'edited.jsonl');
    writeFileSync(edited, rows(3));
    plan = await readMembershipFile(edited, { format: 'jsonl' });
    await new Promise((r) => setTimeout(r, 20));
    writeFileSync(edited, rows(3).replace('u1', 'u9'));
    utimesSync(edited, statSync(edited).atime, new Date(plan.source.mtimeMs));
    await expect(replayed(edited, plan)).rejects.toThrow(/ctimeMs/);
  });
});

describe('membership import: applying', () => {
  /** A store that keeps memberships in a set and records each batch it was given. */
  function fakeStore() {
    const members = new Set<string>();
    const batches: MembershipChange[][] = [];
    const store = {
      applyBulk: (tenantId: string, batch: MembershipChange[]) => {
        batches.push(batch);
        let changed = 0;
        for (const c of batch) {
          if (c.tenantId !== tenantId) throw new Error('a batch of two tenants');
          const key = `${c.tenantId}/${'userId' in c ? c.userId : ''}/${'teamId' in c ? c.teamId : ''}`;
          const before = members.has(key);
          if (c.op === 'add') members.add(key);
          else members.delete(key);
          if (before !== members.has(key)) changed += 1;
        }
        return Promise.resolve(changed);
      },
    };
    return { members, batches, store: store as unknown as MembershipStore };
  }

  it('applies each tenant’s rows in order, in batches of one tenant, however the tenants interleave', async () => {
    const tenants = Array.from({ length: 50 }, (_, i) => `t${i}`);
    const change = (op: 'add' | 'remove', tenantId: string, userId: string): MembershipChange => ({
      op,
      tenantId,
      kind: 'user-team',
      userId,
      teamId: 'icu',
    });
    // Fifty tenants one row each (past 20 batches of 2 held: every tenant's rows so far are applied), then
    // each tenant's removal of that row and an add of another (a tenant's batch full).
    const all = [
      ...tenants.map((t) => change('add', t, 'ann')),
      ...tenants.flatMap((t) => [change('remove', t, 'ann'), change('add', t, 'bob')]),
    ];
    const { members, batches, store } = fakeStore();
    const seen: number[] = [];
    const result = await applyRows(store, all, 2, (n) => seen.push(n));
    expect(result).toEqual({ applied: 150, changed: 150 });
    expect([...members].sort()).toEqual(tenants.map((t) => `${t}/bob/icu`).sort());
    expect(batches.every((b) => b.length >= 1 && b.length <= 2)).toBe(true);
    expect(seen.at(-1)).toBe(150);
  });
});
