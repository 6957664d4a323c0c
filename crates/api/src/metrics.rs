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
/// Counter: HTTP API error answers, label `code` (`INVALID_API_KEY`, ...).
pub const HTTP_ERRORS: &str = "switchboard_http_errors_total";
/// Gauge, always 1: labels `version` and `commit` of this build.
pub const BUILD_INFO: &str = "switchboard_build_info";
/// The process metrics every Prometheus client library exports, by their
/// usual names (dashboards expect them), read from /proc at each scrape.
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_CPU_SECONDS: &str = "process_cpu_seconds_total";

/// The git commit this binary was built from (build.rs), or "unknown".
pub const COMMIT: &str = env!("SWITCHBOARD_GIT_COMMIT");

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
        "Store: commands in one group commit (formerly switchboard_store_group_commands)"
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
    describe_counter!(stats::LOGINS, "Logins accepted");
    describe_counter!(stats::LOGIN_FAILURES, "Logins refused, by error code");
    describe_counter!(stats::ERRORS_SENT, "Error frames sent to clients, by code");
    describe_counter!(
        stats::RATE_LIMITED,
        "Requests refused for a connection's rate limit (gate.rate_per_sec)"
    );
    describe_counter!(stats::C2S, "c2s reports the bus accepted");
    describe_gauge!(
        stats::OPEN_CONNECTIONS,
        "Open connections, logged in or not, by transport (tcp, ws)"
    );
    describe_counter!(
        stats::CONNECTIONS_ACCEPTED,
        "Connections accepted, by transport (tcp, ws)"
    );
    describe_counter!(HTTP_ERRORS, "HTTP API error answers, by code");
    describe_gauge!(
        BUILD_INFO,
        "Always 1; labels version and commit of this build"
    );
    describe_gauge!(
        PROCESS_RESIDENT_MEMORY,
        Unit::Bytes,
        "Resident memory of the process"
    );
    describe_gauge!(PROCESS_OPEN_FDS, "Open file descriptors of the process");
    describe_gauge!(
        PROCESS_MAX_FDS,
        "The process's limit of open file descriptors"
    );
    describe_gauge!(
        PROCESS_CPU_SECONDS,
        Unit::Seconds,
        "CPU time of the process, user and system"
    );
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

/// Sets the gauges read at scrape time: build info and the process's own
/// numbers. A /proc file that cannot be read leaves its gauge out (not on
/// Linux, or a sandbox without /proc).
pub fn refresh() {
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => COMMIT)
        .set(1.0);
    let p = process::read();
    if let Some(v) = p.resident_bytes {
        metrics::gauge!(PROCESS_RESIDENT_MEMORY).set(v as f64);
    }
    if let Some(v) = p.open_fds {
        metrics::gauge!(PROCESS_OPEN_FDS).set(v as f64);
    }
    if let Some(v) = p.max_fds {
        metrics::gauge!(PROCESS_MAX_FDS).set(v as f64);
    }
    if let Some(v) = p.cpu_seconds {
        metrics::gauge!(PROCESS_CPU_SECONDS).set(v);
    }
}

/// The process's numbers from /proc/self (a few small reads; a crate for
/// it would pull in a whole /proc parser).
mod process {
    /// Clock ticks per second of /proc/<pid>/stat times: USER_HZ, fixed at
    /// 100 by the kernel's ABI on every architecture we build for.
    const USER_HZ: f64 = 100.0;

    #[derive(Debug, Default, PartialEq)]
    pub struct Process {
        pub resident_bytes: Option<u64>,
        pub open_fds: Option<u64>,
        pub max_fds: Option<u64>,
        pub cpu_seconds: Option<f64>,
    }

    pub fn read() -> Process {
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        Process {
            resident_bytes: status.as_deref().and_then(resident_bytes),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as u64),
            max_fds: limits.as_deref().and_then(max_fds),
            cpu_seconds: stat.as_deref().and_then(cpu_seconds),
        }
    }

    /// `VmRSS:   1234 kB` in /proc/self/status.
    pub fn resident_bytes(status: &str) -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kb.checked_mul(1024)
    }

    /// The soft limit of `Max open files` in /proc/self/limits.
    pub fn max_fds(limits: &str) -> Option<u64> {
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// utime + stime of /proc/self/stat, in seconds. The command name (field
    /// 2) may hold spaces and parentheses: fields are counted after its
    /// closing parenthesis, the last one in the line.
    pub fn cpu_seconds(stat: &str) -> Option<f64> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        // After the name: state is field 3, utime field 14, stime field 15.
        let utime: u64 = fields.nth(11)?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        Some((utime + stime) as f64 / USER_HZ)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_proc_files() {
            assert_eq!(
                resident_bytes("Name:\tx\nVmRSS:\t    2048 kB\nVmData: 1 kB\n"),
                Some(2048 * 1024)
            );
            let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
Max open files            1024                 524288               files\n";
            assert_eq!(max_fds(limits), Some(1024));
            let stat = "42 (a b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
            assert_eq!(cpu_seconds(stat), Some(3.0));
            assert_eq!(cpu_seconds("garbage"), None);
        }

        #[test]
        fn reads_this_process() {
            let p = read();
            assert!(p.resident_bytes.is_some_and(|b| b > 0), "{p:?}");
            assert!(p.open_fds.is_some_and(|n| n > 0), "{p:?}");
            assert!(p.max_fds.is_some_and(|n| n > 0), "{p:?}");
            assert!(p.cpu_seconds.is_some(), "{p:?}");
        }
    }
}
