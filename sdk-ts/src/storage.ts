// Where a device keeps its cursor (the last sequence delivered to the
// application) between runs, so a restart syncs only what it missed.

/** A key-value store for the cursor; synchronous or asynchronous (IndexedDB wrappers). */
export interface CursorStorage {
  get(key: string): string | null | undefined | Promise<string | null | undefined>;
  set(key: string, value: string): void | Promise<void>;
}

/** In memory: the default. Lives as long as the object (share it between clients to resume). */
export class MemoryStorage implements CursorStorage {
  private readonly map = new Map<string, string>();
  get(key: string): string | undefined {
    return this.map.get(key);
  }
  set(key: string, value: string): void {
    this.map.set(key, value);
  }
}

/** The subset of the Web Storage API the adapter uses. */
export interface WebStorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

/** Browser `localStorage` (or `sessionStorage`, or anything with getItem/setItem). */
export class LocalStorageCursor implements CursorStorage {
  constructor(
    private readonly storage: WebStorageLike = (globalThis as { localStorage?: WebStorageLike }).localStorage as WebStorageLike,
    private readonly prefix = "switchboard:",
  ) {
    if (storage === undefined) throw new TypeError("LocalStorageCursor: no localStorage in this environment");
  }
  get(key: string): string | null {
    return this.storage.getItem(this.prefix + key);
  }
  set(key: string, value: string): void {
    this.storage.setItem(this.prefix + key, value);
  }
}
