import { ErrorCode, WarrenError, errorMessage } from './errors.js';
import type { Logger } from './logger.js';

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Rejects with WARREN_ERR_TIMEOUT when `promise` does not settle within `ms`. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(new WarrenError(ErrorCode.Timeout, `${what} timed out after ${ms} ms`, { retryable: true })),
      ms,
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Whether `promise` fulfils within `ms`: false when it is still pending then (it is left to settle on its
 * own), its rejection thrown as it is. For bounded waits whose end is not an error (closing, say).
 */
export async function fulfilsWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true), late]);
  } finally {
    clearTimeout(timer);
  }
}

export interface Step {
  name: string;
  run: () => Promise<void> | void;
}

/**
 * Runs shutdown steps in order. A failing step is logged and the next one still runs: a close that stops
 * half-way leaves queues, bindings and sockets behind.
 */
export async function runSteps(steps: Step[], logger: Logger): Promise<void> {
  for (const step of steps) {
    try {
      await step.run();
    } catch (error) {
      logger.warn({ step: step.name, err: errorMessage(error) }, 'shutdown step failed');
    }
  }
}

/**
 * Makes `close()` idempotent and bounded: every call returns the same promise, which settles at the latest
 * `timeoutMs` after the first call.
 */
export class CloseOnce {
  private promise: Promise<void> | undefined;

  constructor(
    private readonly timeoutMs: number,
    private readonly what: string,
  ) {}

  get started(): boolean {
    return this.promise !== undefined;
  }

  run(body: () => Promise<void>): Promise<void> {
    this.promise ??= withTimeout(body(), this.timeoutMs, this.what);
    return this.promise;
  }
}
