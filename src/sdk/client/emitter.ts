export type Listener<T> = (value: T) => void;

/** A small emitter typed by an event map (no Node `events` in the browser bundle). */
export class Emitter<M> {
  private readonly listeners = new Map<keyof M, Set<Listener<never>>>();
  /** Counts `clear()` calls: a dispatch stops once the emitter is cleared under it. */
  private generation = 0;

  /** Adds a listener; returns the function that removes it. */
  on<K extends keyof M>(name: K, listener: Listener<M[K]>): () => void {
    let set = this.listeners.get(name);
    if (!set) {
      set = new Set();
      this.listeners.set(name, set);
    }
    set.add(listener as Listener<never>);
    return () => this.off(name, listener);
  }

  off<K extends keyof M>(name: K, listener: Listener<M[K]>): void {
    this.listeners.get(name)?.delete(listener as Listener<never>);
  }

  emit<K extends keyof M>(name: K, value: M[K]): void {
    const set = this.listeners.get(name);
    if (!set) return;
    const generation = this.generation;
    for (const listener of [...set]) {
      // A listener may close the client (which clears the emitter) or remove another: those later in
      // this dispatch are not handed a value the client has already moved past (DOM EventTarget rules).
      if (this.generation !== generation) return;
      if (!set.has(listener)) continue;
      try {
        (listener as Listener<M[K]>)(value);
      } catch (error) {
        // An application listener that throws must not break delivery to the others or the client's state;
        // rethrown asynchronously so it still reaches the console and error reporting.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }

  clear(): void {
    this.generation += 1;
    this.listeners.clear();
  }
}
