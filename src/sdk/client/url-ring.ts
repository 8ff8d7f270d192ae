/** Where the client connects: one URL (a load balancer), a list of gateway nodes, or a function of yours. */
export type UrlOption = string | readonly string[] | (() => string);

/**
 * Picks the URL of each attempt. A list starts at a random entry, so a crowd of browsers spreads over the
 * nodes, and moves to another entry, picked at random, when a node is draining or did not answer. A
 * function is called for every attempt.
 */
export class UrlRing {
  private index: number;

  constructor(
    private readonly option: UrlOption,
    private readonly random: () => number = Math.random,
  ) {
    const list = typeof option === 'object' ? option : undefined;
    if (list?.length === 0) throw new RangeError('url list is empty');
    this.index = list ? Math.floor(random() * list.length) : 0;
  }

  current(): string {
    const { option } = this;
    if (typeof option === 'function') return option();
    return this.listed() ?? (option as string);
  }

  /**
   * Not simply the next entry: every browser of a draining node would then land on the same one, a rolling
   * restart in list order would end with all of them on one node, and lifetime closes would only rotate
   * that pile round the list instead of spreading it again.
   */
  advance(): void {
    const { option } = this;
    if (typeof option !== 'object' || option.length < 2) return;
    const others = option.length - 1;
    this.index = (this.index + 1 + Math.floor(this.random() * others)) % option.length;
  }

  /** The list entry in use, if the option is a list (a function is not called for this). */
  listed(): string | undefined {
    const { option } = this;
    return typeof option === 'object' ? (option[this.index % option.length] as string) : undefined;
  }

  /** Goes on from `url` if the option is a list holding it (a tab taking over from its leader). */
  moveTo(url: string): void {
    const { option } = this;
    if (typeof option !== 'object') return;
    const at = option.indexOf(url);
    if (at >= 0) this.index = at;
  }

  /** A stable description of the option, for naming the tab-sharing channel. */
  describe(): string {
    const { option } = this;
    if (typeof option === 'function') return '';
    return typeof option === 'string' ? option : [...option].sort().join(' ');
  }
}
