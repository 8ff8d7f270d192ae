import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { PerKeyThrottle } from '../../../src/shared/throttle.js';

describe('PerKeyThrottle', () => {
  beforeEach(() => void vi.useFakeTimers());
  afterEach(() => void vi.useRealTimers());

  it('says a thing once per interval per key, then with the count of what it kept quiet', () => {
    const said: string[] = [];
    const throttle = new PerKeyThrottle(10_000);
    const tell = (key: string, n = 1) => throttle.tell(key, n, (count) => said.push(`${key}:${count}`));
    tell('acme', 3);
    tell('acme');
    tell('acme', 2);
    tell('globex');
    expect(said).toEqual(['acme:3', 'globex:1']);
    vi.advanceTimersByTime(10_000);
    tell('acme');
    // One now, and the three kept quiet since it was last said.
    expect(said).toEqual(['acme:3', 'globex:1', 'acme:4']);
  });

  it('settles a key it told with the count kept quiet since, and says the next time at once', () => {
    const said: string[] = [];
    const throttle = new PerKeyThrottle(10_000);
    const tell = (key: string, n = 1) => throttle.tell(key, n, (count) => said.push(`${key}:${count}`));
    const settle = (key: string) => throttle.settle(key, (untold) => said.push(`${key} settled:${untold}`));
    settle('acme');
    expect(said).toEqual([]);
    tell('acme', 2);
    tell('acme', 5);
    settle('acme');
    settle('acme');
    expect(said).toEqual(['acme:2', 'acme settled:5']);
    // Within the interval of the last telling, yet said: the key was settled.
    tell('acme');
    expect(said).toEqual(['acme:2', 'acme settled:5', 'acme:1']);
  });

  it('trailing, says what it kept quiet at the end of the interval though nothing happens after', () => {
    const said: string[] = [];
    const throttle = new PerKeyThrottle(10_000, true);
    const tell = (key: string, what: string) =>
      throttle.tell(key, 1, (count) => said.push(`${what}:${count}`));
    tell('presence', 'a');
    vi.advanceTimersByTime(1000);
    tell('presence', 'b');
    tell('presence', 'c');
    expect(said).toEqual(['a:1']);
    // The run stops: its last two are said once the interval is over, with the last one's words.
    vi.advanceTimersByTime(9000);
    expect(said).toEqual(['a:1', 'c:2']);
    vi.advanceTimersByTime(60_000);
    expect(said).toEqual(['a:1', 'c:2']);
    // Without trailing, they wait for a next time that may never come.
    const quiet = new PerKeyThrottle(10_000);
    quiet.tell('k', 1, (count) => said.push(`q:${count}`));
    quiet.tell('k', 1, (count) => said.push(`q:${count}`));
    vi.advanceTimersByTime(60_000);
    expect(said).toEqual(['a:1', 'c:2', 'q:1']);
  });
});
