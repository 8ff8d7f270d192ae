import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/**
 * "Tiers apart" for a bench on one small machine: the broker tier (RabbitMQ, Redis, the resolver and what
 * probes it) on one half of the CPUs, the edge tier (gateways, the simulated browser tabs, the services
 * publishing megabytes) on the other. Without it, on two cores, the tabs reading a gigabyte a second and the
 * gateways writing it take the CPU the broker path needs, and a small event's latency measures the
 * scheduler rather than what the broker holds. On two cores each tier gets one CPU, which its processes
 * share: nearer to separate hosts than one shared pair of CPUs, not the same.
 *
 * Linux only (/proc, taskset from util-linux, ss from iproute2), at least two CPUs, and RabbitMQ and Redis
 * running here as local processes the bench may re-pin; otherwise `apply` says why not. Every thread's own
 * affinity is recorded first (RabbitMQ binds each scheduler thread to a CPU of its own) and put back, thread
 * by thread, on release, on exit, on SIGINT/SIGTERM/SIGHUP, and after a crash by the next bench run
 * (`recoverCpuTiers`, from a note in the machine's temporary directory naming the run that wrote it).
 */

const NOTE = join(tmpdir(), 'warren-bench-cpu-tiers.json');
const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** A process as /proc shows it: its name and start time tell it from a later one given the same pid. */
interface Identity {
  pid: number;
  name: string;
  /** Start time in clock ticks after boot (field 22 of /proc/<pid>/stat). */
  started: string;
}

interface Held extends Identity {
  /** Each thread's CPUs before, as the kernel lists them ("0-1", "0"). */
  threads: { tid: number; cpus: string }[];
}

interface Note {
  owner: Identity;
  held: Held[];
}

function identity(pid: number): Identity | undefined {
  try {
    const name = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    // The name in field 2 may hold spaces and parentheses: fields are counted after its closing one.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const started = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
    return started === undefined ? undefined : { pid, name, started };
  } catch {
    return undefined;
  }
}

const same = (a: Identity, b: Identity | undefined): boolean =>
  b !== undefined && a.name === b.name && a.started === b.started;

function cpusOf(path: string): string | undefined {
  try {
    return /^Cpus_allowed_list:\s*(\S+)/m.exec(readFileSync(path, 'utf8'))?.[1];
  } catch {
    return undefined;
  }
}

function threadsOf(pid: number): { tid: number; cpus: string }[] {
  return readdirSync(`/proc/${pid}/task`).flatMap((entry) => {
    const cpus = cpusOf(`/proc/${pid}/task/${entry}/status`);
    return cpus === undefined ? [] : [{ tid: Number(entry), cpus }];
  });
}

/** "0-3,6" as [0, 1, 2, 3, 6]. */
function expand(list: string): number[] {
  return list.split(',').flatMap((part) => {
    const [from, to] = part.split('-').map(Number) as [number, number | undefined];
    return Array.from({ length: (to ?? from) - from + 1 }, (_, i) => from + i);
  });
}

function run(command: string, args: string[]): string {
  try {
    return execFileSync(command, args, {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, LC_ALL: 'C' },
    });
  } catch (error) {
    const stderr = String((error as { stderr?: unknown }).stderr ?? '').trim();
    throw new Error(`${command} ${args.join(' ')} failed${stderr ? `: ${stderr}` : ''}`, { cause: error });
  }
}

/** Sets the CPUs of every thread of `pid` (threads it starts later inherit them). */
const pin = (pid: number, cpus: number[]): void =>
  void run('taskset', ['-a', '-cp', cpus.join(','), String(pid)]);

/**
 * Puts every thread of `held` that still runs back on its CPUs (threads started since, on those of the
 * first thread), then reads them back. Returns what did not go back.
 */
function putBack(held: readonly Held[]): string[] {
  const problems: string[] = [];
  for (const proc of held) {
    if (!same(proc, identity(proc.pid))) continue;
    const before = new Map(proc.threads.map((t) => [t.tid, t.cpus]));
    // Threads started since the record get the main thread's CPUs (its tid is the pid).
    const fallback = before.get(proc.pid) ?? proc.threads[0]?.cpus ?? '';
    let now: { tid: number; cpus: string }[];
    try {
      now = threadsOf(proc.pid);
    } catch {
      continue; // Gone since the identity check.
    }
    for (const { tid, cpus } of now) {
      const want = before.get(tid) ?? fallback;
      if (cpus === want) continue;
      let failure = '';
      try {
        run('taskset', ['-cp', want, String(tid)]);
      } catch (error) {
        failure = `: ${error instanceof Error ? error.message : String(error)}`;
      }
      // Read back; a thread that ended meanwhile has nothing to put back.
      const after = cpusOf(`/proc/${proc.pid}/task/${tid}/status`);
      if (after !== undefined && after !== want)
        problems.push(
          `${proc.name} (pid ${proc.pid}) thread ${tid} is on CPUs ${after}, was on ${want}${failure}`,
        );
    }
  }
  return problems;
}

/** The note, undefined when there is none; throws when it cannot be read (it is then left alone). */
function readNote(): Note | undefined {
  if (!existsSync(NOTE)) return undefined;
  return JSON.parse(readFileSync(NOTE, 'utf8')) as Note;
}

/** Written whole or not at all: a reader never sees half a note. */
function writeNote(note: Note): void {
  const partial = `${NOTE}.${process.pid}`;
  writeFileSync(partial, JSON.stringify(note));
  renameSync(partial, NOTE);
}

/** The tiers this process holds now, if any. */
let active: CpuTiers | undefined;

/**
 * Puts back what a bench run that ended without releasing left pinned. Returns a warning when it could
 * not (the note is kept), or when another run still holds the tiers.
 */
export function recoverCpuTiers(): string | undefined {
  let note: Note | undefined;
  try {
    note = readNote();
  } catch (error) {
    return `cannot read ${NOTE} (remove it once RabbitMQ and Redis are on their CPUs): ${String(error)}`;
  }
  if (!note) return undefined;
  // Its owner still runs: another bench run, or this one, holding the tiers now.
  const ownerRuns = same(note.owner, identity(note.owner.pid));
  if (ownerRuns && (note.owner.pid !== process.pid || active))
    return `bench run ${note.owner.pid} has RabbitMQ and Redis pinned to some CPUs (${NOTE})`;
  const problems = putBack(note.held);
  if (problems.length > 0)
    return `CPU affinity left by an earlier bench run not put back (${NOTE} kept): ${problems.join('; ')}`;
  rmSync(NOTE, { force: true });
  return undefined;
}

/** The process listening on a local TCP port, or why it cannot be named. */
function listener(port: number): number | string {
  const lines = run('ss', ['-ltnpH', `sport = :${port}`]).trim();
  if (lines === '') return `nothing listens on port ${port}`;
  const pid = /pid=(\d+)/.exec(lines)?.[1];
  return pid === undefined
    ? `port ${port} is open but its process is not visible here (another user, or a container)`
    : Number(pid);
}

const LOCAL = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);

/** The local server process behind `url` if it is `expected` (a proxy in front of it would not do). */
function server(url: string, defaultPort: number, expected: string): Identity | string {
  const { hostname, port } = new URL(url);
  if (!LOCAL.has(hostname)) return `${url} is not on this machine`;
  const pid = listener(Number(port || defaultPort));
  if (typeof pid === 'string') return pid;
  const found = identity(pid);
  return found?.name === expected
    ? found
    : `${url} is served by ${found?.name ?? 'an unknown process'}, not ${expected}`;
}

export interface TierProcesses {
  rabbitmqUrl: string;
  redisUrl: string;
  /** The bench's own processes of the broker tier (resolver, probes). */
  broker: number[];
  /** The bench's own processes of the edge tier (gateways, tabs, large publishers). */
  edge: number[];
}

export type TiersApplied = { applied: true; tiers: CpuTiers } | { applied: false; reason: string };

export class CpuTiers {
  /** Set once released: what would not go back. */
  private problems: string[] | undefined;
  private readonly onExit = (): void => void this.release();
  private readonly onSignal = (signal: NodeJS.Signals): void => {
    this.release();
    process.kill(process.pid, signal);
  };

  private constructor(
    /** Every pinned process's threads' CPUs before. */
    private readonly held: Held[],
    readonly brokerCpus: number[],
    readonly edgeCpus: number[],
  ) {
    process.once('exit', this.onExit);
    for (const signal of SIGNALS) process.once(signal, this.onSignal);
  }

  /** Pins the two tiers, or says why it cannot. */
  static apply(processes: TierProcesses): TiersApplied {
    const no = (reason: string): TiersApplied => ({ applied: false, reason });
    if (process.platform !== 'linux') return no('not Linux');
    let tiers: CpuTiers | undefined;
    try {
      const left = recoverCpuTiers();
      if (left) return no(left);
      const cpus = expand(cpusOf('/proc/self/status') ?? '');
      if (cpus.length < 2) return no(`this process may use one CPU only (${cpus.join(',')})`);
      const rabbitmq = server(processes.rabbitmqUrl, 5672, 'beam.smp');
      if (typeof rabbitmq === 'string') return no(rabbitmq);
      const redis = server(processes.redisUrl, 6379, 'redis-server');
      if (typeof redis === 'string') return no(redis);
      const hold = (pid: number): Held => {
        const found = identity(pid);
        if (!found) throw new Error(`process ${pid} is gone`);
        return { ...found, threads: threadsOf(pid) };
      };
      const servers = [hold(rabbitmq.pid), hold(redis.pid)];
      const broker = processes.broker.map(hold);
      const edge = processes.edge.map(hold);
      const half = Math.floor(cpus.length / 2);
      tiers = new CpuTiers([...servers, ...broker, ...edge], cpus.slice(0, half), cpus.slice(half));
      const owner = identity(process.pid) as Identity;
      writeNote({ owner, held: servers });
      active = tiers;
      for (const { pid } of [...servers, ...broker]) pin(pid, tiers.brokerCpus);
      for (const { pid } of edge) pin(pid, tiers.edgeCpus);
      return { applied: true, tiers };
    } catch (error) {
      tiers?.release();
      return no(error instanceof Error ? error.message : String(error));
    }
  }

  /**
   * Every thread back on the CPUs it had. Idempotent. Returns what would not go back (also written to
   * stderr); the note is then kept for the next run to try again.
   */
  release(): string[] {
    if (this.problems) return this.problems;
    process.off('exit', this.onExit);
    for (const signal of SIGNALS) process.off(signal, this.onSignal);
    this.problems = putBack(this.held);
    if (active === this) active = undefined;
    if (this.problems.length === 0) {
      rmSync(NOTE, { force: true });
    } else {
      process.stderr.write(
        `\nWARNING: CPU affinity not put back (${NOTE} kept; the next bench run tries again):\n` +
          `  ${this.problems.join('\n  ')}\n`,
      );
    }
    return this.problems;
  }

  describe(): string {
    return (
      `tiers apart: RabbitMQ, Redis, the resolver, the small events' service and the spies on CPU ` +
      `${this.brokerCpus.join(',')}; the gateways, the tabs and the large events' service on CPU ` +
      `${this.edgeCpus.join(',')}`
    );
  }
}
