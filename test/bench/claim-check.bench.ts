import { ClaimStack, type Mode } from './claim-stack.js';
import { CpuTiers } from './cpu-tiers.js';
import { drive, pool, SMALL_EVERY_MS, wireSize, type Run, type Wire } from './claim-load.js';
import { fmt, type Bench, type BenchContext, type BenchResult } from './lib.js';

/**
 * Inline versus claim check, same run, same installation (claim-stack.ts): 1 KiB, 64 KiB and 1 MiB payloads
 * fanned out to 100 users over two gateway nodes, while small events flow to 10 of those users (`shared`
 * tabs: they get the large frames too) and to 10 users who get no large event (`bystander` tabs). Inline
 * means the claim-check threshold is above the payload, claim check that it is below.
 *
 * Per size: wire sizes (spy queues, one event at a time); then each mode saturated (WINDOW large events in
 * flight, closed loop: its throughput); then both modes paced at the same rate, PACE times what inline
 * reached saturated, so small-event latencies are compared under the same offered load. The paced runs
 * come in ROUNDS rounds, the two modes taking turns to go first so that neither always meets a warmer or a
 * busier machine; the p99s are over the rounds' samples pooled (a single run's p99 rests on a handful of
 * events), and each round's own ratio is kept to show the spread.
 *
 * Where it can, the bench runs with the tiers apart (cpu-tiers.ts): RabbitMQ, Redis, the resolver and the
 * small events' publisher on one half of the CPUs, the gateways and the simulated tabs on the other, as on
 * separate hosts. Then it puts every process back on every CPU and runs the 1 MiB paced rounds again at the
 * same rate, with small events alone after them: what the same load does when the tabs' gigabyte a second
 * shares the broker's CPUs, reported next to it.
 */

const USERS = 100;
const SHARED = 10;
const BYSTANDERS = 10;
const NODES = 2;
const WINDOW = 4;
const PACE = 0.5;
const ROUNDS = 3;
const SIZES = [1024, 64 * 1024, 1024 * 1024];
const MODES: Mode[] = ['inline', 'claim'];
const MIB = 1024 * 1024;
/**
 * Where small events are timed: `published`, as the services' publishes reach the events exchange (a spy
 * queue; the first hop); `broker`, as they leave the broker for the gateways (a spy queue);
 * `bystander`, at tabs that get no large event; `shared`, at tabs that get the large events too.
 */
const GROUPS = ['published', 'broker', 'bystander', 'shared'];

interface Result extends Wire {
  size: number;
  mode: Mode;
  saturated: Run;
  /** The paced rounds pooled. */
  paced: Run & { rate: number };
  /** Each paced round on its own, in order. */
  rounds: Run[];
}

interface Durations {
  /** Each saturated run. */
  saturatedMs: number;
  /** Each paced run; there are `rounds` of them per mode. */
  pacedMs: number;
  rounds: number;
}

async function measureSize(stack: ClaimStack, bytes: number, durations: Durations): Promise<Result[]> {
  const wire: Partial<Record<Mode, Wire>> = {};
  for (const mode of MODES) wire[mode] = await wireSize(stack, mode, bytes, NODES);
  // Every small event reaches each desk tab and the two spies once.
  const recipients = SHARED + BYSTANDERS + 2;
  const saturated: Partial<Record<Mode, Run>> = {};
  for (const mode of MODES) {
    saturated[mode] = await drive(
      stack,
      mode,
      bytes,
      { tag: 'sat', durationMs: durations.saturatedMs, window: WINDOW },
      recipients,
    );
  }
  const rate = (saturated.inline as Run).eventsPerSec * PACE;
  const rounds: Record<Mode, Run[]> = { inline: [], claim: [] };
  for (let round = 0; round < durations.rounds; round += 1) {
    const order = round % 2 === 0 ? MODES : [...MODES].reverse();
    for (const mode of order) {
      const plan = { tag: `pace${round}`, durationMs: durations.pacedMs, rate };
      rounds[mode].push(await drive(stack, mode, bytes, plan, recipients));
    }
  }
  return MODES.map((mode) => ({
    size: bytes,
    mode,
    ...(wire[mode] as Wire),
    saturated: saturated[mode] as Run,
    paced: { ...pool(rounds[mode]), rate },
    rounds: rounds[mode],
  }));
}

const withoutSamples = ({ samples: _samples, ...run }: Run): Omit<Run, 'samples'> => run;
const kib = (size: number): string => (size >= MIB ? `${size / MIB} MiB` : `${size / 1024} KiB`);
const p99 = (run: Run, group: string): number => run.small[group]?.p99 ?? NaN;
const ratio = (a: number, b: number): string => fmt(a / b);
/** Claim check ÷ inline small-event p99 of `group`, round by round. */
const roundRatios = (claim: Result, inline: Result, group: string): number[] =>
  claim.rounds.map((run, i) => p99(run, group) / p99(inline.rounds[i] as Run, group));

/**
 * Small events with no large event at all, the modes taking turns (small events are inline in both): the
 * floor under every small-event figure of this machine, whatever large events do.
 */
async function measureQuiet(stack: ClaimStack, durations: Durations, tag = 'quiet'): Promise<Run> {
  const runs: Run[] = [];
  for (let round = 0; round < durations.rounds; round += 1) {
    const mode = MODES[round % MODES.length] as Mode;
    // Tags differ between calls: a gateway shows an event id to a tab once, so a repeated id reaches no tab.
    const plan = { tag: `${tag}${round}`, durationMs: durations.pacedMs, quiet: true as const };
    runs.push(await drive(stack, mode, 0, plan, SHARED + BYSTANDERS + 2));
  }
  return pool(runs);
}

/** The same installation with every process on every CPU: 1 MiB paced at `rate`, then small events alone. */
interface SharedReference {
  rate: number;
  paced: Record<Mode, Run>;
  quiet: Run;
}

async function measureShared(
  stack: ClaimStack,
  rate: number,
  durations: Durations,
): Promise<SharedReference> {
  const rounds: Record<Mode, Run[]> = { inline: [], claim: [] };
  for (let round = 0; round < durations.rounds; round += 1) {
    const order = round % 2 === 0 ? MODES : [...MODES].reverse();
    for (const mode of order) {
      const plan = { tag: `shared${round}`, durationMs: durations.pacedMs, rate };
      rounds[mode].push(await drive(stack, mode, MIB, plan, SHARED + BYSTANDERS + 2));
    }
  }
  return {
    rate,
    paced: { inline: pool(rounds.inline), claim: pool(rounds.claim) },
    quiet: await measureQuiet(stack, durations, 'shared-quiet'),
  };
}

function report(
  results: Result[],
  quiet: Run,
  layout: string,
  shared: SharedReference | undefined,
): BenchResult {
  const rounds = results[0]?.rounds.length ?? 0;
  const pick = (size: number, mode: Mode) =>
    results.find((r) => r.size === size && r.mode === mode) as Result;
  const wire = results.map((r) => ({
    payload: kib(r.size),
    mode: r.mode,
    'published B/event': fmt(r.publishedBytes),
    'copies/event': fmt(r.copies),
    'largest copy, B': fmt(r.perCopy),
    'broker B/event (copies × B)': fmt(r.brokerBytes),
    'events exchange B/event': fmt(r.eventBytes),
    'Redis reads/event metric|tap': `${fmt(r.saturated.readsMetric)} | ${fmt(r.saturated.readsTap)}`,
  }));
  const groups = (run: Run, pick: 'p50' | 'p99') =>
    GROUPS.map((g) => fmt(run.small[g]?.[pick] ?? NaN)).join(' | ');
  const load = results.map((r) => ({
    payload: kib(r.size),
    mode: r.mode,
    'sat events/s': fmt(r.saturated.eventsPerSec),
    'sat tab writes/s': fmt(r.saturated.eventsPerSec * USERS),
    'sat large p50 ms': fmt(r.saturated.largeP50),
    [`sat small p99 ${GROUPS.join('|')}`]: groups(r.saturated, 'p99'),
    'paced events/s': fmt(r.paced.rate),
    'paced large p50 ms': fmt(r.paced.largeP50),
    [`paced small p50 ${GROUPS.join('|')}`]: groups(r.paced, 'p50'),
    [`paced small p99 ${GROUPS.join('|')}`]: groups(r.paced, 'p99'),
    'lost small': r.saturated.smallLost + r.paced.smallLost,
  }));
  const ratios = SIZES.map((size) => {
    const [inline, claim] = [pick(size, 'inline'), pick(size, 'claim')];
    const each = (run: 'saturated' | 'paced') =>
      GROUPS.map((g) => ratio(p99(claim[run], g), p99(inline[run], g))).join(' | ');
    return {
      payload: kib(size),
      'broker bytes': ratio(claim.brokerBytes, inline.brokerBytes),
      'paced small p99 at broker, each round': roundRatios(claim, inline, 'broker').map(fmt).join(' | '),
      'sat events/s': ratio(claim.saturated.eventsPerSec, inline.saturated.eventsPerSec),
      [`paced small p99 ${GROUPS.join('|')}`]: each('paced'),
      [`sat small p99 ${GROUPS.join('|')}`]: each('saturated'),
    };
  });
  const claims = results.filter((r) => r.mode === 'claim');
  const [bigInline, bigClaim] = [pick(MIB, 'inline'), pick(MIB, 'claim')];
  const maxCopy = Math.max(...claims.map((r) => r.perCopy));
  const maxBroker = Math.max(...claims.map((r) => r.brokerBytes));
  const runs = claims.flatMap((r) => [r.saturated, ...r.rounds]);
  const tiersApart = !layout.startsWith('shared');
  /** 1 MiB paced, small-event p99 of `group`: claim check against inline, pooled and round by round. */
  const bigLatency = (group: string) => {
    const [c, i] = [p99(bigClaim.paced, group), p99(bigInline.paced, group)];
    const perRound = roundRatios(bigClaim, bigInline, group);
    const spread =
      perRound.length > 1 ? `; rounds x${fmt(Math.min(...perRound))}-${fmt(Math.max(...perRound))}` : '';
    return {
      value: `${fmt(c)} vs ${fmt(i)} ms (x${ratio(c, i)}${spread}; no large events: ${fmt(p99(quiet, group))})`,
      met: c * 5 <= i,
    };
  };
  // The target is the broker's part (small events held up behind large ones there). At the tabs it is end
  // to end: the gateways and every simulated tab share the edge tier's CPUs, in both modes alike.
  const atTabs = GROUPS.filter((g) => g !== 'published' && g !== 'broker').map((group) => ({
    where: group,
    'claim check vs inline, p99': bigLatency(group).value,
  }));
  const sharedRows = shared
    ? [
        ...MODES.map((mode) => ({
          run: `1 MiB paced, ${mode}`,
          [`p50 ${GROUPS.join('|')}`]: groups(shared.paced[mode], 'p50'),
          [`p99 ${GROUPS.join('|')}`]: groups(shared.paced[mode], 'p99'),
          lost: shared.paced[mode].smallLost,
        })),
        {
          run: 'claim check / inline',
          [`p50 ${GROUPS.join('|')}`]: GROUPS.map((g) =>
            ratio(shared.paced.claim.small[g]?.p50 ?? NaN, shared.paced.inline.small[g]?.p50 ?? NaN),
          ).join(' | '),
          [`p99 ${GROUPS.join('|')}`]: GROUPS.map((g) =>
            ratio(p99(shared.paced.claim, g), p99(shared.paced.inline, g)),
          ).join(' | '),
          lost: '',
        },
        {
          run: 'small events alone',
          [`p50 ${GROUPS.join('|')}`]: groups(shared.quiet, 'p50'),
          [`p99 ${GROUPS.join('|')}`]: groups(shared.quiet, 'p99'),
          lost: shared.quiet.smallLost,
        },
      ]
    : [];
  return {
    tables: [
      {
        title: `wire: ${USERS} users over ${NODES} nodes; one delivery message per event, routed to both nodes`,
        rows: wire,
      },
      {
        title: `load (${layout}): sat = ${WINDOW} large events in flight; paced = ${PACE} x inline's sat rate for both modes, ${rounds} round(s) pooled; small events every ${SMALL_EVERY_MS} ms to ${SHARED} shared + ${BYSTANDERS} bystander tabs, ms`,
        rows: load,
      },
      { title: 'claim check / inline, same run', rows: ratios },
      {
        title: `small events alone (no large events; the floor under the figures above), ${fmt(quiet.small['broker']?.n ?? 0)} events, ms`,
        rows: [
          {
            [`p50 ${GROUPS.join('|')}`]: groups(quiet, 'p50'),
            [`p99 ${GROUPS.join('|')}`]: groups(quiet, 'p99'),
            lost: quiet.smallLost,
          },
        ],
      },
      {
        title: `1 MiB paced, at the tabs (end to end; the gateways and all ${USERS + BYSTANDERS} tabs share the edge CPUs)`,
        rows: atTabs,
      },
      ...(shared
        ? [
            {
              title: `shared CPUs (every process on every CPU), same installation, 1 MiB paced at ${fmt(shared.rate)}/s, ${rounds} round(s) pooled; small-event latency, ms`,
              rows: sharedRows,
            },
          ]
        : []),
    ],
    // Summaries only: the raw samples would make the saved file megabytes long.
    data: {
      layout,
      quiet: withoutSamples(quiet),
      ...(shared
        ? {
            shared: {
              rate: shared.rate,
              inline: withoutSamples(shared.paced.inline),
              claim: withoutSamples(shared.paced.claim),
              quiet: withoutSamples(shared.quiet),
            },
          }
        : {}),
      sizes: results.map(({ saturated, paced, rounds, ...rest }) => ({
        ...rest,
        saturated: withoutSamples(saturated),
        paced: { ...withoutSamples(paced), rate: paced.rate },
        rounds: rounds.map(withoutSamples),
      })),
    },
    targets: [
      {
        target: `broker bytes/event <= 512 x ${NODES} nodes, claim check, ${USERS} recipients (every copy, every size)`,
        value: `max ${fmt(maxBroker)} B/event, largest copy ${fmt(maxCopy)} B`,
        met: maxBroker <= 512 * NODES && maxCopy <= 512,
      },
      {
        target: `Redis reads/event = ${NODES} nodes, not ${USERS} recipients (claim check, every run; metric|tap)`,
        value: runs.map((r) => `${fmt(r.readsMetric)}|${fmt(r.readsTap)}`).join(' '),
        met: runs.every((r) => r.readsMetric === NODES && r.readsTap === NODES),
      },
      {
        target: `1 MiB paced at ${fmt(bigInline.paced.rate)}/s, ${tiersApart ? 'tiers apart' : 'shared CPUs'}: small-event p99 at the broker <= 1/5 of inline`,
        ...bigLatency('broker'),
      },
    ],
  };
}

const bench: Bench = {
  name: 'claim-check',
  description: 'claim check vs inline payloads: broker bytes, Redis reads, throughput, small-event latency',
  async run(ctx: BenchContext): Promise<BenchResult> {
    const stack = await ClaimStack.start(ctx, { users: USERS, shared: SHARED, bystanders: BYSTANDERS });
    const results: Result[] = [];
    let quiet: Run;
    let shared: SharedReference | undefined;
    let layout: string;
    const tiers = CpuTiers.apply({ ...ctx, ...stack.tierProcesses() });
    try {
      layout =
        typeof tiers === 'string'
          ? `shared CPUs (tiers apart not possible here: ${tiers})`
          : `tiers apart, ${tiers.describe()}`;
      process.stdout.write(`layout: ${layout}\n`);
      stack.expectWhole('L-', USERS);
      const durations: Durations = ctx.quick
        ? { saturatedMs: 1500, pacedMs: 1500, rounds: 1 }
        : { saturatedMs: 8000, pacedMs: 6000, rounds: ROUNDS };
      for (const bytes of SIZES) results.push(...(await measureSize(stack, bytes, durations)));
      // Last, on a warm installation, as the runs it is compared with.
      quiet = await measureQuiet(stack, durations);
      if (typeof tiers !== 'string') {
        tiers.release();
        const rate = results.find((r) => r.size === MIB)?.paced.rate ?? NaN;
        shared = await measureShared(stack, rate, durations);
      }
    } finally {
      if (typeof tiers !== 'string') tiers.release();
      await stack.close();
    }
    return report(results, quiet, layout, shared);
  },
};

export default bench;
