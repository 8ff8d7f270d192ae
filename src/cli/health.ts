import { readFileSync } from 'node:fs';
import { get } from 'node:http';
import type { WarrenConfig } from '../config/schema.js';
import { errorMessage } from '../shared/errors.js';

export type HealthRole = 'gateway' | 'resolver';

const TIMEOUT_MS = 2000;

/**
 * The role of the container's main process when it is a warren command (`warren resolver` as PID 1), so
 * that one image-wide health check probes the right port. Anything else (no /proc, another program) is a
 * gateway: `warren gateway` and `warren dev` both serve /healthz on the gateway port.
 */
function roleOfMainProcess(): HealthRole {
  try {
    const args = readFileSync('/proc/1/cmdline', 'utf8').split('\0');
    return args.includes('resolver') ? 'resolver' : 'gateway';
  } catch {
    return 'gateway';
  }
}

/**
 * A listen address as a local client reaches it: the wildcard ones through loopback. IPv4's for `::` too:
 * a listener there takes IPv4 as well (dual-stack, as both servers listen), while `::1` is missing where
 * IPv6 is off on loopback (containers started without it), and the check would fail a healthy node.
 */
function reachable(host: string): string {
  if (host === '0.0.0.0' || host === '' || host === '::') return '127.0.0.1';
  return host.includes(':') ? `[${host}]` : host;
}

/** Where the process of `role` serves /healthz under `config`, or why it serves it nowhere. */
export function healthUrl(config: Readonly<WarrenConfig>, role: HealthRole): string | { problem: string } {
  if (role === 'resolver') {
    const { metricsPort, metricsHost } = config.resolver;
    if (metricsPort === undefined)
      return { problem: 'resolver.metricsPort is not set: a resolver serves /healthz only there' };
    if (metricsPort === 0) return { problem: 'resolver.metricsPort is 0 (a free port picked at start)' };
    return `http://${reachable(metricsHost)}:${metricsPort}/healthz`;
  }
  const { port, host } = config.gateway;
  if (port === 0) return { problem: 'gateway.port is 0 (a free port picked at start)' };
  return `http://${reachable(host)}:${port}/healthz`;
}

/**
 * `warren health [gateway|resolver]`: asks the local process for /healthz at the port its configuration
 * gives (every source, `WARREN_CONFIG` included), for container health checks. Exit 0 when it answers 200.
 */
export async function runHealth(config: Readonly<WarrenConfig>, role?: HealthRole): Promise<number> {
  const url = healthUrl(config, role ?? roleOfMainProcess());
  if (typeof url !== 'string') {
    console.error(`warren health: ${url.problem}`);
    return 1;
  }
  try {
    const status = await statusOf(url);
    if (status === 200) return 0;
    console.error(`warren health: ${url} answered ${status}`);
  } catch (error) {
    console.error(`warren health: ${url}: ${errorMessage(error)}`);
  }
  return 1;
}

/**
 * The status `GET url` answers with, within TIMEOUT_MS. Plain `node:http`, not `fetch`: fetch refuses the
 * ports browsers block (6000, 6665–6669, 10080…), which a gateway may well listen on.
 */
function statusOf(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const request = get(url, (response) => {
      clearTimeout(timer);
      response.resume();
      resolve(response.statusCode ?? 0);
    });
    // Over the whole request, not per silence (`timeout`): a server trickling bytes is not healthy either.
    const timer = setTimeout(
      () => request.destroy(new Error(`no answer within ${TIMEOUT_MS} ms`)),
      TIMEOUT_MS,
    );
    request.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}
