import { Redis } from 'ioredis';
import { inject } from 'vitest';

/**
 * A Redis ACL user of the test's own, allowed every command and key but those it is created without, and
 * deleted by `remove`: for what Warren does when an ACL refuses it (`NOPERM`).
 */
export class RedisAclUser {
  private constructor(
    private readonly admin: Redis,
    private readonly name: string,
    /** The test Redis's URL, logging in as this user. */
    readonly url: string,
  ) {}

  /** `denied`: the commands this user may not run, e.g. `['incr']`. */
  static async create(prefix: string, denied: string[]): Promise<RedisAclUser> {
    const admin = new Redis(inject('redisUrl'));
    const name = `t-noperm-${prefix}`;
    await admin.acl('SETUSER', name, 'on', '>pw', '~*', '+@all', ...denied.map((c) => `-${c}`));
    const url = new URL(inject('redisUrl'));
    url.username = name;
    url.password = 'pw';
    return new RedisAclUser(admin, name, url.toString());
  }

  /** Lets the user run `command` after all: the ACL mended. */
  async allow(command: string): Promise<void> {
    await this.admin.acl('SETUSER', this.name, `+${command}`);
  }

  async remove(): Promise<void> {
    await this.admin.acl('DELUSER', this.name);
    await this.admin.quit();
  }
}
