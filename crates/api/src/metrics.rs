//! Prometheus metrics: the process-wide recorder (installed once, with
//! explicit histogram buckets), the request-latency middleware, and the
//! `/metrics` rendering. Counters come from the core (`switchboard_core::stats`)
//! and the gate through the `metrics` facade.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use switchboard_core::stats;

/// Histogram: HTTP request latency, labels `method`, `route`, `status`.
pub const HTTP_REQUEST_SECONDS: &str = "switchboard_http_request_seconds";

/// Delivery latency buckets: from 50 µs (a local push) to 5 s.
const DELIVERY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];
/// Request latency buckets: from 0.5 ms to 10 s (a 10,000-user stored push).
const REQUEST_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Store group-commit buckets: from 100 µs (an fsync on a fast disk) to 1 s.
const STORE_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Commands per group commit.
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// How often histogram samples are folded into buckets when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process's Prometheus handle, `None` when another recorder was
/// installed first (then `/metrics` answers 503). A recorder is global to
/// the process, so every node in one process (tests) shares it.
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE.get_or_init(install).as_ref()
}

fn install() -> Option<PrometheusHandle> {
    let buckets: [(&str, &[f64]); 6] = [
        (stats::DELIVERY_SECONDS, DELIVERY_BUCKETS),
        (HTTP_REQUEST_SECONDS, REQUEST_BUCKETS),
        (stats::STORE_GROUP_SECONDS, STORE_BUCKETS),
        (stats::STORE_COMMIT_SECONDS, STORE_BUCKETS),
        (stats::STORE_CHECKPOINT_SECONDS, STORE_BUCKETS),
        (stats::STORE_GROUP_COMMANDS, GROUP_BUCKETS),
    ];
    let builder = buckets
        .into_iter()
        .try_fold(PrometheusBuilder::new(), |b, (name, buckets)| {
            b.set_buckets_for_metric(Matcher::Full(name.into()), buckets)
        });
    let recorder = match builder {
        Ok(b) => b.build_recorder(),
        Err(e) => {
            tracing::warn!(error = %e, "invalid metric buckets; /metrics is off");
            return None;
        }
    };
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("another metrics recorder is installed; /metrics is off");
        return None;
    }
    describe();
    let upkeep = handle.clone();
    // Histograms buffer samples until rendered; a scrape-less process must
    // not buffer forever. A plain thread: this runs once per process.
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start metrics upkeep; samples fold in at each scrape");
    }
    Some(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_histogram!(
        stats::DELIVERY_SECONDS,
        Unit::Seconds,
        "From the store's commit to the push handed to the connection's queue"
    );
    describe_histogram!(
        HTTP_REQUEST_SECONDS,
        Unit::Seconds,
        "HTTP API request latency"
    );
    describe_histogram!(
        stats::STORE_GROUP_SECONDS,
        Unit::Seconds,
        "Store: one group commit (label store: fjall, sqlite, postgres), first write to durable commit"
    );
    describe_histogram!(
        stats::STORE_COMMIT_SECONDS,
        Unit::Seconds,
        "Store: the commit alone (fjall: journal write and fsync; SQLite: WAL write and fsync)"
    );
    describe_histogram!(
        stats::STORE_CHECKPOINT_SECONDS,
        Unit::Seconds,
        "SQLite: one checkpoint of WAL frames into the database file (label by: thread, writer)"
    );
    describe_histogram!(
        stats::STORE_GROUP_COMMANDS,
        "Store: commands in one group commit"
    );
    describe_counter!(
        stats::MESSAGES_STORED,
        "Messages stored (c2c and stored s2c)"
    );
    describe_counter!(
        stats::ONLINE_MESSAGES,
        "Online-only messages pushed (one per s2c request)"
    );
    describe_counter!(
        stats::PUSHES,
        "Push frames handed to connection queues, by mode"
    );
    describe_counter!(stats::KICKS, "Connections closed by the server, by code");
    describe_gauge!(stats::CONNECTIONS, "Logged-in connections on this node");
    describe_counter!(
        stats::WEBHOOK_REQUESTS,
        "Webhook requests, by outcome (delivered: 2xx; failed: retried with backoff)"
    );
    describe_counter!(
        stats::WEBHOOK_EVENTS,
        "Outbox events the webhook dispatcher finished, by outcome (completed, dropped)"
    );
    describe_gauge!(
        stats::WEBHOOK_IN_FLIGHT,
        "Outbox events not yet accepted by every webhook destination"
    );
}

/// Records every request's latency under its route pattern (never the raw
/// path, whose uids would make unbounded label values).
pub async fn track(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(HTTP_REQUEST_SECONDS, "method" => method, "route" => route, "status" => status)
        .record(start.elapsed().as_secs_f64());
    response
}
