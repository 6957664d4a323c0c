// Reconnect and retry delays: exponential backoff with full jitter (a
// uniform pick between the floor and the exponential ceiling), so clients
// that a server restart dropped at the same instant don't return as one wave.

export class Backoff {
  private attempt = 0;

  constructor(
    private readonly minMs: number,
    private readonly maxMs: number,
  ) {}

  /** Forgets past failures (after a successful login). */
  reset(): void {
    this.attempt = 0;
  }

  /** The next delay in ms; advances the attempt. */
  next(unit: number = Math.random()): number {
    const min = Math.max(0, this.minMs);
    const ceiling = Math.min(Math.max(this.maxMs, min), min * 2 ** Math.min(this.attempt, 30));
    this.attempt += 1;
    const u = Number.isFinite(unit) ? Math.min(Math.max(unit, 0), 1) : 0;
    return min + (ceiling - min) * u;
  }
}
