import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { MembershipChange } from '../../../src/protocol/schemas.js';
import { readMembershipFile, replayRows } from '../../../src/store/membership-import.js';

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
    const plan = await readMembershipFile(file, { format: 'jsonl', keepRows: false });
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

  it('stops when the file changed after it was validated, whatever the change', async () => {
    const grown = join(dir, 'grown.jsonl');
    writeFileSync(grown, rows(3));
    let plan = await readMembershipFile(grown, { format: 'jsonl', keepRows: false });
    appendFileSync(grown, 'not json\n');
    await expect(replayed(grown, plan)).rejects.toThrow(`${grown} changed while it was imported`);

    // Same size, every line still valid: told by its modification time.
    const edited = join(dir, 'edited.jsonl');
    writeFileSync(edited, rows(3));
    plan = await readMembershipFile(edited, { format: 'jsonl', keepRows: false });
    await new Promise((r) => setTimeout(r, 20));
    writeFileSync(edited, rows(3).replace('u1', 'u9'));
    await expect(replayed(edited, plan)).rejects.toThrow('its size or modification time differs');
  });
});
