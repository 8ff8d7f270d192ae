import { describe, expect, it } from 'vitest';
import type { TenantView } from '../../../src/resolver/tenant-view.js';
import { TenantViews } from '../../../src/resolver/tenant-views.js';

describe('TenantViews', () => {
  it('keeps the most recently used views, forgetting the others only when trimmed', () => {
    const made: string[] = [];
    const invalidated: string[] = [];
    const sizes: number[] = [];
    const views = new TenantViews(
      (tenantId) => {
        made.push(tenantId);
        return { tenantId, invalidate: () => invalidated.push(tenantId) } as unknown as TenantView;
      },
      2,
      (size) => sizes.push(size),
    );
    const a = views.get('a');
    views.get('b');
    views.get('c');
    // Not between batches yet: all three are still there, the same objects.
    expect(views.size).toBe(3);
    expect(views.get('a')).toBe(a);
    views.trim();
    // `b` was the least recently used: `a` was asked for again after it.
    expect([...views.values()].map((v) => v.tenantId)).toEqual(['c', 'a']);
    expect(sizes.at(-1)).toBe(2);
    // Its native memory freed at once.
    expect(invalidated).toEqual(['b']);
    // Forgotten, so made afresh.
    views.get('b');
    expect(made).toEqual(['a', 'b', 'c', 'b']);
  });
});
