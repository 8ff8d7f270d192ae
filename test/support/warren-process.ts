import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { findPackageRoot } from '../../src/config/load.js';

/**
 * `warren <command>` in a child process, started from the TypeScript sources (so a stale build cannot
 * hide a change) the way a user starts it: configuration only through WARREN_* variables.
 */
export class WarrenProcess {
  readonly lines: string[] = [];
  readonly exited: Promise<number | null>;

  private constructor(readonly child: ChildProcess) {
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    for (const stream of [child.stdout, child.stderr]) {
      if (stream) createInterface({ input: stream }).on('line', (line) => this.lines.push(line));
    }
  }

  static start(args: string[], env: Record<string, string>): WarrenProcess {
    const root = findPackageRoot();
    const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'src/cli/warren.ts'), ...args], {
      cwd: root,
      env: { PATH: process.env['PATH'] ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    return new WarrenProcess(child);
  }

  /** The first pino line with this `msg`, parsed (other lines, a command's own output among them, skipped). */
  logged(msg: string): Record<string, unknown> | undefined {
    for (const line of this.lines) {
      if (!line.startsWith('{')) continue;
      let record: Record<string, unknown>;
      try {
        record = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if (record['msg'] === msg) return record;
    }
    return undefined;
  }

  /** Resolves with the port once the gateway logged `listening`; rejects if the process exits first. */
  async listening(timeoutMs = 20_000): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    let exited = false;
    void this.exited.then(() => (exited = true));
    for (;;) {
      const record = this.logged('listening');
      if (record) return Number(record['port']);
      if (exited || Date.now() > deadline) {
        throw new Error(`gateway did not start:\n${this.lines.slice(-20).join('\n')}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Kills without any cleanup, as a crashed or OOM-killed node dies. */
  async kill(): Promise<void> {
    this.child.kill('SIGKILL');
    await this.exited;
  }

  /** Stops as an orchestrator does (SIGTERM) or a person at the terminal (Ctrl-C, SIGINT). */
  async stop(signal: 'SIGTERM' | 'SIGINT' = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null) this.child.kill(signal);
    return this.exited;
  }
}
