//! The workload and the report shared by the store benchmarks
//! (`store_bench`, `pg_store_bench`, `fjall_bench`), so their figures stay
//! comparable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_core::{Message, NewMessage, Store, UserKey};

/// Users the messages go between (pairs chosen round-robin per task).
pub const USERS: u64 = 1_000;

/// The pace of each task, from `BENCH_PACE` (appends per second per task;
/// unset or 0: flat out), as a ticker to await before each append. Task
/// `t` of `c` starts `t/c` of a period late, so the tasks do not tick in step.
pub fn pacer(t: u64, c: u64) -> Option<tokio::time::Interval> {
    let rate: f64 = std::env::var("BENCH_PACE").ok()?.parse().ok()?;
    (rate > 0.0).then(|| {
        let period = Duration::from_secs_f64(1.0 / rate);
        let start = tokio::time::Instant::now() + period.mul_f64(t as f64 / c as f64);
        tokio::time::interval_at(start, period)
    })
}

/// N durable c2c appends (a 200-byte body, receiver's and sender's
/// timelines) from C concurrent tasks; the elapsed time and each append's
/// latency.
pub async fn run(store: Arc<dyn Store>, n: u64, c: u64) -> (Duration, Vec<Duration>) {
    let ids = Arc::new(AtomicU64::new(1));
    let body = Bytes::from(vec![b'x'; 200]);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..c {
        let count = n / c + u64::from(t < n % c);
        let (store, ids, body) = (store.clone(), ids.clone(), body.clone());
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(count as usize);
            let mut pace = pacer(t, c);
            for i in 0..count {
                if let Some(p) = pace.as_mut() {
                    p.tick().await;
                }
                let from = UserKey::new("bench", format!("u{}", (t * 7 + i) % USERS));
                let to = UserKey::new("bench", format!("u{}", (t * 7 + i + 1 + t % 13) % USERS));
                let msg = NewMessage {
                    message: Message {
                        id: ids.fetch_add(1, Ordering::Relaxed),
                        from: from.clone(),
                        to: to.clone(),
                        kind: "text".into(),
                        body: body.clone(),
                        client_msg_id: format!("t{t}-{i}"),
                        server_time_ms: switchboard_core::now_ms(),
                        group: String::new(),
                    },
                    timelines: vec![to, from],
                    amends: None,
                };
                let t0 = Instant::now();
                let a = store.append(msg).await.expect("append");
                lat.push(t0.elapsed());
                assert!(!a.duplicate);
            }
            lat
        });
    }
    let mut all = Vec::with_capacity(n as usize);
    while let Some(r) = tasks.join_next().await {
        all.extend(r.expect("task"));
    }
    (start.elapsed(), all)
}

pub fn report(name: &str, n: u64, c: u64, elapsed: Duration, lat: &mut [Duration]) {
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
    };
    let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
    println!(
        "{name:6} N={n} C={c}: {:>8.0} appends/s  p50 {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  ({:.2} s)",
        n as f64 / elapsed.as_secs_f64(),
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(pct(0.999)),
        elapsed.as_secs_f64()
    );
}
