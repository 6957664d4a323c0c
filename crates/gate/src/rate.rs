//! A token bucket for one connection's request rate.

use tokio::time::Instant;

/// Allows `rate` requests per second with bursts of `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes one token; false when the bucket is empty.
    pub fn try_take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_refills_at_the_rate() {
        let mut b = TokenBucket::new(10, 5);
        assert_eq!((0..10).filter(|_| b.try_take()).count(), 5);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!((0..10).filter(|_| b.try_take()).count(), 3);
    }
}
