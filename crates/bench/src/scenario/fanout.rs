//! `fanout`: s2c through the HTTP API (`POST /v1/apps/{app}/push`), stored
//! or online_only, to N online users; deliveries per second and the time
//! until the last device has each message. Receivers are raw-frame clients
//! ([`crate::raw`]) so the generator can hold thousands of them and keep up
//! with the server; they ack stored pushes like the SDK does. With `--mqtt`,
//! the same fan-out as one MQTT topic with N subscribers (QoS 0 for
//! online_only, QoS 1 for stored).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio::time::Instant;

use super::mqtt::{RawSub, drain};
use super::{Received, check_stream, run_id, text_body};
use crate::raw::RawClient;
use crate::stats::{self, LossCheck, RunResult, Timeline};
use crate::target::{Amqp, Mqtt, Target};
use crate::{BenchError, Common, bar};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Online users (one connection each).
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Messages pushed to all of them.
    #[arg(long, default_value_t = 10)]
    pub messages: u64,
    /// `online_only` or `stored`.
    #[arg(long, default_value = "online_only")]
    pub mode: String,
    /// Users per API request.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Connects in flight while the users log in.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Seconds to wait for the last deliveries.
    #[arg(long, default_value_t = 30.0)]
    pub drain: f64,
}

pub async fn run(a: &Args) -> Result<Vec<RunResult>, BenchError> {
    if a.mode != "online_only" && a.mode != "stored" {
        return Err(BenchError::Usage("--mode is online_only or stored".into()));
    }
    let target = Target::start(&a.common).await?;
    let r = switchboard(a, &target).await;
    target.stop().await;
    let mut results = vec![r?];
    if let Some(m) = Mqtt::from(&a.common) {
        let q = if a.mode == "stored" { 1 } else { 0 };
        results.push(mqtt(a, &m, q).await?);
    }
    // The durable peer stores what it fans out: compared with stored only.
    if let Some(m) = Amqp::from(&a.common)
        && a.mode == "stored"
    {
        results.push(super::amqp::fanout(a, &m).await?);
    }
    Ok(results)
}

async fn switchboard(a: &Args, target: &Target) -> Result<RunResult, BenchError> {
    let run = run_id();
    let uids: Vec<String> = (0..a.users).map(|i| format!("{run}-f{i}")).collect();
    let clients = login_receivers(target, &uids, a.concurrency, a.common.quiet).await?;
    let meter = target.cpu_meter();
    let start_ns = stats::now_ns();
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let tasks = spawn_receivers(clients, a.mode == "stored", &received, &stop_rx);

    let path = format!("/v1/apps/{}/push", target.app);
    let progress = bar(a.common.quiet, a.messages * a.users as u64, "deliveries");
    let t0 = Instant::now();
    let mut first_error = None;
    let mut requests = 0u64;
    for m in 0..a.messages {
        let body = text_body(0, m);
        for chunk in uids.chunks(a.batch.max(1)) {
            let req = serde_json::json!({
                "to": chunk,
                "type": "bench",
                "body": body,
                "mode": a.mode,
                // Only failed users are listed: a per-user result for each
                // of 10,000 users would measure JSON, not delivery.
                "report": "summary",
            });
            let (status, resp) = crate::http::post_json(
                target.http,
                &path,
                &target.api_key,
                &serde_json::to_vec(&req)?,
            )
            .await?;
            requests += 1;
            if status != 200 && first_error.is_none() {
                first_error = Some(format!(
                    "POST {path}: HTTP {status}: {}",
                    String::from_utf8_lossy(&resp)
                        .chars()
                        .take(300)
                        .collect::<String>()
                ));
            }
        }
        progress.set_position(received.load(Ordering::Relaxed));
    }
    let send_elapsed = t0.elapsed();
    let expected = a.messages * a.users as u64;
    if let Some(e) = &first_error
        && received.load(Ordering::Relaxed) == 0
    {
        let _ = stop_tx.send(true);
        progress.finish_and_clear();
        return Err(BenchError::Http(e.clone()));
    }
    let cost = settle(&received, expected, a.drain, &progress, &stop_tx, meter).await;
    let mut r = collect(tasks, start_ns, a, expected).await;
    r.metrics.extend(cost.metrics);
    if target.nodes() > 1 {
        r.param("nodes", target.nodes());
    }
    r.system = "switchboard".into();
    r.transport = "tcp".into();
    r.metric("api_requests", requests as f64);
    r.metric("send_s", send_elapsed.as_secs_f64());
    if let Some(e) = first_error {
        r.notes.push(e);
    }
    r.notes.push("receivers are raw-frame clients (not the SDK); latency: API request sent → push read by the receiver".into());
    Ok(r)
}

/// Logs `uids` in as raw-frame receivers, `concurrency` at a time: on the
/// nodes after the first (one node: that one), so that in a cluster every
/// push the first node's API makes crosses the route.
pub(crate) async fn login_receivers(
    target: &Target,
    uids: &[String],
    concurrency: usize,
    quiet: bool,
) -> Result<Vec<RawClient>, BenchError> {
    let setup = bar(quiet, uids.len() as u64, "logging in");
    let mut clients = Vec::with_capacity(uids.len());
    let mut logins = futures::stream::iter(uids.iter().cloned().enumerate())
        .map(|(i, uid)| async move {
            let token = target.token(&uid)?;
            RawClient::login(None, target.receiver_tcp(i), token, format!("{uid}-dev")).await
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(r) = logins.next().await {
        clients.push(r?.0);
        setup.inc(1);
    }
    drop(logins);
    setup.finish_and_clear();
    Ok(clients)
}

/// One task per receiver: records every bench push (counting it in
/// `received`) and, with `ack`, acknowledges each stored one on its timeline
/// (the user's, or the group's) as the SDK does, until `stop` changes.
pub(crate) fn spawn_receivers(
    clients: Vec<RawClient>,
    ack: bool,
    received: &Arc<AtomicU64>,
    stop: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<Received>> {
    let mut tasks = Vec::with_capacity(clients.len());
    for mut c in clients {
        let received = received.clone();
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut rec = Received::default();
            loop {
                tokio::select! {
                    p = c.next_push() => match p {
                        Ok(Some(p)) => {
                            rec.record(&p.body);
                            received.fetch_add(1, Ordering::Relaxed);
                            if ack && p.seq > 0 && c.ack_in(p.seq, &p.group).await.is_err() {
                                break;
                            }
                        }
                        Ok(None) | Err(_) => break,
                    },
                    _ = stop.changed() => break,
                }
            }
            rec
        }));
    }
    tasks
}

/// Waits (at most `drain_s`) until `expected` deliveries arrived, stops the
/// receivers, and returns the cost meter's figures per delivery.
pub(crate) async fn settle(
    received: &AtomicU64,
    expected: u64,
    drain_s: f64,
    progress: &indicatif::ProgressBar,
    stop: &watch::Sender<bool>,
    meter: crate::cpu::CpuMeter,
) -> RunResult {
    let drain_end = Instant::now() + Duration::from_secs_f64(drain_s);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < drain_end {
        progress.set_position(received.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.finish_and_clear();
    let _ = stop.send(true);
    let mut cost = RunResult::default();
    meter.finish(&mut cost, received.load(Ordering::Relaxed), "delivery");
    cost
}

/// Joins the receivers and computes figures and the loss check.
pub(crate) async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Received>>,
    start_ns: u64,
    a: &Args,
    expected: u64,
) -> RunResult {
    let mut hist = stats::histogram();
    let mut timeline = Timeline::new(start_ns);
    let mut loss = LossCheck {
        rule: "every message reached every online user exactly once, in order".into(),
        expected,
        ..LossCheck::default()
    };
    let mut delivered = 0u64;
    let mut last_ns = 0;
    for t in tasks {
        let Ok(rec) = t.await else { continue };
        rec.merge_into(&mut hist, &mut timeline);
        delivered += rec.ns.len() as u64;
        last_ns = last_ns.max(rec.last_ns());
        let (got, lost, dup, ooo) = check_stream(&rec.ns, 0..a.messages);
        loss.received += got;
        loss.lost += lost;
        loss.duplicates += dup;
        loss.out_of_order += ooo;
    }
    loss.ok = loss.lost == 0 && loss.duplicates == 0 && loss.out_of_order == 0;
    let mut r = RunResult::new("fanout", "", "");
    r.param("users", a.users);
    r.param("messages", a.messages);
    r.param("mode", a.mode.clone());
    r.param("batch", a.batch);
    let span_s = (last_ns.saturating_sub(start_ns) as f64 / 1e9).max(1e-9);
    r.metric("delivered", delivered as f64);
    r.metric("deliveries_per_sec", (delivered as f64 / span_s).round());
    r.metric("all_delivered_s", span_s);
    r.set_latency(&hist);
    if let Some(l) = &r.latency_us {
        // The slowest delivery is the time until the last device had its message.
        r.metric("last_device_ms", l.max as f64 / 1000.0);
    }
    r.timeline = timeline.rates();
    r.loss = loss;
    r
}

pub(crate) async fn mqtt(a: &Args, m: &Mqtt, q: u8) -> Result<RunResult, BenchError> {
    let run = run_id();
    let topic = format!("sb-bench/{run}/fanout");
    let setup = bar(a.common.quiet, a.users as u64, "mqtt subscribing");
    let mut subs = Vec::with_capacity(a.users);
    let mut connects = futures::stream::iter(0..a.users)
        .map(|i| {
            let topic = topic.clone();
            let run = run.clone();
            async move { RawSub::subscribe(None, m.addr, &format!("{run}-f{i}"), &topic, q).await }
        })
        .buffer_unordered(a.concurrency.max(1));
    while let Some(s) = connects.next().await {
        subs.push(s?);
        setup.inc(1);
    }
    drop(connects);
    setup.finish_and_clear();

    let meter = m.cpu_meter();
    let start_ns = stats::now_ns();
    let received = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(a.users);
    for mut s in subs {
        let received = received.clone();
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut rec = Received::default();
            loop {
                tokio::select! {
                    p = s.next_publish() => match p {
                        Ok(Some(body)) => {
                            rec.record(&body);
                            received.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(None) | Err(_) => break,
                    },
                    _ = stop.changed() => break,
                }
            }
            rec
        }));
    }
    let mut o = MqttOptions::new(format!("{run}-pub"), m.addr.ip().to_string(), m.addr.port());
    o.set_keep_alive(Duration::from_secs(60));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(o, 1024);
    let qos = if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let acked = Arc::new(AtomicU64::new(0));
    let acked2 = acked.clone();
    let poller = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked2.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    let progress = bar(
        a.common.quiet,
        a.messages * a.users as u64,
        "mqtt deliveries",
    );
    for n in 0..a.messages {
        client
            .publish(topic.clone(), qos, false, text_body(0, n).into_bytes())
            .await
            .map_err(|e| BenchError::Mqtt(e.to_string()))?;
    }
    let expected = a.messages * a.users as u64;
    let drain_end = Instant::now() + Duration::from_secs_f64(a.drain);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < drain_end {
        progress.set_position(received.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drain(&received, expected, expected, 0.0).await;
    progress.finish_and_clear();
    let _ = stop_tx.send(true);
    let mut cost = RunResult::default();
    meter.finish(&mut cost, received.load(Ordering::Relaxed), "delivery");
    let _ = client.disconnect().await;
    poller.abort();
    let mut r = collect(tasks, start_ns, a, expected).await;
    r.metrics.extend(cost.metrics);
    r.system = format!("mosquitto-qos{q}");
    r.transport = "mqtt".into();
    if q == 0 {
        r.loss.rule = "QoS 0 is at most once: loss is reported, not failed".into();
        r.loss.ok = true;
    }
    r.notes
        .push("one topic, N raw MQTT subscribers; latency: PUBLISH sent → received".into());
    Ok(r)
}
