//! Time-ordered 64-bit message ids: `ms since 2024-01-01 << 22 | node << 12 | counter`.
//!
//! 42 bits of milliseconds last 139 years; 10 bits of node tell up to 1024
//! nodes apart; 4096 ids per millisecond per node. When the counter runs out
//! within one millisecond, the generator borrows the next millisecond, so ids
//! stay unique and increasing even if the clock stalls or steps back.

use std::sync::Mutex;

const EPOCH_MS: i64 = 1_704_067_200_000;
const NODE_BITS: u32 = 10;
const COUNTER_BITS: u32 = 12;

/// Generates ids for one node.
#[derive(Debug)]
pub struct IdGenerator {
    node: u64,
    // (last ms, counter). A std Mutex: the critical section is a few
    // arithmetic operations and never awaits.
    state: Mutex<(i64, u64)>,
}

impl IdGenerator {
    pub fn new(node: u16) -> IdGenerator {
        IdGenerator {
            node: u64::from(node) & ((1 << NODE_BITS) - 1),
            state: Mutex::new((0, 0)),
        }
    }

    /// The next id.
    pub fn next_id(&self) -> u64 {
        let now = crate::now_ms() - EPOCH_MS;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, counter) = *state;
        let (ms, counter) = if now > last {
            (now, 0)
        } else if counter + 1 < (1 << COUNTER_BITS) {
            (last, counter + 1)
        } else {
            (last + 1, 0)
        };
        *state = (ms, counter);
        (ms.max(0) as u64) << (NODE_BITS + COUNTER_BITS) | self.node << COUNTER_BITS | counter
    }
}

/// The millisecond timestamp (Unix epoch) encoded in an id.
pub fn id_time_ms(id: u64) -> i64 {
    (id >> (NODE_BITS + COUNTER_BITS)) as i64 + EPOCH_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_carry_time() {
        let g = IdGenerator::new(3);
        let mut last = 0;
        for _ in 0..20_000 {
            let id = g.next_id();
            assert!(id > last);
            last = id;
        }
        assert!((id_time_ms(last) - crate::now_ms()).abs() < 60_000);
    }
}
