//! The NATS route and the JetStream bus against a real nats-server: the
//! shared one (`SWITCHBOARD_TEST_NATS`) with a random subject prefix and
//! stream per test, and a private one the outage test stops and restarts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use switchboard_backends::jetstream_bus::{JetStreamBus, JetStreamConfig};
use switchboard_backends::nats_route::{self, NatsRoute};
use switchboard_backends::redis_presence::{RedisPresence, RedisPresenceConfig};
use switchboard_core::hub::{Closed, OutboundRx, outbound_queue};
use switchboard_core::{
    Bus, BusEvent, ConnHandle, Delivery, DeviceSession, Entry, GroupKey, Hub, Message, Outbound,
    Presence, Route, RouteError, Target, UserKey, now_ms,
};
use switchboard_proto::{Packet, code};
use switchboard_testkit::services::{self, PrivateNats, nats_url, redis_url, unique_prefix};

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

fn entry(to: &UserKey, seq: u64, body: &str, group: &str) -> Entry {
    Entry {
        seq,
        message: Arc::new(Message {
            id: seq,
            from: UserKey::new("demo", "sender"),
            to: to.clone(),
            kind: "text".into(),
            body: Bytes::from(body.to_string()),
            client_msg_id: String::new(),
            server_time_ms: now_ms(),
            group: group.into(),
        }),
    }
}

fn delivery(user: &UserKey, seq: u64, body: &str) -> Delivery {
    Delivery {
        entries: vec![(Target::User(user.clone()), entry(user, seq, body, ""))],
        skip_conn: None,
    }
}

async fn next_push(rx: &mut OutboundRx) -> (u64, Bytes) {
    let (seq, frame, _) = next_push_of(rx).await;
    (seq, frame)
}

async fn next_push_of(rx: &mut OutboundRx) -> (u64, Bytes, Option<String>) {
    match tokio::time::timeout(T, rx.recv()).await {
        Ok(Ok(Outbound::Push { seq, frame, group })) => (seq, frame, group.map(|g| g.to_string())),
        other => panic!("no push within {T:?}: {other:?}"),
    }
}

/// A Redis presence of `node` under `prefix` (the shared Redis).
fn presence(prefix: &str, node: &str) -> Arc<RedisPresence> {
    services::require("Redis", &redis_url());
    Arc::new(
        RedisPresence::connect(RedisPresenceConfig {
            urls: vec![redis_url()],
            node: node.into(),
            prefix: prefix.into(),
            ..RedisPresenceConfig::default()
        })
        .expect("redis presence"),
    )
}

/// Registers a connection on `hub` and records it online in `p` for `node`.
async fn online(
    p: &dyn Presence,
    hub: &Hub,
    node: &str,
    user: &UserKey,
    conn_id: u64,
) -> OutboundRx {
    let rx = register(hub, user, conn_id);
    p.online(&DeviceSession {
        user: user.clone(),
        device_id: format!("dev{conn_id}"),
        platform: "test".into(),
        node: node.into(),
        conn_id,
        since_ms: now_ms(),
    })
    .await
    .expect("online");
    rx
}

/// Counts what arrives on `subject` until `quiet` passes without a message.
async fn count_messages(mut sub: async_nats::Subscriber, quiet: Duration) -> usize {
    let mut n = 0;
    while let Ok(Some(_)) = tokio::time::timeout(quiet, sub.next()).await {
        n += 1;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_delivers_and_kicks_across_nodes() {
    services::require("NATS", &nats_url());
    let prefix = unique_prefix();
    let (hub_a, hub_b) = (Arc::new(Hub::new()), Arc::new(Hub::new()));
    let (pa, pb) = (presence(&prefix, "a"), presence(&prefix, "b"));
    let a = NatsRoute::start(
        client(&nats_url(), "a").await,
        &prefix,
        "a",
        hub_a.clone(),
        pa.clone(),
    )
    .await
    .expect("route a");
    let b = NatsRoute::start(
        client(&nats_url(), "b").await,
        &prefix,
        "b",
        hub_b.clone(),
        pb.clone(),
    )
    .await
    .expect("route b");
    b.ping().await.expect("ping");
    let bob = UserKey::new("demo", "bob");
    let mut rx1 = online(pb.as_ref(), &hub_b, "b", &bob, 1).await;
    let mut rx2 = online(pb.as_ref(), &hub_b, "b", &bob, 2).await;
    let mut local_rx = online(pa.as_ref(), &hub_a, "a", &bob, 9).await;

    // Bob's connections on the other node get the very frame the hub would
    // have built; the one here gets it straight from the hub.
    let d = delivery(&bob, 5, "hello");
    let want = Packet::Push(d.entries[0].1.to_pb()).encode(0);
    let reach = a.deliver(&d).await.expect("deliver");
    assert_eq!(reach[0].devices, 3, "one here, two listed on b");
    assert!(reach[0].error.is_none());
    assert_eq!(next_push(&mut rx1).await, (5, want.clone()));
    assert_eq!(next_push(&mut rx2).await, (5, want.clone()));
    assert_eq!(next_push(&mut local_rx).await, (5, want));

    // skip_conn is honoured on the far side, and only there.
    let mut d = delivery(&bob, 7, "skip");
    d.skip_conn = Some(("b".into(), 1));
    a.deliver(&d).await.expect("deliver");
    assert_eq!(next_push(&mut rx2).await.0, 7);
    assert_eq!(next_push(&mut local_rx).await.0, 7);

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
    for (p, n) in [(&pa, 9), (&pb, 1), (&pb, 2)] {
        p.offline(&bob, &format!("dev{n}"), n)
            .await
            .expect("offline");
    }
    pa.shutdown().await;
    pb.shutdown().await;
}

/// A batch for many users is one presence query and one publish per node
/// holding some of their devices, not one per receiver; the frame of an
/// entry shared by the batch travels once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_sends_one_publish_per_node_per_batch() {
    services::require("NATS", &nats_url());
    let prefix = unique_prefix();
    let hubs = [
        Arc::new(Hub::new()),
        Arc::new(Hub::new()),
        Arc::new(Hub::new()),
    ];
    let names = ["a", "b", "c"];
    let presences: Vec<_> = names.iter().map(|n| presence(&prefix, n)).collect();
    let mut routes = Vec::new();
    for i in 0..3 {
        routes.push(
            NatsRoute::start(
                client(&nats_url(), names[i]).await,
                &prefix,
                names[i],
                hubs[i].clone(),
                presences[i].clone(),
            )
            .await
            .expect("route"),
        );
    }
    // A raw subscriber counts what node b's and node c's subjects carry.
    let watcher = client(&nats_url(), "watcher").await;
    let on_b = watcher
        .subscribe(format!("{prefix}.node.b"))
        .await
        .expect("sub");
    let on_c = watcher
        .subscribe(format!("{prefix}.node.c"))
        .await
        .expect("sub");
    nats_route::ping_for_tests(&watcher).await;

    // Five users on b, one on a (the sender's node), nobody on c.
    let users: Vec<UserKey> = (0..6)
        .map(|i| UserKey::new("demo", format!("u{i}")))
        .collect();
    let mut rxs = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let node = if i == 0 { 0 } else { 1 };
        rxs.push(
            online(
                presences[node].as_ref(),
                &hubs[node],
                names[node],
                u,
                100 + i as u64,
            )
            .await,
        );
    }
    let shared = entry(&UserKey::new("demo", ""), 0, "offer", "");
    let mut d = Delivery {
        entries: users
            .iter()
            .map(|u| (Target::User(u.clone()), shared.clone()))
            .collect(),
        skip_conn: None,
    };
    // And a stored entry for one of b's users, with its own frame.
    d.entries.push((
        Target::User(users[1].clone()),
        entry(&users[1], 3, "stored", ""),
    ));
    let reach = routes[0].deliver(&d).await.expect("deliver");
    assert!(
        reach.iter().all(|r| r.devices == 1 && r.error.is_none()),
        "{reach:?}"
    );
    let want = Packet::Push(shared.to_pb()).encode(0);
    for rx in rxs.iter_mut() {
        let (seq, frame, group) = next_push_of(rx).await;
        assert_eq!((seq, &frame, group), (0, &want, None));
    }
    assert_eq!(next_push(&mut rxs[1]).await.0, 3);
    assert_eq!(
        count_messages(on_b, Duration::from_millis(500)).await,
        1,
        "one publish to node b for the whole batch"
    );
    assert_eq!(count_messages(on_c, Duration::from_millis(100)).await, 0);
    for (i, u) in users.iter().enumerate() {
        let node = if i == 0 { 0 } else { 1 };
        presences[node]
            .offline(u, &format!("dev{}", 100 + i), 100 + i as u64)
            .await
            .expect("offline");
    }
    for p in &presences {
        p.shutdown().await;
    }
}

/// Group entries and membership changes are one broadcast each; every
/// node's hub pushes to its own subscribed connections, the sender's own
/// connection is skipped and its other devices get the push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_broadcasts_group_entries_and_membership_once() {
    services::require("NATS", &nats_url());
    let prefix = unique_prefix();
    let (hub_a, hub_b) = (Arc::new(Hub::new()), Arc::new(Hub::new()));
    let (pa, pb) = (presence(&prefix, "a"), presence(&prefix, "b"));
    let a = NatsRoute::start(
        client(&nats_url(), "a").await,
        &prefix,
        "a",
        hub_a.clone(),
        pa.clone(),
    )
    .await
    .expect("route a");
    let _b = NatsRoute::start(
        client(&nats_url(), "b").await,
        &prefix,
        "b",
        hub_b.clone(),
        pb.clone(),
    )
    .await
    .expect("route b");
    let watcher = client(&nats_url(), "watcher").await;
    let broadcasts = watcher
        .subscribe(format!("{prefix}.groups"))
        .await
        .expect("sub");
    nats_route::ping_for_tests(&watcher).await;

    let group = GroupKey::new("demo", "order-42");
    let (alice, bob, carol) = (
        UserKey::new("demo", "alice"),
        UserKey::new("demo", "bob"),
        UserKey::new("demo", "carol"),
    );
    // alice sends from connection 1 on a and has a second device on b.
    let mut alice_a = register(&hub_a, &alice, 1);
    let mut alice_b = register(&hub_b, &alice, 2);
    let mut bob_b = register(&hub_b, &bob, 3);
    let mut carol_a = register(&hub_a, &carol, 4);
    hub_a.subscribe_groups(1, &alice, std::slice::from_ref(&group.gid));
    hub_b.subscribe_groups(2, &alice, std::slice::from_ref(&group.gid));
    // bob joins on every node through one broadcast; carol is no member.
    a.membership(&group, &["bob".to_string()], true)
        .await
        .expect("membership");
    nats_route::ping_for_tests(&watcher).await;
    let mut waited = 0;
    while hub_b.group_connections(&group) < 2 && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert_eq!(hub_b.group_connections(&group), 2, "bob joined on b");

    let to = UserKey::new("demo", "");
    let d = Delivery {
        entries: vec![
            (
                Target::Group(group.clone()),
                entry(&to, 1, "one", &group.gid),
            ),
            (
                Target::Group(group.clone()),
                entry(&to, 2, "two", &group.gid),
            ),
        ],
        skip_conn: Some(("a".into(), 1)),
    };
    let reach = a.deliver(&d).await.expect("deliver");
    assert!(
        reach.iter().all(|r| r.devices == 0 && r.error.is_none()),
        "none here but the sender"
    );
    for rx in [&mut alice_b, &mut bob_b] {
        for seq in [1, 2] {
            let (s, _, g) = next_push_of(rx).await;
            assert_eq!((s, g.as_deref()), (seq, Some("order-42")));
        }
    }
    assert!(
        alice_a.try_recv().is_err(),
        "the sender's connection gets its ack, not a push"
    );
    assert!(carol_a.try_recv().is_err(), "not a member");
    assert_eq!(
        count_messages(broadcasts, Duration::from_millis(500)).await,
        2,
        "one membership broadcast, one for the batch of group entries"
    );
    // bob leaves everywhere: b's hub forgets his connection.
    a.membership(&group, &["bob".to_string()], false)
        .await
        .expect("membership");
    let mut waited = 0;
    while hub_b.group_connections(&group) > 1 && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert_eq!(hub_b.group_connections(&group), 1, "bob left on b");
    pa.shutdown().await;
    pb.shutdown().await;
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
    let (pa, pb) = (presence(&prefix, "a"), presence(&prefix, "b"));
    let a = NatsRoute::start(
        client(&server.url(), "a").await,
        &prefix,
        "a",
        hub_a,
        pa.clone(),
    )
    .await
    .expect("route a");
    let _b = NatsRoute::start(
        client(&server.url(), "b").await,
        &prefix,
        "b",
        hub_b.clone(),
        pb.clone(),
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
    let mut rx = online(pb.as_ref(), &hub_b, "b", &bob, 1).await;
    a.deliver(&delivery(&bob, 1, "before"))
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
    match a.deliver(&delivery(&bob, 2, "during")).await {
        Ok(reach) => match &reach[0].error {
            Some(RouteError::Unavailable(m)) => assert!(m.contains("NATS"), "{m}"),
            other => panic!("deliver while NATS is down: {other:?}"),
        },
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
            let _ = a.deliver(&delivery(&bob, 10 + i, "after")).await;
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
