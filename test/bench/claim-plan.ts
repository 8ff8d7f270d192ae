import type { Mode } from './claim-stack.js';
import type { Run, Wire } from './claim-load.js';

/** What the claim-check bench runs (claim-check.bench.ts) and reports (claim-report.ts). */

export const USERS = 100;
export const SHARED = 10;
export const BYSTANDERS = 10;
export const NODES = 2;
export const WINDOW = 4;
export const PACE = 0.5;
export const ROUNDS = 4;
export const MIB = 1024 * 1024;
export const SIZES = [1024, 64 * 1024, MIB];
export const MODES: Mode[] = ['inline', 'claim'];
/**
 * Where small events are timed: `published`, as the services' publishes reach the events exchange (a spy
 * queue; the first hop); `broker`, as they leave the broker for the gateways (a spy queue);
 * `bystander`, at tabs that get no large event; `shared`, at tabs that get the large events too.
 */
export const GROUPS = ['published', 'broker', 'bystander', 'shared'];

export interface Durations {
  /** Each saturated run. */
  saturatedMs: number;
  /** Each paced run; there are `rounds` of them per mode. */
  pacedMs: number;
  rounds: number;
}

export interface Result extends Wire {
  size: number;
  mode: Mode;
  saturated: Run;
  /** The paced rounds pooled. */
  paced: Run & { rate: number };
  /** Each paced round on its own, in order. */
  rounds: Run[];
}

/** The same installation, every thread back on its own CPUs: 1 MiB paced at `rate`, then small events alone. */
export interface SharedReference {
  rate: number;
  paced: Record<Mode, Run>;
  quiet: Run;
}

/**
 * Small events with no large event: `idle`, the floor under every figure; `busyEdge`, the same while the
 * edge tier's CPUs are kept busy by a load that involves neither Warren nor the broker (tiers apart only).
 */
export interface Quiet {
  idle: Run;
  busyEdge?: Run;
}

/** Where the processes ran: tiers apart (cpu-tiers.ts), or on the CPUs they had (and why). */
export interface Layout {
  tiersApart: boolean;
  description: string;
}
