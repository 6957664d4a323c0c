//! `reconnect`: N users each get a backlog of messages while offline, then
//! N SDK clients connect at once (at most `--concurrency` connecting at a
//! time) and sync; the time until every one is current (has its whole
//! backlog, in order) is the figure.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use switchboard_sdk::{Client, ClientConfig, Event, User};
use tokio::time::Instant;

use super::{body, check_stream, parse_body, run_id};
use crate::stats::{self, LossCheck, RunResult};
use crate::target::Target;
use crate::{BenchError, Common, bar};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Clients (users) reconnecting.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Messages waiting for each.
    #[arg(long, default_value_t = 10)]
    pub backlog: u64,
    /// Clients connecting at once.
    #[arg(long, default_value_t = 1000)]
    pub concurrency: usize,
    /// Sender clients that build the backlog.
    #[arg(long, default_value_t = 20)]
    pub senders: usize,
    /// Seconds allowed for everyone to become current.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Loopback source addresses (127.0.0.2, .3, …) the reconnecting
    /// clients are spread over when the node is on 127.0.0.1; 0 = the OS
    /// default (all from 127.0.0.1). One source address has ~28,000
    /// ephemeral ports toward the node's one port: with 19,000 clients and
    /// the TIME_WAITs of the previous run, the kernel's search for a free
    /// port in `connect` cost the generator more CPU than the node's work.
    #[arg(long, default_value_t = 16)]
    pub sources: u8,
}

pub async fn run(a: &Args) -> Result<Vec<RunResult>, BenchError> {
    let target = Target::start(&a.common).await?;
    let r = switchboard(a, &target).await;
    target.stop().await;
    Ok(vec![r?])
}

/// The source address of reconnecting client `i`, when spreading them.
fn source(a: &Args, target: &Target, i: usize) -> Option<IpAddr> {
    let node = if target.ws { target.http } else { target.tcp };
    let spread = a.sources > 0 && node.ip() == IpAddr::V4(Ipv4Addr::LOCALHOST);
    spread.then(|| {
        IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            2 + (i % a.sources.min(250) as usize) as u8,
        ))
    })
}

fn config(target: &Target, uid: &str) -> Result<ClientConfig, BenchError> {
    Ok(ClientConfig::new(target.url(), target.token(uid)?)
        .with_device_id(format!("{uid}-dev"))
        .with_compression(false)
        .with_request_timeout(Duration::from_secs(60))
        .with_connect_timeout_secs(30))
}

trait ConnectTimeout {
    fn with_connect_timeout_secs(self, s: u64) -> Self;
}

impl ConnectTimeout for ClientConfig {
    fn with_connect_timeout_secs(mut self, s: u64) -> Self {
        self.connect_timeout = Duration::from_secs(s);
        self
    }
}

async fn switchboard(a: &Args, target: &Target) -> Result<RunResult, BenchError> {
    let run = run_id();
    let users: Vec<String> = (0..a.clients).map(|i| format!("{run}-b{i}")).collect();
    let senders = a.senders.clamp(1, a.clients.max(1));
    // The backlog: each user gets `backlog` c2c messages while offline.
    let total = a.clients as u64 * a.backlog;
    let progress = bar(a.common.quiet, total, "building backlog");
    let mut tasks = Vec::new();
    for s in 0..senders {
        let (client, events) =
            Client::connect(config(target, &format!("{run}-sender{s}"))?).await?;
        drop(events);
        let mine: Vec<(usize, String)> = users
            .iter()
            .enumerate()
            .filter(|(i, _)| i % senders == s)
            .map(|(i, u)| (i, u.clone()))
            .collect();
        let app = target.app.clone();
        let (backlog, progress) = (a.backlog, progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut failed = 0u64;
            for k in 0..backlog {
                let mut sends = futures::stream::iter(mine.iter().cloned())
                    .map(|(i, uid)| {
                        let client = client.clone();
                        let to = User {
                            app: app.clone(),
                            uid,
                        };
                        async move { client.send(to, "bench", body(i as u32, k, 64)).await }
                    })
                    .buffer_unordered(64);
                while let Some(r) = sends.next().await {
                    if r.is_err() {
                        failed += 1;
                    }
                    progress.inc(1);
                }
            }
            client.close().await;
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap_or(0);
    }
    progress.finish_and_clear();
    if failed > 0 {
        return Err(BenchError::Server(format!(
            "{failed} backlog messages were not stored"
        )));
    }

    // Everyone reconnects at once.
    let progress = bar(a.common.quiet, a.clients as u64, "current");
    let meter = target.cpu_meter();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs_f64(a.timeout);
    let backlog = a.backlog;
    let target_cfgs: Vec<ClientConfig> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let cfg = config(target, u)?;
            Ok(match source(a, target, i) {
                Some(ip) => cfg.with_local_addr(ip),
                None => cfg,
            })
        })
        .collect::<Result<_, BenchError>>()?;
    let gate = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
    let mut joins = Vec::with_capacity(a.clients);
    for (i, cfg) in target_cfgs.into_iter().enumerate() {
        let gate = gate.clone();
        let progress = progress.clone();
        joins.push(tokio::spawn(async move {
            // A refused or timed-out first login is retried after a short
            // jittered pause, as an app would; the clock keeps running.
            let mut retries = 0u64;
            let (client, mut events) = loop {
                let permit = gate.clone().acquire_owned().await;
                let r = Client::connect(cfg.clone()).await;
                drop(permit);
                match r {
                    Ok(x) => break x,
                    Err(e) if Instant::now() >= deadline => return Err(e.into()),
                    Err(_) => {
                        retries += 1;
                        let ms = 100 + (i as u64 * 7919 + retries * 104_729) % 400;
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                }
            };
            let mut ns = Vec::new();
            while (ns.len() as u64) < backlog {
                match tokio::time::timeout_at(deadline, events.recv()).await {
                    Ok(Some(Event::Message { message, .. })) => {
                        if let Some((stream, n, _)) = parse_body(&message.body)
                            && stream as usize == i
                        {
                            ns.push(n);
                        }
                    }
                    Ok(Some(Event::Closed)) | Ok(None) | Err(_) => break,
                    Ok(Some(_)) => {}
                }
            }
            let done = t0.elapsed();
            progress.inc(1);
            Ok::<_, BenchError>((client, ns, done, retries))
        }));
    }
    let mut hist = stats::histogram();
    let mut loss = LossCheck {
        rule: "every client got its whole backlog exactly once, in order".into(),
        expected: total,
        ..LossCheck::default()
    };
    let mut clients = Vec::new();
    let mut slowest = Duration::ZERO;
    let mut errors = 0u64;
    let mut retried = 0u64;
    let mut first_error = None;
    for j in joins {
        match j.await {
            Ok(Ok((client, ns, done, r))) => {
                retried += r;
                stats::record_us(&mut hist, done.as_micros() as u64);
                slowest = slowest.max(done);
                let (got, lost, dup, ooo) = check_stream(&ns, 0..backlog);
                loss.received += got;
                loss.lost += lost;
                loss.duplicates += dup;
                loss.out_of_order += ooo;
                clients.push(client);
            }
            Ok(Err(e)) => {
                errors += 1;
                loss.lost += backlog;
                first_error.get_or_insert_with(|| e.to_string());
            }
            Err(_) => errors += 1,
        }
    }
    progress.finish_and_clear();
    let mut r = RunResult::new("reconnect", "switchboard", target.transport());
    // Per synced backlog message: the logins are part of the cost.
    meter.finish(&mut r, loss.received, "msg");
    loss.ok = loss.lost == 0 && loss.duplicates == 0 && loss.out_of_order == 0 && errors == 0;
    for c in &clients {
        c.close().await;
    }
    r.param("clients", a.clients);
    r.param("backlog", a.backlog);
    r.param("concurrency", a.concurrency);
    r.param("sources", source(a, target, 0).map_or(0, |_| a.sources));
    r.metric("all_current_s", slowest.as_secs_f64());
    r.metric("connect_errors", errors as f64);
    r.metric("login_retries", retried as f64);
    r.metric(
        "synced_msgs_per_sec",
        (loss.received as f64 / slowest.as_secs_f64().max(1e-9)).round(),
    );
    if let Some(e) = first_error {
        r.notes.push(format!("first error: {e}"));
    }
    r.notes.push("latency: from the common start until that client had its whole backlog (SDK clients: connect, login, sync)".into());
    r.set_latency(&hist);
    r.loss = loss;
    Ok(r)
}
