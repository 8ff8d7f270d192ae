import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

/**
 * The one root logger of a process; components take `logger.child({ component })`. It writes
 * asynchronously (a reader that stalls must not stall the process): a line logged before the process
 * writes to stdout itself may come out after that; `writeAfterLogs` keeps the order.
 */
export function createLogger(level: LevelWithSilent, bindings: Record<string, unknown> = {}): Logger {
  return pino({ level, base: { pid: process.pid, ...bindings } });
}

/** Writes `text` on the logger's own stream, after every line logged so far (a banner, say). */
export function writeAfterLogs(logger: Logger, text: string): void {
  const stream = (logger as unknown as Record<symbol, { write(chunk: string): void } | undefined>)[
    pino.symbols.streamSym
  ];
  if (stream) stream.write(`${text}\n`);
  else process.stdout.write(`${text}\n`);
}

/** A logger that drops everything, for library users who pass none. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
