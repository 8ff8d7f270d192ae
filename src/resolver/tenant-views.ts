import type { TenantView } from './tenant-view.js';

/**
 * The tenant views of a resolver, the least recently used forgotten past `max` (a view holds the tenant's
 * online users and its cached team and group bitmaps): a resolver serving many tenants does not keep every
 * one it ever saw. A forgotten tenant's next event builds its view afresh from Redis, as at start.
 */
export class TenantViews {
  private readonly views = new Map<string, TenantView>();

  constructor(
    private readonly create: (tenantId: string) => TenantView,
    private readonly max: number,
    /** Told the number held after each trim. */
    private readonly onSize: (size: number) => void = () => {},
  ) {}

  get size(): number {
    return this.views.size;
  }

  /** The tenant's view, made the most recently used. */
  get(tenantId: string): TenantView {
    let view = this.views.get(tenantId);
    if (view) {
      this.views.delete(tenantId);
    } else {
      view = this.create(tenantId);
    }
    this.views.set(tenantId, view);
    return view;
  }

  values(): IterableIterator<TenantView> {
    return this.views.values();
  }

  /**
   * Forgets the least recently used views past `max`. Only between batches, when no view is in use: one
   * forgotten in the middle of a batch would miss what is done to all views (marked stale when Redis
   * changes, told of dead nodes) while the batch still resolves with it.
   */
  trim(): void {
    for (const [tenantId, view] of this.views) {
      if (this.views.size <= this.max) break;
      this.views.delete(tenantId);
      // Its bitmaps live in native memory: freed now, not when the collector gets to the view.
      view.invalidate();
    }
    this.onSize(this.views.size);
  }
}
