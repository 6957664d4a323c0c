//! `switchboard bench`: the load generator.
//!
//! Each scenario runs against a Switchboard node (a child `switchboard
//! serve` with a temporary data dir, or `--url`) and, with `--mqtt`, against
//! Mosquitto through the same harness, so every figure has a peer figure from
//! the same run. A run shows a progress bar, records latency in an HDR
//! histogram (p50, p90, p99, p99.9, max), ends with a loss check, and writes
//! its results as JSON (`--out`). `report` turns result files into the table
//! of docs/benchmarks.md and PNG charts.
//!
//! - [`scenario`]: `connections`, `c2c`, `fanout`, `group`, `reconnect`;
//! - [`target`]: the systems under test; [`raw`]: light raw-frame clients;
//! - [`cpu`]: what a run cost (CPU of server and generator, RSS);
//! - [`stats`]: histograms, timelines, the result record; [`report`]: table and charts.

pub mod cpu;
pub mod http;
pub mod raw;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod target;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

pub use stats::RunResult;

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("usage: {0}")]
    Usage(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Proto(#[from] switchboard_proto::ProtoError),
    #[error("sdk: {0}")]
    Sdk(#[from] switchboard_sdk::SdkError),
    #[error("mqtt: {0}")]
    Mqtt(String),
    #[error("amqp: {0}")]
    Amqp(String),
    #[error("server under test: {0}")]
    Server(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("http: {0}")]
    Http(String),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("chart: {0}")]
    Chart(String),
}

/// `switchboard bench <scenario>`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// N idle logged-in connections: server RSS per connection, connects/s.
    Connections(scenario::connections::Args),
    /// P sender→receiver pairs, durable c2c: delivered msgs/s, latency, exactly-once in order.
    C2c(scenario::c2c::Args),
    /// s2c (stored or online_only) to N online users through the HTTP API.
    Fanout(scenario::fanout::Args),
    /// One group of M members, O online: group posts over the HTTP API,
    /// deliveries/s and the time until the last member device has each.
    Group(scenario::group::Args),
    /// The conversation list of a user with C conversations: latency of
    /// the first page and the node's CPU per request.
    Conversations(scenario::conversations::Args),
    /// N clients with an offline backlog reconnect at once and sync.
    Reconnect(scenario::reconnect::Args),
    /// Latency of one durable append (write + fdatasync) on a directory's
    /// disk: the floor under every acknowledged message's latency.
    Disk(scenario::disk::Args),
    /// Writes the table of docs/benchmarks.md and the PNG charts from result files.
    Report(report::Args),
    /// A connections load-generator process (started by `connections`).
    #[command(hide = true)]
    ConnWorker(scenario::connections::WorkerArgs),
}

/// Options every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// A running node's TCP URL (`tcp://host:port`); default: start one.
    /// Several, comma-separated, are the nodes of a cluster: senders (and
    /// fan-out's API requests, through `--http`) use the first, receivers
    /// are spread over the others, so every message crosses the route
    /// between nodes.
    #[arg(long)]
    pub url: Option<String>,
    /// That node's HTTP address (API, /ws).
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// App of the bench users (with --url).
    #[arg(long, default_value = "bench")]
    pub app: String,
    /// HS256 secret of that app (with --url).
    #[arg(long)]
    pub secret: Option<String>,
    /// API key of that app (with --url), for the HTTP API.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Pid of the node (with --url), for its CPU and RSS; comma-separated
    /// for the nodes of a cluster (their CPU and RSS are summed).
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// The `switchboard` binary to start (default: this one).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Log filter of a started node.
    #[arg(long, default_value = "warn")]
    pub server_log: String,
    /// Outbound queue per connection of a started node (frames).
    #[arg(long, default_value_t = 4096)]
    pub outbound_queue: usize,
    /// Embedded store of a started node: `fjall` (the node's default) or `sqlite`.
    #[arg(long, default_value = "fjall", value_parser = ["fjall", "sqlite"])]
    pub store: String,
    /// Use WebSocket (binary frames) instead of TCP.
    #[arg(long)]
    pub ws: bool,
    /// Also run the scenario against the MQTT broker at this address (Mosquitto).
    #[arg(long)]
    pub mqtt: Option<SocketAddr>,
    /// Pid of the MQTT broker, for its CPU and RSS (default: the process
    /// listening on --mqtt's port, when it is visible).
    #[arg(long)]
    pub mqtt_pid: Option<u32>,
    /// Also run the scenario against RabbitMQ at this AMQP URL
    /// (`amqp://guest:guest@127.0.0.1:5672/%2f`): quorum queues, publisher
    /// confirms, manual consumer acks (`c2c` and stored `fanout`).
    #[arg(long)]
    pub amqp: Option<String>,
    /// Pid of the RabbitMQ broker (`beam.smp`), for its CPU and RSS
    /// (default: the process listening on --amqp's port).
    #[arg(long)]
    pub amqp_pid: Option<u32>,
    /// Append the results (a JSON array) to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs one `switchboard bench` command; returns the results it measured.
pub async fn run(args: BenchArgs) -> Result<Vec<RunResult>, BenchError> {
    let (mut results, out, common) = match args.scenario {
        Scenario::Connections(a) => (
            scenario::connections::run(&a).await?,
            a.common.out.clone(),
            Some(a.common),
        ),
        Scenario::C2c(a) => (
            scenario::c2c::run(&a).await?,
            a.common.out.clone(),
            Some(a.common),
        ),
        Scenario::Fanout(a) => (
            scenario::fanout::run(&a).await?,
            a.common.out.clone(),
            Some(a.common),
        ),
        Scenario::Group(a) => (
            scenario::group::run(&a).await?,
            a.common.out.clone(),
            Some(a.common),
        ),
        Scenario::Conversations(a) => (
            scenario::conversations::run(&a).await?,
            a.common.out.clone(),
            Some(a.common),
        ),
        Scenario::Reconnect(a) => (
            scenario::reconnect::run(&a).await?,
            a.common.out.clone(),
            Some(a.common),
        ),
        Scenario::Disk(a) => (scenario::disk::run(&a).await?, a.out, None),
        Scenario::Report(a) => {
            report::run(&a)?;
            return Ok(Vec::new());
        }
        Scenario::ConnWorker(a) => {
            scenario::connections::worker(&a).await?;
            return Ok(Vec::new());
        }
    };
    // The store of a node the bench started (one given by --url is unknown).
    if let Some(c) = common.filter(|c| c.url.is_none()) {
        for r in results.iter_mut().filter(|r| r.system == "switchboard") {
            r.param("store", c.store.as_str());
        }
    }
    add_ratios(&mut results);
    for r in &results {
        r.print();
    }
    print_ratios(&results);
    if let Some(out) = &out {
        write_results(out, &results)?;
        eprintln!("results appended to {}", out.display());
    }
    if results.iter().any(|r| !r.loss.ok) {
        return Err(BenchError::Server("a loss check failed (see above)".into()));
    }
    Ok(results)
}

/// Appends results to a JSON array file (created when missing).
pub fn write_results(path: &std::path::Path, results: &[RunResult]) -> Result<(), BenchError> {
    let mut all: Vec<RunResult> = match std::fs::read(path) {
        Ok(b) if !b.is_empty() => serde_json::from_slice(&b)?,
        _ => Vec::new(),
    };
    all.extend_from_slice(results);
    std::fs::write(path, serde_json::to_vec_pretty(&all)?)?;
    Ok(())
}

/// The headline figure of a result, for ratios: (name, value, higher is better).
pub fn headline(r: &RunResult) -> Option<(&'static str, f64, bool)> {
    let m = &r.metrics;
    match r.scenario.as_str() {
        "c2c" => m
            .get("msgs_per_sec")
            .map(|v| ("delivered msgs/s", *v, true)),
        "fanout" | "group" => m
            .get("deliveries_per_sec")
            .map(|v| ("deliveries/s", *v, true)),
        "connections" => m
            .get("rss_per_conn_bytes")
            .map(|v| ("RSS bytes/conn", *v, false)),
        "reconnect" => m
            .get("all_current_s")
            .map(|v| ("s until all current", *v, false)),
        "disk" => m
            .get("fsyncs_per_sec")
            .map(|v| ("durable appends/s", *v, true)),
        _ => None,
    }
}

/// Writes into every peer's result how Switchboard (the same run) compares:
/// `switchboard_ratio` (headline, > 1 in Switchboard's favour) and
/// `switchboard_cpu_ratio` (Switchboard's server CPU per message or
/// delivery ÷ the peer's: > 1 means Switchboard spends more).
pub fn add_ratios(results: &mut [RunResult]) {
    let Some(sb) = results.iter().find(|r| r.system == "switchboard").cloned() else {
        return;
    };
    for peer in results.iter_mut().filter(|r| r.system != "switchboard") {
        if let (Some((_, v, higher)), Some((_, p, _))) = (headline(&sb), headline(peer))
            && p > 0.0
            && v > 0.0
        {
            let ratio = if higher { v / p } else { p / v };
            peer.metric("switchboard_ratio", (ratio * 1000.0).round() / 1000.0);
        }
        if let (Some((u, v)), Some((pu, p))) = (cpu::server_cost(&sb), cpu::server_cost(peer))
            && u == pu
            && p > 0.0
        {
            peer.metric("switchboard_cpu_ratio", (v / p * 1000.0).round() / 1000.0);
        }
    }
}

fn print_ratios(results: &[RunResult]) {
    let Some(sb) = results.iter().find(|r| r.system == "switchboard") else {
        return;
    };
    for peer in results.iter().filter(|r| r.system != "switchboard") {
        if let (Some((name, v, _)), Some((_, p, _)), Some(ratio)) = (
            headline(sb),
            headline(peer),
            peer.metrics.get("switchboard_ratio"),
        ) {
            eprintln!(
                "ratio: switchboard {} {} vs {} {}: {:.2}× {}",
                stats::fmt_num(v),
                name,
                peer.system,
                stats::fmt_num(p),
                ratio,
                if *ratio >= 1.0 {
                    "in switchboard's favour"
                } else {
                    "in the peer's favour"
                }
            );
        }
        if let (Some((unit, v)), Some((_, p)), Some(ratio)) = (
            cpu::server_cost(sb),
            cpu::server_cost(peer),
            peer.metrics.get("switchboard_cpu_ratio"),
        ) {
            eprintln!(
                "cpu ratio: switchboard {v:.1} µs per {unit} vs {} {p:.1} µs: {ratio:.2}× the peer's CPU",
                peer.system,
            );
        }
    }
}

/// A progress bar on stderr (hidden with `--quiet` or when stderr is not a terminal).
pub fn bar(quiet: bool, len: u64, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>24} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec})",
    ) {
        b.set_style(style);
    }
    b.set_message(what.to_string());
    b.enable_steady_tick(Duration::from_millis(200));
    b
}
