import { describe, expect, it } from 'vitest';
import { withoutCredentials } from '../../../src/shared/errors.js';

describe('withoutCredentials', () => {
  it('masks credentials in every form a URL or a mistyped value carries them', () => {
    const cases: [string, string][] = [
      ['redis://:hunter2@cache:6379/0', 'redis://***@cache:6379/0'],
      ['amqp://guest:guest@127.0.0.1:5672', 'amqp://***@127.0.0.1:5672'],
      // Unencoded @ and / in the password: nothing of it survives.
      ['rediss://default:p@ss@host:6380', 'rediss://***@host:6380'],
      ['redis://:ab/cd+ef==@host:6379', 'redis://***@host:6379'],
      // No scheme.
      ['guest:pw@rabbit:5672', '***@rabbit:5672'],
      // A password in the query (ioredis accepts it).
      ['redis://127.0.0.1:1/0?password=hunter2xyz', 'redis://127.0.0.1:1/0?password=***'],
      ['redis://host/0?db=1&Password=x&name=warren', 'redis://host/0?db=1&Password=***&name=warren'],
      // An @ inside a secret parameter, or in another one: the password never shows (the host may not).
      ['redis://cache:6379/0?password=hunter@2xyz', 'redis://cache:6379/0?password=***'],
      ['redis://:pw@host/0?password=ab@cd&db=1', 'redis://***@host/0?password=***&db=1'],
      // Nothing to mask.
      ['redis://127.0.0.1:6379', 'redis://127.0.0.1:6379'],
    ];
    for (const [input, masked] of cases) expect(withoutCredentials(input), input).toBe(masked);
  });
});
