//! The delivery contract end to end, with real SDK clients over TCP and
//! WebSocket against a real node: online and offline delivery, every device,
//! exactly once, in order.

use std::collections::HashMap;
use std::time::Duration;

use switchboard_sdk::{Client, SdkError, code};
use switchboard_testkit::sdk::{bodies, connect, demo, messages, no_more_messages};
use switchboard_testkit::server::{TestServer, token};

const T: Duration = Duration::from_secs(20);

async fn online_delivery(url_of: fn(&TestServer) -> String) {
    let s = TestServer::start().await;
    let url = url_of(&s);
    let (alice, _alice_events) = connect(&url, "alice", "a1").await;
    let (_bob, mut bob_events) = connect(&url, "bob", "b1").await;
    let receipt = alice.send(demo("bob"), "text", "hello bob").await.unwrap();
    assert_eq!(receipt.seq, 1);
    let got = messages(&mut bob_events, 1, T).await;
    assert_eq!(bodies(&got), ["hello bob"]);
    assert_eq!(got[0].0, 1);
    assert_eq!(got[0].1.msg_id, receipt.msg_id);
    assert_eq!(got[0].1.from.as_ref().unwrap().uid, "alice");
    no_more_messages(&mut bob_events, Duration::from_millis(300)).await;
    s.stop().await;
}

#[tokio::test]
async fn online_delivery_over_tcp() {
    online_delivery(TestServer::tcp_url).await;
}

#[tokio::test]
async fn online_delivery_over_websocket() {
    online_delivery(TestServer::ws_url).await;
}

#[tokio::test]
async fn offline_messages_arrive_once_in_order_after_reconnect() {
    let s = TestServer::start().await;
    let (alice, _ae) = connect(&s.tcp_url(), "alice", "a1").await;
    let (bob, mut bob_events) = connect(&s.ws_url(), "bob", "b1").await;
    alice.send(demo("bob"), "text", "before").await.unwrap();
    assert_eq!(bodies(&messages(&mut bob_events, 1, T).await), ["before"]);
    bob.close().await;
    for body in ["one", "two", "three"] {
        alice.send(demo("bob"), "text", body).await.unwrap();
    }
    // Bob's device comes back: its server-side cursor says where it was.
    let (_bob, mut bob_events) = connect(&s.tcp_url(), "bob", "b1").await;
    let got = messages(&mut bob_events, 3, T).await;
    assert_eq!(bodies(&got), ["one", "two", "three"]);
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [2, 3, 4]);
    no_more_messages(&mut bob_events, Duration::from_millis(300)).await;
    s.stop().await;
}

#[tokio::test]
async fn every_device_of_the_receiver_and_the_senders_other_devices_get_it() {
    let s = TestServer::start().await;
    let (alice1, mut a1_events) = connect(&s.tcp_url(), "alice", "a1").await;
    let (_alice2, mut a2_events) = connect(&s.ws_url(), "alice", "a2").await;
    let mut bobs = Vec::new();
    for (i, url) in [s.tcp_url(), s.ws_url(), s.tcp_url()].iter().enumerate() {
        bobs.push(connect(url, "bob", &format!("b{i}")).await);
    }
    alice1
        .send(demo("bob"), "text", "to all of bob")
        .await
        .unwrap();
    for (_, events) in bobs.iter_mut() {
        assert_eq!(bodies(&messages(events, 1, T).await), ["to all of bob"]);
    }
    // Alice's other device shows what she sent; the sending device does not get it back.
    let mine = messages(&mut a2_events, 1, T).await;
    assert_eq!(mine[0].1.from.as_ref().unwrap().uid, "alice");
    no_more_messages(&mut a1_events, Duration::from_millis(300)).await;

    // A device that logs in later sees the whole conversation.
    let (_bob_late, mut late) = connect(&s.tcp_url(), "bob", "late").await;
    assert_eq!(bodies(&messages(&mut late, 1, T).await), ["to all of bob"]);
    s.stop().await;
}

#[tokio::test]
async fn order_holds_under_concurrent_senders() {
    let s = TestServer::start_with(|c| {
        c.gate.rate_per_sec = 10_000;
        c.gate.rate_burst = 10_000;
    })
    .await;
    let (_bob, mut bob_events) = connect(&s.tcp_url(), "bob", "b1").await;
    const SENDERS: usize = 4;
    const EACH: usize = 50;
    let mut tasks = Vec::new();
    for i in 0..SENDERS {
        let url = if i % 2 == 0 { s.tcp_url() } else { s.ws_url() };
        tasks.push(tokio::spawn(async move {
            let (c, _e) = connect(&url, &format!("sender{i}"), "d").await;
            for n in 0..EACH {
                c.send(demo("bob"), "text", format!("{i}:{n}"))
                    .await
                    .unwrap();
            }
            c.close().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let got = messages(&mut bob_events, SENDERS * EACH, T).await;
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        seqs,
        (1..=(SENDERS * EACH) as u64).collect::<Vec<_>>(),
        "gap-free, in order"
    );
    let mut next: HashMap<String, usize> = HashMap::new();
    for b in bodies(&got) {
        let (sender, n) = b.split_once(':').unwrap();
        let want = next.entry(sender.to_string()).or_default();
        assert_eq!(
            n.parse::<usize>().unwrap(),
            *want,
            "sender {sender} out of order"
        );
        *want += 1;
    }
    no_more_messages(&mut bob_events, Duration::from_millis(300)).await;
    s.stop().await;
}

#[tokio::test]
async fn a_resent_message_id_is_stored_and_delivered_once() {
    let s = TestServer::start().await;
    let (alice, _ae) = connect(&s.tcp_url(), "alice", "a1").await;
    let (_bob, mut bob_events) = connect(&s.tcp_url(), "bob", "b1").await;
    let first = alice
        .send_with_id("order-42", demo("bob"), "text", "only once")
        .await
        .unwrap();
    let second = alice
        .send_with_id("order-42", demo("bob"), "text", "only once")
        .await
        .unwrap();
    assert!(!first.duplicate && second.duplicate);
    assert_eq!((first.msg_id, first.seq), (second.msg_id, second.seq));
    assert_eq!(
        bodies(&messages(&mut bob_events, 1, T).await),
        ["only once"]
    );
    no_more_messages(&mut bob_events, Duration::from_millis(500)).await;
    s.stop().await;
}

#[tokio::test]
async fn c2s_is_acknowledged_and_deduplicated() {
    let s = TestServer::start().await;
    let (courier, _e) = connect(&s.tcp_url(), "courier", "c1").await;
    let a = courier
        .c2s_with_id("gps-1", "position", r#"{"lat":1,"lng":2}"#)
        .await
        .unwrap();
    let b = courier
        .c2s_with_id("gps-1", "position", r#"{"lat":1,"lng":2}"#)
        .await
        .unwrap();
    assert!(!a.duplicate && b.duplicate);
    assert_eq!(a.msg_id, b.msg_id);
    s.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_refused_with_their_code() {
    let s = TestServer::start().await;
    let cfg = switchboard_testkit::sdk::config(&s.tcp_url(), "not-a-token", "d");
    match Client::connect(cfg).await {
        Err(SdkError::Server { code: c, .. }) => assert_eq!(c, code::TOKEN_INVALID),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let cfg = switchboard_testkit::sdk::config(&s.ws_url(), &token("other", "eve"), "d");
    assert!(
        Client::connect(cfg).await.is_ok(),
        "a valid token of another app logs in"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_client_reconnects_after_the_server_restarts_and_gets_what_it_missed() {
    let s = TestServer::start().await;
    let (_bob, mut bob_events) = connect(&s.tcp_url(), "bob", "b1").await;
    let (alice, _ae) = connect(&s.ws_url(), "alice", "a1").await;
    alice.send(demo("bob"), "text", "first").await.unwrap();
    assert_eq!(bodies(&messages(&mut bob_events, 1, T).await), ["first"]);

    let s = s.restart().await;
    // Alice's client reconnects by itself and this send goes through.
    alice.send(demo("bob"), "text", "second").await.unwrap();
    let got = messages(&mut bob_events, 1, T).await;
    assert_eq!(bodies(&got), ["second"]);
    assert_eq!(got[0].0, 2);
    no_more_messages(&mut bob_events, Duration::from_millis(300)).await;
    s.stop().await;
}

/// The node on the fjall store keeps the contract: offline messages wait on
/// the receiver's timeline, survive a restart, arrive once in order, and
/// the timeline goes on from where it was.
#[tokio::test]
async fn the_fjall_store_keeps_offline_messages_across_a_restart() {
    let s = TestServer::start_with(|c| c.store.backend = "fjall".into()).await;
    let data = s.config.data_dir.join("fjall");
    let (alice, _ae) = connect(&s.tcp_url(), "alice", "a1").await;
    for body in ["one", "two"] {
        alice.send(demo("bob"), "text", body).await.unwrap();
    }
    let s = s.restart().await;
    assert!(data.is_dir(), "the store is not in {}", data.display());
    let (_bob, mut bob_events) = connect(&s.ws_url(), "bob", "b1").await;
    let got = messages(&mut bob_events, 2, T).await;
    assert_eq!(bodies(&got), ["one", "two"]);
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [1, 2]);
    // Alice's client reconnects by itself; the timeline goes on at 3.
    let receipt = alice.send(demo("bob"), "text", "three").await.unwrap();
    assert_eq!(receipt.seq, 3);
    let got = messages(&mut bob_events, 1, T).await;
    assert_eq!((got[0].0, bodies(&got)), (3, vec!["three".to_owned()]));
    no_more_messages(&mut bob_events, Duration::from_millis(300)).await;
    s.stop().await;
}

/// A data dir that holds a SQLite store is refused by the default (fjall)
/// store with the setting that keeps serving it, not silently replaced by
/// an empty store; with that setting the messages are all there.
#[tokio::test]
async fn a_sqlite_data_dir_is_not_silently_replaced_by_an_empty_store() {
    let s = TestServer::start_with(|c| c.store.backend = "sqlite".into()).await;
    let (alice, _ae) = connect(&s.tcp_url(), "alice", "a1").await;
    alice.send(demo("bob"), "text", "kept").await.unwrap();
    alice.close().await;
    let mut config = s.config.clone();
    let s = s.restart().await;
    config.store.backend = switchboard::Config::default().store.backend;
    config.listen.tcp = "127.0.0.1:0".parse().unwrap();
    config.listen.http = "127.0.0.1:0".parse().unwrap();
    let refused = switchboard::Server::start(config).await;
    let err = format!("{:#}", refused.err().expect("the default store refuses"));
    assert!(err.contains("store.backend = \"sqlite\""), "{err}");

    // The SQLite node (restarted above) still serves what it stored.
    let (_bob, mut bob_events) = connect(&s.tcp_url(), "bob", "b1").await;
    assert_eq!(bodies(&messages(&mut bob_events, 1, T).await), ["kept"]);
    s.stop().await;
}
