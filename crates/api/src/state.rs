//! The API's settings and shared state: the gate (logic and hub), the
//! limits, and the samples the stats endpoint turns into rates.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_gate::Gate;

/// Settings of the HTTP API (`[api]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// The operator's key: `/v1/admin/*`, and every app's endpoints.
    /// `None` turns the operator endpoints off (`ADMIN_DISABLED`).
    pub admin_key: Option<String>,
    /// Largest request body; past it `413 PAYLOAD_TOO_LARGE`.
    pub max_body_bytes: usize,
    /// Most users in one push or presence request; past it `400 TOO_MANY_TARGETS`.
    pub max_targets: usize,
    /// The embedded demo app's token secret, set only when the node runs it
    /// (no `[[apps]]`): turns on `POST /console/token`, which mints tokens
    /// of the demo app only. `None`: the endpoint does not exist.
    pub console_token_secret: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            admin_key: None,
            max_body_bytes: 1024 * 1024,
            max_targets: 10_000,
            console_token_secret: None,
        }
    }
}

/// State shared by the `/v1` handlers.
pub struct ApiState {
    pub gate: Arc<Gate>,
    pub config: ApiConfig,
    pub started: Instant,
    pub rates: RateWindow,
}

/// Counter samples taken at stats calls, at least a second apart, turned
/// into rates over about the last minute (no background task needed).
pub struct RateWindow {
    // A std Mutex: a few pushes and pops, never held across an await.
    samples: Mutex<VecDeque<Sample>>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    stored: u64,
    pushes: u64,
}

/// Rates over a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub messages_per_sec: f64,
    pub pushes_per_sec: f64,
    pub window_secs: f64,
}

const WINDOW: Duration = Duration::from_secs(60);
const MIN_SPACING: Duration = Duration::from_secs(1);

impl RateWindow {
    /// Starts with the counters' values now (zero at start).
    pub fn new(stored: u64, pushes: u64) -> RateWindow {
        RateWindow {
            samples: Mutex::new(VecDeque::from([Sample {
                at: Instant::now(),
                stored,
                pushes,
            }])),
        }
    }

    /// Records the counters now and returns the rates since the newest
    /// sample that is at least a minute old (or the oldest one kept).
    pub fn sample(&self, stored: u64, pushes: u64) -> Rates {
        self.sample_at(Instant::now(), stored, pushes)
    }

    fn sample_at(&self, now: Instant, stored: u64, pushes: u64) -> Rates {
        let mut q = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let due = q
            .back()
            .is_none_or(|s| now.saturating_duration_since(s.at) >= MIN_SPACING);
        if due {
            q.push_back(Sample {
                at: now,
                stored,
                pushes,
            });
        }
        // Keep one sample beyond the window as the baseline.
        while q.len() > 2
            && q.get(1)
                .is_some_and(|s| now.saturating_duration_since(s.at) >= WINDOW)
        {
            q.pop_front();
        }
        let Some(base) = q.front().copied() else {
            return Rates {
                messages_per_sec: 0.0,
                pushes_per_sec: 0.0,
                window_secs: 0.0,
            };
        };
        let secs = now.saturating_duration_since(base.at).as_secs_f64();
        let rate = |now_v: u64, base_v: u64| {
            if secs > 0.0 {
                now_v.saturating_sub(base_v) as f64 / secs
            } else {
                0.0
            }
        };
        Rates {
            messages_per_sec: rate(stored, base.stored),
            pushes_per_sec: rate(pushes, base.pushes),
            window_secs: secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_use_about_the_last_minute() {
        let w = RateWindow::new(0, 0);
        let t0 = w.samples.lock().unwrap()[0].at;
        let at = |s: u64| t0 + Duration::from_secs(s);
        let r = w.sample_at(at(10), 100, 1000);
        assert_eq!(
            (r.messages_per_sec, r.pushes_per_sec, r.window_secs),
            (10.0, 100.0, 10.0)
        );
        // Samples every 10 s at 5 messages/s after a first burst.
        for i in 2..=12u64 {
            w.sample_at(at(i * 10), 100 + (i - 1) * 50, 1000);
        }
        let r = w.sample_at(at(130), 100 + 12 * 50, 1000);
        assert!((60.0..=70.0).contains(&r.window_secs), "{r:?}");
        assert_eq!(r.messages_per_sec, 5.0);
        assert_eq!(r.pushes_per_sec, 0.0);
    }
}
