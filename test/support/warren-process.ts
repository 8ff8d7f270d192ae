import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
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

  /**
   * The process signals go to: `child`, or with `pid1` the one `unshare` runs (which passes no signal on).
   */
  private readonly target: () => number | undefined;

  private constructor(
    readonly child: ChildProcess,
    pid1 = false,
  ) {
    this.target = () => {
      if (!pid1 || child.pid === undefined) return child.pid;
      const children = readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim();
      return children === '' ? undefined : Number(children.split(' ')[0]);
    };
    this.exited = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    for (const stream of [child.stdout, child.stderr]) {
      if (stream) createInterface({ input: stream }).on('line', (line) => this.lines.push(line));
    }
  }

  static start(args: string[], env: Record<string, string>): WarrenProcess;
  /**
   * With `pid1`, as a container's main process without an init (`docker run` without `--init`, a pod): PID
   * 1 of a PID namespace of its own, where the system drops a signal the process has no handler for.
   * Undefined where no such namespace can be made (not root, no `unshare`).
   */
  static start(
    args: string[],
    env: Record<string, string>,
    options: { pid1: true },
  ): WarrenProcess | undefined;
  static start(
    args: string[],
    env: Record<string, string>,
    { pid1 = false }: { pid1?: boolean } = {},
  ): WarrenProcess | undefined {
    const root = findPackageRoot();
    const command = [process.execPath, '--import', 'tsx', join(root, 'src/cli/warren.ts'), ...args];
    const namespace = ['unshare', '--pid', '--fork', '--mount-proc', '--kill-child'];
    if (pid1 && spawnSync(namespace[0] ?? '', [...namespace.slice(1), 'true']).status !== 0) return undefined;
    const [file = '', ...rest] = pid1 ? [...namespace, ...command] : command;
    const child = spawn(file, rest, {
      cwd: root,
      env: { PATH: process.env['PATH'] ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    return new WarrenProcess(child, pid1);
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
    const pid = this.child.exitCode === null ? this.target() : undefined;
    if (pid !== undefined) process.kill(pid, signal);
    return this.exited;
  }
}
