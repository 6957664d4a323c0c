//! The webhook [`Dispatcher`] of the embedded bus: it drains the store's
//! durable outbox and POSTs each event as JSON to every webhook of the
//! event's app that subscribes to its topic and type.
//!
//! Guarantees (docs/bus.md):
//! - **At least once.** An event leaves the outbox (is marked delivered) only
//!   after every destination answered 2xx; a stop or crash before that sends
//!   it again after the restart, with the same `id`, so a receiver may see a
//!   duplicate and de-duplicates on `id`.
//! - **In order per user and destination.** Each (destination, user) pair is
//!   a lane; a lane sends its next event only after the previous one was
//!   accepted, retrying the head with exponential backoff and jitter, capped.
//!   Lanes run concurrently, at most `concurrency` requests at once.
//! - **Bounded memory.** At most `max_in_flight` events are held; past that
//!   the outbox is not read until lanes drain (nothing is lost, it waits on disk).
//! - An event that no webhook wants is marked delivered at once (dropped).
//!
//! One task (the loop) owns all lane state; a request task per busy lane
//! reports back over a bounded channel, so no lock is shared.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use switchboard_core::hooks::WebhookConfig;
use switchboard_core::{AppConfig, BusEvent, Store, UserKey, events, stats};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::sign::{EVENT_ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use crate::{HookError, body_fields, http_client, parse_url};

/// Tuning of the dispatcher; `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// How often the outbox is read for new events. Default 100 ms.
    pub poll_interval: Duration,
    /// How often the whole outbox is read again from the start, to pick up
    /// events committed out of id order. Default 5 s.
    pub rescan_interval: Duration,
    /// Events read per query. Default 256.
    pub batch: usize,
    /// Events held in memory (queued or being sent). Default 10 000.
    pub max_in_flight: usize,
    /// Requests in flight at once, over all destinations. Default 32.
    pub concurrency: usize,
    /// Per request, connect to last byte. Default 5 s.
    pub timeout: Duration,
    /// First retry delay; doubles per failed attempt. Default 500 ms.
    pub retry_initial: Duration,
    /// Longest retry delay. Default 60 s.
    pub retry_max: Duration,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            poll_interval: Duration::from_millis(100),
            rescan_interval: Duration::from_secs(5),
            batch: 256,
            max_in_flight: 10_000,
            concurrency: 32,
            timeout: Duration::from_secs(5),
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(60),
        }
    }
}

/// Counters of a running dispatcher (for logs and `/metrics`).
#[derive(Debug, Default)]
pub struct DispatcherStats {
    /// Requests answered 2xx.
    pub delivered: AtomicU64,
    /// Requests that failed (connection, timeout, non-2xx) and will be retried.
    pub failed_attempts: AtomicU64,
    /// Events no webhook wanted, dropped.
    pub dropped: AtomicU64,
    /// Events marked delivered in the outbox.
    pub completed: AtomicU64,
    /// Events held in memory right now.
    pub in_flight: AtomicU64,
}

impl DispatcherStats {
    fn delivered(&self) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(stats::WEBHOOK_REQUESTS, "outcome" => "delivered").increment(1);
    }

    fn failed_attempt(&self) {
        self.failed_attempts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(stats::WEBHOOK_REQUESTS, "outcome" => "failed").increment(1);
    }

    fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(stats::WEBHOOK_EVENTS, "outcome" => "dropped").increment(1);
    }

    fn completed(&self, n: u64) {
        self.completed.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(stats::WEBHOOK_EVENTS, "outcome" => "completed").increment(n);
    }

    fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n as u64, Ordering::Relaxed);
        metrics::gauge!(stats::WEBHOOK_IN_FLIGHT).set(n as f64);
    }
}

/// One webhook of one app.
struct Destination {
    app: String,
    url: reqwest::Url,
    config: WebhookConfig,
}

/// What a receiver gets: the event, with its body decoded for JSON.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    id: String,
    topic: &'a str,
    app: &'a str,
    uid: &'a str,
    #[serde(rename = "type", skip_serializing_if = "str::is_empty")]
    kind: &'a str,
    time_ms: i64,
    /// Platform events: their data object.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
    /// c2s (opaque client bytes): the body in base64, and as text when UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_text: Option<&'a str>,
}

/// The JSON body POSTed for an event (the same bytes to every destination).
pub fn payload(event: &BusEvent) -> Bytes {
    // Platform events carry JSON data; c2s carries the client's bytes.
    let data = (event.topic != events::C2S)
        .then(|| serde_json::from_slice::<serde_json::Value>(&event.body).ok())
        .flatten();
    let (body_base64, body_text) = if data.is_none() {
        let (b, t) = body_fields(&event.body);
        (Some(b), t)
    } else {
        (None, None)
    };
    let p = Payload {
        id: event.id.to_string(),
        topic: &event.topic,
        app: &event.user.app,
        uid: &event.user.uid,
        kind: &event.kind,
        time_ms: event.time_ms,
        data,
        body_base64,
        body_text,
    };
    // Serializing strings, numbers and a Value cannot fail.
    Bytes::from(serde_json::to_vec(&p).unwrap_or_default())
}

/// An event on its way, shared by its lanes.
struct Prepared {
    id: u64,
    body: Bytes,
}

type LaneKey = (usize, UserKey);

#[derive(Default)]
struct Lane {
    queue: VecDeque<Arc<Prepared>>,
    busy: bool,
}

/// A running dispatcher; [`Dispatcher::stop`] ends it.
pub struct Dispatcher {
    stop: CancellationToken,
    task: JoinHandle<()>,
    stats: Arc<DispatcherStats>,
}

impl Dispatcher {
    /// Checks every app's webhooks and starts draining the store's outbox.
    pub fn start<'a>(
        outbox: Arc<dyn Store>,
        apps: impl IntoIterator<Item = &'a AppConfig>,
        config: DispatcherConfig,
    ) -> Result<Dispatcher, HookError> {
        let mut destinations = Vec::new();
        let mut by_app: HashMap<String, Vec<usize>> = HashMap::new();
        for app in apps {
            for w in &app.webhooks {
                for t in &w.topics {
                    if !events::TOPICS.contains(&t.as_str()) {
                        return Err(HookError::Config {
                            app: app.name.clone(),
                            reason: format!(
                                "webhook {}: unknown topic {t:?} (known: {})",
                                w.url,
                                events::TOPICS.join(", ")
                            ),
                        });
                    }
                }
                let url = parse_url(&app.name, &w.url)?;
                by_app
                    .entry(app.name.clone())
                    .or_default()
                    .push(destinations.len());
                destinations.push(Destination {
                    app: app.name.clone(),
                    url,
                    config: w.clone(),
                });
            }
        }
        let client = http_client(config.timeout)?;
        let stop = CancellationToken::new();
        let stats = Arc::new(DispatcherStats::default());
        let (done_tx, done_rx) = mpsc::channel(1024);
        let run = Run {
            outbox,
            destinations: Arc::new(destinations),
            by_app,
            client,
            permits: Arc::new(Semaphore::new(config.concurrency.max(1))),
            config,
            stop: stop.clone(),
            stats: stats.clone(),
            tracker: TaskTracker::new(),
            done_tx,
            done_rx,
            in_flight: HashMap::new(),
            lanes: HashMap::new(),
            to_mark: Vec::new(),
            cursor: 0,
        };
        let task = tokio::spawn(run.run());
        Ok(Dispatcher { stop, task, stats })
    }

    /// The dispatcher's counters.
    pub fn stats(&self) -> Arc<DispatcherStats> {
        self.stats.clone()
    }

    /// Stops sending; marks what was accepted so far; events still pending
    /// stay in the outbox for the next start.
    pub async fn stop(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "webhook dispatcher ended abnormally");
        }
    }
}

/// The loop's state.
struct Run {
    outbox: Arc<dyn Store>,
    destinations: Arc<Vec<Destination>>,
    by_app: HashMap<String, Vec<usize>>,
    client: reqwest::Client,
    permits: Arc<Semaphore>,
    config: DispatcherConfig,
    stop: CancellationToken,
    stats: Arc<DispatcherStats>,
    tracker: TaskTracker,
    done_tx: mpsc::Sender<LaneKey>,
    done_rx: mpsc::Receiver<LaneKey>,
    /// Event id → destinations still to accept it (0: waiting to be marked).
    in_flight: HashMap<u64, usize>,
    lanes: HashMap<LaneKey, Lane>,
    /// Ids accepted everywhere (or dropped), not yet marked in the outbox.
    to_mark: Vec<u64>,
    /// The highest id read since the last rescan.
    cursor: u64,
}

impl Run {
    async fn run(mut self) {
        tracing::info!(
            destinations = self.destinations.len(),
            "webhook dispatcher started"
        );
        let mut tick =
            tokio::time::interval(self.config.poll_interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rescan = Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                Some(key) = self.done_rx.recv() => {
                    self.lane_done(key);
                    while let Ok(key) = self.done_rx.try_recv() {
                        self.lane_done(key);
                    }
                }
                _ = tick.tick() => {
                    if last_rescan.elapsed() >= self.config.rescan_interval {
                        self.cursor = 0;
                        last_rescan = Instant::now();
                    }
                    self.read_outbox().await;
                }
            }
            self.mark().await;
        }
        // Lanes stop at the token; what they finished before is still marked.
        self.tracker.close();
        let wait = self.tracker.clone();
        let waited = wait.wait();
        tokio::pin!(waited);
        loop {
            tokio::select! {
                _ = &mut waited => break,
                Some(key) = self.done_rx.recv() => self.lane_done(key),
            }
        }
        while let Ok(key) = self.done_rx.try_recv() {
            self.lane_done(key);
        }
        self.mark().await;
        tracing::info!(
            unsent = self.in_flight.len().saturating_sub(self.to_mark.len()),
            "webhook dispatcher stopped"
        );
    }

    /// Reads new events until caught up or full. Full pages of `batch` even
    /// when little room is left, so a rescan over many held events stays a
    /// few queries.
    async fn read_outbox(&mut self) {
        let batch = self.config.batch.max(1);
        loop {
            if self.in_flight.len() >= self.config.max_in_flight {
                return;
            }
            let events = match self.outbox.outbox_pending_after(self.cursor, batch).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox; retrying");
                    return;
                }
            };
            let n = events.len();
            for event in events {
                if self.in_flight.len() >= self.config.max_in_flight {
                    // The cursor stays before this event: it is read next time.
                    return;
                }
                self.cursor = self.cursor.max(event.id);
                if !self.in_flight.contains_key(&event.id) {
                    self.admit(event);
                }
            }
            if n < batch {
                return;
            }
        }
    }

    /// Queues an event on the lane of each destination that wants it.
    fn admit(&mut self, event: BusEvent) {
        let wanted: Vec<usize> = self
            .by_app
            .get(&event.user.app)
            .map(|ds| {
                ds.iter()
                    .copied()
                    .filter(|&d| {
                        self.destinations[d]
                            .config
                            .matches(&event.topic, &event.kind)
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.in_flight.insert(event.id, wanted.len());
        self.stats.set_in_flight(self.in_flight.len());
        if wanted.is_empty() {
            tracing::debug!(id = event.id, topic = %event.topic, app = %event.user.app, "no webhook wants this event; dropped");
            self.stats.dropped();
            self.to_mark.push(event.id);
            return;
        }
        let prepared = Arc::new(Prepared {
            id: event.id,
            body: payload(&event),
        });
        for d in wanted {
            let key = (d, event.user.clone());
            self.lanes
                .entry(key.clone())
                .or_default()
                .queue
                .push_back(prepared.clone());
            self.start_lane(key);
        }
    }

    /// Sends the head of an idle lane.
    fn start_lane(&mut self, key: LaneKey) {
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        if lane.busy {
            return;
        }
        let Some(head) = lane.queue.front().cloned() else {
            self.lanes.remove(&key);
            return;
        };
        lane.busy = true;
        let send = Send {
            client: self.client.clone(),
            destinations: self.destinations.clone(),
            permits: self.permits.clone(),
            stop: self.stop.clone(),
            stats: self.stats.clone(),
            retry_initial: self.config.retry_initial,
            retry_max: self.config.retry_max,
        };
        let done = self.done_tx.clone();
        self.tracker.spawn(async move {
            if send.deliver(key.0, &head).await {
                // The loop outlives every lane task (it waits for them).
                let _ = done.send(key).await;
            }
        });
    }

    /// The head of a lane was accepted: the next one goes.
    fn lane_done(&mut self, key: LaneKey) {
        let Some(lane) = self.lanes.get_mut(&key) else {
            return;
        };
        lane.busy = false;
        if let Some(event) = lane.queue.pop_front()
            && let Some(left) = self.in_flight.get_mut(&event.id)
        {
            *left = left.saturating_sub(1);
            if *left == 0 {
                self.to_mark.push(event.id);
            }
        }
        if !self.stop.is_cancelled() {
            self.start_lane(key);
        }
    }

    /// Marks accepted and dropped events in the outbox; on failure they stay
    /// in memory (not re-sent) and are marked on the next try.
    async fn mark(&mut self) {
        if self.to_mark.is_empty() {
            return;
        }
        match self.outbox.outbox_mark_delivered(&self.to_mark).await {
            Ok(_) => {
                self.stats.completed(self.to_mark.len() as u64);
                for id in self.to_mark.drain(..) {
                    self.in_flight.remove(&id);
                }
                self.stats.set_in_flight(self.in_flight.len());
            }
            Err(e) => tracing::warn!(error = %e, "cannot mark events delivered; retrying"),
        }
    }
}

/// What a lane task needs to send one event.
struct Send {
    client: reqwest::Client,
    destinations: Arc<Vec<Destination>>,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
    stats: Arc<DispatcherStats>,
    retry_initial: Duration,
    retry_max: Duration,
}

impl Send {
    /// Sends until a 2xx (true) or the stop token (false).
    async fn deliver(&self, dest: usize, event: &Prepared) -> bool {
        let Some(d) = self.destinations.get(dest) else {
            return false;
        };
        let signature = d
            .config
            .secret
            .as_ref()
            .map(|s| sign(s.as_bytes(), &event.body));
        let mut failures: u32 = 0;
        loop {
            let attempt = async {
                // A permit per attempt, not across the backoff sleep, so a
                // destination that is down does not hold the others' slots.
                let _permit = self.permits.acquire().await.ok()?;
                Some(self.post(d, event, signature.as_deref()).await)
            };
            let result = tokio::select! {
                _ = self.stop.cancelled() => return false,
                r = attempt => r,
            };
            match result {
                Some(Ok(())) => {
                    self.stats.delivered();
                    return true;
                }
                Some(Err(reason)) => {
                    self.stats.failed_attempt();
                    failures = failures.saturating_add(1);
                    let delay = backoff(self.retry_initial, self.retry_max, failures);
                    tracing::warn!(id = event.id, app = %d.app, url = %d.url, %reason, retry_in = ?delay, "webhook not accepted");
                    tokio::select! {
                        _ = self.stop.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                // The semaphore never closes; stop anyway rather than spin.
                None => return false,
            }
        }
    }

    async fn post(
        &self,
        d: &Destination,
        event: &Prepared,
        signature: Option<&str>,
    ) -> Result<(), String> {
        let mut req = self
            .client
            .post(d.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, event.id.to_string())
            .header(TIMESTAMP_HEADER, switchboard_core::now_ms().to_string());
        if let Some(s) = signature {
            req = req.header(SIGNATURE_HEADER, s);
        }
        let resp = req.body(event.body.clone()).send().await.map_err(|e| {
            if e.is_timeout() {
                "timed out".to_string()
            } else if e.is_connect() {
                "connection failed".to_string()
            } else {
                e.to_string()
            }
        })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", resp.status()))
        }
    }
}

/// Exponential backoff with equal jitter: half the capped delay, plus a
/// random part up to the other half (so lanes that failed together spread out).
fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let capped = initial.saturating_mul(1u32 << exp).min(max);
    let half = capped / 2;
    let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(rand::random_range(0..=jitter_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(2);
        for (failures, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (5, 1600),
            (6, 2000),
            (40, 2000),
        ] {
            let d = backoff(i, m, failures).as_millis() as u64;
            assert!(
                d >= full / 2 && d <= full,
                "{failures}: {d} not in {}..={full}",
                full / 2
            );
        }
    }

    #[test]
    fn payload_shapes() {
        let c2s = BusEvent {
            id: 42,
            topic: "c2s".into(),
            user: UserKey::new("demo", "courier"),
            kind: "position".into(),
            body: Bytes::from_static(b"{\"lat\":1}"),
            time_ms: 7,
        };
        let v: serde_json::Value = serde_json::from_slice(&payload(&c2s)).unwrap();
        assert_eq!(v["id"], "42");
        assert_eq!(v["type"], "position");
        assert_eq!(v["body_text"], "{\"lat\":1}");
        assert_eq!(v["body_base64"], "eyJsYXQiOjF9");
        assert!(v.get("data").is_none());

        let online = BusEvent {
            id: 43,
            topic: "user.online".into(),
            user: UserKey::new("demo", "alice"),
            kind: String::new(),
            body: Bytes::from_static(b"{\"device_id\":\"d1\"}"),
            time_ms: 8,
        };
        let v: serde_json::Value = serde_json::from_slice(&payload(&online)).unwrap();
        assert_eq!(v["data"]["device_id"], "d1");
        assert!(v.get("type").is_none());
        assert!(v.get("body_base64").is_none());
    }
}
