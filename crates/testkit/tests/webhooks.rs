//! The webhook bus end to end: real SDK clients send c2s reports, log in and
//! out and chat while the business server's webhook is down (not listening,
//! then answering 503); the node restarts in between; once the receiver is
//! back every event arrives — signed, none lost, in order per user,
//! duplicates only with the same id — and every c2s was acknowledged before
//! it was delivered.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchboard_core::hooks::WebhookConfig;
use switchboard_testkit::sdk::{connect, demo};
use switchboard_testkit::server::TestServer;

const SECRET: &str = "webhook-secret-for-tests";

/// One request the receiver accepted.
#[derive(Debug, Clone)]
struct Got {
    id: u64,
    body: Vec<u8>,
    json: serde_json::Value,
}

/// What happened, in order: `("ack", id)` when a client got its c2s-ack,
/// `("got", id)` when the receiver accepted an event.
type Timeline = Arc<Mutex<Vec<(&'static str, u64)>>>;

#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    /// Requests still to answer 503 once listening.
    refuse: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    bad: Arc<Mutex<Vec<String>>>,
    timeline: Timeline,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if r.refuse
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        r.refused.fetch_add(1, Ordering::SeqCst);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    // Verify the HMAC the way a business server would, independently of
    // Switchboard's own code.
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if header("x-switchboard-signature") != format!("sha256={expected}") {
        lock(&r.bad).push(format!(
            "bad signature on {}",
            String::from_utf8_lossy(&body)
        ));
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        lock(&r.bad).push("body is not JSON".into());
        return StatusCode::BAD_REQUEST;
    };
    let id: u64 = json["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if id == 0 || header("x-switchboard-event-id") != id.to_string() {
        lock(&r.bad).push(format!("id header does not match the body: {json}"));
        return StatusCode::BAD_REQUEST;
    }
    if header("x-switchboard-timestamp").parse::<i64>().is_err() {
        lock(&r.bad).push("no timestamp header".into());
    }
    lock(&r.timeline).push(("got", id));
    lock(&r.got).push(Got {
        id,
        body: body.to_vec(),
        json,
    });
    StatusCode::OK
}

/// A port nobody listens on yet (bound, then released).
async fn reserve_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// What a receiver should see of one event, to compare per user.
fn describe(json: &serde_json::Value) -> String {
    match json["topic"].as_str().unwrap_or_default() {
        "c2s" => format!(
            "c2s {} {}",
            json["type"].as_str().unwrap_or_default(),
            json["body_text"].as_str().unwrap_or_default()
        ),
        "message.stored" => format!(
            "message.stored {}->{} {}",
            json["data"]["from"]["uid"].as_str().unwrap_or_default(),
            json["data"]["to"]["uid"].as_str().unwrap_or_default(),
            json["data"]["type"].as_str().unwrap_or_default(),
        ),
        t => format!(
            "{t} {}",
            json["data"]["device_id"].as_str().unwrap_or_default()
        ),
    }
}

#[tokio::test]
async fn every_event_arrives_after_the_receiver_and_the_node_come_back() {
    let hook_addr = reserve_port().await;
    let mut s = TestServer::start_with(|c| {
        c.apps[0].webhooks = vec![WebhookConfig {
            url: format!("http://{hook_addr}/events"),
            topics: vec![],
            types: vec![],
            secret: Some(SECRET.into()),
        }];
        c.webhook.retry_initial_ms = 20;
        c.webhook.retry_max_ms = 200;
        c.webhook.poll_ms = 20;
    })
    .await;
    let timeline: Timeline = Arc::default();
    let url = s.tcp_url();

    // Phase 1, receiver down (nothing listens on its port).
    let mut acks: Vec<u64> = Vec::new();
    let (c1, _e1) = connect(&url, "courier-1", "c1-phone").await;
    let (c2, _e2) = connect(&url, "courier-2", "c2-phone").await;
    let (alice, _ea) = connect(&url, "alice", "a-laptop").await;
    for n in 0..10 {
        for (c, who) in [(&c1, "c1"), (&c2, "c2")] {
            let ack = c
                .c2s("position", format!("{who}:{n}"))
                .await
                .expect("c2s is acknowledged while the webhook is down");
            lock(&timeline).push(("ack", ack.msg_id));
            acks.push(ack.msg_id);
        }
    }
    alice
        .send(demo("bob"), "text", "hi bob")
        .await
        .expect("c2c is stored while the webhook is down");
    c1.logout().await.expect("logout");
    c2.close().await;
    alice.close().await;

    // Phase 2: the node restarts; the undelivered events stay in the outbox.
    s = s.restart().await;
    let url = s.tcp_url();
    let (c1, _e1) = connect(&url, "courier-1", "c1-tablet").await;
    for n in 10..15 {
        let ack = c1.c2s("position", format!("c1:{n}")).await.expect("c2s");
        lock(&timeline).push(("ack", ack.msg_id));
        acks.push(ack.msg_id);
    }

    // Phase 3: the receiver comes back, answering 503 a few times first.
    let receiver = Receiver {
        got: Arc::default(),
        refuse: Arc::new(AtomicUsize::new(3)),
        refused: Arc::default(),
        bad: Arc::default(),
        timeline: timeline.clone(),
    };
    let app = axum::Router::new()
        .route("/events", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind(hook_addr)
        .await
        .expect("rebinding the webhook port");
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut expected: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut c1_events = vec!["user.online c1-phone".to_string()];
    c1_events.extend((0..10).map(|n| format!("c2s position c1:{n}")));
    c1_events.push("user.offline c1-phone".into());
    c1_events.push("user.online c1-tablet".into());
    c1_events.extend((10..15).map(|n| format!("c2s position c1:{n}")));
    expected.insert("courier-1", c1_events);
    let mut c2_events = vec!["user.online c2-phone".to_string()];
    c2_events.extend((0..10).map(|n| format!("c2s position c2:{n}")));
    c2_events.push("user.offline c2-phone".into());
    expected.insert("courier-2", c2_events);
    expected.insert(
        "alice",
        vec![
            "user.online a-laptop".into(),
            "message.stored alice->bob text".into(),
            "user.offline a-laptop".into(),
        ],
    );
    let total: usize = expected.values().map(Vec::len).sum();

    // Bounded wait: retries are capped at 200 ms.
    let mut unique = 0;
    for _ in 0..300 {
        unique = {
            let got = lock(&receiver.got);
            let mut ids: Vec<u64> = got.iter().map(|g| g.id).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.len()
        };
        if unique >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A moment more, to catch anything sent beyond the expected events.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let bad = lock(&receiver.bad).clone();
    assert!(bad.is_empty(), "receiver complaints: {bad:?}");
    assert_eq!(
        receiver.refused.load(Ordering::SeqCst),
        3,
        "the 503 answers were retried"
    );
    let got = lock(&receiver.got).clone();
    assert!(
        unique >= total,
        "only {unique} of {total} events arrived: {got:#?}"
    );

    // Duplicates only with the same id and the same bytes.
    let mut first: HashMap<u64, Got> = HashMap::new();
    let mut per_user: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for g in &got {
        if let Some(f) = first.get(&g.id) {
            assert_eq!(f.body, g.body, "a duplicate of {} differs", g.id);
            continue;
        }
        first.insert(g.id, g.clone());
        assert_eq!(g.json["app"], "demo");
        let uid = g.json["uid"].as_str().unwrap_or_default().to_string();
        per_user
            .entry(uid)
            .or_default()
            .push((g.id, describe(&g.json)));
    }
    // None lost, nothing extra, in order per user (ids increase too).
    for (uid, want) in &expected {
        let seen = per_user.remove(*uid).unwrap_or_default();
        let described: Vec<&String> = seen.iter().map(|(_, d)| d).collect();
        assert_eq!(
            described,
            want.iter().collect::<Vec<_>>(),
            "events of {uid}"
        );
        assert!(
            seen.windows(2).all(|w| w[0].0 < w[1].0),
            "events of {uid} out of id order: {seen:?}"
        );
    }
    assert!(per_user.is_empty(), "unexpected events: {per_user:?}");

    // Each c2s arrived with the id its ack gave, after the ack.
    let tl = lock(&timeline).clone();
    for id in &acks {
        let ack_at = tl.iter().position(|e| *e == ("ack", *id));
        let got_at = tl.iter().position(|e| *e == ("got", *id));
        match (ack_at, got_at) {
            (Some(a), Some(g)) => assert!(a < g, "c2s {id} delivered before its ack"),
            _ => panic!("c2s {id}: ack at {ack_at:?}, delivery at {got_at:?}"),
        }
    }

    // Operators see the outage and the recovery on /metrics.
    let metrics = reqwest::get(format!("http://{}/metrics", s.http))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    for needle in [
        "switchboard_webhook_requests_total{outcome=\"failed\"}",
        "switchboard_webhook_requests_total{outcome=\"delivered\"}",
        "switchboard_webhook_events_total{outcome=\"completed\"}",
        "switchboard_webhook_events_in_flight",
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics lacks {needle}:\n{metrics}"
        );
    }

    c1.close().await;
    s.stop().await;
    serving.abort();
}

#[tokio::test]
async fn destinations_get_only_their_topics_and_types() {
    let receiver = Receiver {
        got: Arc::default(),
        refuse: Arc::default(),
        refused: Arc::default(),
        bad: Arc::default(),
        timeline: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/events", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });
    let s = TestServer::start_with(|c| {
        // Only c2s of type "position": no online/offline, no other c2s type.
        c.apps[0].webhooks = vec![WebhookConfig {
            url: format!("http://{addr}/events"),
            topics: vec!["c2s".into()],
            types: vec!["position".into()],
            secret: Some(SECRET.into()),
        }];
        c.webhook.poll_ms = 20;
    })
    .await;
    let (c1, _e1) = connect(&s.tcp_url(), "courier-1", "c1").await;
    c1.c2s("battery", "80%").await.expect("c2s battery");
    let want = c1.c2s("position", "p1").await.expect("c2s position");
    let mut arrived = false;
    for _ in 0..200 {
        if lock(&receiver.got).iter().any(|g| g.id == want.msg_id) {
            arrived = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(arrived, "the position report never arrived");
    // The battery report was published first and is dropped, not queued.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = lock(&receiver.got).clone();
    let topics: Vec<String> = got.iter().map(|g| describe(&g.json)).collect();
    assert_eq!(topics, ["c2s position p1"]);
    c1.close().await;
    s.stop().await;
    serving.abort();
}

/// A measurement, not a check: `cargo test --release -p switchboard-testkit
/// --test webhooks -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    let receiver = Receiver {
        got: Arc::default(),
        refuse: Arc::default(),
        refused: Arc::default(),
        bad: Arc::default(),
        timeline: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/events", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });
    let s = TestServer::start_with(|c| {
        c.apps[0].webhooks = vec![WebhookConfig {
            url: format!("http://{addr}/events"),
            topics: vec!["c2s".into()],
            secret: Some(SECRET.into()),
            ..Default::default()
        }];
        c.webhook.poll_ms = 10;
        c.gate.rate_per_sec = 100_000;
        c.gate.rate_burst = 100_000;
    })
    .await;
    let (users, per_user) = (50, 200);
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for u in 0..users {
        let url = s.tcp_url();
        tasks.push(tokio::spawn(async move {
            let (c, _e) = connect(&url, &format!("courier-{u}"), "d").await;
            for n in 0..per_user {
                c.c2s("position", format!("{n}")).await.expect("c2s");
            }
            c.close().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let acked = start.elapsed();
    let total = users * per_user;
    for _ in 0..1200 {
        if lock(&receiver.got).len() >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = start.elapsed();
    let n = lock(&receiver.got).len();
    eprintln!(
        "{total} c2s from {users} users: all acked in {acked:?} ({:.0}/s), {n} delivered in {delivered:?} ({:.0}/s)",
        total as f64 / acked.as_secs_f64(),
        n as f64 / delivered.as_secs_f64()
    );
    s.stop().await;
    serving.abort();
}
