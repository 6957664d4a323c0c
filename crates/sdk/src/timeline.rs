//! In-order, exactly-once delivery of one user's timeline.
//!
//! Entries reach the SDK from three directions that may overlap or race:
//! pushes, sync pages, and the `C2cAck` of this device's own messages (whose
//! sequence is "seen" without a push). [`Timeline`] takes them in any order,
//! drops what was already accepted, buffers what arrives early, and releases
//! entries strictly in sequence order with no gaps. It never touches a
//! socket: the connection task decides when to sync (when [`Offer::Gap`] says
//! something is missing) and when to acknowledge (after an entry was handed to
//! the application).

use std::collections::BTreeMap;

use switchboard_proto::pb;

/// One timeline entry as the SDK keeps it.
// Nearly every entry is a message (`Own` is the rare one), so boxing the
// message would add an allocation per entry to save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Entry {
    /// A message for the application.
    Message(pb::Message),
    /// This device's own sent message: it advances the sequence but is not
    /// shown to the application (it already knows what it sent).
    Own,
}

/// What happened to an offered entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Already accepted or already buffered: drop it (but still acknowledge).
    Duplicate,
    /// Accepted; it (and possibly buffered successors) can be taken with [`Timeline::pop`].
    Ready,
    /// Buffered past a hole: the entries between [`Timeline::last`] and it are missing.
    Gap,
}

/// The in-order / de-duplicating / gap-filling buffer.
#[derive(Debug)]
pub(crate) struct Timeline {
    /// Highest sequence accepted contiguously (everything up to it was taken or is takeable).
    last: u64,
    /// Entries not yet popped, by sequence: the contiguous ones up to `last`
    /// and the early ones past a hole.
    pending: BTreeMap<u64, Entry>,
    /// Bound on `pending`. What is dropped from the top comes back with the
    /// next sync, since nothing past `last` is ever acknowledged.
    max_pending: usize,
    /// Next sequence `pop` will return.
    next_pop: u64,
}

impl Timeline {
    /// A timeline whose entries up to `last` were already delivered.
    pub(crate) fn new(last: u64, max_pending: usize) -> Timeline {
        Timeline {
            last,
            pending: BTreeMap::new(),
            max_pending: max_pending.max(1),
            next_pop: last.saturating_add(1),
        }
    }

    /// The highest contiguously accepted sequence: the `since` of the next sync.
    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    /// Whether entries past a hole are buffered (a sync is needed to fill it).
    pub(crate) fn has_gap(&self) -> bool {
        self.pending
            .keys()
            .next_back()
            .is_some_and(|&top| top > self.last)
    }

    /// Offers entry `seq` (> 0). Sequence 0 (online-only) must not come here.
    pub(crate) fn offer(&mut self, seq: u64, entry: Entry) -> Offer {
        if seq <= self.last {
            return Offer::Duplicate;
        }
        if let Some(existing) = self.pending.get_mut(&seq) {
            // The C2cAck of our own message may arrive after its entry came in
            // through a sync: it is still ours, so don't show it.
            if entry == Entry::Own {
                *existing = Entry::Own;
            }
            return Offer::Duplicate;
        }
        self.pending.insert(seq, entry);
        // Advance `last` over whatever became contiguous.
        while self.pending.contains_key(&(self.last + 1)) {
            self.last += 1;
        }
        // Bound the early entries: drop the highest ones past the hole.
        while self.pending.len() > self.max_pending {
            match self.pending.last_key_value() {
                Some((&top, _)) if top > self.last => {
                    self.pending.remove(&top);
                }
                _ => break,
            }
        }
        if seq <= self.last {
            Offer::Ready
        } else {
            Offer::Gap
        }
    }

    /// Takes the next contiguous entry, in sequence order.
    pub(crate) fn pop(&mut self) -> Option<(u64, Entry)> {
        if self.next_pop > self.last {
            return None;
        }
        let seq = self.next_pop;
        let entry = self.pending.remove(&seq)?;
        self.next_pop += 1;
        Some((seq, entry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64) -> Entry {
        Entry::Message(pb::Message {
            msg_id: id,
            ..Default::default()
        })
    }

    fn drain(t: &mut Timeline) -> Vec<(u64, Entry)> {
        std::iter::from_fn(|| t.pop()).collect()
    }

    fn seqs(v: &[(u64, Entry)]) -> Vec<u64> {
        v.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn in_order_entries_pass_straight_through() {
        let mut t = Timeline::new(0, 100);
        for s in 1..=3 {
            assert_eq!(t.offer(s, msg(s)), Offer::Ready);
            assert_eq!(drain(&mut t), vec![(s, msg(s))]);
        }
        assert_eq!(t.last(), 3);
        assert!(!t.has_gap());
    }

    #[test]
    fn duplicates_are_dropped_before_and_after_pop() {
        let mut t = Timeline::new(5, 100);
        assert_eq!(t.offer(5, msg(5)), Offer::Duplicate);
        assert_eq!(t.offer(3, msg(3)), Offer::Duplicate);
        assert_eq!(t.offer(6, msg(6)), Offer::Ready);
        // Not popped yet: still a duplicate.
        assert_eq!(t.offer(6, msg(60)), Offer::Duplicate);
        assert_eq!(drain(&mut t), vec![(6, msg(6))]);
        assert_eq!(t.offer(6, msg(6)), Offer::Duplicate);
        assert!(drain(&mut t).is_empty());
    }

    #[test]
    fn a_gap_buffers_until_filled_then_releases_in_order() {
        let mut t = Timeline::new(10, 100);
        assert_eq!(t.offer(13, msg(13)), Offer::Gap);
        assert_eq!(t.offer(12, msg(12)), Offer::Gap);
        assert!(t.has_gap());
        assert!(drain(&mut t).is_empty());
        assert_eq!(t.last(), 10);
        // A resent early entry is still a duplicate.
        assert_eq!(t.offer(13, msg(13)), Offer::Duplicate);
        assert_eq!(t.offer(11, msg(11)), Offer::Ready);
        assert!(!t.has_gap());
        assert_eq!(t.last(), 13);
        assert_eq!(seqs(&drain(&mut t)), vec![11, 12, 13]);
    }

    #[test]
    fn sync_pages_overlapping_pushes_give_each_entry_once() {
        let mut t = Timeline::new(0, 100);
        // Pushes 4 and 5 arrive before the sync that covers 1..=5.
        assert_eq!(t.offer(4, msg(4)), Offer::Gap);
        assert_eq!(t.offer(5, msg(5)), Offer::Gap);
        for s in 1..=5 {
            t.offer(s, msg(s));
        }
        // A push resent by the server after the sync.
        assert_eq!(t.offer(5, msg(5)), Offer::Duplicate);
        let got = drain(&mut t);
        assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5]);
        assert_eq!(got[3], (4, msg(4)));
    }

    #[test]
    fn own_messages_advance_but_are_marked_own() {
        let mut t = Timeline::new(0, 100);
        assert_eq!(t.offer(1, msg(1)), Offer::Ready);
        assert_eq!(t.offer(2, Entry::Own), Offer::Ready);
        assert_eq!(t.offer(3, msg(3)), Offer::Ready);
        assert_eq!(
            drain(&mut t),
            vec![(1, msg(1)), (2, Entry::Own), (3, msg(3))]
        );
    }

    #[test]
    fn own_ack_past_a_hole_waits_for_the_hole() {
        let mut t = Timeline::new(0, 100);
        assert_eq!(t.offer(2, Entry::Own), Offer::Gap);
        assert!(drain(&mut t).is_empty());
        assert_eq!(t.offer(1, msg(1)), Offer::Ready);
        assert_eq!(drain(&mut t), vec![(1, msg(1)), (2, Entry::Own)]);
    }

    #[test]
    fn own_ack_after_the_entry_came_by_sync_wins() {
        let mut t = Timeline::new(0, 100);
        t.offer(3, msg(3));
        assert_eq!(t.offer(3, Entry::Own), Offer::Duplicate);
        // But a message offered after the own mark does not overwrite it.
        t.offer(4, Entry::Own);
        assert_eq!(t.offer(4, msg(4)), Offer::Duplicate);
        t.offer(1, msg(1));
        t.offer(2, msg(2));
        assert_eq!(
            drain(&mut t),
            vec![(1, msg(1)), (2, msg(2)), (3, Entry::Own), (4, Entry::Own)]
        );
    }

    #[test]
    fn early_entries_are_bounded_and_come_back_by_sync() {
        let mut t = Timeline::new(0, 3);
        for s in 2..=10 {
            t.offer(s, msg(s));
        }
        assert_eq!(t.pending.len(), 3, "only the lowest early entries are kept");
        // The sync refills 1..=10 in order.
        for s in 1..=10 {
            t.offer(s, msg(s));
        }
        assert_eq!(seqs(&drain(&mut t)), (1..=10).collect::<Vec<_>>());
        assert!(!t.has_gap());
    }

    #[test]
    fn interleaved_pop_and_offer_never_skip_or_repeat() {
        // A deterministic shuffle with duplicates: every sequence comes out once, in order.
        let mut t = Timeline::new(0, 1000);
        let mut out = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let s = 1 + x % 200;
            t.offer(s, msg(s));
            out.extend(seqs(&drain(&mut t)));
        }
        for s in 1..=200 {
            t.offer(s, msg(s));
        }
        out.extend(seqs(&drain(&mut t)));
        assert_eq!(out, (1..=200).collect::<Vec<_>>());
    }

    #[test]
    fn starting_past_zero_ignores_older_entries() {
        let mut t = Timeline::new(100, 10);
        assert_eq!(t.offer(1, msg(1)), Offer::Duplicate);
        assert_eq!(t.offer(101, msg(101)), Offer::Ready);
        assert_eq!(seqs(&drain(&mut t)), vec![101]);
    }
}
