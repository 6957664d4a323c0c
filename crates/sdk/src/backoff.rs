//! Reconnect delays: exponential backoff with full jitter.
//!
//! Full jitter (a uniform pick between the floor and the exponential ceiling)
//! spreads out the reconnects of thousands of clients that a server restart
//! dropped at the same instant, so they don't come back as one wave.

use std::time::Duration;

/// Exponential backoff between `min` and `max`, jittered.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    /// Forgets past failures (after a successful login).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The ceiling of the next delay: `min * 2^attempt`, capped at `max`.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay for a `unit` drawn uniformly from `[0, 1)`; advances the attempt.
    pub(crate) fn next_with(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let span = ceiling.saturating_sub(self.min);
        self.min + span.mul_f64(unit)
    }

    /// The next delay, jittered with the thread's random generator.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceiling_doubles_up_to_max() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        let ceilings: Vec<_> = (0..6)
            .map(|_| {
                let c = b.ceiling();
                b.next_with(0.5);
                c
            })
            .collect();
        assert_eq!(
            ceilings,
            vec![100 * MS, 200 * MS, 400 * MS, 800 * MS, 1000 * MS, 1000 * MS]
        );
    }

    #[test]
    fn delays_stay_between_min_and_ceiling() {
        let mut b = Backoff::new(100 * MS, 1000 * MS);
        for _ in 0..5 {
            b.next_with(0.0);
        }
        assert_eq!(b.clone().next_with(0.0), 100 * MS);
        assert_eq!(b.clone().next_with(0.5), 550 * MS);
        assert_eq!(b.clone().next_with(1.0), 1000 * MS);
        assert_eq!(b.clone().next_with(f64::NAN), 100 * MS);
        for _ in 0..1000 {
            let d = b.next_delay();
            assert!(d >= 100 * MS && d <= 1000 * MS, "{d:?}");
        }
    }

    #[test]
    fn reset_starts_over_and_huge_attempts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..200 {
            b.next_with(1.0);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn max_below_min_is_raised_to_min() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(b.next_with(1.0), Duration::from_secs(2));
    }
}
