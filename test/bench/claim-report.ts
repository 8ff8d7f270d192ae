import type { Mode } from './claim-stack.js';
import { SMALL_EVERY_MS, type Run } from './claim-load.js';
import {
  BYSTANDERS,
  GROUPS,
  MIB,
  MODES,
  NODES,
  PACE,
  SHARED,
  SIZES,
  USERS,
  WINDOW,
  type Layout,
  type Quiet,
  type Result,
  type SharedReference,
} from './claim-plan.js';
import { fmt, type BenchResult } from './lib.js';

/** The claim-check bench's tables, saved data and targets (claim-check.bench.ts measures). */

type Row = Record<string, string | number>;
type Stat = 'p50' | 'p99';

const withoutSamples = ({ samples: _samples, ...run }: Run): Omit<Run, 'samples'> => run;
const kib = (size: number): string => (size >= MIB ? `${size / MIB} MiB` : `${size / 1024} KiB`);
const stat = (run: Run, group: string, which: Stat): number => run.small[group]?.[which] ?? NaN;
const p99 = (run: Run, group: string): number => stat(run, group, 'p99');
const ratio = (a: number, b: number): string => fmt(a / b);
/** One figure per tab group, as `published | broker | bystander | shared`. */
const perGroup = (run: Run, which: Stat): string => GROUPS.map((g) => fmt(stat(run, g, which))).join(' | ');
/** Claim check ÷ inline, per tab group. */
const ratioPerGroup = (claim: Run, inline: Run, which: Stat): string =>
  GROUPS.map((g) => ratio(stat(claim, g, which), stat(inline, g, which))).join(' | ');
/** Claim check ÷ inline small-event p99 of `group`, round by round. */
const roundRatios = (claim: Result, inline: Result, group: string): number[] =>
  claim.rounds.map((run, i) => p99(run, group) / p99(inline.rounds[i] as Run, group));
const G = GROUPS.join('|');

function wireRows(results: Result[]): Row[] {
  return results.map((r) => ({
    payload: kib(r.size),
    mode: r.mode,
    'published B/event': fmt(r.publishedBytes),
    'copies/event': fmt(r.copies),
    'largest copy, B': fmt(r.perCopy),
    'broker B/event (copies × B)': fmt(r.brokerBytes),
    'events exchange B/event': fmt(r.eventBytes),
    'Redis reads/event metric|tap': `${fmt(r.saturated.readsMetric)} | ${fmt(r.saturated.readsTap)}`,
  }));
}

function loadRows(results: Result[]): Row[] {
  return results.map((r) => ({
    payload: kib(r.size),
    mode: r.mode,
    'sat events/s': fmt(r.saturated.eventsPerSec),
    'sat tab writes/s': fmt(r.saturated.eventsPerSec * USERS),
    'sat large p50 ms': fmt(r.saturated.largeP50),
    [`sat small p99 ${G}`]: perGroup(r.saturated, 'p99'),
    'paced events/s': fmt(r.paced.rate),
    'paced large p50 ms': fmt(r.paced.largeP50),
    [`paced small p50 ${G}`]: perGroup(r.paced, 'p50'),
    [`paced small p99 ${G}`]: perGroup(r.paced, 'p99'),
    'lost small': r.saturated.smallLost + r.paced.smallLost,
  }));
}

function ratioRows(pick: (size: number, mode: Mode) => Result): Row[] {
  return SIZES.map((size) => {
    const [inline, claim] = [pick(size, 'inline'), pick(size, 'claim')];
    return {
      payload: kib(size),
      'broker bytes': ratio(claim.brokerBytes, inline.brokerBytes),
      'paced small p99 at broker, each round': roundRatios(claim, inline, 'broker').map(fmt).join(' | '),
      'sat events/s': ratio(claim.saturated.eventsPerSec, inline.saturated.eventsPerSec),
      [`paced small p99 ${G}`]: ratioPerGroup(claim.paced, inline.paced, 'p99'),
      [`sat small p99 ${G}`]: ratioPerGroup(claim.saturated, inline.saturated, 'p99'),
    };
  });
}

/** The shared-CPU runs: what each mode reached of the offered rate, its latencies, and the ratio. */
function sharedRows(shared: SharedReference): Row[] {
  const reached = (run: Run): string => {
    const share = run.eventsPerSec / shared.rate;
    // Below the offered rate, large events queued: the latencies then include that backlog.
    return `${fmt(run.eventsPerSec)}${share < 0.95 ? ` (only ${fmt(share * 100)} % of the rate)` : ''}`;
  };
  return [
    ...MODES.map((mode) => ({
      run: `1 MiB paced, ${mode}`,
      'events/s reached': reached(shared.paced[mode]),
      'large p50 ms': fmt(shared.paced[mode].largeP50),
      [`small p50 ${G}`]: perGroup(shared.paced[mode], 'p50'),
      [`small p99 ${G}`]: perGroup(shared.paced[mode], 'p99'),
      lost: shared.paced[mode].smallLost,
    })),
    {
      run: 'claim check / inline',
      'events/s reached': ratio(shared.paced.claim.eventsPerSec, shared.paced.inline.eventsPerSec),
      'large p50 ms': ratio(shared.paced.claim.largeP50, shared.paced.inline.largeP50),
      [`small p50 ${G}`]: ratioPerGroup(shared.paced.claim, shared.paced.inline, 'p50'),
      [`small p99 ${G}`]: ratioPerGroup(shared.paced.claim, shared.paced.inline, 'p99'),
      lost: '',
    },
    {
      run: 'small events alone',
      'events/s reached': '',
      'large p50 ms': '',
      [`small p50 ${G}`]: perGroup(shared.quiet, 'p50'),
      [`small p99 ${G}`]: perGroup(shared.quiet, 'p99'),
      lost: shared.quiet.smallLost,
    },
  ];
}

function savedData(results: Result[], quiet: Quiet, layout: Layout, shared: SharedReference | undefined) {
  // Summaries only: the raw samples would make the saved file megabytes long.
  return {
    layout,
    quiet: withoutSamples(quiet.idle),
    ...(quiet.busyEdge ? { quietEdgeBusy: withoutSamples(quiet.busyEdge) } : {}),
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
  };
}

export function report(
  results: Result[],
  quiet: Quiet,
  layout: Layout,
  shared: SharedReference | undefined,
): BenchResult {
  const rounds = results[0]?.rounds.length ?? 0;
  const pick = (size: number, mode: Mode) =>
    results.find((r) => r.size === size && r.mode === mode) as Result;
  const claims = results.filter((r) => r.mode === 'claim');
  const [bigInline, bigClaim] = [pick(MIB, 'inline'), pick(MIB, 'claim')];
  const maxCopy = Math.max(...claims.map((r) => r.perCopy));
  const maxBroker = Math.max(...claims.map((r) => r.brokerBytes));
  const runs = claims.flatMap((r) => [r.saturated, ...r.rounds]);
  /** 1 MiB paced, small-event p99 of `group`: claim check against inline, pooled and round by round. */
  const bigLatency = (group: string) => {
    const [c, i] = [p99(bigClaim.paced, group), p99(bigInline.paced, group)];
    const perRound = roundRatios(bigClaim, bigInline, group);
    const spread =
      perRound.length > 1 ? `; rounds x${fmt(Math.min(...perRound))}-${fmt(Math.max(...perRound))}` : '';
    return {
      value:
        `${fmt(c)} vs ${fmt(i)} ms (x${ratio(c, i)}${spread}; no large events: ${fmt(p99(quiet.idle, group))}` +
        `${quiet.busyEdge ? `, edge CPU busy: ${fmt(p99(quiet.busyEdge, group))}` : ''})`,
      met: c * 5 <= i,
    };
  };
  // The target is the broker's part (small events held up behind large ones there). At the tabs it is end
  // to end, and the gateways and every simulated tab share CPUs in both modes alike.
  const atTabs = GROUPS.filter((g) => g !== 'published' && g !== 'broker').map((group) => ({
    where: group,
    'claim check vs inline, p99': bigLatency(group).value,
  }));
  const where = layout.tiersApart ? 'tiers apart' : 'shared CPUs';
  return {
    tables: [
      {
        title: `wire: ${USERS} users over ${NODES} nodes; one delivery message per event, routed to both nodes`,
        rows: wireRows(results),
      },
      {
        title: `load (${layout.description}): sat = ${WINDOW} large events in flight; paced = ${PACE} x inline's sat rate for both modes, ${rounds} round(s) pooled; small events every ${SMALL_EVERY_MS} ms to ${SHARED} shared + ${BYSTANDERS} bystander tabs + 1 on the probe node, ms`,
        rows: loadRows(results),
      },
      { title: 'claim check / inline, same run', rows: ratioRows(pick) },
      {
        title: `small events alone, no large events, ${fmt(quiet.idle.small['broker']?.n ?? 0)} events each, ms. No extra load: the floor under the figures above. Edge CPU busy: the edge tier's CPUs also kept busy moving megabytes through loopback sockets, with no Warren or broker work in it`,
        rows: (
          [['no extra load', quiet.idle], ...(quiet.busyEdge ? [['edge CPU busy', quiet.busyEdge]] : [])] as [
            string,
            Run,
          ][]
        ).map(([edge, run]) => ({
          run: edge,
          [`p50 ${G}`]: perGroup(run, 'p50'),
          [`p99 ${G}`]: perGroup(run, 'p99'),
          lost: run.smallLost,
        })),
      },
      {
        title: `1 MiB paced, ${where}, at the tabs (end to end: the ${NODES + 1} gateways, all ${USERS + BYSTANDERS + 1} tabs and the Redis taps share ${layout.tiersApart ? 'the edge tier' : 'the machine'}'s CPUs)`,
        rows: atTabs,
      },
      ...(shared
        ? [
            {
              title: `shared CPUs (every process back on the CPUs it had), same installation, 1 MiB offered at ${fmt(shared.rate)}/s, ${rounds} round(s) pooled; small-event latency, ms`,
              rows: sharedRows(shared),
            },
          ]
        : []),
    ],
    data: savedData(results, quiet, layout, shared),
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
        target: `1 MiB paced at ${fmt(bigInline.paced.rate)}/s, ${where}: small-event p99 at the broker <= 1/5 of inline`,
        ...bigLatency('broker'),
      },
    ],
  };
}
