import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { Redis } from 'ioredis';
import { eventually, freePort } from './harness.js';

/** Whether this machine has a redis-server of its own to start (not where services run in containers only). */
export const hasRedisServer = spawnSync('redis-server', ['--version']).status === 0;

/** A Redis server of the test's own, besides the shared one: empty, on a free port, killed by stop(). */
export class SecondRedis {
  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
  ) {}

  /** `settings`: more of redis-server's arguments, e.g. `['--maxmemory', '1gb']`. */
  static async start(settings: string[] = []): Promise<SecondRedis> {
    const port = await freePort();
    const child = spawn(
      'redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...settings],
      { stdio: 'ignore' },
    );
    const failed = new Promise<never>((_, reject) =>
      child.once('error', (error) =>
        reject(new Error(`cannot start a second redis-server: ${error.message}`)),
      ),
    );
    const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => 50 });
    client.on('error', () => {}); // refused until the server listens
    await Promise.race([
      failed,
      eventually(
        () =>
          client.ping().then(
            () => true,
            () => false,
          ),
        'second Redis',
      ),
    ]);
    client.disconnect();
    return new SecondRedis(child, port);
  }

  url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  client(): Redis {
    return new Redis({ port: this.port, host: '127.0.0.1' });
  }

  stop(): void {
    this.child.kill('SIGKILL');
  }
}
