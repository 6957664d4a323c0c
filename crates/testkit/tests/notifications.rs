//! Offline notifications (issue 13 item 5) against a real embedded node,
//! with real SDK clients and a webhook receiver standing in for the
//! business's push service: a burst to an offline user is one
//! notification with the badge; a receiver online, or back online within
//! the window, gets none; a group notifies its offline members only; a
//! preview only where the app allows it; s2c pushes notify too; a graceful
//! stop publishes the windows it had open.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_core::auth::NotificationConfig;
use switchboard_core::hooks::WebhookConfig;
use switchboard_sdk::{Client, User};
use switchboard_testkit::http::{Http, Received, received, webhook_receiver};
use switchboard_testkit::sdk::{config, connect, demo, messages};
use switchboard_testkit::server::{TestServer, token};

const T: Duration = Duration::from_secs(20);
/// The window of the tests' apps: long enough that a burst lands in one.
const WINDOW_MS: u64 = 1500;

/// A node whose `demo` app notifies with previews and whose `shop` app
/// notifies without; both send `notification` events to `hook`, and
/// notify for groups of at most 3 members.
async fn start(hook: &str) -> TestServer {
    let hook = hook.to_string();
    TestServer::start_with(move |c| {
        for (i, preview) in [(0, true), (1, false)] {
            c.apps[i].notifications = Some(NotificationConfig {
                window_ms: Some(WINDOW_MS),
                preview,
                group_max_members: Some(3),
            });
            c.apps[i].webhooks = vec![WebhookConfig {
                url: hook.clone(),
                topics: vec!["notification".into()],
                types: vec![],
                secret: None,
            }];
        }
        c.apps[0].api_key = Some("demo-api-key".into());
        c.webhook.poll_ms = 20;
    })
    .await
}

/// The notifications received so far for `app`/`uid`.
fn notifications(got: &Received, app: &str, uid: &str) -> Vec<Value> {
    received(got)
        .iter()
        .filter(|e| e["topic"] == "notification" && e["app"] == app && e["uid"] == uid)
        .map(|e| e["data"].clone())
        .collect()
}

/// Waits for the first notification of `app`/`uid`.
async fn first_notification(got: &Received, app: &str, uid: &str) -> Value {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if let Some(n) = notifications(got, app, uid).into_iter().next() {
            return n;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no notification for {app}/{uid} within {T:?}; got {:?}",
            received(got)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until presence has no device of demo user `uid`.
async fn wait_offline(s: &TestServer, uid: &str) {
    let http = Http::new(s);
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (status, v) = http
            .post("/v1/apps/demo/presence", json!({ "users": [uid] }))
            .await;
        assert_eq!(status, 200, "{v}");
        if v["users"][0]["online"] == false {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{uid} still online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `n` numbered texts to `to` at once (pipelined), waiting for every ack.
async fn burst(from: &Client, to: &User, n: usize) {
    let sends = (0..n).map(|i| from.send(to.clone(), "text", format!("msg {i}")));
    for r in futures::future::join_all(sends).await {
        r.expect("ack");
    }
}

#[tokio::test]
async fn a_burst_to_an_offline_user_is_one_notification_with_the_badge() {
    let (hook, got) = webhook_receiver().await;
    let s = start(&hook).await;
    let (alice, _alice_ev) = connect(&s.tcp_url(), "alice", "a1").await;
    let (carol, mut carol_ev) = connect(&s.tcp_url(), "carol", "c1").await;

    // Bob has never logged in: 20 messages, then 2 from carol, one window.
    burst(&alice, &demo("bob"), 20).await;
    burst(&carol, &demo("bob"), 2).await;
    // Carol is online: she gets the messages, and no notification.
    burst(&alice, &demo("carol"), 3).await;
    messages(&mut carol_ev, 3, T).await;

    let n = first_notification(&got, "demo", "bob").await;
    assert_eq!(n["to"], json!({"app": "demo", "uid": "bob"}));
    assert_eq!(n["messages"], 22, "{n}");
    assert_eq!(n["conversations"], 2, "{n}");
    assert_eq!(n["badge"], 22, "{n}");
    assert_eq!(n["from"], json!({"app": "demo", "uid": "carol"}));
    assert_eq!(n["peer"], json!({"app": "demo", "uid": "carol"}));
    assert_eq!(n["type"], "text");
    assert_eq!(n["preview"], "msg 1", "demo allows previews: {n}");
    assert!(
        n["msg_id"]
            .as_str()
            .is_some_and(|id| id.parse::<u64>().is_ok())
    );
    assert!(n["first_time_ms"].as_i64() <= n["server_time_ms"].as_i64());

    // Bob reads carol's two; the next notification's badge is what is left.
    let (bob, _bob_ev) = connect(&s.tcp_url(), "bob", "b1").await;
    let list = bob.conversations("", 10).await.expect("list");
    let with_carol = list
        .conversations
        .iter()
        .find(|c| c.peer.as_ref().is_some_and(|p| p.uid == "carol"))
        .expect("carol's conversation");
    let last = with_carol.last.as_ref().expect("a last entry").seq;
    bob.mark_read(demo("carol"), last).await.expect("read");
    bob.logout().await.expect("logout");
    wait_offline(&s, "bob").await;
    burst(&carol, &demo("bob"), 1).await;
    let deadline = tokio::time::Instant::now() + T;
    let second = loop {
        if let Some(n) = notifications(&got, "demo", "bob").get(1) {
            break n.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no second notification"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(second["messages"], 1, "{second}");
    assert_eq!(
        second["badge"], 21,
        "20 from alice and carol's new one: {second}"
    );

    // Carol was online throughout; nobody else was written to.
    tokio::time::sleep(Duration::from_millis(WINDOW_MS + 500)).await;
    assert!(notifications(&got, "demo", "carol").is_empty());
    assert_eq!(notifications(&got, "demo", "bob").len(), 2);
    alice.close().await;
    carol.close().await;
}

#[tokio::test]
async fn back_online_within_the_window_means_no_notification() {
    let (hook, got) = webhook_receiver().await;
    let s = start(&hook).await;
    let (alice, _alice_ev) = connect(&s.tcp_url(), "alice", "a1").await;

    burst(&alice, &demo("erin"), 2).await;
    // Erin opens the app before the window ends: her device syncs them.
    let (_erin, mut erin_ev) = connect(&s.tcp_url(), "erin", "e1").await;
    messages(&mut erin_ev, 2, T).await;
    // Frank stays away: his notification shows the window has ended.
    burst(&alice, &demo("frank"), 1).await;
    first_notification(&got, "demo", "frank").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        notifications(&got, "demo", "erin").is_empty(),
        "erin came back within the window: {:?}",
        notifications(&got, "demo", "erin")
    );
    alice.close().await;
}

#[tokio::test]
async fn a_group_post_notifies_its_offline_members_and_previews_follow_the_app() {
    let (hook, got) = webhook_receiver().await;
    let s = start(&hook).await;
    let http = Http::new(&s);
    let g = "/v1/apps/demo/groups/order-7";
    assert_eq!(http.put(g, json!({"name": "Order 7"})).await.0, 201);
    let add = json!({"members": [{"uid": "alice"}, {"uid": "bob"}, {"uid": "carol"}]});
    let added = http.post(&format!("{g}/members"), add).await;
    assert_eq!(added.0, 200, "{}", added.1);

    // A group over the app's group_max_members (3) notifies nobody: dave,
    // offline and only in it, hears nothing.
    let crowd = "/v1/apps/demo/groups/crowd";
    assert_eq!(http.put(crowd, json!({"name": "Crowd"})).await.0, 201);
    let four =
        json!({"members": [{"uid": "alice"}, {"uid": "bob"}, {"uid": "carol"}, {"uid": "dave"}]});
    let added = http.post(&format!("{crowd}/members"), four).await;
    assert_eq!(added.0, 200, "{}", added.1);

    let (alice, _alice_ev) = connect(&s.tcp_url(), "alice", "a1").await;
    let (_carol, mut carol_ev) = connect(&s.tcp_url(), "carol", "c1").await;
    alice
        .send_group("crowd", "text", "everyone, hello")
        .await
        .expect("ack");
    switchboard_testkit::sdk::group_messages(&mut carol_ev, "crowd", 1, T).await;
    alice
        .send_group("order-7", "text", "the courier is here")
        .await
        .expect("ack");
    switchboard_testkit::sdk::group_messages(&mut carol_ev, "order-7", 1, T).await;

    let n = first_notification(&got, "demo", "bob").await;
    assert_eq!(n["group"], "order-7", "{n}");
    assert!(n.get("peer").is_none(), "{n}");
    assert_eq!(n["from"]["uid"], "alice");
    // The crowd's post counts as unread, but made no notification.
    assert_eq!(n["messages"], 1, "{n}");
    assert_eq!(n["badge"], 2, "{n}");
    assert_eq!(n["preview"], "the courier is here");

    // A shop user (no previews in that app), offline, written to across apps.
    alice
        .send(
            User {
                app: "shop".into(),
                uid: "sam".into(),
            },
            "text",
            "secret",
        )
        .await
        .expect("ack");
    // The business pushes to an offline courier (s2c): notified too.
    let push = json!({"to": ["courier-9"], "type": "order.new", "body": {"order": 9}});
    let pushed = Http::new(&s).post("/v1/apps/demo/push", push).await;
    assert_eq!(pushed.0, 200, "{}", pushed.1);

    let sam = first_notification(&got, "shop", "sam").await;
    assert!(
        sam.get("preview").is_none(),
        "shop allows no preview: {sam}"
    );
    assert_eq!(sam["peer"], json!({"app": "demo", "uid": "alice"}));
    let courier = first_notification(&got, "demo", "courier-9").await;
    assert_eq!(courier["from"], json!({"app": "demo", "uid": ""}));
    assert_eq!(courier["type"], "order.new");

    tokio::time::sleep(Duration::from_millis(300)).await;
    for uid in ["alice", "carol"] {
        assert!(
            notifications(&got, "demo", uid).is_empty(),
            "{uid} was online or the sender"
        );
    }
    assert!(
        notifications(&got, "demo", "dave").is_empty(),
        "crowd is over group_max_members"
    );
    alice.close().await;
}

#[tokio::test]
async fn a_graceful_stop_publishes_the_open_windows() {
    let (hook, got) = webhook_receiver().await;
    let mut s = start(&hook).await;
    // A long window, so only the stop can end it within the test.
    s.config.apps[0].notifications = Some(NotificationConfig {
        window_ms: Some(600_000),
        ..Default::default()
    });
    let s = s.restart().await;
    let (alice, _ev) = Client::connect(config(&s.tcp_url(), &token("demo", "alice"), "a1"))
        .await
        .expect("connect");
    burst(&alice, &demo("bob"), 3).await;
    alice.close().await;
    // Stopped: the window is published to the outbox, and delivered by the
    // node that starts on the same data.
    let s = s.restart().await;
    let n = first_notification(&got, "demo", "bob").await;
    assert_eq!(n["messages"], 3, "{n}");
    assert!(n.get("preview").is_none(), "{n}");
    s.stop().await;
}
