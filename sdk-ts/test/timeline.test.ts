// The Timeline, as the Rust SDK's timeline.rs tests it: in order, once, gaps buffered.

import { describe, expect, it } from "vitest";
import type { Message } from "../src/index.js";
import { type Entry, Offer, Timeline } from "../src/timeline.js";

const msg = (id: number): Entry => ({ own: false, message: { msgId: BigInt(id) } as Message });
const drain = (t: Timeline): bigint[] => {
  const out: bigint[] = [];
  for (let e = t.pop(); e !== undefined; e = t.pop()) out.push(e[0]);
  return out;
};

describe("Timeline", () => {
  it("drops duplicates before and after pop", () => {
    const t = new Timeline(5n, 100);
    expect(t.offer(5n, msg(5))).toBe(Offer.Duplicate);
    expect(t.offer(3n, msg(3))).toBe(Offer.Duplicate);
    expect(t.offer(6n, msg(6))).toBe(Offer.Ready);
    expect(t.offer(6n, msg(60))).toBe(Offer.Duplicate);
    expect(drain(t)).toEqual([6n]);
    expect(t.offer(6n, msg(6))).toBe(Offer.Duplicate);
    expect(drain(t)).toEqual([]);
  });

  it("buffers past a gap until it is filled, then releases in order", () => {
    const t = new Timeline(10n, 100);
    expect(t.offer(13n, msg(13))).toBe(Offer.Gap);
    expect(t.offer(12n, msg(12))).toBe(Offer.Gap);
    expect(t.hasGap()).toBe(true);
    expect(drain(t)).toEqual([]);
    expect(t.offer(13n, msg(13))).toBe(Offer.Duplicate);
    expect(t.offer(11n, msg(11))).toBe(Offer.Ready);
    expect(t.hasGap()).toBe(false);
    expect(drain(t)).toEqual([11n, 12n, 13n]);
  });

  it("keeps an own mark over a message that came by sync first", () => {
    const t = new Timeline(0n, 100);
    t.offer(2n, msg(2));
    expect(t.offer(2n, { own: true })).toBe(Offer.Duplicate);
    t.offer(1n, msg(1));
    const out: Entry[] = [];
    for (let e = t.pop(); e !== undefined; e = t.pop()) out.push(e[1]);
    expect(out.map((e) => e.own)).toEqual([false, true]);
  });

  it("bounds early entries; a sync brings the dropped ones back", () => {
    const t = new Timeline(0n, 3);
    for (let s = 2; s <= 10; s++) t.offer(BigInt(s), msg(s));
    for (let s = 1; s <= 10; s++) t.offer(BigInt(s), msg(s));
    expect(drain(t)).toEqual([...Array(10).keys()].map((i) => BigInt(i + 1)));
  });

  it("never skips or repeats under a shuffled, duplicated feed", () => {
    const t = new Timeline(0n, 1000);
    const out: bigint[] = [];
    let x = 0x9e3779b9;
    for (let i = 0; i < 2000; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      const s = BigInt(1 + ((x >>> 0) % 200));
      t.offer(s, msg(Number(s)));
      out.push(...drain(t));
    }
    for (let s = 1; s <= 200; s++) t.offer(BigInt(s), msg(s));
    out.push(...drain(t));
    expect(out).toEqual([...Array(200).keys()].map((i) => BigInt(i + 1)));
  });

  it("moves its start up to where a reader's view begins (a group member added later)", () => {
    const t = new Timeline(0n, 100);
    expect(t.offer(42n, msg(42))).toBe(Offer.Gap);
    expect(t.offer(39n, msg(39))).toBe(Offer.Gap);
    expect(t.advanceTo(40n)).toBe(true);
    expect(t.last).toBe(40n);
    // 39 was before the view: dropped; 41 is still missing.
    expect(drain(t)).toEqual([]);
    expect(t.hasGap()).toBe(true);
    expect(t.offer(41n, msg(41))).toBe(Offer.Ready);
    expect(drain(t)).toEqual([41n, 42n]);
    // Never backwards.
    expect(t.advanceTo(10n)).toBe(false);
    expect(t.offer(40n, msg(40))).toBe(Offer.Duplicate);
    // Past buffered entries that become contiguous.
    expect(t.offer(45n, msg(45))).toBe(Offer.Gap);
    expect(t.advanceTo(44n)).toBe(true);
    expect(t.last).toBe(45n);
    expect(drain(t)).toEqual([45n]);
  });
});
