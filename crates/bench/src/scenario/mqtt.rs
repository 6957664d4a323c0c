//! The Mosquitto peer of `c2c` and `fanout`, through the same harness:
//! rumqttc publishers and subscribers for c2c (one topic per pair), raw
//! MQTT 3.1.1 subscribers for fan-out (thousands of them in one process).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::{Received, body, check_stream, run_id};
use crate::stats::{self, LossCheck, RunResult, Timeline};
use crate::target::Mqtt;
use crate::{BenchError, bar};

fn qos_of(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn options(id: String, addr: SocketAddr, inflight: u16) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(60));
    o.set_clean_session(true);
    o.set_inflight(inflight.max(1));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

/// Polls until the SubAck of a subscription; errors after 10 s.
async fn wait_suback(el: &mut EventLoop) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline, el.poll())
            .await
            .map_err(|_| BenchError::Mqtt("no SUBACK within 10 s".into()))?
            .map_err(|e| BenchError::Mqtt(e.to_string()))?;
        if let Event::Incoming(Packet::SubAck(_)) = ev {
            return Ok(());
        }
    }
}

/// c2c over MQTT: pair i publishes on its own topic, its receiver subscribes.
pub async fn c2c(a: &super::c2c::Args, m: &Mqtt, q: u8) -> Result<RunResult, BenchError> {
    let run = run_id();
    let qos = qos_of(q);
    let start_ns = stats::now_ns();
    let (stop_tx, stop_rx) = watch::channel(false);
    let received_total = Arc::new(AtomicU64::new(0));
    let setup = bar(a.common.quiet, a.pairs as u64, "mqtt subscribing");
    let mut recv_tasks = Vec::new();
    for i in 0..a.pairs {
        let topic = format!("sb-bench/{run}/c2c/{i}");
        let (client, mut el) = AsyncClient::new(options(format!("{run}-r{i}"), m.addr, 100), 1024);
        client
            .subscribe(topic, qos)
            .await
            .map_err(|e| BenchError::Mqtt(e.to_string()))?;
        wait_suback(&mut el).await?;
        setup.inc(1);
        let total = received_total.clone();
        let mut stop = stop_rx.clone();
        recv_tasks.push(tokio::spawn(async move {
            let _client = client;
            let mut rec = Received::default();
            loop {
                tokio::select! {
                    ev = el.poll() => match ev {
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            rec.record(&p.payload);
                            total.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "mqtt receiver failed");
                            break;
                        }
                    },
                    _ = stop.changed() => break,
                }
            }
            rec
        }));
    }
    setup.finish_and_clear();

    let progress = bar(a.common.quiet, a.planned_sends(), "mqtt published");
    let meter = m.cpu_meter();
    let t0 = Instant::now();
    let end = a.end(t0);
    let mut send_tasks = Vec::new();
    for i in 0..a.pairs {
        let topic = format!("sb-bench/{run}/c2c/{i}");
        let window = a.window.max(1);
        let (client, mut el) =
            AsyncClient::new(options(format!("{run}-s{i}"), m.addr, window as u16), 1024);
        // Flow control: a permit per message in flight, returned on PUBACK
        // (QoS 1) or once the PUBLISH is written (QoS 0).
        let permits = Arc::new(Semaphore::new(window));
        let acked = Arc::new(AtomicU64::new(0));
        let (done_tx, mut done_rx) = oneshot::channel::<()>();
        let (p2, a2) = (permits.clone(), acked.clone());
        let poller = tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = el.poll() => match ev {
                        Ok(Event::Incoming(Packet::PubAck(_))) if q >= 1 => {
                            a2.fetch_add(1, Ordering::Relaxed);
                            p2.add_permits(1);
                        }
                        Ok(Event::Outgoing(Outgoing::Publish(_))) if q == 0 => {
                            a2.fetch_add(1, Ordering::Relaxed);
                            p2.add_permits(1);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "mqtt sender failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    },
                    _ = &mut done_rx => break,
                }
            }
        });
        let (rate, pairs, size) = (a.rate, a.pairs, a.size);
        let a = a.clone();
        let progress = progress.clone();
        send_tasks.push(tokio::spawn(async move {
            let mut tick = (rate > 0).then(|| {
                let period = Duration::from_secs_f64(1.0 / rate as f64);
                let phase = period.mul_f64(i as f64 / pairs as f64);
                let mut t = tokio::time::interval_at(t0 + phase, period);
                t.set_missed_tick_behavior(MissedTickBehavior::Burst);
                t
            });
            let mut n = 0u64;
            loop {
                if let Some(t) = tick.as_mut() {
                    t.tick().await;
                }
                if !a.more(n, end) {
                    break;
                }
                let Ok(p) = permits.acquire().await else {
                    break;
                };
                p.forget();
                if client
                    .publish(topic.clone(), qos, false, body(i as u32, n, size).to_vec())
                    .await
                    .is_err()
                {
                    break;
                }
                n += 1;
                progress.inc(1);
            }
            // Let the in-flight tail be acknowledged (bounded).
            let tail_end = Instant::now() + Duration::from_secs(10);
            while acked.load(Ordering::Relaxed) < n && Instant::now() < tail_end {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let _ = done_tx.send(());
            let _ = poller.await;
            (i, n, acked.load(Ordering::Relaxed))
        }));
    }
    let mut sent = vec![(0u64, 0u64); a.pairs];
    for t in send_tasks {
        if let Ok((i, n, k)) = t.await {
            sent[i] = (n, k.min(n));
        }
    }
    let send_elapsed = t0.elapsed();
    progress.finish_and_clear();
    let attempted: u64 = sent.iter().map(|s| s.0).sum();
    let acked: u64 = sent.iter().map(|s| s.1).sum();
    drain(&received_total, attempted, acked, a.drain).await;
    let _ = stop_tx.send(true);
    let mut r = RunResult::new("c2c", &format!("mosquitto-qos{q}"), "mqtt");
    meter.finish(&mut r, received_total.load(Ordering::Relaxed), "msg");

    let mut hist = stats::histogram();
    let mut timeline = Timeline::new(start_ns);
    let mut loss = LossCheck {
        rule: if q >= 1 {
            "every PUBACKed message received, in order (QoS 1 allows duplicates; counted)".into()
        } else {
            "QoS 0 is at most once: loss is reported, not failed".into()
        },
        expected: if q >= 1 { acked } else { attempted },
        ..LossCheck::default()
    };
    let (mut last_ns, mut delivered) = (0, 0u64);
    for (i, t) in recv_tasks.into_iter().enumerate() {
        let Ok(rec) = t.await else { continue };
        rec.merge_into(&mut hist, &mut timeline);
        last_ns = last_ns.max(rec.last_ns());
        delivered += rec.ns.len() as u64;
        let must = if q >= 1 { sent[i].1 } else { sent[i].0 };
        let (got, lost, dup, ooo) = check_stream(&rec.ns, 0..must);
        loss.received += got;
        loss.lost += lost;
        loss.duplicates += dup;
        loss.out_of_order += ooo;
    }
    loss.ok = if q >= 1 {
        loss.lost == 0 && loss.out_of_order == 0
    } else {
        true
    };
    a.describe(&mut r);
    let span_s = (last_ns.saturating_sub(start_ns) as f64 / 1e9).max(send_elapsed.as_secs_f64());
    r.metric("sent", attempted as f64);
    r.metric("acked", acked as f64);
    r.metric("delivered", delivered as f64);
    r.metric("msgs_per_sec", (delivered as f64 / span_s).round());
    r.metric(
        "offered_per_sec",
        (attempted as f64 / send_elapsed.as_secs_f64()).round(),
    );
    r.set_latency(&hist);
    r.timeline = timeline.rates();
    r.loss = loss;
    Ok(r)
}

/// Waits until everything sent arrived, or everything acked arrived and
/// nothing moved for a second, or `secs` passed.
pub async fn drain(received: &AtomicU64, attempted: u64, acked: u64, secs: f64) {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut last = (received.load(Ordering::Relaxed), Instant::now());
    while Instant::now() < end {
        let got = received.load(Ordering::Relaxed);
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
}

/// A raw MQTT subscriber: CONNECT, SUBSCRIBE one topic, then PUBLISH bodies.
pub struct RawSub {
    stream: TcpStream,
    buf: BytesMut,
}

impl RawSub {
    pub async fn subscribe(
        source: Option<std::net::IpAddr>,
        addr: SocketAddr,
        client_id: &str,
        topic: &str,
        qos: u8,
    ) -> Result<RawSub, BenchError> {
        let stream = crate::raw::mqtt_connect(source, addr, client_id).await?;
        let mut s = RawSub {
            stream,
            buf: BytesMut::new(),
        };
        let mut var = BytesMut::new();
        var.put_u16(1);
        var.put_u16(topic.len() as u16);
        var.put_slice(topic.as_bytes());
        var.put_u8(qos);
        let mut pkt = BytesMut::new();
        pkt.put_u8(0x82);
        put_len(&mut pkt, var.len());
        pkt.put_slice(&var);
        s.stream.write_all(&pkt).await?;
        match s.next_packet().await? {
            Some((0x90, _)) => Ok(s),
            other => Err(BenchError::Mqtt(format!(
                "expected SUBACK, got {:?}",
                other.map(|p| p.0)
            ))),
        }
    }

    /// The next packet: (first header byte, rest), `None` at end of stream.
    async fn next_packet(&mut self) -> Result<Option<(u8, BytesMut)>, BenchError> {
        loop {
            if let Some((hdr, len_bytes, len)) = peek_header(&self.buf)
                && self.buf.len() >= 1 + len_bytes + len
            {
                self.buf.advance(1 + len_bytes);
                return Ok(Some((hdr, self.buf.split_to(len))));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The payload of the next PUBLISH (acknowledged when QoS 1).
    pub async fn next_publish(&mut self) -> Result<Option<BytesMut>, BenchError> {
        loop {
            let Some((hdr, mut rest)) = self.next_packet().await? else {
                return Ok(None);
            };
            if hdr >> 4 != 3 {
                continue;
            }
            let qos = (hdr >> 1) & 3;
            if rest.len() < 2 {
                return Err(BenchError::Mqtt("short PUBLISH".into()));
            }
            let tlen = rest.get_u16() as usize;
            if rest.len() < tlen {
                return Err(BenchError::Mqtt("short PUBLISH topic".into()));
            }
            rest.advance(tlen);
            if qos > 0 {
                if rest.len() < 2 {
                    return Err(BenchError::Mqtt("PUBLISH without packet id".into()));
                }
                let id = rest.get_u16();
                self.stream
                    .write_all(&[0x40, 0x02, (id >> 8) as u8, id as u8])
                    .await?;
            }
            return Ok(Some(rest));
        }
    }
}

fn put_len(buf: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

/// (first byte, bytes of the length field, remaining length) once complete.
fn peek_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let hdr = *buf.first()?;
    let mut n = 0usize;
    for i in 0..4 {
        let b = *buf.get(1 + i)?;
        n |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Some((hdr, i + 1, n));
        }
    }
    None
}
