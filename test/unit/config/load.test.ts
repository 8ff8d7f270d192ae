import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { describe, expect, it } from 'vitest';
import { renderDefaultYaml, withConfigTable } from '../../../src/config/docs.js';
import { CONFIG_FIELDS } from '../../../src/config/fields.js';
import { findPackageRoot, loadConfig } from '../../../src/config/load.js';
import { DEFAULTS } from '../../../src/config/schema.js';
import { TokenVerifier } from '../../../src/gateway/auth.js';
import { isWarrenError } from '../../../src/shared/errors.js';
import { formatMarkdown } from '../../../scripts/format-markdown.js';

function configError(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    if (isWarrenError(error, 'WARREN_ERR_CONFIG')) return error.message;
    throw error;
  }
  throw new Error('expected a configuration error');
}

function tempFile(name: string, text: string): string {
  const file = join(mkdtempSync(join(tmpdir(), 'warren-config-')), name);
  writeFileSync(file, text);
  return file;
}

describe('loadConfig', () => {
  it('needs nothing set: defaults run against the local broker and Redis', () => {
    const config = loadConfig({ env: {} });
    expect(config.rabbitmq.url).toBe('amqp://guest:guest@127.0.0.1:5672');
    expect(config.redis.url).toBe('redis://127.0.0.1:6379');
    expect(config.prefix).toBe('warren');
    expect(config.gateway.port).toBe(8080);
    expect(config.claimCheck.bytes).toBe(16_384);
    expect(config.claimCheck.redisUrl).toBeUndefined();
    expect(config.gateway.unbindGraceMs).toBe(DEFAULTS.unbindGraceMs);
  });

  it('reads the contract environment variables, above the WARREN_CONFIG file, above the defaults', () => {
    const file = tempFile('c.yaml', 'prefix: fromfile\ngateway:\n  port: 9000\n  host: 10.0.0.1\n');
    const config = loadConfig({
      env: {
        WARREN_CONFIG: file,
        WARREN_RABBITMQ_URL: 'amqp://u:p@mq:5672/vh',
        WARREN_REDIS_URL: 'redis://cache:6380',
        WARREN_PREFIX: 'fromenv',
        WARREN_GATEWAY_PORT: '9100',
        WARREN_GATEWAY_ID: 'node-7',
        WARREN_JWT_SECRET: 'a-very-long-secret-value-of-32-chars',
        WARREN_CLAIM_CHECK_BYTES: '1024',
        WARREN_CLAIM_CHECK_REDIS_URL: 'redis://blobs:6379/2',
        WARREN_LOG_LEVEL: 'debug',
      },
    });
    expect(config.prefix).toBe('fromenv');
    expect(config.gateway.port).toBe(9100);
    expect(config.gateway.host).toBe('10.0.0.1');
    expect(config.gateway.id).toBe('node-7');
    expect(config.rabbitmq.url).toBe('amqp://u:p@mq:5672/vh');
    expect(config.redis.url).toBe('redis://cache:6380');
    expect(config.jwt.secret).toBe('a-very-long-secret-value-of-32-chars');
    expect(config.claimCheck.bytes).toBe(1024);
    expect(config.claimCheck.redisUrl).toBe('redis://blobs:6379/2');
    expect(config.log.level).toBe('debug');
  });

  it('reports every problem, from every source, in one error', () => {
    const file = tempFile(
      'bad.yaml',
      'gateway:\n  prot: 80\n  bindChannels: 0\nrabbitmq:\n  url: http://nope\n',
    );
    const message = configError(() =>
      loadConfig({
        env: {
          WARREN_CONFIG: file,
          WARREN_GATEWAY_PORT: 'eighty',
          WARREN_LOG_LEVEL: 'loud',
          WARREN_PREFIX: 'has.dots',
          WARREN_CLAIM_CHECK_BYTES: '-1',
          WARREN_GATWAY_HOST: 'typo',
        },
      }),
    );
    for (const expected of [
      'gateway.port [WARREN_GATEWAY_PORT] (from environment)',
      'log.level [WARREN_LOG_LEVEL]',
      'prefix [WARREN_PREFIX]',
      'claimCheck.bytes [WARREN_CLAIM_CHECK_BYTES]',
      'gateway.bindChannels',
      `(from ${file})`,
      'rabbitmq.url',
      `gateway.prot (from ${file}): unknown key`,
      '(got "eighty")',
      'WARREN_GATWAY_HOST: not a configuration variable',
    ]) {
      expect(message).toContain(expected);
    }
    expect(message).toMatch(/^Invalid configuration \(8 problems\)/);
  });

  it('reports a section given as one value in the file, also when a variable sets a key of that section', () => {
    const file = tempFile('scalar.yaml', 'gateway: 8080\njwt: not-a-section\n');
    for (const env of [{}, { WARREN_GATEWAY_HOST: '127.0.0.1', WARREN_JWT_ISSUER: 'me' }]) {
      const message = configError(() => loadConfig({ env: { WARREN_CONFIG: file, ...env } }));
      expect(message).toMatch(new RegExp(`gateway \\(from ${file}\\): .*\\(got 8080\\)`));
      expect(message).toContain(`jwt (from ${file})`);
      expect(message).not.toContain('not-a-section');
    }
  });

  it('names the values a rule across keys compared, and where each came from', () => {
    const file = tempFile('presence.yaml', 'presence:\n  heartbeatMs: 20000\n');
    const message = configError(() =>
      loadConfig({ env: { WARREN_CONFIG: file, WARREN_RABBITMQ_RECONNECT_CAP_MS: '10' } }),
    );
    expect(message).toContain(
      `presence.expiryMs: must be at least twice presence.heartbeatMs, or a busy node flaps offline ` +
        `(got presence.expiryMs 15000 from config/default.yaml, presence.heartbeatMs 20000 from ${file})`,
    );
    expect(message).toContain(
      'rabbitmq.reconnectCapMs: must not be below rabbitmq.reconnectBaseMs (got rabbitmq.reconnectCapMs 10 ' +
        'from environment, rabbitmq.reconnectBaseMs 100 from config/default.yaml)',
    );
  });

  it('reports an unreadable or malformed WARREN_CONFIG file', () => {
    expect(configError(() => loadConfig({ env: { WARREN_CONFIG: '/no/such/file.yaml' } }))).toContain(
      'cannot read /no/such/file.yaml',
    );
    const file = tempFile('broken.yaml', 'gateway: [unclosed');
    expect(configError(() => loadConfig({ env: { WARREN_CONFIG: file } }))).toContain('is not valid YAML');
  });

  it('requires a verification key for a gateway, and only one', () => {
    expect(configError(() => loadConfig({ env: {}, require: ['jwt'] }))).toContain('a gateway needs one of');
    const both = {
      WARREN_JWT_SECRET: 'a-very-long-secret-value-of-32-chars',
      WARREN_JWT_JWKS_FILE: '/k.json',
    };
    expect(configError(() => loadConfig({ env: both, require: ['jwt'] }))).toContain('set only one of');
  });

  it('reports the rules across keys together with the schema’s problems', () => {
    const message = configError(() => loadConfig({ env: { WARREN_GATEWAY_PORT: 'abc' }, require: ['jwt'] }));
    expect(message).toContain('gateway.port');
    expect(message).toContain('a gateway needs one of');
  });

  it('tells a URL of the wrong scheme once, not again as one that does not parse', () => {
    const message = configError(() =>
      loadConfig({ env: { WARREN_RABBITMQ_URL: 'nonsense', WARREN_REDIS_URL: 'nothing' } }),
    );
    expect(message).toMatch(/^Invalid configuration \(2 problems\)/);
    expect(message).toContain('rabbitmq.url [WARREN_RABBITMQ_URL] (from environment): must be an amqp://');
    expect(message).toContain('redis.url [WARREN_REDIS_URL] (from environment): must be a redis://');
  });

  it('holds a frameMax given in the broker URL to rabbitmq.frameMax’s minimum', () => {
    const url = (frameMax: string) => ({ WARREN_RABBITMQ_URL: `amqp://mq:5672/?frameMax=${frameMax}` });
    for (const bad of ['4096', '-1', 'big'])
      expect(configError(() => loadConfig({ env: url(bad) }))).toContain(
        'rabbitmq.url [WARREN_RABBITMQ_URL] (from environment): names a frameMax under 8192',
      );
    for (const good of ['8192', '0', '131072'])
      expect(loadConfig({ env: url(good) }).rabbitmq.url).toContain(`frameMax=${good}`);
  });

  it('refuses a metrics port that is the tabs’ port on the same address', () => {
    const same = { WARREN_GATEWAY_PORT: '9000', WARREN_GATEWAY_METRICS_PORT: '9000' };
    expect(configError(() => loadConfig({ env: same }))).toContain(
      'gateway.metricsPort: must differ from gateway.port',
    );
    // By default both listen on every address; on two addresses of their own the port may be the same.
    const apart = { ...same, WARREN_GATEWAY_HOST: '127.0.0.1', WARREN_GATEWAY_METRICS_HOST: '127.0.0.2' };
    expect(loadConfig({ env: apart }).gateway.metricsPort).toBe(9000);
    // Every IPv4 address and an IPv6 one do not overlap; `::` takes both.
    const v4v6 = { ...same, WARREN_GATEWAY_METRICS_HOST: '::1' };
    expect(loadConfig({ env: v4v6 }).gateway.metricsPort).toBe(9000);
    const v4 = { ...same, WARREN_GATEWAY_METRICS_HOST: '127.0.0.1' };
    expect(configError(() => loadConfig({ env: v4 }))).toContain('gateway.metricsPort: must differ');
    const any = { ...same, WARREN_GATEWAY_HOST: '::', WARREN_GATEWAY_METRICS_HOST: '::1' };
    expect(configError(() => loadConfig({ env: any }))).toContain('gateway.metricsPort: must differ');
    expect(loadConfig({ env: { WARREN_GATEWAY_METRICS_PORT: '9100' } }).gateway.metricsPort).toBe(9100);
  });

  it('refuses values the broker or the timers cannot take: prefetch over 16 bits, delays over 2^31-1 ms', () => {
    const message = configError(() =>
      loadConfig({
        env: {
          WARREN_GATEWAY_PREFETCH: '70000',
          WARREN_RESOLVER_PREFETCH: '65536',
          WARREN_GATEWAY_UNBIND_GRACE_MS: '3000000000',
          WARREN_GATEWAY_DRAIN_WINDOW_MS: '40000',
          WARREN_GATEWAY_DRAIN_TIMEOUT_MS: '30000',
        },
      }),
    );
    for (const key of ['gateway.prefetch', 'resolver.prefetch', 'gateway.unbindGraceMs'])
      expect(message).toContain(key);
    expect(message).toContain(
      'gateway.drainWindowMs: with gateway.handoffMs after it and 1000 ms for the check at each tab’s close, must be below gateway.drainTimeoutMs',
    );
    expect(message).toContain('gateway.handoffMs 5000 from config/default.yaml');
    // Room is left for the check at each handed-off tab's close, which a handoff of none skips.
    const tight = { WARREN_GATEWAY_DRAIN_WINDOW_MS: '24500', WARREN_GATEWAY_DRAIN_TIMEOUT_MS: '30000' };
    expect(configError(() => loadConfig({ env: tight }))).toContain(
      'gateway.drainWindowMs: with gateway.handoffMs after it and 1000 ms for the check',
    );
    expect(() => loadConfig({ env: { ...tight, WARREN_GATEWAY_DRAIN_WINDOW_MS: '23999' } })).not.toThrow();
    expect(() => loadConfig({ env: { ...tight, WARREN_GATEWAY_HANDOFF_MS: '0' } })).not.toThrow();
    expect(() => loadConfig({ env: { WARREN_GATEWAY_PREFETCH: '65535' } })).not.toThrow();
  });

  it('takes numbers from the environment in plain decimal only, and a lifetime jitter up to a half', () => {
    const message = configError(() =>
      loadConfig({
        env: {
          WARREN_GATEWAY_PORT: '0x1F90',
          WARREN_GATEWAY_UNBIND_GRACE_MS: '-0',
          WARREN_GATEWAY_IDLE_TIMEOUT_SEC: '1e2',
          WARREN_GATEWAY_LIFETIME_JITTER: '0.9',
        },
      }),
    );
    for (const shown of ['"0x1F90"', '"-0"', '"1e2"', 'gateway.lifetimeJitter'])
      expect(message).toContain(shown);
    expect(message).toContain(
      'gateway.port [WARREN_GATEWAY_PORT] (from environment): must be a whole number in plain decimal digits (got "0x1F90")',
    );
    // A Redis socket timeout under a second would drop healthy connections waiting on ordinary commands.
    expect(configError(() => loadConfig({ env: { WARREN_REDIS_SOCKET_TIMEOUT_MS: '500' } }))).toContain(
      'must be 0 (off) or at least 1000',
    );
    // A fraction where a whole number belongs is named as such, not as a string where a number belongs.
    expect(configError(() => loadConfig({ env: { WARREN_RABBITMQ_HEARTBEAT_SEC: '1.5' } }))).toContain(
      'rabbitmq.heartbeatSec [WARREN_RABBITMQ_HEARTBEAT_SEC] (from environment): must be a whole number (got "1.5")',
    );
    const config = loadConfig({
      env: { WARREN_GATEWAY_PORT: ' 8081 ', WARREN_GATEWAY_LIFETIME_JITTER: '0.5' },
    });
    expect(config.gateway.port).toBe(8081);
    expect(config.gateway.lifetimeJitter).toBe(0.5);
  });

  it('never shows a key or a password in its message', () => {
    const message = configError(() =>
      loadConfig({
        env: {
          WARREN_JWT_SECRET: 'hunter2-prod',
          WARREN_REDIS_URL: 'ftp://app:s3cret@cache:6379',
          WARREN_CLAIM_CHECK_REDIS_URL: 'http://:bl0bpass@blobs:6379',
          WARREN_RABBITMQ_URL: 'guest:pa55word@rabbit:5672',
        },
      }),
    );
    expect(message).toContain('jwt.secret');
    expect(message).toContain('at least 32 characters');
    expect(message).not.toContain('hunter2');
    expect(message).toContain('redis.url');
    expect(message).not.toContain('s3cret');
    expect(message).toContain('claimCheck.redisUrl');
    expect(message).not.toContain('bl0bpass');
    expect(message).toContain('rabbitmq.url');
    expect(message).not.toContain('pa55word');
  });

  it('reports a URL that does not parse under its key, without its password', () => {
    const message = configError(() =>
      loadConfig({
        env: {
          // Unencoded space and @: the clients' URL parser throws on these.
          WARREN_RABBITMQ_URL: 'amqp://guest:pa55 word@rabbit host:5672',
          WARREN_REDIS_URL: 'redis://:p@ss@cache host:6379',
          WARREN_CLAIM_CHECK_REDIS_URL: 'http://blobs:6379',
        },
      }),
    );
    expect(message).toContain('rabbitmq.url');
    expect(message).toContain('redis.url');
    expect(message).toMatch(/claimCheck.redisUrl \[WARREN_CLAIM_CHECK_REDIS_URL\].*: must be a redis:\/\//);
    expect(message).toContain('is not a valid URL');
    expect(message).not.toContain('pa55');
    expect(message).not.toContain('p@ss');
  });

  it('takes numbers written with a sign or a leading point, and says what is wrong with them', () => {
    const config = loadConfig({ env: { WARREN_GATEWAY_LIFETIME_JITTER: '.3' } });
    expect(config.gateway.lifetimeJitter).toBe(0.3);
    const message = configError(() => loadConfig({ env: { WARREN_CLAIM_CHECK_BYTES: '-1' } }));
    expect(message).toMatch(/claimCheck.bytes \[WARREN_CLAIM_CHECK_BYTES\]/);
    expect(message).toContain('Too small');
    expect(message).not.toContain('received string');
  });

  it('reads a section whose every key is commented out as no change, as in a copy of default.yaml', () => {
    const file = tempFile('warren.yaml', 'gateway:\n  # port: 1\njwt:\n  issuer:\nlog:\n  level: warn\n');
    const config = loadConfig({ env: { WARREN_CONFIG: file } });
    expect(config.gateway.port).toBe(DEFAULTS.gatewayPort);
    expect(config.log.level).toBe('warn');
  });

  it('refuses a variable of only spaces, which would count as a value', () => {
    const message = configError(() =>
      loadConfig({ env: { WARREN_JWT_ISSUER: '  ', WARREN_GATEWAY_HOST: ' ' } }),
    );
    expect(message).toContain('(2 problems)');
    expect(message).toContain('jwt.issuer [WARREN_JWT_ISSUER] (from environment): blank');
    expect(message).toContain('gateway.host [WARREN_GATEWAY_HOST] (from environment): blank');
  });

  it('refuses a Redis URL whose path is not a database number', () => {
    const message = configError(() =>
      loadConfig({
        env: {
          WARREN_REDIS_URL: 'redis://cache:6379/warren',
          WARREN_CLAIM_CHECK_REDIS_URL: 'redis://blobs:6379?db=1.5',
        },
      }),
    );
    expect(message).toContain('(2 problems)');
    expect(message).toMatch(/redis.url \[WARREN_REDIS_URL\].*names a database that is not a number/);
    expect(message).toMatch(/claimCheck.redisUrl \[WARREN_CLAIM_CHECK_REDIS_URL\].*names a database/);
    const fine = loadConfig({
      env: { WARREN_REDIS_URL: 'redis://cache:6379/?db=2', WARREN_CLAIM_CHECK_REDIS_URL: 'redis://b:6379/3' },
    });
    expect(fine.redis.url).toBe('redis://cache:6379/?db=2');
  });

  it('reads a gateway’s key file at load, and lists a missing or wrong one with the other problems', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'warren-keys-'));
    const missing = join(dir, 'missing.json');
    const message = configError(() =>
      loadConfig({ env: { WARREN_GATEWAY_PORT: 'abc', WARREN_JWT_JWKS_FILE: missing }, require: ['jwt'] }),
    );
    expect(message).toContain('(2 problems)');
    expect(message).toContain('gateway.port');
    expect(message).toContain(`jwt.jwksFile [WARREN_JWT_JWKS_FILE] ${missing}: ENOENT`);

    const notPem = join(dir, 'key.pem');
    writeFileSync(notPem, 'not a key');
    expect(
      configError(() => loadConfig({ env: { WARREN_JWT_PUBLIC_KEY: notPem }, require: ['jwt'] })),
    ).toContain(`jwt.publicKey [WARREN_JWT_PUBLIC_KEY] ${notPem}: holds no PEM public key`);
    const notJwks = join(dir, 'jwks.json');
    writeFileSync(notJwks, '{"kty":"RSA"}');
    expect(
      configError(() => loadConfig({ env: { WARREN_JWT_JWKS_FILE: notJwks }, require: ['jwt'] })),
    ).toContain(`${notJwks}: is not a JWKS`);
    // A key the verifier could not use is refused now too, not at start.
    const ed25519 = generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' });
    expect(
      configError(() => loadConfig({ env: { WARREN_JWT_PUBLIC_KEY: String(ed25519) }, require: ['jwt'] })),
    ).toContain('jwt.publicKey [WARREN_JWT_PUBLIC_KEY] (inline PEM): unsupported key type ed25519');
    // A private key is refused (a gateway only verifies); a PKCS#1 public key is taken, and works.
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const privatePem = String(rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }));
    expect(
      configError(() => loadConfig({ env: { WARREN_JWT_PUBLIC_KEY: privatePem }, require: ['jwt'] })),
    ).toContain('holds a private key');
    const privateJwks = join(dir, 'private-jwks.json');
    writeFileSync(privateJwks, JSON.stringify({ keys: [rsa.privateKey.export({ format: 'jwk' })] }));
    expect(
      configError(() => loadConfig({ env: { WARREN_JWT_JWKS_FILE: privateJwks }, require: ['jwt'] })),
    ).toContain(`${privateJwks}: key 0 holds "d", part of a private or secret key`);
    const publicJwks = join(dir, 'public-jwks.json');
    writeFileSync(publicJwks, JSON.stringify({ keys: [rsa.publicKey.export({ format: 'jwk' })] }));
    expect(loadConfig({ env: { WARREN_JWT_JWKS_FILE: publicJwks }, require: ['jwt'] }).jwt.jwksFile).toBe(
      publicJwks,
    );
    const pkcs1 = String(rsa.publicKey.export({ type: 'pkcs1', format: 'pem' }));
    const config = loadConfig({ env: { WARREN_JWT_PUBLIC_KEY: pkcs1 }, require: ['jwt'] });
    const verifier = await TokenVerifier.create(config.jwt);
    const signed = await new SignJWT({ tid: 'acme' })
      .setProtectedHeader({ alg: 'RS256' })
      .setSubject('ann')
      .setExpirationTime('1h')
      .sign(rsa.privateKey);
    expect((await verifier.verify(signed)).userId).toBe('ann');
    // warren dev makes up a secret when no key is set, but reads one that is.
    expect(
      configError(() => loadConfig({ env: { WARREN_JWT_JWKS_FILE: missing }, require: ['jwtFile'] })),
    ).toContain('jwt.jwksFile');
    expect(loadConfig({ require: ['jwtFile'] }).jwt.jwksFile).toBeUndefined();
    // A process that verifies no tokens (a resolver) does not read them.
    expect(loadConfig({ env: { WARREN_JWT_JWKS_FILE: missing } }).jwt.jwksFile).toBe(missing);
  });

  it('treats an empty variable as not set', () => {
    const env = { WARREN_JWT_SECRET: 'a-very-long-secret-value-of-32-chars', WARREN_JWT_PUBLIC_KEY: '' };
    expect(loadConfig({ env, require: ['jwt'] }).jwt.publicKey).toBeUndefined();
  });

  it('ignores the service-link variables Kubernetes sets for a Service named warren or warren-gateway', () => {
    const links = {
      WARREN_SERVICE_HOST: '10.0.0.7',
      WARREN_SERVICE_PORT: '8080',
      WARREN_SERVICE_PORT_HTTP: '8080',
      WARREN_PORT: 'tcp://10.0.0.7:8080',
      WARREN_PORT_8080_TCP: 'tcp://10.0.0.7:8080',
      WARREN_PORT_8080_TCP_PROTO: 'tcp',
      WARREN_PORT_8080_TCP_PORT: '8080',
      WARREN_PORT_8080_TCP_ADDR: '10.0.0.7',
      WARREN_GATEWAY_SERVICE_HOST: '10.0.0.8',
      // Same name as the gateway's port variable, but a link: a URL, not a port.
      WARREN_GATEWAY_PORT: 'tcp://10.0.0.8:8080',
    };
    expect(loadConfig({ env: links }).gateway.port).toBe(DEFAULTS.gatewayPort);
    // A real value in that variable still counts, and a misspelt variable is still reported.
    expect(loadConfig({ env: { WARREN_GATEWAY_PORT: '9000' } }).gateway.port).toBe(9000);
    expect(configError(() => loadConfig({ env: { WARREN_GATEWAY_PROT: '9000' } }))).toContain(
      'WARREN_GATEWAY_PROT: not a configuration variable',
    );
  });

  it('returns a frozen configuration', () => {
    const config = loadConfig({ env: {} });
    expect(Object.isFrozen(config)).toBe(true);
    expect(Object.isFrozen(config.gateway)).toBe(true);
    expect(() => {
      (config.gateway as { port: number }).port = 1;
    }).toThrow(TypeError);
  });

  it('derives one WARREN_* variable per key, covering the contract ones', () => {
    const names = CONFIG_FIELDS.map((f) => f.env);
    for (const contract of [
      'WARREN_RABBITMQ_URL',
      'WARREN_REDIS_URL',
      'WARREN_PREFIX',
      'WARREN_GATEWAY_HOST',
      'WARREN_GATEWAY_PORT',
      'WARREN_GATEWAY_ID',
      'WARREN_JWT_SECRET',
      'WARREN_JWT_PUBLIC_KEY',
      'WARREN_JWT_JWKS_FILE',
      'WARREN_CLAIM_CHECK_BYTES',
      'WARREN_LOG_LEVEL',
    ]) {
      expect(names).toContain(contract);
    }
  });

  it('keeps config/default.yaml and the README table in step with the schema (npm run config:docs)', async () => {
    const root = findPackageRoot();
    expect(readFileSync(join(root, 'config/default.yaml'), 'utf8')).toBe(renderDefaultYaml());
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    expect(await formatMarkdown(withConfigTable(readme))).toBe(readme);
  });
});
