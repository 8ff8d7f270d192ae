import { existsSync, readFileSync } from 'node:fs';
import { isIPv4 } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import type { z } from 'zod';
import { ErrorCode, WarrenError, errorMessage, withoutCredentials } from '../shared/errors.js';
import { publicKeyOf, readJwks, readPem } from '../shared/jwt-keys.js';
import { CONFIG_FIELDS, type ConfigField } from './fields.js';
import { configSchema, DEFAULTS, type WarrenConfig } from './schema.js';

/**
 * How long a draining gateway may spend, at the close of a tab it told to move, checking that it has read
 * its queue up to that moment (gateway/main.ts): part of what a drain must fit in.
 */
export const HANDOFF_CLOSE_CHECK_MS = 1000;

export type { WarrenConfig };

/**
 * What the process being configured needs beyond the schema: `jwt`, a verification key (a gateway);
 * `jwtFile`, a key file that is set must be readable (`warren dev`, which makes up a secret when none is
 * set). `jwt` implies `jwtFile`.
 */
export type ConfigRequirement = 'jwt' | 'jwtFile';

export interface LoadConfigOptions {
  env?: Readonly<Record<string, string | undefined>>;
  /** Base directory for a relative `WARREN_CONFIG`. */
  cwd?: string;
  require?: readonly ConfigRequirement[];
  /** Applied above every other source; used by `warren dev` and tests. */
  overrides?: Record<string, unknown>;
}

type Tree = Record<string, unknown>;

/** Variables with the prefix that are not configuration keys and must not be reported as unknown. */
const NON_CONFIG_ENV = /^WARREN_(CONFIG|TEST_.*)$/;

/**
 * Variables Kubernetes puts in every pod for a Service named `warren` or `warren-…` (service links:
 * `WARREN_SERVICE_HOST`, `WARREN_PORT=tcp://…`, `WARREN_GATEWAY_PORT_8080_TCP_ADDR`, …). They are not
 * configuration; one that shares a configuration variable's name carries a `tcp://` URL, not a value.
 */
function isServiceLink(name: string, value: string): boolean {
  if (/^WARREN(_[A-Z0-9_]+)?_SERVICE_(HOST|PORT)(_[A-Z0-9_]+)?$/.test(name)) return true;
  if (/^WARREN(_[A-Z0-9_]+)?_PORT_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?$/.test(name)) return true;
  return name.endsWith('_PORT') && /^(tcp|udp|sctp):\/\//.test(value);
}

export function findPackageRoot(from = dirname(fileURLToPath(import.meta.url))): string {
  let dir = from;
  for (;;) {
    if (existsSync(join(dir, 'config', 'default.yaml')) && existsSync(join(dir, 'package.json'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`config/default.yaml not found above ${from}`);
    dir = parent;
  }
}

function isTree(value: unknown): value is Tree {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Whether `path` names a section of the configuration (`gateway`), not a key (`gateway.port`). */
function isSection(path: string): boolean {
  return CONFIG_FIELDS.some(
    (f) => f.path.length > path.split('.').length && f.path.join('.').startsWith(`${path}.`),
  );
}

function merge(
  target: Tree,
  source: Tree,
  origin: string,
  origins: Map<string, string>,
  problems: string[],
  path = '',
): void {
  for (const [key, value] of Object.entries(source)) {
    const at = path ? `${path}.${key}` : key;
    const current = target[key];
    // A section or a key left empty (everything under it commented out, `issuer:` alone) reads as null: it
    // changes nothing, as if it were not there.
    if (value === null) continue;
    if (isTree(value) && isTree(current)) {
      merge(current, value, origin, origins, problems, at);
    } else {
      // A section given as one value (`gateway: 8080` in a file) that a later source's keys of that section
      // replace (WARREN_GATEWAY_PORT): the schema never sees it, so it is told here, or it would vanish.
      if (isTree(value) && current !== undefined && !isTree(current) && isSection(at))
        problems.push(
          `${at} (from ${origins.get(at) ?? 'config'}): must be a section of keys (got ${shown(at.split('.'), current)})`,
        );
      target[key] = isTree(value) ? structuredClone(value) : value;
      origins.set(at, origin);
    }
  }
}

function readYaml(file: string, label: string, problems: string[]): Tree {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    problems.push(`${label}: cannot read ${file}: ${errorMessage(error)}`);
    return {};
  }
  try {
    const doc: unknown = parseYaml(text);
    if (doc === null || doc === undefined) return {};
    if (!isTree(doc)) {
      problems.push(`${label}: ${file} must hold a mapping at the top level`);
      return {};
    }
    return doc;
  } catch (error) {
    problems.push(`${label}: ${file} is not valid YAML: ${errorMessage(error)}`);
    return {};
  }
}

/** A value for `field` read from the environment, or what is wrong with it. */
function coerce(field: ConfigField, raw: string): { value: unknown } | { problem: string } {
  if (field.type === 'number' || field.type === 'integer') {
    // Plain decimal only: Number() would also take 0x1F90 (8080), 1e3, 0b1 and -0 for a port or a size.
    // A sign and a leading point are taken (`-1`, `.3`), so that the schema says what is wrong with them.
    const whole = field.type === 'integer';
    if (!/^\s*-?(\d+(\.\d*)?|\.\d+)\s*$/.test(raw) || /^\s*-0*(\.0*)?\s*$/.test(raw))
      return { problem: `must be a ${whole ? 'whole number' : 'number'} in plain decimal digits` };
    const value = Number(raw);
    if (whole && !Number.isInteger(value)) return { problem: 'must be a whole number' };
    return { value };
  }
  if (field.type === 'boolean') {
    if (/^(true|1|yes)$/i.test(raw)) return { value: true };
    if (/^(false|0|no)$/i.test(raw)) return { value: false };
  }
  return { value: raw };
}

function fromEnv(env: Readonly<Record<string, string | undefined>>, problems: string[]): Tree {
  const tree: Tree = {};
  const known = new Map(CONFIG_FIELDS.map((f) => [f.env, f]));
  for (const [name, raw] of Object.entries(env)) {
    if (!name.startsWith('WARREN_') || raw === undefined || NON_CONFIG_ENV.test(name)) continue;
    // Set but empty (`WARREN_JWT_PUBLIC_KEY=` in a compose file) means not set, as in most tools.
    if (raw === '' || isServiceLink(name, raw)) continue;
    const field = known.get(name);
    if (!field) {
      problems.push(`${name}: not a configuration variable (see the configuration table in README.md)`);
      continue;
    }
    // Only spaces: a slip (`WARREN_JWT_ISSUER= `), which would otherwise refuse every token or fail later.
    if (raw.trim() === '') {
      problems.push(
        `${field.path.join('.')} [${name}] (from environment): blank (leave it unset or empty for the default)`,
      );
      continue;
    }
    const read = coerce(field, raw);
    if ('problem' in read) {
      problems.push(
        `${field.path.join('.')} [${name}] (from environment): ${read.problem} (got ${JSON.stringify(raw)})`,
      );
      continue;
    }
    let node = tree;
    for (const segment of field.path.slice(0, -1)) {
      const next = (node[segment] ??= {});
      node = next as Tree;
    }
    node[field.path[field.path.length - 1] as string] = read.value;
  }
  return tree;
}

function originOf(path: readonly string[], origins: Map<string, string>): string | undefined {
  for (let i = path.length; i > 0; i -= 1) {
    const origin = origins.get(path.slice(0, i).join('.'));
    if (origin !== undefined) return origin;
  }
  return undefined;
}

function valueAt(tree: Tree, path: readonly string[]): unknown {
  let node: unknown = tree;
  for (const segment of path) node = isTree(node) ? node[segment] : undefined;
  return node;
}

/** A bad value as an error message may show it: never a key, never a URL's credentials. */
function shown(path: readonly string[], value: unknown): string {
  if (path[0] === 'jwt' && path[1] !== 'clockToleranceSec') return 'a value, not shown';
  return JSON.stringify(typeof value === 'string' ? withoutCredentials(value) : value);
}

function describeIssues(issue: z.core.$ZodIssue, origins: Map<string, string>, merged: Tree): string[] {
  const path = issue.path.map(String);
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((key) => {
      const full = [...path, key];
      return `${full.join('.')} (from ${originOf(full, origins) ?? 'config'}): unknown key`;
    });
  }
  const name = path.length > 0 ? path.join('.') : '(root)';
  const field = CONFIG_FIELDS.find((f) => f.path.join('.') === name);
  const env = field ? ` [${field.env}]` : '';
  const value = valueAt(merged, path);
  const got = value === undefined || isTree(value) ? '' : ` (got ${shown(path, value)})`;
  return [`${name}${env} (from ${originOf(path, origins) ?? 'default'}): ${issue.message}${got}`];
}

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] | unknown };

/**
 * Rules across keys. Also run when the schema found problems (on the raw values, so that one message
 * still names every problem); a rule whose values are missing or of the wrong type is skipped then.
 */
function crossChecks(
  config: DeepPartial<WarrenConfig>,
  requirements: readonly ConfigRequirement[],
  origins: Map<string, string>,
): string[] {
  const problems: string[] = [];
  // The values a rule compared, each with its source: ` (got presence.expiryMs 15000 from …, …)`.
  const got = (...keys: string[]): string =>
    ` (got ${keys
      .map((key) => {
        const path = key.split('.');
        const value = valueAt(config as Tree, path);
        return `${key} ${shown(path, value)} from ${originOf(path, origins) ?? 'default'}`;
      })
      .join(', ')})`;
  const jwt = config.jwt ?? {};
  const keys = [jwt.secret, jwt.publicKey, jwt.jwksFile].filter((k) => k !== undefined);
  if (keys.length > 1) {
    problems.push('jwt: set only one of jwt.secret, jwt.publicKey, jwt.jwksFile');
  }
  if (requirements.includes('jwt') && keys.length === 0) {
    problems.push(
      'jwt: a gateway needs one of jwt.secret [WARREN_JWT_SECRET], jwt.publicKey [WARREN_JWT_PUBLIC_KEY] or jwt.jwksFile [WARREN_JWT_JWKS_FILE]',
    );
  }
  const numbers = (a: unknown, b: unknown): [number, number] | undefined =>
    typeof a === 'number' && typeof b === 'number' ? [a, b] : undefined;
  const presence = numbers(config.presence?.expiryMs, config.presence?.heartbeatMs);
  if (presence && presence[0] < 2 * presence[1]) {
    problems.push(
      'presence.expiryMs: must be at least twice presence.heartbeatMs, or a busy node flaps offline' +
        got('presence.expiryMs', 'presence.heartbeatMs'),
    );
  }
  const drain = numbers(config.gateway?.drainWindowMs, config.gateway?.drainTimeoutMs);
  const handoff = config.gateway?.handoffMs ?? DEFAULTS.handoffMs;
  // A tab handed off is closed after a check of the node's queue that may take its whole bound.
  const check = typeof handoff === 'number' && handoff > 0 ? HANDOFF_CLOSE_CHECK_MS : 0;
  if (drain && typeof handoff === 'number' && drain[0] + handoff + check >= drain[1]) {
    problems.push(
      (handoff > 0
        ? `gateway.drainWindowMs: with gateway.handoffMs after it and ${HANDOFF_CLOSE_CHECK_MS} ms for the check at each tab’s close, must be below gateway.drainTimeoutMs`
        : 'gateway.drainWindowMs: must be below gateway.drainTimeoutMs') +
        ', or the drain times out before every tab is told 4100' +
        (handoff > 0
          ? got('gateway.drainWindowMs', 'gateway.handoffMs', 'gateway.drainTimeoutMs')
          : got('gateway.drainWindowMs', 'gateway.drainTimeoutMs')),
    );
  }
  const g = config.gateway;
  const ports = numbers(g?.metricsPort, g?.port);
  // Addresses that take the same port from each other: the same one, `::` and any other, `0.0.0.0` and
  // any IPv4 address (not an IPv6 one: both listen). A host name may resolve either way: not refused.
  const overlap = (a: string, b: string): boolean =>
    a === b || a === '::' || b === '::' || (a === '0.0.0.0' && isIPv4(b)) || (b === '0.0.0.0' && isIPv4(a));
  const hosts = [g?.metricsHost, g?.host].map((h) => (typeof h === 'string' ? h : DEFAULTS.gatewayHost));
  if (ports && ports[0] !== 0 && ports[0] === ports[1] && overlap(hosts[0] ?? '', hosts[1] ?? '')) {
    problems.push(
      'gateway.metricsPort: must differ from gateway.port (unset it to serve /metrics on the tabs’ port)' +
        got('gateway.metricsPort', 'gateway.port'),
    );
  }
  const reconnect = numbers(config.rabbitmq?.reconnectCapMs, config.rabbitmq?.reconnectBaseMs);
  if (reconnect && reconnect[0] < reconnect[1]) {
    problems.push(
      'rabbitmq.reconnectCapMs: must not be below rabbitmq.reconnectBaseMs' +
        got('rabbitmq.reconnectCapMs', 'rabbitmq.reconnectBaseMs'),
    );
  }
  const readsKeys = requirements.includes('jwt') || requirements.includes('jwtFile');
  if (readsKeys && keys.length === 1) problems.push(...keyProblems(jwt));
  return problems;
}

/**
 * The key a gateway will read at start, read now: a missing or unreadable file, or a key it cannot use,
 * is a configuration problem like any other, named with its key and listed with the rest.
 */
function keyProblems(jwt: { publicKey?: unknown; jwksFile?: unknown }): string[] {
  const check = (key: string, run: () => unknown): string[] => {
    try {
      run();
      return [];
    } catch (error) {
      return [`${key}: ${errorMessage(error)}`];
    }
  };
  const { publicKey, jwksFile } = jwt;
  if (typeof publicKey === 'string') {
    const where = publicKey.includes('-----BEGIN') ? '(inline PEM)' : publicKey;
    return check(`jwt.publicKey [WARREN_JWT_PUBLIC_KEY] ${where}`, () => publicKeyOf(readPem(publicKey)));
  }
  if (typeof jwksFile === 'string')
    return check(`jwt.jwksFile [WARREN_JWT_JWKS_FILE] ${jwksFile}`, () => readJwks(jwksFile));
  return [];
}

function deepFreeze<T>(value: T): Readonly<T> {
  if (isTree(value)) {
    for (const child of Object.values(value)) deepFreeze(child);
    Object.freeze(value);
  }
  return value;
}

/**
 * Loads `config/default.yaml`, then the file named by `WARREN_CONFIG`, then `WARREN_*` variables, validates
 * the result once and freezes it. Every problem, from every source, is reported in one WARREN_ERR_CONFIG.
 */
export function loadConfig(options: LoadConfigOptions = {}): Readonly<WarrenConfig> {
  const env = options.env ?? process.env;
  const problems: string[] = [];
  const origins = new Map<string, string>();
  const merged: Tree = {};

  const defaults = join(findPackageRoot(), 'config', 'default.yaml');
  merge(
    merged,
    readYaml(defaults, 'config/default.yaml', problems),
    'config/default.yaml',
    origins,
    problems,
  );
  const file = env['WARREN_CONFIG'];
  if (file) {
    const path = resolve(options.cwd ?? process.cwd(), file);
    merge(merged, readYaml(path, 'WARREN_CONFIG', problems), path, origins, problems);
  }
  merge(merged, fromEnv(env, problems), 'environment', origins, problems);
  if (options.overrides) merge(merged, options.overrides, 'overrides', origins, problems);

  const result = configSchema.safeParse(merged);
  if (!result.success)
    problems.push(...result.error.issues.flatMap((issue) => describeIssues(issue, origins, merged)));
  problems.push(
    ...crossChecks(
      result.success ? result.data : (merged as DeepPartial<WarrenConfig>),
      options.require ?? [],
      origins,
    ),
  );

  if (problems.length > 0 || !result.success) {
    const noun = problems.length === 1 ? 'problem' : 'problems';
    throw new WarrenError(
      ErrorCode.Config,
      `Invalid configuration (${problems.length} ${noun}):\n${problems.map((p) => `  - ${p}`).join('\n')}`,
    );
  }
  return deepFreeze(result.data);
}
