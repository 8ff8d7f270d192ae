import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { findPackageRoot } from '../../src/config/load.js';

// What an application imports from the package must come with TypeScript declarations: tsc emits one next
// to every module under dist/src, so each entry point must be such a module or name one as its `types`.
const root = findPackageRoot();
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as {
  exports: Record<string, string | { types?: string; default: string }>;
  bin: Record<string, string>;
};

/** The source file tsc compiles to a `./dist/src/….js` or `….d.ts` path. */
const sourceOf = (target: string): string | undefined => {
  const match = /^\.\/dist\/(src\/.+)\.(?:d\.ts|js)$/.exec(target);
  return match?.[1] && join(root, `${match[1]}.ts`);
};

describe('package.json exports', () => {
  it.each(Object.entries(pkg.exports))('%s has declarations and code that the build writes', (_, target) => {
    const types = typeof target === 'string' ? target : target.types;
    const source = types === undefined ? undefined : sourceOf(types);
    expect(source, 'declarations of a module under src/').toBeDefined();
    expect(existsSync(source ?? ''), source).toBe(true);
    const code = typeof target === 'string' ? target : target.default;
    if (code.startsWith('./dist/src/')) expect(existsSync(sourceOf(code) ?? '')).toBe(true);
    // The one file outside tsc's output: scripts/build-client.ts writes it from src/sdk/client.
    else expect(code).toBe('./dist/client/warren-client.js');
  });
});
