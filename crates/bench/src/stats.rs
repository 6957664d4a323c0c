//! Measurements: an HDR latency histogram, a throughput timeline, and the
//! result record every scenario writes (one JSON object per measured system).

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// The process-wide clock every timestamp in a message body is taken on, so
/// a receiver task can subtract a sender task's time.
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Latency histogram in microseconds (1 µs to 1 hour, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that `new_with_bounds` accepts, so this never fails.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

/// Records a latency in microseconds, clamped into the histogram's range.
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    let _ = h.record(us.clamp(1, 3_600_000_000));
}

/// Counts events in 100 ms buckets from a start instant.
#[derive(Debug, Clone)]
pub struct Timeline {
    start_ns: u64,
    buckets: Vec<u64>,
}

/// Width of one timeline bucket.
pub const BUCKET: Duration = Duration::from_millis(100);

impl Timeline {
    pub fn new(start_ns: u64) -> Timeline {
        Timeline {
            start_ns,
            buckets: Vec::new(),
        }
    }

    /// Counts `n` events at time `at_ns` (on [`now_ns`]'s clock).
    pub fn add(&mut self, at_ns: u64, n: u64) {
        let i = (at_ns.saturating_sub(self.start_ns) / BUCKET.as_nanos() as u64) as usize;
        // Bounded: a run longer than an hour is folded into the last bucket.
        let i = i.min(36_000);
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, 0);
        }
        self.buckets[i] += n;
    }

    pub fn merge(&mut self, other: &Timeline) {
        for (i, n) in other.buckets.iter().enumerate() {
            let at = other.start_ns + i as u64 * BUCKET.as_nanos() as u64;
            self.add(at, *n);
        }
    }

    /// `(seconds since start, events per second)` per bucket.
    pub fn rates(&self) -> Vec<(f64, f64)> {
        let w = BUCKET.as_secs_f64();
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, n)| (i as f64 * w, *n as f64 / w))
            .collect()
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// The loss check that ends every run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LossCheck {
    /// What was checked, in words.
    pub rule: String,
    /// Messages (or deliveries, or connections) that had to arrive.
    pub expected: u64,
    /// Of those, how many arrived.
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub ok: bool,
}

/// One measured system in one scenario run: what a JSON results file holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: String,
    /// `switchboard`, `mosquitto-qos1`, `mosquitto-qos0`.
    pub system: String,
    /// `tcp`, `ws`, `mqtt`.
    pub transport: String,
    pub params: BTreeMap<String, serde_json::Value>,
    /// Named figures: `msgs_per_sec`, `rss_per_conn_bytes`, ...
    pub metrics: BTreeMap<String, f64>,
    pub latency_us: Option<Latency>,
    /// `(percentile, µs)` points of the latency distribution, for charts.
    pub latency_cdf: Vec<(f64, u64)>,
    /// `(seconds, events per second)`, for charts.
    pub timeline: Vec<(f64, f64)>,
    pub loss: LossCheck,
    pub notes: Vec<String>,
}

impl RunResult {
    pub fn new(scenario: &str, system: &str, transport: &str) -> RunResult {
        RunResult {
            scenario: scenario.into(),
            system: system.into(),
            transport: transport.into(),
            ..RunResult::default()
        }
    }

    pub fn param(&mut self, k: &str, v: impl Into<serde_json::Value>) {
        self.params.insert(k.into(), v.into());
    }

    pub fn metric(&mut self, k: &str, v: f64) {
        self.metrics.insert(k.into(), v);
    }

    /// Fills the latency fields from a histogram.
    pub fn set_latency(&mut self, h: &Histogram<u64>) {
        if h.is_empty() {
            return;
        }
        self.latency_us = Some(Latency::of(h));
        // Points at 0, 0.9, 0.99, ... "nines" so a log-scale chart is smooth.
        let mut cdf = Vec::new();
        let mut nines = 0.0f64;
        while nines <= 5.0 {
            let q = 1.0 - 10f64.powf(-nines);
            cdf.push((q * 100.0, h.value_at_quantile(q)));
            nines += 0.05;
        }
        cdf.push((100.0, h.max()));
        self.latency_cdf = cdf;
    }

    /// Prints the human summary to stderr.
    pub fn print(&self) {
        eprintln!(
            "── {} · {} ({})",
            self.scenario, self.system, self.transport
        );
        for (k, v) in &self.metrics {
            eprintln!("   {k:<28} {}", fmt_num(*v));
        }
        if let Some(l) = &self.latency_us {
            eprintln!(
                "   latency µs                   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
                l.p50, l.p90, l.p99, l.p999, l.max, l.count
            );
        }
        let l = &self.loss;
        eprintln!(
            "   loss check: {} — expected {}, received {}, lost {}, duplicates {}, out of order {}: {}",
            l.rule,
            l.expected,
            l.received,
            l.lost,
            l.duplicates,
            l.out_of_order,
            if l.ok { "OK" } else { "FAILED" }
        );
        for n in &self.notes {
            eprintln!("   note: {n}");
        }
    }
}

/// A number with thousands separators (integers) or 2 decimals.
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        let s = format!("{}", v as i64);
        let (sign, digits) = s.split_at(if v < 0.0 { 1 } else { 0 });
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        format!("{sign}{out}")
    } else if v.abs() >= 1000.0 {
        fmt_num(v.round())
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(1234567.0), "1,234,567");
        assert_eq!(fmt_num(12.345), "12.35");
        assert_eq!(fmt_num(-1000.0), "-1,000");
    }

    #[test]
    fn timeline_buckets() {
        let mut t = Timeline::new(0);
        t.add(50_000_000, 3);
        t.add(250_000_000, 1);
        let r = t.rates();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].1, 30.0);
        assert_eq!(r[1].1, 0.0);
    }
}
