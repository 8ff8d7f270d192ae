import { fork, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { ResolverReport, ResolverRequest } from './claim-resolver.js';

/**
 * A resolver in a child process of its own (claim-resolver.ts), as `warren resolver` runs next to the
 * gateways in an installation: it does not share the gateways' thread, and its CPU is read from /proc.
 */
export class ResolverChild {
  private constructor(private readonly child: ChildProcess) {}

  static async start(overrides: Record<string, unknown>): Promise<ResolverChild> {
    const child = fork(fileURLToPath(new URL('./claim-resolver.ts', import.meta.url)), [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    const resolver = new ResolverChild(child);
    await resolver.ask({ op: 'start', overrides }, 'started');
    return resolver;
  }

  private ask(request: ResolverRequest, until: ResolverReport['op']): Promise<void> {
    return new Promise((resolve, reject) => {
      const onMessage = (report: ResolverReport): void => {
        if (report.op === 'problem') reject(new Error(report.message));
        else if (report.op !== until) return;
        else resolve();
        this.child.off('message', onMessage);
      };
      this.child.on('message', onMessage);
      this.child.send(request);
    });
  }

  /** CPU time the child has used so far, ms (user + system, from /proc). */
  async cpuMs(): Promise<number> {
    try {
      const stat = await readFile(`/proc/${this.child.pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return (Number(fields[11]) + Number(fields[12])) * 10;
    } catch {
      return NaN;
    }
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    await this.ask({ op: 'close' }, 'closed').catch(() => {});
    await exited;
  }
}
