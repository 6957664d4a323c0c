//! The durable peer: RabbitMQ through the same harness, with everything
//! that makes its acknowledgement mean what Switchboard's does. Quorum
//! queues (Raft-replicated, written and fsync'd before the publisher
//! confirm), publisher confirms, persistent messages, manual consumer acks.
//! Mosquitto answers QoS 1 from memory; this peer pays for durability like
//! the node does.
//!
//! - `c2c`: one quorum queue per pair; the sender publishes with up to
//!   `--window` unconfirmed messages, paced or flat out like the node's
//!   senders; the receiver consumes with manual acks.
//! - stored `fanout`: one quorum queue per user bound to a fanout exchange;
//!   one publish reaches every user's queue.
//!
//! Queues and exchanges are named after the run and deleted at its end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use super::mqtt::drain;
use super::{Received, body, check_stream, run_id, text_body};
use crate::stats::{self, LossCheck, RunResult, Timeline};
use crate::target::Amqp;
use crate::{BenchError, bar};

/// Unacknowledged deliveries a consumer may hold: the same as the MQTT
/// receivers' in-flight window, so neither peer's consumer is starved or
/// flooded differently.
const PREFETCH: u16 = 100;

/// Consumers (fan-out users) per AMQP connection: one channel each. A
/// connection per user would measure RabbitMQ's per-connection processes
/// (thousands of them) rather than its queues.
const CONSUMERS_PER_CONNECTION: usize = 200;

fn amqp_err(e: lapin::Error) -> BenchError {
    BenchError::Amqp(e.to_string())
}

async fn connect(url: &str) -> Result<Connection, BenchError> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| BenchError::Amqp(format!("connect {}: {e}", redact(url))))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Declares a durable quorum queue.
async fn quorum_queue(ch: &Channel, name: &str) -> Result<(), BenchError> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .map_err(amqp_err)?;
    Ok(())
}

/// A consumer with manual acks (`no_ack: false`) and [`PREFETCH`].
async fn consumer(ch: &Channel, queue: &str) -> Result<Consumer, BenchError> {
    ch.basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .map_err(amqp_err)?;
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(amqp_err)
}

/// Reads deliveries until stopped: records each bench body, acks it.
fn consume(
    mut consumer: Consumer,
    total: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Received> {
    tokio::spawn(async move {
        let mut rec = Received::default();
        loop {
            tokio::select! {
                d = consumer.next() => match d {
                    Some(Ok(d)) => {
                        rec.record(&d.data);
                        total.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = d.ack(BasicAckOptions::default()).await {
                            tracing::warn!(error = %e, "amqp ack failed");
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "amqp consumer failed");
                        break;
                    }
                    None => break,
                },
                _ = stop.changed() => break,
            }
        }
        rec
    })
}

/// Persistent (delivery mode 2): a quorum queue stores every message
/// anyway; said so that the publish is the durable kind everywhere.
fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// c2c over RabbitMQ: pair i publishes to its own quorum queue with
/// publisher confirms; its receiver consumes it with manual acks.
pub async fn c2c(a: &super::c2c::Args, m: &Amqp) -> Result<RunResult, BenchError> {
    let run = run_id();
    let queue = |i: usize| format!("sb-bench.{run}.c2c.{i}");
    let setup = bar(a.common.quiet, a.pairs as u64, "amqp queues");
    let (stop_tx, stop_rx) = watch::channel(false);
    let received_total = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::with_capacity(a.pairs * 2);
    let mut recv_tasks = Vec::with_capacity(a.pairs);
    let mut senders = Vec::with_capacity(a.pairs);
    for i in 0..a.pairs {
        // A connection per client, like the node's and Mosquitto's clients.
        let rx = connect(&m.url).await?;
        let ch = rx.create_channel().await.map_err(amqp_err)?;
        quorum_queue(&ch, &queue(i)).await?;
        let c = consumer(&ch, &queue(i)).await?;
        recv_tasks.push(consume(c, received_total.clone(), stop_rx.clone()));
        conns.push(rx);
        let tx = connect(&m.url).await?;
        let ch = tx.create_channel().await.map_err(amqp_err)?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp_err)?;
        senders.push(ch);
        conns.push(tx);
        setup.inc(1);
    }
    setup.finish_and_clear();

    let progress = bar(a.common.quiet, a.planned_sends(), "amqp published");
    let meter = m.cpu_meter();
    let start_ns = stats::now_ns();
    let t0 = Instant::now();
    let end = a.end(t0);
    let failed = Arc::new(AtomicU64::new(0));
    let mut send_tasks = Vec::with_capacity(a.pairs);
    for (i, ch) in senders.into_iter().enumerate() {
        let (rate, pairs, size, window) = (a.rate, a.pairs, a.size, a.window.max(1));
        let a = a.clone();
        let q = queue(i);
        let progress = progress.clone();
        let failed = failed.clone();
        send_tasks.push(tokio::spawn(async move {
            let mut tick = (rate > 0).then(|| {
                let period = Duration::from_secs_f64(1.0 / rate as f64);
                let phase = period.mul_f64(i as f64 / pairs as f64);
                let mut t = tokio::time::interval_at(t0 + phase, period);
                t.set_missed_tick_behavior(MissedTickBehavior::Burst);
                t
            });
            // One task publishes in order (a queue keeps the channel's
            // order); up to `window` confirms are awaited at once.
            let mut inflight = FuturesUnordered::new();
            let mut confirmed: Vec<u64> = Vec::new();
            let mut ack_hist = stats::histogram();
            let mut settle = |r: (u64, u64, Result<Confirmation, lapin::Error>)| match r {
                (n, sent, Ok(Confirmation::Ack(_))) => {
                    stats::record_us(&mut ack_hist, (stats::now_ns() - sent) / 1000);
                    confirmed.push(n);
                }
                (_, _, other) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(?other, "amqp publish not confirmed");
                }
            };
            let mut n = 0u64;
            loop {
                while inflight.len() >= window {
                    if let Some(r) = inflight.next().await {
                        settle(r);
                    }
                }
                if let Some(t) = tick.as_mut() {
                    // Settle confirms while waiting for the next tick.
                    loop {
                        tokio::select! {
                            biased;
                            _ = t.tick() => break,
                            Some(r) = inflight.next(), if !inflight.is_empty() => settle(r),
                        }
                    }
                }
                if !a.more(n, end) {
                    break;
                }
                let sent = stats::now_ns();
                let confirm = match ch
                    .basic_publish(
                        "".into(),
                        q.as_str().into(),
                        BasicPublishOptions::default(),
                        &body(i as u32, n, size),
                        persistent(),
                    )
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "amqp publish failed");
                        break;
                    }
                };
                inflight.push(async move { (n, sent, confirm.await) });
                n += 1;
                progress.inc(1);
            }
            // The in-flight tail is confirmed or given up on (bounded).
            let tail_end = Instant::now() + Duration::from_secs(10);
            while !inflight.is_empty() {
                match tokio::time::timeout_at(tail_end, inflight.next()).await {
                    Ok(Some(r)) => settle(r),
                    _ => break,
                }
            }
            (i, n, confirmed, ack_hist)
        }));
    }
    let mut sent = vec![(0u64, Vec::new()); a.pairs];
    let mut ack_hist = stats::histogram();
    for t in send_tasks {
        if let Ok((i, n, confirmed, h)) = t.await {
            sent[i] = (n, confirmed);
            let _ = ack_hist.add(&h);
        }
    }
    let send_elapsed = t0.elapsed();
    progress.finish_and_clear();
    let attempted: u64 = sent.iter().map(|s| s.0).sum();
    let acked: u64 = sent.iter().map(|s| s.1.len() as u64).sum();
    drain(&received_total, attempted, acked, a.drain).await;
    let _ = stop_tx.send(true);
    let mut r = RunResult::new("c2c", "rabbitmq-quorum", "amqp");
    meter.finish(&mut r, received_total.load(Ordering::Relaxed), "msg");

    let mut hist = stats::histogram();
    let mut timeline = Timeline::new(start_ns);
    let mut loss = LossCheck {
        rule: "every confirmed message received, in order (at least once: duplicates counted)"
            .into(),
        expected: acked,
        ..LossCheck::default()
    };
    let (mut last_ns, mut delivered) = (0, 0u64);
    for (i, t) in recv_tasks.into_iter().enumerate() {
        let Ok(rec) = t.await else { continue };
        rec.merge_into(&mut hist, &mut timeline);
        last_ns = last_ns.max(rec.last_ns());
        delivered += rec.ns.len() as u64;
        let (got, lost, dup, ooo) = check_stream(&rec.ns, sent[i].1.iter().copied());
        loss.received += got;
        loss.lost += lost;
        loss.duplicates += dup;
        loss.out_of_order += ooo;
    }
    loss.ok = loss.lost == 0 && loss.out_of_order == 0;
    cleanup(&conns, (0..a.pairs).map(queue), None).await;

    a.describe(&mut r);
    let span_s = (last_ns.saturating_sub(start_ns) as f64 / 1e9).max(send_elapsed.as_secs_f64());
    r.metric("sent", attempted as f64);
    r.metric("acked", acked as f64);
    r.metric("failed", failed.load(Ordering::Relaxed) as f64);
    r.metric("delivered", delivered as f64);
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
    r.notes.push(format!(
        "quorum queue per pair, publisher confirms (window {}), persistent messages, manual acks (prefetch {PREFETCH}); latency: publish → delivery on the consumer",
        a.window.max(1)
    ));
    Ok(r)
}

/// Stored fan-out over RabbitMQ: one quorum queue per user, all bound to a
/// fanout exchange; `--messages` confirmed publishes, each reaching every
/// user's queue.
pub async fn fanout(a: &super::fanout::Args, m: &Amqp) -> Result<RunResult, BenchError> {
    let run = run_id();
    let exchange = format!("sb-bench.{run}.fanout");
    let queue = |i: usize| format!("sb-bench.{run}.fanout.{i}");
    let setup = bar(a.common.quiet, a.users as u64, "amqp queues");
    let (stop_tx, stop_rx) = watch::channel(false);
    let received = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    let admin = connect(&m.url).await?;
    let pub_ch = admin.create_channel().await.map_err(amqp_err)?;
    pub_ch
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(amqp_err)?;
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(amqp_err)?;
    conns.push(admin);
    let mut tasks = Vec::with_capacity(a.users);
    for i in 0..a.users {
        if i % CONSUMERS_PER_CONNECTION == 0 {
            conns.push(connect(&m.url).await?);
        }
        let Some(conn) = conns.last() else {
            return Err(BenchError::Amqp("no connection".into()));
        };
        let ch = conn.create_channel().await.map_err(amqp_err)?;
        quorum_queue(&ch, &queue(i)).await?;
        ch.queue_bind(
            queue(i).as_str().into(),
            exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(amqp_err)?;
        let c = consumer(&ch, &queue(i)).await?;
        tasks.push(consume(c, received.clone(), stop_rx.clone()));
        setup.inc(1);
    }
    setup.finish_and_clear();

    let expected = a.messages * a.users as u64;
    let progress = bar(a.common.quiet, expected, "amqp deliveries");
    let meter = m.cpu_meter();
    let start_ns = stats::now_ns();
    let mut confirms = Vec::with_capacity(a.messages as usize);
    for n in 0..a.messages {
        let c = pub_ch
            .basic_publish(
                exchange.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                text_body(0, n).as_bytes(),
                persistent(),
            )
            .await
            .map_err(amqp_err)?;
        confirms.push(c);
    }
    let mut nacked = 0u64;
    for c in confirms {
        if !matches!(c.await, Ok(Confirmation::Ack(_))) {
            nacked += 1;
        }
    }
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
    let mut r = super::fanout::collect(tasks, start_ns, a, expected).await;
    r.metrics.extend(cost.metrics);
    cleanup(&conns, (0..a.users).map(queue), Some(&exchange)).await;
    r.system = "rabbitmq-quorum".into();
    r.transport = "amqp".into();
    r.metric("nacked", nacked as f64);
    r.loss.rule =
        "every confirmed message reached every user's queue and consumer, in order".into();
    r.notes.push(format!(
        "fanout exchange → one quorum queue per user, publisher confirms, manual acks (prefetch {PREFETCH}), {CONSUMERS_PER_CONNECTION} consumers per connection; latency: publish → delivery"
    ));
    Ok(r)
}

/// Deletes the run's queues (and exchange) and closes the connections;
/// errors are logged, not fatal: the figures are already taken.
async fn cleanup(
    conns: &[Connection],
    queues: impl Iterator<Item = String>,
    exchange: Option<&str>,
) {
    let Some(conn) = conns.first() else { return };
    match conn.create_channel().await {
        Ok(ch) => {
            for q in queues {
                if let Err(e) = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await
                {
                    tracing::warn!(queue = %q, error = %e, "amqp queue not deleted");
                }
            }
            if let Some(x) = exchange
                && let Err(e) = ch
                    .exchange_delete(x.into(), ExchangeDeleteOptions::default())
                    .await
            {
                tracing::warn!(exchange = %x, error = %e, "amqp exchange not deleted");
            }
        }
        Err(e) => tracing::warn!(error = %e, "amqp cleanup channel"),
    }
    for c in conns {
        let _ = c.close(200, "bench done".into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_not_printed() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://…@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
