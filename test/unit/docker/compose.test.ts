import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { CONFIG_FIELDS } from '../../../src/config/fields.js';
import { findPackageRoot } from '../../../src/config/load.js';
import { MAX_HEADERS_BYTES } from '../../../src/gateway/uws-limits.js';

// No Docker engine runs where the tests do, so the compose file is checked against what the code expects
// instead of being started: a renamed variable or command would otherwise only fail on someone's laptop.

interface Service {
  image?: string;
  build?: { context: string; dockerfile: string };
  command?: string[];
  environment?: Record<string, string>;
  depends_on?: Record<string, unknown> | string[];
  volumes?: string[];
}

const root = findPackageRoot();
const read = (path: string): string => readFileSync(join(root, path), 'utf8');
const compose = parse(read('compose.yaml'), { merge: true }) as { services: Record<string, Service> };
const services = compose.services;
const known = new Set(CONFIG_FIELDS.map((f) => f.env));

describe('compose.yaml and docker/', () => {
  it('runs RabbitMQ, Redis, a resolver, gateway replicas and a load balancer', () => {
    expect(Object.keys(services).sort()).toEqual(['gateway', 'lb', 'rabbitmq', 'redis', 'resolver']);
    expect(services['gateway']?.command).toEqual(['gateway']);
    expect(services['resolver']?.command).toEqual(['resolver']);
  });

  it('sets only real configuration variables, pointing at the compose services', () => {
    for (const name of ['gateway', 'resolver']) {
      const env = services[name]?.environment ?? {};
      const unknown = Object.keys(env).filter((k) => k.startsWith('WARREN_') && !known.has(k));
      expect(unknown, `${name}: unknown WARREN_* variables`).toEqual([]);
      expect(env['WARREN_RABBITMQ_URL']).toMatch(/@rabbitmq:5672$/);
      expect(env['WARREN_REDIS_URL']).toBe('redis://redis:6379');
    }
    // A gateway refuses to start without a key; compose says so before starting anything.
    expect(services['gateway']?.environment?.['WARREN_JWT_SECRET']).toMatch(/^\$\{WARREN_JWT_SECRET:\?/);
  });

  it('builds the image that runs the CLI entry point declared in package.json', () => {
    const pkg = JSON.parse(read('package.json')) as { bin: Record<string, string> };
    const build = services['resolver']?.build;
    expect(build?.dockerfile).toBe('docker/Dockerfile');
    const dockerfile = read(build?.dockerfile ?? '');
    expect(dockerfile).toContain(`ENTRYPOINT ["node", "${pkg.bin['warren']}"]`);
    expect(services['gateway']?.image).toBe(services['resolver']?.image);
  });

  it('load-balances WebSocket upgrades over the gateway replicas', () => {
    const volume = services['lb']?.volumes?.[0] ?? '';
    const conf = read(volume.split(':')[0] ?? '');
    expect(conf).toContain('server gateway:8080');
    expect(conf).toMatch(/proxy_set_header Upgrade \$http_upgrade;/);
    expect(conf).toMatch(/proxy_set_header Connection \$connection_upgrade;/);
  });

  it('takes upgrade request lines and headers as long as the gateways do', () => {
    const volume = services['lb']?.volumes?.[0] ?? '';
    const conf = read(volume.split(':')[0] ?? '');
    // nginx's default, 8k, answers 414 to a token of 8 KiB in the query (400 in a header): seen with
    // nginx 1.22 in front of a stub, before this line was added.
    const buffers = /large_client_header_buffers \d+ (\d+)k;/.exec(conf);
    expect(Number(buffers?.[1]) * 1024).toBeGreaterThanOrEqual(MAX_HEADERS_BYTES);
  });

  it('logs requests without their query string, where a token may travel', () => {
    const volume = services['lb']?.volumes?.[0] ?? '';
    const conf = read(volume.split(':')[0] ?? '');
    const format = /log_format (\w+)([^;]*);/.exec(conf);
    expect(format?.[2]).toContain('$uri');
    // `$request` and `$request_uri` hold the query; `$args` and `$query_string` are it.
    expect(format?.[2]).not.toMatch(/\$(request|request_uri|args|query_string)\b/);
    expect(conf).toMatch(new RegExp(`access_log \\S+ ${format?.[1] ?? '?'};`));
    // Error lines quote the request line whole: only critical ones.
    expect(conf).toMatch(/error_log \S+ crit;/);
  });
});
