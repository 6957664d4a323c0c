//! `connections`: N idle, logged-in connections; the server's RSS per
//! connection (VmRSS of the server process before and after) and connects
//! per second. Connections are raw-frame clients ([`crate::raw`]), not SDK
//! clients: an SDK client is a task and buffers of its own, and the point
//! here is the server's memory, not the generator's. When N is large the
//! connections are spread over several generator processes (`--procs`),
//! each binding its own 127.0.0.x source address, because one process may
//! hold at most 20,000 open files here. With `--ws`, the clients are raw
//! WebSocket clients (upgrade on `/ws`, a Login frame in one binary
//! message, nothing else), so the WebSocket transport's idle cost is
//! measured the same way. With `--mqtt`, the same against Mosquitto (MQTT
//! CONNECT, no keepalive).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::cpu::CpuMeter;
use crate::stats::{self, LossCheck, RunResult};
use crate::target::{Mqtt, Target, rss_of};
use crate::{BenchError, Common, bar};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub n: usize,
    /// Generator processes; 0 = one per 10,000 connections (1 runs in this process).
    #[arg(long, default_value_t = 0)]
    pub procs: usize,
    /// Connects in flight per generator process.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Seconds to let the server settle before reading its RSS.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
}

/// One generator process (`switchboard bench conn-worker`).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    /// `sb` (Switchboard login over TCP), `sb-ws` (over WebSocket; `addr`
    /// is then the node's HTTP address) or `mqtt`.
    #[arg(long)]
    pub kind: String,
    #[arg(long)]
    pub addr: SocketAddr,
    #[arg(long)]
    pub source: Option<IpAddr>,
    #[arg(long)]
    pub count: usize,
    /// First user index of this worker.
    #[arg(long, default_value_t = 0)]
    pub offset: usize,
    #[arg(long, default_value = "bench")]
    pub app: String,
    #[arg(long, default_value = "")]
    pub secret: String,
    #[arg(long, default_value = "")]
    pub run: String,
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
}

/// What a generator reports once its connections are open.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Opened {
    opened: u64,
    failed: u64,
    elapsed_s: f64,
    first_error: Option<String>,
    /// Connect + login time of each connection, µs.
    lat_us: Vec<u64>,
}

pub async fn run(a: &Args) -> Result<Vec<RunResult>, BenchError> {
    let target = Target::start(&a.common).await?;
    let r = measure(a, Kind::Switchboard(&target), target.pid).await;
    if let Some(log) = target.log_path() {
        tracing::debug!(log = %log.display(), "server log");
    }
    target.stop().await;
    let mut results = vec![r?];
    if let Some(m) = Mqtt::from(&a.common) {
        results.push(measure(a, Kind::Mqtt(&m), m.pid).await?);
    }
    Ok(results)
}

enum Kind<'a> {
    Switchboard(&'a Target),
    Mqtt(&'a Mqtt),
}

async fn measure(a: &Args, kind: Kind<'_>, pid: Option<u32>) -> Result<RunResult, BenchError> {
    let run = super::run_id();
    let procs = match a.procs {
        0 => a.n.div_ceil(10_000).max(1),
        p => p,
    };
    let (system, transport) = match &kind {
        Kind::Switchboard(t) => ("switchboard", t.transport()),
        Kind::Mqtt(_) => ("mosquitto", "mqtt"),
    };
    let worker_of = |w: usize, count: usize, offset: usize| WorkerArgs {
        kind: match kind {
            Kind::Switchboard(t) if t.ws => "sb-ws".into(),
            Kind::Switchboard(_) => "sb".into(),
            Kind::Mqtt(_) => "mqtt".into(),
        },
        addr: match &kind {
            Kind::Switchboard(t) if t.ws => t.http,
            Kind::Switchboard(t) => t.tcp,
            Kind::Mqtt(m) => m.addr,
        },
        source: (procs > 1).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + w as u8))),
        count,
        offset,
        app: match &kind {
            Kind::Switchboard(t) => t.app.clone(),
            Kind::Mqtt(_) => String::new(),
        },
        secret: match &kind {
            Kind::Switchboard(t) => t.secret().to_string(),
            Kind::Mqtt(_) => String::new(),
        },
        run: run.clone(),
        concurrency: a.concurrency,
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = pid.and_then(rss_of);
    let meter = CpuMeter::start(&pid.into_iter().collect::<Vec<_>>());

    let mut hist = stats::histogram();
    let mut total = Opened::default();
    let alive: u64;
    if procs == 1 {
        let w = worker_of(0, a.n, 0);
        let progress = bar(a.common.quiet, a.n as u64, "connecting");
        let (conns, opened) = open_all(&w, Some(&progress)).await;
        progress.finish_and_clear();
        total = opened;
        tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
        let rss_after = pid.and_then(rss_of);
        alive = count_alive(&conns);
        let mut r = finish(
            a, system, transport, procs, total, alive, rss_before, rss_after, hist,
        );
        meter.finish(&mut r, alive, "conn");
        close_now(conns);
        return Ok(r);
    }
    let per = a.n.div_ceil(procs);
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for w in 0..procs {
        let offset = w * per;
        let count = per.min(a.n.saturating_sub(offset));
        if count == 0 {
            break;
        }
        let wa = worker_of(w, count, offset);
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(["bench", "conn-worker", "--kind", &wa.kind])
            .args(["--addr", &wa.addr.to_string()])
            .args([
                "--count",
                &count.to_string(),
                "--offset",
                &offset.to_string(),
            ])
            .args(["--app", &wa.app, "--run", &run])
            .args(["--concurrency", &a.concurrency.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        if !wa.secret.is_empty() {
            cmd.args(["--secret", &wa.secret]);
        }
        if let Some(s) = wa.source {
            cmd.args(["--source", &s.to_string()]);
        }
        children.push(cmd.spawn()?);
    }
    let progress = bar(a.common.quiet, children.len() as u64, "generators ready");
    let mut readers = Vec::new();
    for c in children.iter_mut() {
        let out = c
            .stdout
            .take()
            .ok_or_else(|| BenchError::Server("generator without stdout".into()))?;
        readers.push(BufReader::new(out).lines());
    }
    for r in readers.iter_mut() {
        let line = tokio::time::timeout(Duration::from_secs(600), r.next_line())
            .await
            .map_err(|_| BenchError::Server("a generator did not report in 600 s".into()))??
            .ok_or_else(|| BenchError::Server("a generator exited early".into()))?;
        let o: Opened = serde_json::from_str(&line)?;
        total.opened += o.opened;
        total.failed += o.failed;
        total.elapsed_s = total.elapsed_s.max(o.elapsed_s);
        total.first_error = total.first_error.or(o.first_error);
        for v in o.lat_us {
            stats::record_us(&mut hist, v);
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
    let rss_after = pid.and_then(rss_of);
    // Ask each generator how many of its connections are still open.
    let mut alive_sum = 0;
    for (c, r) in children.iter_mut().zip(readers.iter_mut()) {
        if let Some(stdin) = c.stdin.as_mut() {
            stdin.write_all(b"check\n").await?;
        }
        if let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(60), r.next_line()).await
        {
            alive_sum += line.trim().parse::<u64>().unwrap_or(0);
        }
    }
    alive = alive_sum;
    for mut c in children {
        drop(c.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(30), c.wait()).await;
    }
    let mut r = finish(
        a, system, transport, procs, total, alive, rss_before, rss_after, hist,
    );
    // After the workers were waited for, so their CPU counts as the generator's.
    meter.finish(&mut r, alive, "conn");
    Ok(r)
}

#[allow(clippy::too_many_arguments)]
fn finish(
    a: &Args,
    system: &str,
    transport: &str,
    procs: usize,
    mut total: Opened,
    alive: u64,
    rss_before: Option<u64>,
    rss_after: Option<u64>,
    mut hist: hdrhistogram::Histogram<u64>,
) -> RunResult {
    for v in total.lat_us.drain(..) {
        stats::record_us(&mut hist, v);
    }
    let mut r = RunResult::new("connections", system, transport);
    r.param("n", a.n);
    r.param("generator_procs", procs);
    r.param("concurrency", a.concurrency);
    r.metric("opened", total.opened as f64);
    r.metric("failed", total.failed as f64);
    r.metric("alive_at_measurement", alive as f64);
    r.metric(
        "connects_per_sec",
        (total.opened as f64 / total.elapsed_s.max(1e-9)).round(),
    );
    if let (Some(b), Some(a2)) = (rss_before, rss_after) {
        r.metric("rss_before_bytes", b as f64);
        r.metric("rss_after_bytes", a2 as f64);
        if total.opened > 0 {
            r.metric(
                "rss_per_conn_bytes",
                ((a2 as f64 - b as f64) / total.opened as f64).round(),
            );
        }
    } else {
        r.notes.push("no server pid: RSS not measured".into());
    }
    if let Some(e) = &total.first_error {
        r.notes.push(format!("first connect error: {e}"));
    }
    r.set_latency(&hist);
    r.loss = LossCheck {
        rule: "every connection opened, logged in, and still open when RSS was read".into(),
        expected: a.n as u64,
        received: alive,
        lost: (a.n as u64).saturating_sub(alive),
        ok: alive == a.n as u64,
        ..LossCheck::default()
    };
    r.notes.push(
        "latency: TCP connect (+ WebSocket upgrade with --ws) + login until LoginAck (MQTT: CONNECT until CONNACK); raw-frame clients, not the SDK".into(),
    );
    r
}

/// Opens `w.count` connections, at most `w.concurrency` connecting at once.
async fn open_all(
    w: &WorkerArgs,
    progress: Option<&indicatif::ProgressBar>,
) -> (Vec<TcpStream>, Opened) {
    let t0 = Instant::now();
    let w = Arc::new(w.clone());
    let mut results = futures::stream::iter(0..w.count)
        .map(|i| {
            let w = w.clone();
            async move {
                let t = Instant::now();
                let r =
                    tokio::time::timeout(Duration::from_secs(30), open_one(&w, w.offset + i)).await;
                let r = match r {
                    Ok(r) => r,
                    Err(_) => Err(BenchError::Refused("connect + login took over 30 s".into())),
                };
                (r, t.elapsed())
            }
        })
        .buffer_unordered(w.concurrency.max(1));
    let mut conns = Vec::with_capacity(w.count);
    let mut o = Opened::default();
    while let Some((r, took)) = results.next().await {
        match r {
            Ok(s) => {
                conns.push(s);
                o.opened += 1;
                o.lat_us.push(took.as_micros() as u64);
            }
            Err(e) => {
                o.failed += 1;
                o.first_error.get_or_insert_with(|| e.to_string());
            }
        }
        if let Some(p) = progress {
            p.inc(1);
        }
    }
    o.elapsed_s = t0.elapsed().as_secs_f64();
    (conns, o)
}

async fn open_one(w: &WorkerArgs, i: usize) -> Result<TcpStream, BenchError> {
    if w.kind == "mqtt" {
        return crate::raw::mqtt_connect(w.source, w.addr, &format!("{}-c{i}", w.run)).await;
    }
    let uid = format!("{}-c{i}", w.run);
    let token = switchboard_core::auth::issue_token(&w.secret, &w.app, &uid, 24 * 3600)
        .map_err(|e| BenchError::Server(e.to_string()))?;
    if w.kind == "sb-ws" {
        // Only the socket is kept: the connection stays idle, so the
        // WebSocket state (and its buffers) would only cost generator memory.
        return crate::raw::ws_login(w.source, w.addr, token, format!("{uid}-dev")).await;
    }
    let (c, _) =
        crate::raw::RawClient::login(w.source, w.addr, token, format!("{uid}-dev")).await?;
    Ok(c.stream)
}

/// Closes with a reset: these sockets were bound to a source address, and
/// 19,000 of them lingering in TIME_WAIT would hold that many ephemeral ports
/// for a minute, starving the next scenario's connects.
fn close_now(conns: Vec<TcpStream>) {
    for c in conns {
        let _ = c.set_zero_linger();
    }
}

/// Connections the server has not closed (a read would block, not return EOF).
fn count_alive(conns: &[TcpStream]) -> u64 {
    let mut buf = [0u8; 64];
    conns
        .iter()
        .filter(|s| matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
        .count() as u64
}

/// Body of `switchboard bench conn-worker`: open, report, answer "check", exit on EOF.
pub async fn worker(w: &WorkerArgs) -> Result<(), BenchError> {
    let (conns, opened) = open_all(w, None).await;
    let mut out = tokio::io::stdout();
    out.write_all(serde_json::to_string(&opened)?.as_bytes())
        .await?;
    out.write_all(b"\n").await?;
    out.flush().await?;
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    loop {
        line.clear();
        if stdin.read_line(&mut line).await? == 0 {
            break;
        }
        if line.trim() == "check" {
            out.write_all(format!("{}\n", count_alive(&conns)).as_bytes())
                .await?;
            out.flush().await?;
        }
    }
    let mut rest = Vec::new();
    let _ = stdin.read_to_end(&mut rest).await;
    close_now(conns);
    Ok(())
}
