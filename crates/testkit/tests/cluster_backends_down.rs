//! A clustered node whose PostgreSQL, Redis or NATS goes away: it keeps
//! running, requests that need the missing backend get UNAVAILABLE (no ack
//! without durability), `/readyz` names the backend, and service resumes by
//! itself when the server returns. Each test starts its own private
//! postgres, redis-server and nats-server, so stopping them disturbs nobody
//! else.

use std::time::Duration;

use serde_json::Value;
use switchboard_proto::{Packet, code, pb};
use switchboard_testkit::pg::PrivatePostgres;
use switchboard_testkit::raw::{RawClient, login};
use switchboard_testkit::sdk::connect;
use switchboard_testkit::server::{TestServer, token};
use switchboard_testkit::services::{PrivateNats, PrivateRedis, http, unique_prefix};

const T: Duration = Duration::from_secs(30);

async fn clustered_node(redis: &PrivateRedis, nats: &PrivateNats) -> TestServer {
    let prefix = unique_prefix();
    let (redis, nats) = (redis.url(), nats.url());
    TestServer::start_with(move |c| {
        c.node = "n1".into();
        c.presence.backend = "redis".into();
        c.presence.urls = vec![redis];
        c.presence.prefix = prefix.clone();
        c.presence.ttl_secs = 3;
        c.presence.heartbeat_secs = 1;
        c.route.backend = "nats".into();
        c.route.url = nats.clone();
        c.route.prefix = prefix.clone();
        c.bus.backend = "jetstream".into();
        c.bus.url = nats;
        c.bus.prefix = prefix;
    })
    .await
}

/// `/readyz`: the status and the names of the failing backends.
async fn readyz(s: &TestServer) -> (u16, Vec<String>) {
    let (status, body) = http(s.http, "GET", "/readyz", None, None)
        .await
        .expect("readyz answers: the node is alive");
    let v: Value = serde_json::from_str(&body).expect("readyz JSON");
    let failing = v["failing"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    (status, failing)
}

/// Polls `/readyz` (bounded) until it is 200.
async fn wait_ready(s: &TestServer) {
    for _ in 0..300 {
        if readyz(s).await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz not 200 within 30 s: {:?}", readyz(s).await);
}

/// A raw login: the LoginAck, or the error code.
async fn try_login(s: &TestServer, uid: &str, device: &str) -> Result<RawClient, u32> {
    let mut c = RawClient::connect(s.tcp).await;
    match c
        .request(Packet::Login(login(&token("demo", uid), device)))
        .await
    {
        Packet::LoginAck(_) => Ok(c),
        Packet::Error(e) => Err(e.code),
        other => panic!("unexpected answer to login: {other:?}"),
    }
}

fn c2s(id: &str) -> Packet {
    Packet::C2s(pb::C2s {
        client_msg_id: id.into(),
        r#type: "report".into(),
        body: bytes::Bytes::from_static(b"{}"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_refuses_logins_with_unavailable_and_recovers() {
    let mut redis = PrivateRedis::start();
    let nats = PrivateNats::start();
    let server = clustered_node(&redis, &nats).await;
    wait_ready(&server).await;
    let (_alice, mut alice_ev) = connect(&server.tcp_url(), "alice", "a1").await;

    redis.stop();
    assert_eq!(
        try_login(&server, "bob", "b1").await.err(),
        Some(code::UNAVAILABLE),
        "login needs presence"
    );
    let (status, failing) = readyz(&server).await;
    assert_eq!((status, failing), (503, vec!["presence".to_string()]));

    // Redis comes back EMPTY. Logins work again, and alice (logged in before
    // the outage) is reachable again: the node re-registered her by itself.
    redis.restart();
    let mut bob = None;
    for _ in 0..200 {
        match try_login(&server, "bob", "b1").await {
            Ok(c) => {
                bob = Some(c);
                break;
            }
            Err(c) => assert_eq!(c, code::UNAVAILABLE),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut bob = bob.expect("login works again within 20 s of Redis's return");
    wait_ready(&server).await;
    let mut reached = false;
    for i in 0..100 {
        // Until the heartbeat re-registered alice, the message is stored but
        // not pushed; she would get it at her next sync.
        let ack = bob
            .request(switchboard_testkit::raw::c2c(
                &format!("m{i}"),
                "alice",
                "back",
            ))
            .await;
        assert!(matches!(ack, Packet::C2cAck(_)), "{ack:?}");
        if let Ok(Some(switchboard_sdk::Event::Message { .. })) =
            tokio::time::timeout(Duration::from_millis(200), alice_ev.recv()).await
        {
            reached = true;
            break;
        }
    }
    assert!(reached, "pushes reach alice again after Redis returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_means_no_c2s_ack_and_service_resumes() {
    let redis = PrivateRedis::start();
    let mut nats = PrivateNats::start();
    let server = clustered_node(&redis, &nats).await;
    wait_ready(&server).await;
    let (alice, _ae) = connect(&server.tcp_url(), "alice", "a1").await;
    let (bob, _bob_ev) = connect(&server.tcp_url(), "bob", "b1").await;
    alice
        .c2s("report", "{}")
        .await
        .expect("c2s before the outage");

    nats.stop();
    let mut carol = try_login(&server, "carol", "c1")
        .await
        .expect("login needs no NATS");
    match carol.request(c2s("r1")).await {
        Packet::Error(e) => assert_eq!(e.code, code::UNAVAILABLE, "{}", e.message),
        other => panic!("c2s acknowledged while JetStream is down: {other:?}"),
    }
    let (status, failing) = readyz(&server).await;
    assert_eq!(status, 503);
    assert!(
        failing.contains(&"bus".to_string()) && failing.contains(&"route".to_string()),
        "{failing:?}"
    );
    // The SDK keeps retrying an UNAVAILABLE c2s: it is acked only once
    // durable, i.e. after NATS is back.
    let pending = tokio::spawn(async move { alice.c2s_with_id("r2", "report", "{}").await });
    // Chat on this node does not need NATS (the store is embedded, the
    // route to the node itself is local).
    bob.send(switchboard_testkit::sdk::demo("bob"), "text", "self note")
        .await
        .expect("c2c while NATS is down");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pending.is_finished(), "no c2s ack while JetStream is down");

    nats.restart();
    let ack = tokio::time::timeout(T, pending)
        .await
        .expect("c2s acked after NATS returned")
        .expect("task")
        .expect("c2s");
    assert!(!ack.duplicate);
    wait_ready(&server).await;
    let mut acked = false;
    for _ in 0..100 {
        match carol.request(c2s("r1")).await {
            Packet::C2sAck(_) => {
                acked = true;
                break;
            }
            Packet::Error(e) => assert_eq!(e.code, code::UNAVAILABLE),
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(acked, "c2s served again after NATS returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_means_no_c2c_ack_and_nothing_acked_is_lost() {
    let mut pg = tokio::task::spawn_blocking(PrivatePostgres::start)
        .await
        .expect("start a private PostgreSQL");
    let url = pg.url();
    let server = TestServer::start_with(move |c| {
        c.store.backend = "postgres".into();
        c.store.url = url;
        c.store.connect_timeout_ms = 2_000;
        c.store.statement_timeout_ms = 5_000;
        c.store.op_timeout_ms = 5_000;
    })
    .await;
    wait_ready(&server).await;
    let mut alice = try_login(&server, "alice", "a1")
        .await
        .expect("login with PostgreSQL up");
    let ack = alice
        .request(switchboard_testkit::raw::c2c("before", "bob", "one"))
        .await;
    assert!(matches!(ack, Packet::C2cAck(_)), "{ack:?}");
    // Operators see PostgreSQL's group commits on /metrics.
    let (status, metrics) = http(server.http, "GET", "/metrics", None, None)
        .await
        .expect("metrics answer");
    assert_eq!(status, 200);
    for needle in [
        "switchboard_store_group_seconds_count{store=\"postgres\"}",
        "switchboard_store_commit_seconds_count{store=\"postgres\"}",
        "switchboard_store_group_size_commands_count{store=\"postgres\"}",
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics lacks {needle}:\n{metrics}"
        );
    }

    tokio::task::block_in_place(|| pg.stop());
    // No ack without durability: the c2c is refused with UNAVAILABLE (after
    // at most the store's op timeout), and the node stays up.
    match alice
        .request(switchboard_testkit::raw::c2c("during", "bob", "two"))
        .await
    {
        Packet::Error(e) => assert_eq!(e.code, code::UNAVAILABLE, "{}", e.message),
        other => panic!("c2c acknowledged while PostgreSQL is down: {other:?}"),
    }
    let (status, failing) = readyz(&server).await;
    assert_eq!((status, failing), (503, vec!["store".to_string()]));
    let (status, _) = http(server.http, "GET", "/healthz", None, None)
        .await
        .expect("healthz answers");
    assert_eq!(status, 200, "the node is alive");

    tokio::task::block_in_place(|| pg.start_again());
    // The client resends the same client_msg_id until it is acknowledged:
    // the pool reconnects by itself.
    let mut acked = false;
    for _ in 0..150 {
        match alice
            .request(switchboard_testkit::raw::c2c("during", "bob", "two"))
            .await
        {
            Packet::C2cAck(_) => {
                acked = true;
                break;
            }
            Packet::Error(e) => assert_eq!(e.code, code::UNAVAILABLE, "{}", e.message),
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(acked, "c2c served again after PostgreSQL returned");
    wait_ready(&server).await;

    // bob, offline all along, gets both messages once, in order.
    let (_bob, mut bob_ev) = connect(&server.tcp_url(), "bob", "b1").await;
    let got = switchboard_testkit::sdk::messages(&mut bob_ev, 2, T).await;
    assert_eq!(
        switchboard_testkit::sdk::bodies(&got),
        vec!["one".to_string(), "two".to_string()]
    );
    switchboard_testkit::sdk::no_more_messages(&mut bob_ev, Duration::from_millis(500)).await;
}
