// In-order, exactly-once delivery of one timeline: the user's own, or one
// group's (the client keeps one per timeline; the Rust SDK's timeline.rs,
// ported). Entries come from pushes, sync pages and the
// c2c_ack of this device's own messages, in any order and overlapping; the
// timeline drops what it already took, buffers what came early, and
// releases entries strictly in sequence with no gaps. The client decides
// when to sync (a Gap offer) and when to acknowledge (after delivery).

import type { Message } from "./gen/switchboard_pb.js";

/** A timeline entry: a message for the application, or this device's own sent message. */
export type Entry = { own: false; message: Message } | { own: true };

/** What happened to an offered entry. */
export const Offer = {
  /** Already taken or buffered: drop it (but still acknowledge). */
  Duplicate: 0,
  /** Accepted; it and any buffered successors can be popped. */
  Ready: 1,
  /** Buffered past a hole: something between `last` and it is missing. */
  Gap: 2,
} as const;
export type Offer = (typeof Offer)[keyof typeof Offer];

export class Timeline {
  /** Highest sequence accepted contiguously. */
  private lastSeq: bigint;
  /** Entries not yet popped: the contiguous ones up to `last` and the early ones past a hole. */
  private readonly pending = new Map<bigint, Entry>();
  /** Next sequence `pop` returns. */
  private nextPop: bigint;

  /**
   * Entries up to `last` were already delivered. `maxPending` bounds the
   * early entries: what is dropped comes back with the next sync, since
   * nothing past `last` is ever acknowledged.
   */
  constructor(last: bigint, private readonly maxPending: number) {
    this.lastSeq = last;
    this.nextPop = last + 1n;
  }

  /** The highest contiguously accepted sequence: the `since` of the next sync. */
  get last(): bigint {
    return this.lastSeq;
  }

  /** Whether entries past a hole are buffered (a sync is needed to fill it). */
  hasGap(): boolean {
    for (const seq of this.pending.keys()) if (seq > this.lastSeq) return true;
    return false;
  }

  /** Offers entry `seq` (> 0; online-only pushes never come here). */
  offer(seq: bigint, entry: Entry): Offer {
    if (seq <= this.lastSeq) return Offer.Duplicate;
    const existing = this.pending.get(seq);
    if (existing !== undefined) {
      // Our c2c_ack may come after the entry arrived by sync: still ours, don't show it.
      if (entry.own) this.pending.set(seq, entry);
      return Offer.Duplicate;
    }
    this.pending.set(seq, entry);
    while (this.pending.has(this.lastSeq + 1n)) this.lastSeq += 1n;
    // Bound the early entries: drop the highest ones past the hole.
    while (this.pending.size > Math.max(1, this.maxPending)) {
      let top = -1n;
      for (const s of this.pending.keys()) if (s > top) top = s;
      if (top <= this.lastSeq) break;
      this.pending.delete(top);
    }
    return seq <= this.lastSeq ? Offer.Ready : Offer.Gap;
  }

  /**
   * Moves the start up to `since` (> `last`): the server said the entries up
   * to it are not for this reader (a group member added later sees only what
   * came after its joining). Buffered entries up to `since` are dropped; the
   * ones after it may now be contiguous. Returns whether it moved; the caller
   * then counts `since` as reached, like an own entry.
   */
  advanceTo(since: bigint): boolean {
    if (since <= this.lastSeq) return false;
    for (const seq of [...this.pending.keys()]) if (seq <= since) this.pending.delete(seq);
    this.lastSeq = since;
    this.nextPop = since + 1n;
    while (this.pending.has(this.lastSeq + 1n)) this.lastSeq += 1n;
    return true;
  }

  /** Takes the next contiguous entry, in sequence order. */
  pop(): [bigint, Entry] | undefined {
    if (this.nextPop > this.lastSeq) return undefined;
    const seq = this.nextPop;
    const entry = this.pending.get(seq);
    if (entry === undefined) return undefined;
    this.pending.delete(seq);
    this.nextPop += 1n;
    return [seq, entry];
  }
}
