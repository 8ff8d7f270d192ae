import { randomBytes } from 'node:crypto';
import { SpyQueue, type SpiedMessage } from './claim-probes.js';
import { TENANT, type ClaimStack, type Mode } from './claim-stack.js';
import { summarise } from './lib.js';

/**
 * How the claim-check bench loads an installation: large events to team `ward`, closed-loop or paced,
 * while small events go to team `desk` at a steady rate; what the tabs report comes back per event.
 */

export const SMALL_EVERY_MS = 20;
const WIRE_SAMPLES = 3;

const now = (): number => performance.timeOrigin + performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A document-like payload (many small records) of about `bytes` serialised bytes. */
export function payload(bytes: number): unknown {
  const pages = Math.max(1, Math.floor((bytes - 40) / 1024));
  const text = Math.max(1, Math.floor((bytes - 40) / pages) - 24);
  return {
    kind: 'scan',
    pages: Array.from({ length: pages }, (_, i) => ({
      page: i,
      text: randomBytes(text).toString('base64').slice(0, text),
    })),
  };
}

async function waitFor(check: () => boolean, what: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** What the tabs' process reports: whole large events, and small-event latencies per tab group. */
class Arrivals {
  readonly done = new Map<string, number>();
  readonly smallSent = new Map<string, number>();
  readonly small = new Map<string, number[]>();
  smallCount = 0;
  readonly problems: string[] = [];
  onDone = (_id: string): void => {};
  readonly stop: () => void;

  constructor(stack: ClaimStack) {
    this.stop = stack.onReport((report) => {
      if (report.op === 'done') {
        this.done.set(report.id, report.at);
        this.onDone(report.id);
      } else if (report.op === 'arrivals') {
        report.ids.forEach((id, i) => {
          const sent = this.smallSent.get(id);
          if (sent === undefined) return;
          const group = report.groups[i] as string;
          const list = this.small.get(group) ?? [];
          list.push((report.at[i] as number) - sent);
          this.small.set(group, list);
          this.smallCount += 1;
        });
      } else if (report.op === 'problem') {
        this.problems.push(report.message);
      }
    });
  }

  check(): void {
    if (this.problems.length > 0) throw new Error(this.problems.join('; '));
  }
}

export interface Wire {
  /** Deliveries exchange, per event: every message times the nodes it reaches. */
  brokerBytes: number;
  perCopy: number;
  perCopyWithoutCc: number;
  /** Events exchange (publisher to resolver), per event. */
  eventBytes: number;
}

/** Publishes large events one at a time with spies on both exchanges and measures their wire size. */
export async function wireSize(
  stack: ClaimStack,
  mode: Mode,
  size: number,
  data: unknown,
  nodes: number,
): Promise<Wire> {
  const arrivals = new Arrivals(stack);
  const deliveries = await SpyQueue.open(stack.broker, `${stack.prefix}.deliveries`, false);
  const events = await SpyQueue.open(stack.broker, `${stack.prefix}.events`, false);
  const ids = Array.from({ length: WIRE_SAMPLES }, (_, i) => `L-${mode}-${size}-wire-${i}`);
  try {
    for (const id of ids) {
      await stack.publisher(mode).publishEvent({
        id,
        tenantId: TENANT,
        type: 'doc.attached',
        audience: { teams: ['ward'] },
        data,
      });
      await waitFor(() => arrivals.done.has(id), `${id} delivered`, 30_000);
    }
    const spied = () => ids.every((id) => deliveries.of(id).length > 0 && events.of(id).length > 0);
    await waitFor(spied, 'spied copies', 10_000);
    arrivals.check();
  } finally {
    arrivals.stop();
    await deliveries.close();
    await events.close();
  }
  const copies: SpiedMessage[] = ids.flatMap((id) => deliveries.of(id));
  const perEvent = (list: SpiedMessage[], f: (m: SpiedMessage) => number) =>
    list.reduce((s, m) => s + f(m), 0) / ids.length;
  return {
    // Every delivery message of the bench has recipients on every node: the broker hands out one copy each.
    brokerBytes: perEvent(copies, (m) => (m.bodyBytes + m.headerBytes) * nodes),
    perCopy: perEvent(copies, (m) => m.bodyBytes + m.headerBytes),
    perCopyWithoutCc: perEvent(copies, (m) => m.bodyBytes + m.headerBytesWithoutCc),
    eventBytes: perEvent(
      ids.flatMap((id) => events.of(id)),
      (m) => m.bodyBytes + m.headerBytes,
    ),
  };
}

export type Plan = { tag: string; durationMs: number } & ({ window: number } | { rate: number });

export interface Run {
  events: number;
  eventsPerSec: number;
  largeP50: number;
  /** Small-event latency per tab group (`shared`: these tabs get the large events too; `bystander`: not). */
  small: Record<string, ReturnType<typeof summarise>>;
  smallLost: number;
  readsMetric: number;
  readsTap: number;
}

function pace(plan: Plan, started: number, publishLarge: () => void, arrivals: Arrivals): Promise<void> {
  if ('rate' in plan) {
    return (async () => {
      for (let i = 0; now() - started < plan.durationMs; i += 1) {
        await sleep(Math.max(0, started + (i * 1000) / plan.rate - now()));
        publishLarge();
      }
    })();
  }
  return new Promise<void>((resolve, reject) => {
    let inflight = 0;
    const issue = (): void => {
      if (arrivals.problems.length > 0) return reject(new Error(arrivals.problems.join('; ')));
      while (inflight < plan.window && now() - started < plan.durationMs) {
        inflight += 1;
        publishLarge();
      }
      if (inflight === 0) resolve();
    };
    arrivals.onDone = (id) => {
      if (!id.includes(`-${plan.tag}-`)) return;
      inflight -= 1;
      issue();
    };
    issue();
  });
}

/** Large events to `ward` for `plan.durationMs` while small events go to `desk` every SMALL_EVERY_MS. */
export async function drive(
  stack: ClaimStack,
  mode: Mode,
  size: number,
  data: unknown,
  plan: Plan,
  smallRecipients: number,
): Promise<Run> {
  const publisher = stack.publisher(mode);
  const arrivals = new Arrivals(stack);
  const sent = new Map<string, number>();
  const event = (id: string, team: string, body: unknown) => ({
    id,
    tenantId: TENANT,
    type: team === 'ward' ? 'doc.attached' : 'note.created',
    audience: { teams: [team] },
    data: body,
  });
  try {
    const fetches0 = await stack.gatewayFetches();
    const tap0 = stack.tapReads();
    let n = 0;
    const ticker = setInterval(() => {
      const id = `S-${mode}-${size}-${plan.tag}-${n++}`;
      arrivals.smallSent.set(id, now());
      void publisher
        .publishEvent(event(id, 'desk', { n, text: 'vitals updated' }))
        .catch(() => arrivals.smallSent.delete(id));
    }, SMALL_EVERY_MS);
    const started = now();
    let issued = 0;
    await pace(
      plan,
      started,
      () => {
        const id = `L-${mode}-${size}-${plan.tag}-${issued++}`;
        sent.set(id, now());
        publisher
          .publishEvent(event(id, 'ward', data))
          .catch((e: unknown) => arrivals.problems.push(String(e)));
      },
      arrivals,
    );
    const ids = [...sent.keys()];
    const allDone = () => ids.every((id) => arrivals.done.has(id)) || arrivals.problems.length > 0;
    await waitFor(allDone, 'large events', 60_000);
    clearInterval(ticker);
    const expected = () => arrivals.smallSent.size * smallRecipients;
    await waitFor(() => arrivals.smallCount >= expected(), 'small events', 10_000).catch(() => {});
    await sleep(100); // the tabs' process reports arrivals every 50 ms
    arrivals.check();
    const fetches = (await stack.gatewayFetches()) - fetches0;
    const last = Math.max(...ids.map((id) => arrivals.done.get(id) as number));
    const small: Run['small'] = {};
    for (const [group, samples] of arrivals.small) small[group] = summarise(samples);
    return {
      events: ids.length,
      eventsPerSec: ids.length / ((last - started) / 1000),
      largeP50: summarise(ids.map((id) => (arrivals.done.get(id) as number) - (sent.get(id) as number))).p50,
      small,
      smallLost: expected() - arrivals.smallCount,
      readsMetric: fetches / ids.length,
      readsTap: (stack.tapReads() - tap0) / ids.length,
    };
  } finally {
    arrivals.stop();
  }
}
