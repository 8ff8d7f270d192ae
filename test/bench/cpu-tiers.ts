import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * "Tiers apart" for a bench on one small machine: the broker tier (RabbitMQ, Redis, the resolver and what
 * probes it) on one half of the CPUs, the edge tier (gateways, the simulated browser tabs, the services
 * publishing megabytes) on the other, as they would be on separate hosts. Without it, on two cores, the
 * tabs reading a gigabyte a second and the gateways writing it take the CPU the broker path needs, and a
 * small event's latency measures the scheduler rather than what the broker holds.
 *
 * Linux only (taskset, from util-linux, and ss, from iproute2), at least two CPUs, and RabbitMQ and Redis
 * running here as local processes the bench may re-pin; otherwise `apply` says why not. The servers' own
 * affinity is put back on release, on exit, and after a crash at the next apply (a note of it is kept in
 * bench-results/).
 */

const NOTE = join(process.cwd(), 'bench-results', '.cpu-tiers.json');

interface Held {
  pid: number;
  /** The process's name, checked again before it is put back (a pid can be reused). */
  name: string;
  /** Its affinity before, as `taskset -p` prints it (hex mask). */
  mask: string;
}

const run = (command: string, args: string[]): string =>
  execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

function processName(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function maskOf(pid: number): string {
  const match = /affinity mask:\s*([0-9a-f]+)/i.exec(run('taskset', ['-p', String(pid)]));
  if (!match) throw new Error(`cannot read the CPU affinity of ${pid}`);
  return match[1] as string;
}

/** CPUs this process may run on, from `taskset -cp` ("0-3,6"). */
function cpusOf(pid: number): number[] {
  const list = /list:\s*(\S+)/.exec(run('taskset', ['-cp', String(pid)]))?.[1] ?? '';
  return list.split(',').flatMap((part) => {
    const [from, to] = part.split('-').map(Number) as [number, number | undefined];
    return Array.from({ length: (to ?? from) - from + 1 }, (_, i) => from + i);
  });
}

/** The process listening on a local TCP port, or undefined. */
function listener(port: number): number | undefined {
  const match = /pid=(\d+)/.exec(run('ss', ['-ltnpH', `sport = :${port}`]));
  return match ? Number(match[1]) : undefined;
}

const pin = (pid: number, cpus: number[]): void =>
  void run('taskset', ['-a', '-cp', cpus.join(','), String(pid)]);

function putBack(held: readonly Held[]): void {
  for (const { pid, name, mask } of held) {
    if (processName(pid) !== name) continue;
    try {
      run('taskset', ['-a', '-p', mask, String(pid)]);
    } catch {
      // Gone meanwhile.
    }
  }
}

/** Servers a crashed run left pinned. */
function recover(): void {
  if (!existsSync(NOTE)) return;
  try {
    putBack(JSON.parse(readFileSync(NOTE, 'utf8')) as Held[]);
  } finally {
    rmSync(NOTE, { force: true });
  }
}

const LOCAL = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);

/** The local server process behind `url` if it is `expected` (a proxy in front of it would not do). */
function server(url: string, defaultPort: number, expected: string): number | string {
  const { hostname, port } = new URL(url);
  if (!LOCAL.has(hostname)) return `${url} is not on this machine`;
  const pid = listener(Number(port || defaultPort));
  if (pid === undefined) return `no process seen listening for ${url}`;
  const name = processName(pid);
  return name === expected ? pid : `${url} is served by ${name ?? 'an unknown process'}, not ${expected}`;
}

export interface TierProcesses {
  rabbitmqUrl: string;
  redisUrl: string;
  /** The bench's own processes of the broker tier (resolver, probes). */
  broker: number[];
  /** The bench's own processes of the edge tier (gateways, tabs, large publishers). */
  edge: number[];
}

export class CpuTiers {
  private released = false;
  private readonly onExit = (): void => this.release();
  private readonly onSignal = (signal: NodeJS.Signals): void => {
    this.release();
    process.kill(process.pid, signal);
  };

  private constructor(
    /** The servers' affinity before. */
    private readonly servers: Held[],
    /** The bench's processes' affinity before (children that have exited are skipped). */
    private readonly own: Held[],
    readonly brokerCpus: number[],
    readonly edgeCpus: number[],
  ) {
    process.once('exit', this.onExit);
    process.once('SIGINT', this.onSignal);
    process.once('SIGTERM', this.onSignal);
  }

  /** Pins the two tiers, or says why it cannot. */
  static apply(processes: TierProcesses): CpuTiers | string {
    if (process.platform !== 'linux') return 'not Linux';
    try {
      recover();
      const cpus = cpusOf(process.pid);
      if (cpus.length < 2) return `one CPU only (${cpus.join(',')})`;
      const rabbitmq = server(processes.rabbitmqUrl, 5672, 'beam.smp');
      const redis = server(processes.redisUrl, 6379, 'redis-server');
      if (typeof rabbitmq === 'string') return rabbitmq;
      if (typeof redis === 'string') return redis;
      const hold = (pid: number): Held => ({ pid, name: processName(pid) ?? '', mask: maskOf(pid) });
      const servers = [hold(rabbitmq), hold(redis)];
      const own = [...processes.broker, ...processes.edge].map(hold);
      mkdirSync(join(process.cwd(), 'bench-results'), { recursive: true });
      writeFileSync(NOTE, JSON.stringify(servers));
      const half = Math.floor(cpus.length / 2);
      const tiers = new CpuTiers(servers, own, cpus.slice(0, half), cpus.slice(half));
      try {
        for (const pid of [rabbitmq, redis, ...processes.broker]) pin(pid, tiers.brokerCpus);
        for (const pid of processes.edge) pin(pid, tiers.edgeCpus);
      } catch (error) {
        tiers.release();
        throw error;
      }
      return tiers;
    } catch (error) {
      return error instanceof Error ? (error.message.split('\n')[0] as string) : String(error);
    }
  }

  /** Every process back on the CPUs it had. Idempotent. */
  release(): void {
    if (this.released) return;
    this.released = true;
    process.off('exit', this.onExit);
    process.off('SIGINT', this.onSignal);
    process.off('SIGTERM', this.onSignal);
    putBack([...this.servers, ...this.own]);
    rmSync(NOTE, { force: true });
  }

  describe(): string {
    return `broker tier on CPU ${this.brokerCpus.join(',')}, edge tier on CPU ${this.edgeCpus.join(',')}`;
  }
}
