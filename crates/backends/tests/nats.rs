//! The NATS route and the JetStream bus against a real nats-server: the
//! shared one (`SWITCHBOARD_TEST_NATS`) with a random subject prefix and
//! stream per test, and a private one the outage test stops and restarts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use switchboard_backends::jetstream_bus::{JetStreamBus, JetStreamConfig};
use switchboard_backends::nats_route::{self, NatsRoute};
use switchboard_core::hub::{Closed, OutboundRx, outbound_queue};
use switchboard_core::{
    Bus, BusEvent, ConnHandle, Delivery, Entry, Hub, Message, Outbound, Route, RouteError, UserKey,
    now_ms,
};
use switchboard_proto::{Packet, code};
use switchboard_testkit::services::{self, PrivateNats, nats_url, unique_prefix};

const T: Duration = Duration::from_secs(10);

async fn client(url: &str, node: &str) -> async_nats::Client {
    nats_route::connect(url, node).await.expect("nats client")
}

/// Registers a connection of `user` on `hub`; returns its outbound queue
/// (which also carries a kick).
fn register(hub: &Hub, user: &UserKey, conn_id: u64) -> OutboundRx {
    let (tx, rx) = outbound_queue(16);
    hub.register(Arc::new(ConnHandle::new(
        conn_id,
        user.clone(),
        format!("dev{conn_id}"),
        "test".into(),
        tx,
    )));
    rx
}

fn delivery(user: &UserKey, seq: u64, body: &str) -> Delivery {
    Delivery {
        user: user.clone(),
        entry: Entry {
            seq,
            message: Arc::new(Message {
                id: seq,
                from: UserKey::new("demo", "sender"),
                to: user.clone(),
                kind: "text".into(),
                body: Bytes::from(body.to_string()),
                client_msg_id: String::new(),
                server_time_ms: now_ms(),
                group: String::new(),
            }),
        },
        skip_conn: None,
    }
}

async fn next_push(rx: &mut OutboundRx) -> (u64, Bytes) {
    match tokio::time::timeout(T, rx.recv()).await {
        Ok(Ok(Outbound::Push { seq, frame })) => (seq, frame),
        other => panic!("no push within {T:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_delivers_and_kicks_across_nodes() {
    services::require("NATS", &nats_url());
    let prefix = unique_prefix();
    let (hub_a, hub_b) = (Arc::new(Hub::new()), Arc::new(Hub::new()));
    let a = NatsRoute::start(client(&nats_url(), "a").await, &prefix, "a", hub_a.clone())
        .await
        .expect("route a");
    let b = NatsRoute::start(client(&nats_url(), "b").await, &prefix, "b", hub_b.clone())
        .await
        .expect("route b");
    b.ping().await.expect("ping");
    let bob = UserKey::new("demo", "bob");
    let mut rx1 = register(&hub_b, &bob, 1);
    let mut rx2 = register(&hub_b, &bob, 2);
    let mut local_rx = register(&hub_a, &bob, 9);

    // To another node: published; both of bob's connections there get the
    // very frame the hub would have built.
    let d = delivery(&bob, 5, "hello");
    let want = Packet::Push(d.entry.to_pb()).encode(0);
    assert_eq!(
        a.deliver("b", d).await.expect("deliver"),
        0,
        "remote: count unknown"
    );
    assert_eq!(next_push(&mut rx1).await, (5, want.clone()));
    assert_eq!(next_push(&mut rx2).await, (5, want));

    // To itself: straight to the hub.
    assert_eq!(
        a.deliver("a", delivery(&bob, 6, "local"))
            .await
            .expect("deliver"),
        1
    );
    assert_eq!(next_push(&mut local_rx).await.0, 6);

    // skip_conn is honoured on the far side.
    let mut d = delivery(&bob, 7, "skip");
    d.skip_conn = Some(1);
    a.deliver("b", d).await.expect("deliver");
    assert_eq!(next_push(&mut rx2).await.0, 7);

    // A kick reaches the connection on the other node.
    assert!(
        a.kick("b", &bob, 2, code::KICK_REPLACED)
            .await
            .expect("kick")
    );
    match tokio::time::timeout(T, rx2.recv()).await.expect("kicked") {
        Err(Closed::Kicked(c)) => assert_eq!(c, code::KICK_REPLACED),
        other => panic!("expected a kick, got {other:?}"),
    }
    assert!(rx1.try_recv().is_err(), "connection 1 was skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_bus_is_durable_and_deduplicates() {
    services::require("NATS", &nats_url());
    let prefix = unique_prefix();
    let stream = format!("SB_TEST_{}", prefix.to_uppercase());
    let client = client(&nats_url(), "bus").await;
    let bus = JetStreamBus::new(
        client.clone(),
        JetStreamConfig {
            stream: stream.clone(),
            prefix: prefix.clone(),
            ..JetStreamConfig::default()
        },
    )
    .expect("bus");
    bus.ping().await.expect("ping creates the stream");
    let alice = UserKey::new("shop", "alice\r\nx");
    let event = |id: u64, body: &str| BusEvent {
        id,
        topic: "c2s".into(),
        user: alice.clone(),
        kind: "order.placed".into(),
        body: Bytes::from(body.to_string()),
        time_ms: now_ms(),
    };
    let first = bus
        .publish(event(1001, "one"), "m1")
        .await
        .expect("publish");
    assert_eq!((first.id, first.duplicate), (1001, false));
    let again = bus
        .publish(event(1002, "one"), "m1")
        .await
        .expect("publish");
    assert_eq!(
        (again.id, again.duplicate),
        (1001, true),
        "the first event's id"
    );
    let other = bus
        .publish(event(1003, "two"), "m2")
        .await
        .expect("publish");
    assert!(!other.duplicate);
    let online = BusEvent {
        topic: "user.online".into(),
        kind: String::new(),
        ..event(1004, "{}")
    };
    bus.publish(online, "")
        .await
        .expect("publish without dedupe id");

    // A business server's durable consumer reads them, in order, once.
    let js = async_nats::jetstream::new(client);
    let s = js.get_stream(&stream).await.expect("stream");
    let consumer: async_nats::jetstream::consumer::PullConsumer = s
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("shop-backend".into()),
            filter_subject: format!("{prefix}.events.shop.>"),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut msgs = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    let mut got = Vec::new();
    while let Some(m) = msgs.next().await {
        let m = m.expect("message");
        let h = m.headers.clone().expect("headers");
        got.push((
            m.subject.to_string(),
            String::from_utf8_lossy(&m.payload).into_owned(),
            h.get("Sb-Event-Id").map(|v| v.to_string()),
            h.get("Sb-Uid").map(|v| v.to_string()),
        ));
        m.ack().await.expect("ack");
    }
    let subject = |t: &str| format!("{prefix}.events.shop.{t}");
    assert_eq!(
        got,
        vec![
            (
                subject("c2s.order_placed"),
                "one".into(),
                Some("1001".into()),
                Some("alice%0D%0Ax".into())
            ),
            (
                subject("c2s.order_placed"),
                "two".into(),
                Some("1003".into()),
                Some("alice%0D%0Ax".into())
            ),
            (
                subject("user_online._"),
                "{}".into(),
                Some("1004".into()),
                Some("alice%0D%0Ax".into())
            ),
        ]
    );
    bus.delete_stream().await.expect("clean up the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_and_bus_fail_clearly_while_nats_is_down_and_resume() {
    let mut server = PrivateNats::start();
    let prefix = unique_prefix();
    let (hub_a, hub_b) = (Arc::new(Hub::new()), Arc::new(Hub::new()));
    let a = NatsRoute::start(client(&server.url(), "a").await, &prefix, "a", hub_a)
        .await
        .expect("route a");
    let _b = NatsRoute::start(
        client(&server.url(), "b").await,
        &prefix,
        "b",
        hub_b.clone(),
    )
    .await
    .expect("route b");
    let bus = JetStreamBus::new(
        client(&server.url(), "bus").await,
        JetStreamConfig {
            prefix: prefix.clone(),
            ..JetStreamConfig::default()
        },
    )
    .expect("bus");
    let bob = UserKey::new("demo", "bob");
    let mut rx = register(&hub_b, &bob, 1);
    a.deliver("b", delivery(&bob, 1, "before"))
        .await
        .expect("deliver");
    assert_eq!(next_push(&mut rx).await.0, 1);
    let ev = |id| BusEvent {
        id,
        topic: "c2s".into(),
        user: bob.clone(),
        kind: "t".into(),
        body: Bytes::from_static(b"x"),
        time_ms: now_ms(),
    };
    bus.publish(ev(1), "a").await.expect("publish");

    server.stop();
    // Bounded: the client notices the closed socket within moments.
    let mut down = false;
    for _ in 0..100 {
        if a.ping().await.is_err() {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(down, "the route's ping reports NATS down");
    match a.deliver("b", delivery(&bob, 2, "during")).await {
        Err(RouteError::Unavailable(m)) => assert!(m.contains("NATS"), "{m}"),
        other => panic!("deliver while NATS is down: {other:?}"),
    }
    let e = bus
        .publish(ev(2), "b")
        .await
        .expect_err("no ack without durability");
    assert!(e.to_string().contains("NATS"), "{e}");

    server.restart();
    // Service resumes by itself: reconnect, re-subscribe, stream still there.
    let mut resumed = false;
    for i in 0..150u64 {
        if a.ping().await.is_ok() {
            let _ = a.deliver("b", delivery(&bob, 10 + i, "after")).await;
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                resumed = true;
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(resumed, "deliveries flow again after NATS returned");
    let r = bus
        .publish(ev(3), "a")
        .await
        .expect("publish after restart");
    assert!(
        r.duplicate,
        "the stream (file storage) kept its de-dup state"
    );
}
