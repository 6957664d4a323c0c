//! `c2c`: P sender → receiver pairs of SDK clients, durable c2c, paced to a
//! rate per pair or flat out. Delivered messages per second end to end
//! (send → push received), latency, and the check that every acknowledged
//! message reached its receiver exactly once, in order. With `--mqtt`, the
//! same pairs over Mosquitto at QoS 1 and QoS 0.
//!
//! `--receipts`: each receiver also marks its conversation read up to the
//! newest message as messages arrive (one mark in flight per receiver, the
//! next one covering everything that came meanwhile, as a chat screen
//! does), and the read receipt is stored and pushed to the sender.
//! `--transient`: transient messages instead (pushed to the devices online
//! now, nothing stored), the typing indicator's and live position's path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchboard_sdk::{Client, ClientConfig, Event, User};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Received, body, check_stream, parse_body, run_id};
use crate::stats::{self, LossCheck, RunResult, Timeline};
use crate::target::{Amqp, Mqtt, Target};
use crate::{BenchError, Common, bar};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Sender → receiver pairs.
    #[arg(long, default_value_t = 100)]
    pub pairs: usize,
    /// Messages per second per pair; 0 = flat out.
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Exactly this many messages per pair instead of `--duration` of
    /// sending: a fixed workload (scripts/bench-instructions counts the
    /// node's instructions per message with it; 0 = logins only).
    #[arg(long)]
    pub per_pair: Option<u64>,
    /// Requests in flight per sender.
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Body size in bytes (at least 20).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds to wait for the last deliveries after sending stops.
    #[arg(long, default_value_t = 15.0)]
    pub drain: f64,
    /// MQTT QoS levels to run with --mqtt.
    #[arg(long, value_delimiter = ',', default_value = "1,0")]
    pub qos: Vec<u8>,
    /// Receivers mark their conversation read as messages arrive (read
    /// receipts stored and pushed to the sender).
    #[arg(long, conflicts_with = "transient")]
    pub receipts: bool,
    /// Send transient messages (online only, not stored) instead of c2c.
    #[arg(long)]
    pub transient: bool,
}

impl Args {
    /// The parameters every system's result of this run carries.
    pub fn describe(&self, r: &mut RunResult) {
        r.param("pairs", self.pairs);
        r.param("rate_per_pair", self.rate);
        match self.per_pair {
            Some(k) => r.param("per_pair", k),
            None => r.param("duration_s", self.duration),
        }
        r.param("window", self.window);
        r.param("body_bytes", self.size);
        r.param("mode", if self.rate == 0 { "flat out" } else { "paced" });
        if self.receipts {
            r.param("receipts", "mark read as messages arrive");
        }
        if self.transient {
            r.param("messages", "transient");
        }
    }
}

impl Args {
    /// When sending stops: after `--duration`, or (with `--per-pair`) once
    /// every pair sent its count, bounded by a day.
    pub fn end(&self, t0: Instant) -> Instant {
        match self.per_pair {
            Some(_) => t0 + Duration::from_secs(86_400),
            None => t0 + Duration::from_secs_f64(self.duration),
        }
    }

    /// Whether a pair that sent `n` messages sends another (before `end`).
    pub fn more(&self, n: u64, end: Instant) -> bool {
        Instant::now() < end && self.per_pair.is_none_or(|k| n < k)
    }

    /// Messages the run will send when paced (0, unknown, when flat out):
    /// the progress bar's length.
    pub fn planned_sends(&self) -> u64 {
        if let Some(k) = self.per_pair {
            k * self.pairs as u64
        } else if self.rate > 0 {
            (self.rate as f64 * self.pairs as f64 * self.duration) as u64
        } else {
            0
        }
    }
}

pub async fn run(a: &Args) -> Result<Vec<RunResult>, BenchError> {
    if a.pairs == 0 || a.window == 0 {
        return Err(BenchError::Usage(
            "--pairs and --window must be at least 1".into(),
        ));
    }
    let target = Target::start(&a.common).await?;
    let r = switchboard(a, &target).await;
    target.stop().await;
    let mut results = vec![r?];
    if let Some(mqtt) = Mqtt::from(&a.common) {
        for &qos in &a.qos {
            results.push(super::mqtt::c2c(a, &mqtt, qos).await?);
        }
    }
    if let Some(amqp) = Amqp::from(&a.common) {
        results.push(super::amqp::c2c(a, &amqp).await?);
    }
    Ok(results)
}

/// Per pair: (number, sender timeline seq) of every acknowledged message.
type Acks = Vec<(u64, u64)>;

async fn switchboard(a: &Args, target: &Target) -> Result<RunResult, BenchError> {
    let run = run_id();
    let cfg = |uid: &str, url: String| -> Result<ClientConfig, BenchError> {
        Ok(ClientConfig::new(url, target.token(uid)?)
            .with_device_id(format!("{uid}-dev"))
            .with_compression(false)
            .with_request_timeout(Duration::from_secs(30))
            .with_event_capacity(8192))
    };
    let setup = bar(a.common.quiet, a.pairs as u64 * 2, "connecting");
    let mut receivers = Vec::with_capacity(a.pairs);
    let mut senders = Vec::with_capacity(a.pairs);
    for i in 0..a.pairs {
        // Senders on the first node, receivers on the others (one node: the same).
        let (rx_client, events) =
            Client::connect(cfg(&format!("{run}-r{i}"), target.receiver_url(i))?).await?;
        let (tx_client, tx_events) =
            Client::connect(cfg(&format!("{run}-s{i}"), target.url())?).await?;
        // The sender's own event stream is not read: drop it so the SDK never waits on it.
        drop(tx_events);
        receivers.push((rx_client, events));
        senders.push(tx_client);
        setup.inc(2);
    }
    setup.finish_and_clear();

    let meter = target.cpu_meter();
    let start_ns = stats::now_ns();
    let received_total = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut recv_clients = Vec::with_capacity(a.pairs);
    let marked_total = Arc::new(AtomicU64::new(0));
    let mut recv_tasks = Vec::with_capacity(a.pairs);
    let mut mark_tasks = Vec::new();
    for (i, (client, mut events)) in receivers.into_iter().enumerate() {
        let total = received_total.clone();
        let mut stop = stop_rx.clone();
        // With --receipts: the newest sequence received, marked read by a
        // task of its own (one mark in flight; the next covers the rest).
        let (newest_tx, mut newest_rx) = watch::channel(0u64);
        if a.receipts {
            let client = client.clone();
            let marked = marked_total.clone();
            let sender = User {
                app: target.app.clone(),
                uid: format!("{run}-s{i}"),
            };
            mark_tasks.push(tokio::spawn(async move {
                while newest_rx.changed().await.is_ok() {
                    let seq = *newest_rx.borrow_and_update();
                    match client.mark_read(sender.clone(), seq).await {
                        Ok(_) => {
                            marked.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => tracing::warn!(error = %e, "mark read failed"),
                    }
                }
            }));
        }
        recv_tasks.push(tokio::spawn(async move {
            let mut rec = Received::default();
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Some(Event::Message { message, seq }) => {
                            if let Some((pair, _, _)) = parse_body(&message.body)
                                && pair as usize == i
                            {
                                rec.record(&message.body);
                                total.fetch_add(1, Ordering::Relaxed);
                                newest_tx.send_replace(seq);
                            }
                        }
                        Some(Event::Online { message }) => {
                            if let Some((pair, _, _)) = parse_body(&message.body)
                                && pair as usize == i
                            {
                                rec.record(&message.body);
                                total.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some(Event::Closed) | None => break,
                        Some(_) => {}
                    },
                    _ = stop.changed() => break,
                }
            }
            // Ends the marking task once its last mark is answered.
            drop(newest_tx);
            rec
        }));
        recv_clients.push(client);
    }

    let attempted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let progress = bar(a.common.quiet, a.planned_sends(), "c2c sent");
    let t0 = Instant::now();
    let end = a.end(t0);
    let mut send_tasks = Vec::new();
    for (i, client) in senders.iter().enumerate() {
        let next = Arc::new(AtomicU64::new(0));
        for w in 0..a.window {
            let client = client.clone();
            let next = next.clone();
            let attempted = attempted.clone();
            let failed = failed.clone();
            let progress = progress.clone();
            let to = User {
                app: target.app.clone(),
                uid: format!("{run}-r{i}"),
            };
            let (rate, window, pairs, size) = (a.rate, a.window, a.pairs, a.size);
            let a = a.clone();
            send_tasks.push(tokio::spawn(async move {
                let mut acks: Acks = Vec::new();
                let mut ack_hist = stats::histogram();
                let mut tick = (rate > 0).then(|| {
                    let period = Duration::from_secs_f64(window as f64 / rate as f64);
                    // Stagger the pairs over one period so they do not fire in lockstep.
                    let phase = period.mul_f64((i * window + w) as f64 / (pairs * window) as f64);
                    let mut t = tokio::time::interval_at(t0 + phase, period);
                    t.set_missed_tick_behavior(MissedTickBehavior::Burst);
                    t
                });
                loop {
                    if let Some(t) = tick.as_mut() {
                        t.tick().await;
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if !a.more(n, end) {
                        break;
                    }
                    attempted.fetch_add(1, Ordering::Relaxed);
                    let sent = stats::now_ns();
                    let result = if a.transient {
                        // No sequence: a transient message is ordered by its number.
                        client
                            .send_transient(to.clone(), "bench", body(i as u32, n, size))
                            .await
                            .map(|_| n)
                    } else {
                        client
                            .send_with_id(
                                format!("{i}-{n}"),
                                to.clone(),
                                "bench",
                                body(i as u32, n, size),
                            )
                            .await
                            .map(|receipt| receipt.seq)
                    };
                    match result {
                        Ok(seq) => {
                            stats::record_us(&mut ack_hist, (stats::now_ns() - sent) / 1000);
                            acks.push((n, seq));
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "c2c send failed");
                        }
                    }
                    progress.inc(1);
                }
                (i, acks, ack_hist)
            }));
        }
    }
    let mut acks: Vec<Acks> = vec![Vec::new(); a.pairs];
    let mut ack_hist = stats::histogram();
    for t in send_tasks {
        if let Ok((i, mut v, h)) = t.await {
            acks[i].append(&mut v);
            let _ = ack_hist.add(&h);
        }
    }
    let send_elapsed = t0.elapsed();
    progress.finish_and_clear();
    let acked: u64 = acks.iter().map(|v| v.len() as u64).sum();
    let attempted = attempted.load(Ordering::Relaxed);

    // Drain: until everything sent arrived, or everything acked arrived and
    // nothing moved for a second, or the drain time is up.
    let drain_end = Instant::now() + Duration::from_secs_f64(a.drain);
    let mut last = (received_total.load(Ordering::Relaxed), Instant::now());
    while Instant::now() < drain_end {
        let got = received_total.load(Ordering::Relaxed);
        if got >= attempted {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if got >= acked && last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    for t in mark_tasks {
        let _ = t.await;
    }
    for c in &recv_clients {
        c.close().await;
    }
    let mut r = RunResult::new("c2c", "switchboard", target.transport());
    meter.finish(&mut r, received_total.load(Ordering::Relaxed), "msg");
    let mut hist = stats::histogram();
    let mut timeline = Timeline::new(start_ns);
    let mut loss = LossCheck {
        rule: if a.transient {
            "every acknowledged transient message received exactly once (receivers online throughout); order not promised".into()
        } else {
            "every c2c-acked message received exactly once, in timeline order".into()
        },
        expected: acked,
        ..LossCheck::default()
    };
    let mut last_ns = 0;
    let mut delivered = 0u64;
    for (i, t) in recv_tasks.into_iter().enumerate() {
        let Ok(rec) = t.await else { continue };
        rec.merge_into(&mut hist, &mut timeline);
        last_ns = last_ns.max(rec.last_ns());
        delivered += rec.ns.len() as u64;
        // In order = in the order of the sender's timeline seqs.
        let mut by_n: Vec<(u64, u64)> = acks[i].clone();
        by_n.sort_unstable();
        let seq_of = |n: u64| {
            by_n.binary_search_by_key(&n, |p| p.0)
                .ok()
                .map(|k| by_n[k].1)
        };
        let arrived: Vec<u64> = rec.ns.iter().filter_map(|&n| seq_of(n)).collect();
        let (got, lost, dup, ooo) = check_stream(&arrived, acks[i].iter().map(|p| p.1));
        loss.received += got;
        loss.lost += lost;
        loss.duplicates += dup;
        loss.out_of_order += ooo;
    }
    for c in &senders {
        c.close().await;
    }
    loss.ok = loss.lost == 0 && loss.duplicates == 0 && (a.transient || loss.out_of_order == 0);

    a.describe(&mut r);
    if target.nodes() > 1 {
        r.param("nodes", target.nodes());
        r.notes.push(format!(
            "cluster: senders on node 1, receivers on nodes 2..{}: every message routed between nodes",
            target.nodes()
        ));
    }
    let span_s = (last_ns.saturating_sub(start_ns) as f64 / 1e9).max(send_elapsed.as_secs_f64());
    r.metric("sent", attempted as f64);
    r.metric("acked", acked as f64);
    r.metric("failed", failed.load(Ordering::Relaxed) as f64);
    r.metric("delivered", delivered as f64);
    if a.receipts {
        r.metric("marked_read", marked_total.load(Ordering::Relaxed) as f64);
    }
    r.metric("msgs_per_sec", (delivered as f64 / span_s).round());
    r.metric(
        "offered_per_sec",
        (attempted as f64 / send_elapsed.as_secs_f64()).round(),
    );
    if !ack_hist.is_empty() {
        r.metric("ack_p50_us", ack_hist.value_at_quantile(0.5) as f64);
        r.metric("ack_p99_us", ack_hist.value_at_quantile(0.99) as f64);
    }
    r.set_latency(&hist);
    r.timeline = timeline.rates();
    r.loss = loss;
    r.notes.push(if a.transient {
        "latency: send → push received on the receiver's SDK client; transient: nothing stored".into()
    } else {
        "latency: send → push received on the receiver's SDK client; durable (fsync'd group commit) before the ack and the push".into()
    });
    Ok(r)
}
