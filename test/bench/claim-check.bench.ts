import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { withoutCredentials } from '../../src/shared/errors.js';
import { ClaimStack, type Mode } from './claim-stack.js';
import { drive, pool, wireSize, type Run, type Wire } from './claim-load.js';
import {
  BYSTANDERS,
  MIB,
  MODES,
  NODES,
  PACE,
  ROUNDS,
  SHARED,
  SIZES,
  USERS,
  WINDOW,
  type Durations,
  type Layout,
  type Result,
  type SharedReference,
} from './claim-plan.js';
import { report } from './claim-report.js';
import { CpuTiers } from './cpu-tiers.js';
import type { Bench, BenchContext, BenchResult } from './lib.js';

/**
 * Inline versus claim check, same run, same installation (claim-stack.ts): 1 KiB, 64 KiB and 1 MiB payloads
 * fanned out to 100 users over two gateway nodes, while small events flow to 10 of those users (`shared`
 * tabs: they get the large frames too), to 10 users who get no large event (`bystander` tabs), and to one
 * tab on a third node, the probe, whose key the spy at the broker binds. Inline means the claim-check
 * threshold is above the payload, claim check that it is below.
 *
 * Per size: wire sizes (spy queues, one event at a time); then each mode saturated (WINDOW large events in
 * flight, closed loop: its throughput); then both modes paced at the same rate, PACE times what inline
 * reached saturated, so small-event latencies are compared under the same offered load. The paced runs
 * come in ROUNDS rounds (an even number), the two modes taking turns to go first so that neither always
 * meets a warmer or a busier machine; the p99s are over the rounds' samples pooled (a single run's p99 rests on a handful of
 * events), and each round's own ratio is kept to show the spread.
 *
 * Where it can, the bench runs with the tiers apart (cpu-tiers.ts): RabbitMQ, Redis, the resolver, the
 * small events' publisher and the spies on one half of the CPUs; the gateways, every tab and the large
 * events' publisher (with the Redis taps) on the other. Then it puts every thread back on the CPUs it had
 * and runs the 1 MiB paced rounds again at the same offered rate, with small events alone after them: what
 * the same load does when the tabs' gigabyte a second shares the broker's CPUs, reported next to it.
 */

/** Both modes paced at `rate`, `durations.rounds` rounds each, the modes taking turns to go first. */
async function pacedRounds(
  stack: ClaimStack,
  bytes: number,
  rate: number,
  durations: Durations,
  tag: string,
): Promise<Record<Mode, Run[]>> {
  if (!Number.isFinite(rate) || rate <= 0)
    throw new Error(`no rate to pace ${bytes}-byte events at (${rate})`);
  const rounds: Record<Mode, Run[]> = { inline: [], claim: [] };
  for (let round = 0; round < durations.rounds; round += 1) {
    const order = round % 2 === 0 ? MODES : [...MODES].reverse();
    for (const mode of order) {
      const plan = { tag: `${tag}${round}`, durationMs: durations.pacedMs, rate };
      rounds[mode].push(await drive(stack, mode, bytes, plan, stack.smallRecipients));
    }
  }
  return rounds;
}

async function measureSize(stack: ClaimStack, bytes: number, durations: Durations): Promise<Result[]> {
  const wire: Partial<Record<Mode, Wire>> = {};
  for (const mode of MODES) wire[mode] = await wireSize(stack, mode, bytes, NODES);
  const saturated: Partial<Record<Mode, Run>> = {};
  // The modes take turns to go first from one size to the next.
  for (const mode of SIZES.indexOf(bytes) % 2 === 0 ? MODES : [...MODES].reverse()) {
    const plan = { tag: 'sat', durationMs: durations.saturatedMs, window: WINDOW };
    saturated[mode] = await drive(stack, mode, bytes, plan, stack.smallRecipients);
  }
  const rate = (saturated.inline as Run).eventsPerSec * PACE;
  const rounds = await pacedRounds(stack, bytes, rate, durations, 'pace');
  return MODES.map((mode) => ({
    size: bytes,
    mode,
    ...(wire[mode] as Wire),
    saturated: saturated[mode] as Run,
    paced: { ...pool(rounds[mode]), rate },
    rounds: rounds[mode],
  }));
}

/**
 * Small events with no large event at all, the modes taking turns (small events are inline in both): the
 * floor under every small-event figure of this machine, whatever large events do.
 */
async function measureQuiet(stack: ClaimStack, durations: Durations, tag: string): Promise<Run> {
  const runs: Run[] = [];
  for (let round = 0; round < durations.rounds; round += 1) {
    const mode = MODES[round % MODES.length] as Mode;
    const plan = { tag: `${tag}${round}`, durationMs: durations.pacedMs, quiet: true as const };
    runs.push(await drive(stack, mode, 0, plan, stack.smallRecipients));
  }
  return pool(runs);
}

/**
 * Small events alone again while each edge CPU is kept busy by a process moving megabytes through loopback
 * sockets, as the fan-out does, with no Warren and no broker work in it: what a busy edge tier by itself
 * costs the broker tier's path on this machine (interrupts, the hypervisor, shared caches).
 */
async function measureBusyEdge(stack: ClaimStack, edgeCpus: number, durations: Durations): Promise<Run> {
  const hogs = Array.from({ length: edgeCpus }, () =>
    // Started by this process, which runs on the edge tier's CPUs: so do they.
    fork(fileURLToPath(new URL('./claim-hog.ts', import.meta.url)), [], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    }),
  );
  try {
    await Promise.all(
      hogs.map(
        (hog) =>
          new Promise<void>((resolve, reject) => {
            hog.once('message', () => resolve());
            hog.once('error', reject);
            hog.once('exit', (code) => reject(new Error(`edge load exited (${code}) before it started`)));
          }),
      ),
    );
    return await measureQuiet(stack, durations, 'busy-quiet');
  } finally {
    // Gone before anything else is measured or the tiers are released.
    await Promise.all(
      hogs.map(
        (hog) =>
          new Promise<void>((resolve) => {
            if (hog.exitCode !== null || hog.signalCode !== null) return resolve();
            hog.once('exit', () => resolve());
            hog.kill();
          }),
      ),
    );
  }
}

async function measureShared(
  stack: ClaimStack,
  rate: number,
  durations: Durations,
): Promise<SharedReference> {
  const rounds = await pacedRounds(stack, MIB, rate, durations, 'shared');
  return {
    rate,
    paced: { inline: pool(rounds.inline), claim: pool(rounds.claim) },
    // Tags differ from the first quiet runs': a gateway shows an event id to a tab once.
    quiet: await measureQuiet(stack, durations, 'shared-quiet'),
  };
}

const bench: Bench = {
  name: 'claim-check',
  description: 'claim check vs inline payloads: broker bytes, Redis reads, throughput, small-event latency',
  async run(ctx: BenchContext): Promise<BenchResult> {
    const stack = await ClaimStack.start(ctx, { users: USERS, shared: SHARED, bystanders: BYSTANDERS });
    const results: Result[] = [];
    let quiet: Run;
    let busyQuiet: Run | undefined;
    let shared: SharedReference | undefined;
    const tiers = CpuTiers.apply({ ...ctx, ...stack.tierProcesses() });
    const layout: Layout = tiers.applied
      ? { tiersApart: true, description: tiers.tiers.describe() }
      : { tiersApart: false, description: `shared CPUs (tiers apart not possible here: ${tiers.reason})` };
    try {
      if (ctx.payloadRedisUrl)
        layout.description += `; payloads on a Redis of their own (${withoutCredentials(ctx.payloadRedisUrl)}), not pinned by the bench: on the CPUs it was started on`;
      process.stdout.write(`layout: ${layout.description}\n`);
      stack.expectWhole('L-', USERS);
      const durations: Durations = ctx.quick
        ? { saturatedMs: 1500, pacedMs: 1500, rounds: 1 }
        : { saturatedMs: 8000, pacedMs: 6000, rounds: ROUNDS };
      for (const bytes of SIZES) results.push(...(await measureSize(stack, bytes, durations)));
      // Last, on a warm installation, as the runs it is compared with.
      quiet = await measureQuiet(stack, durations, 'quiet');
      if (tiers.applied) {
        busyQuiet = await measureBusyEdge(stack, tiers.tiers.edgeCpus.length, durations);
        const stuck = tiers.tiers.release();
        // Not a shared-CPU figure if some thread is still pinned.
        if (stuck.length === 0) {
          const big = results.find((r) => r.size === MIB && r.mode === 'inline') as Result;
          shared = await measureShared(stack, big.paced.rate, durations);
        }
      }
    } finally {
      if (tiers.applied) tiers.tiers.release();
      await stack.close();
    }
    return report(results, { idle: quiet, ...(busyQuiet ? { busyEdge: busyQuiet } : {}) }, layout, shared);
  },
};

export default bench;
