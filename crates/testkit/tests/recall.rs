//! Recall and edit against a real node with real SDK clients: every device
//! of both parties learns it (online by push, offline through sync, in
//! timeline order), the body is gone from the server (sync, history, the
//! conversation list), a group message too, the business recalls over
//! HTTP, each refusal has its own code, and the business hears of recalls,
//! edits and reads on the bus.

use std::time::Duration;

use serde_json::{Value, json};
use switchboard_core::hooks::WebhookConfig;
use switchboard_sdk::{Event, Events, SdkError, code};
use switchboard_testkit::http::{Http, received, webhook_receiver};
use switchboard_testkit::sdk::{connect, demo, messages};
use switchboard_testkit::server::{TestServer, token};

const T: Duration = Duration::from_secs(20);

fn server_code(e: SdkError) -> u32 {
    match e {
        SdkError::Server { code, .. } => code,
        other => panic!("not a server error: {other:?}"),
    }
}

/// Waits for an amend notice (skipping other events): the amended message.
async fn notice(events: &mut Events) -> (u64, switchboard_sdk::Message) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(
                Event::Message { seq, message } | Event::GroupMessage { seq, message, .. },
            )) if message.amended.is_some() => {
                assert!(message.r#type.is_empty() && message.body.is_empty());
                return (seq, *message.amended.unwrap());
            }
            Ok(Some(Event::Closed)) | Ok(None) => panic!("closed"),
            Ok(Some(_)) => {}
            Err(_) => panic!("no amend notice within {T:?}"),
        }
    }
}

#[tokio::test]
async fn a_recall_reaches_every_device_online_and_offline_and_removes_the_body() {
    let s = TestServer::start().await;
    let url = s.tcp_url();
    let (alice, _ae) = connect(&url, "alice", "a1").await;
    let (_alice2, mut alice2_events) = connect(&s.ws_url(), "alice", "a2").await;
    let (_bob, mut bob_events) = connect(&url, "bob", "b1").await;
    let sent = alice.send(demo("bob"), "text", "secret").await.unwrap();
    let kept = alice.send(demo("bob"), "text", "kept").await.unwrap();
    messages(&mut bob_events, 2, T).await;
    messages(&mut alice2_events, 2, T).await;

    // Edit, then recall: online devices of both parties get both notices.
    let edited = alice.edit(sent.msg_id, "secret, edited").await.unwrap();
    assert!(!edited.duplicate);
    assert_eq!(edited.seq, 3, "the notice is entry 3 of alice's timeline");
    let (_, now) = notice(&mut bob_events).await;
    assert_eq!(now.msg_id, sent.msg_id);
    assert_eq!(&now.body[..], b"secret, edited");
    assert!(now.edited_at_ms > 0 && !now.recalled);
    let (_, now) = notice(&mut alice2_events).await;
    assert_eq!(&now.body[..], b"secret, edited");
    let recalled = alice.recall(sent.msg_id).await.unwrap();
    let (seq, now) = notice(&mut bob_events).await;
    assert_eq!(seq, 4, "bob's timeline: 2 messages, 2 notices");
    assert!(now.recalled && now.body.is_empty());
    assert_eq!(now.r#type, "text", "the type stays");
    notice(&mut alice2_events).await;

    // Bob's phone was offline throughout: sync gives the original as it is
    // now, then both notices (each showing the message as it is now: the
    // edit's notice no longer holds the edited body).
    let (_bob2, mut bob2_events) = connect(&url, "bob", "b2").await;
    let got = messages(&mut bob2_events, 4, T).await;
    assert_eq!(got[0].0, 1);
    assert!(got[0].1.recalled && got[0].1.body.is_empty());
    assert_eq!(&got[1].1.body[..], b"kept");
    for (_, m) in &got[2..] {
        let a = m.amended.as_ref().expect("a notice");
        assert!(a.recalled && a.body.is_empty() && a.msg_id == sent.msg_id);
    }

    // History and the conversation list show it recalled; notices are not
    // history and never the last entry or unread.
    let http = Http::new(&s);
    let (status, page) = http
        .get("/v1/apps/demo/conversations/alice/bob/messages")
        .await;
    assert_eq!(status, 200, "{page}");
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{page}");
    assert_eq!(msgs[1]["msg_id"], sent.msg_id.to_string());
    assert_eq!(msgs[1]["recalled"], true);
    assert_eq!(msgs[1]["body_base64"], "");
    assert_eq!(msgs[0]["body"], "kept");
    let list = _bob2.conversations("", 0).await.unwrap();
    let with_alice = &list.conversations[0];
    assert_eq!(with_alice.unread, 2);
    assert_eq!(
        with_alice
            .last
            .as_ref()
            .unwrap()
            .message
            .as_ref()
            .unwrap()
            .msg_id,
        kept.msg_id
    );

    // The resend of a recall answers the first result; another recall and
    // an edit after it are refused.
    assert_eq!(recalled.seq, 4);
    assert_eq!(
        server_code(alice.recall(sent.msg_id).await.unwrap_err()),
        code::MESSAGE_RECALLED
    );
    assert_eq!(
        server_code(alice.edit(sent.msg_id, "again").await.unwrap_err()),
        code::MESSAGE_RECALLED
    );
    s.stop().await;
}

#[tokio::test]
async fn refusals_have_their_own_codes() {
    let s = TestServer::start_with(|c| {
        // demo: users may edit, but not recall.
        c.apps[0].recall_window_secs = Some(0);
        c.apps[1].edit_window_secs = Some(1);
    })
    .await;
    let url = s.tcp_url();
    let (alice, _ae) = connect(&url, "alice", "a1").await;
    let (bob, _be) = connect(&url, "bob", "b1").await;
    let sent = alice.send(demo("bob"), "text", "hi").await.unwrap();
    // Someone else's message.
    assert_eq!(
        server_code(bob.edit(sent.msg_id, "mine now").await.unwrap_err()),
        code::NOT_MESSAGE_SENDER
    );
    // No such message, and a read receipt is not one to amend.
    assert_eq!(
        server_code(alice.recall(12345).await.unwrap_err()),
        code::MESSAGE_NOT_FOUND
    );
    let receipt = bob.mark_read(demo("alice"), 1).await.unwrap();
    assert_eq!(
        server_code(bob.recall(receipt.msg_id).await.unwrap_err()),
        code::MESSAGE_NOT_FOUND
    );
    // The app lets nobody recall.
    assert_eq!(
        server_code(alice.recall(sent.msg_id).await.unwrap_err()),
        code::AMEND_WINDOW_CLOSED
    );
    // A message of another app is not found, even by id.
    let (shop, _ke) = switchboard_sdk::Client::connect(
        switchboard_sdk::ClientConfig::new(url.clone(), token("shop", "clerk"))
            .with_device_id("k1"),
    )
    .await
    .unwrap();
    let inside = switchboard_sdk::User {
        app: "shop".into(),
        uid: "buyer".into(),
    };
    let inside = shop.send(inside, "text", "internal").await.unwrap();
    assert_eq!(
        server_code(alice.recall(inside.msg_id).await.unwrap_err()),
        code::MESSAGE_NOT_FOUND
    );
    // A message to alice from another app is hers to see, not to recall.
    let shop_sent = shop.send(demo("alice"), "text", "order?").await.unwrap();
    assert_eq!(
        server_code(alice.recall(shop_sent.msg_id).await.unwrap_err()),
        code::NOT_MESSAGE_SENDER
    );
    // The shop's edit window is 1 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        server_code(shop.edit(shop_sent.msg_id, "late").await.unwrap_err()),
        code::AMEND_WINDOW_CLOSED
    );
    // An edit over the body limit.
    let big = vec![b'x'; 60 * 1024 + 1];
    assert_eq!(
        server_code(alice.edit(sent.msg_id, big).await.unwrap_err()),
        code::INVALID_ARGUMENT
    );
    // Everyone is still served.
    alice.edit(sent.msg_id, "fine").await.unwrap();
    s.stop().await;
}

#[tokio::test]
async fn group_messages_are_recalled_for_every_member() {
    let s = TestServer::start().await;
    let http = Http::new(&s);
    let (status, reply) = http
        .put("/v1/apps/demo/groups/order-7", json!({"name": "Order 7"}))
        .await;
    assert_eq!(status, 201, "{reply}");
    let (status, reply) = http
        .post(
            "/v1/apps/demo/groups/order-7/members",
            json!({"members": [{"uid": "cust"}, {"uid": "shop"}]}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let url = s.tcp_url();
    let (shop, _se) = connect(&url, "shop", "s1").await;
    let (_cust, mut cust_events) = connect(&url, "cust", "c1").await;
    let sent = shop
        .send_group("order-7", "text", "wrong price")
        .await
        .unwrap();
    let ack = shop.recall(sent.msg_id).await.unwrap();
    assert_eq!(ack.group, "order-7");
    assert_eq!(
        ack.seq,
        sent.seq + 1,
        "the notice is on the group's timeline"
    );
    let (seq, now) = notice(&mut cust_events).await;
    assert_eq!(seq, ack.seq);
    assert!(now.recalled && now.group == "order-7");
    // A member who connects later syncs the group: the post is recalled.
    let (_cust2, mut cust2_events) = connect(&url, "cust", "c2").await;
    let deadline = tokio::time::Instant::now() + T;
    let first = loop {
        match tokio::time::timeout_at(deadline, cust2_events.recv()).await {
            Ok(Some(Event::GroupMessage { seq, message, .. })) => break (seq, message),
            Ok(Some(_)) => {}
            other => panic!("no group entry: {other:?}"),
        }
    };
    assert_eq!(first.0, sent.seq);
    assert!(first.1.recalled && first.1.body.is_empty());
    let list = _cust.conversations("", 0).await.unwrap();
    let g = &list.conversations[0];
    assert_eq!(g.group, "order-7");
    assert_eq!(
        g.last.as_ref().unwrap().seq,
        sent.seq,
        "a notice is never last"
    );
    assert!(g.last.as_ref().unwrap().message.as_ref().unwrap().recalled);
    s.stop().await;
}

#[tokio::test]
async fn the_business_recalls_any_message_of_its_app_over_http() {
    let s = TestServer::start().await;
    let url = s.tcp_url();
    let (alice, _ae) = connect(&url, "alice", "a1").await;
    let (_bob, mut bob_events) = connect(&url, "bob", "b1").await;
    let sent = alice.send(demo("bob"), "text", "spam").await.unwrap();
    messages(&mut bob_events, 1, T).await;
    let http = Http::new(&s);
    let path = format!("/v1/apps/demo/messages/{}/recall", sent.msg_id);
    let (status, reply) = http.post(&path, json!({"client_msg_id": "mod-1"})).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["message"]["recalled"], true);
    assert_eq!(reply["duplicate"], false);
    let (_, now) = notice(&mut bob_events).await;
    assert!(now.recalled);
    // A retry with the same id answers the first result; without, 409.
    let (status, again) = http.post(&path, json!({"client_msg_id": "mod-1"})).await;
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &json!(true)),
        "{again}"
    );
    assert_eq!(again["msg_id"], reply["msg_id"]);
    let (status, err) = http.post(&path, json!({})).await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "MESSAGE_RECALLED");
    // The same id for a recall of another message is a conflict.
    let other = alice.send(demo("bob"), "text", "fine").await.unwrap();
    let (status, err) = http
        .post(
            &format!("/v1/apps/demo/messages/{}/recall", other.msg_id),
            json!({"client_msg_id": "mod-1"}),
        )
        .await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "CLIENT_MSG_ID_REUSED");
    // Unknown ids, another app's key, bad ids.
    let (status, err) = http
        .post("/v1/apps/demo/messages/42/recall", json!({}))
        .await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (404, &json!("MESSAGE_NOT_FOUND"))
    );
    let (status, _) = http
        .post("/v1/apps/demo/messages/not-a-number/recall", json!({}))
        .await;
    assert_eq!(status, 400);
    s.stop().await;
}

/// Recalls, edits and reads are events for the business (docs/bus.md):
/// each once, keyed by who did it, with no body; a resent recall publishes
/// nothing new.
#[tokio::test]
async fn recalls_edits_and_reads_are_events_for_the_business() {
    let (hook, got) = webhook_receiver().await;
    let s = TestServer::start_with(|c| {
        c.apps[0].webhooks = vec![WebhookConfig {
            url: hook,
            topics: vec![
                "message.recalled".into(),
                "message.edited".into(),
                "conversation.read".into(),
            ],
            types: vec![],
            secret: None,
        }];
        c.webhook.poll_ms = 20;
    })
    .await;
    let url = s.tcp_url();
    let (alice, _ae) = connect(&url, "alice", "a1").await;
    let (bob, mut bob_events) = connect(&url, "bob", "b1").await;
    let first = alice.send(demo("bob"), "text", "hello").await.unwrap();
    let second = alice.send(demo("bob"), "text", "spam").await.unwrap();
    let got_bob = messages(&mut bob_events, 2, T).await;
    let last_seq = got_bob[1].0;
    bob.mark_read(demo("alice"), last_seq).await.unwrap();
    let edit = alice.edit(first.msg_id, "hello!").await.unwrap();
    alice.recall(first.msg_id).await.unwrap();
    let http = Http::new(&s);
    let path = format!("/v1/apps/demo/messages/{}/recall", second.msg_id);
    for _ in 0..2 {
        let (status, reply) = http.post(&path, json!({"client_msg_id": "mod-1"})).await;
        assert_eq!(status, 200, "{reply}");
    }

    let deadline = tokio::time::Instant::now() + T;
    while received(&got).len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "events: {:?}",
            received(&got)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing more comes (the resent recall, the pushes).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = received(&got).clone();
    assert_eq!(events.len(), 4, "{events:?}");
    let of = |topic: &str, uid: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["topic"] == topic && e["uid"] == uid)
            .map(|e| e["data"].clone())
            .collect()
    };
    let read = of("conversation.read", "bob");
    assert_eq!(read.len(), 1, "{events:?}");
    assert_eq!(read[0]["reader"], json!({"app": "demo", "uid": "bob"}));
    assert_eq!(read[0]["peer"], json!({"app": "demo", "uid": "alice"}));
    assert_eq!(read[0]["seq"], last_seq);
    assert_eq!(read[0]["msg_id"], second.msg_id.to_string());

    let edited = of("message.edited", "alice");
    assert_eq!(edited.len(), 1, "{events:?}");
    assert_eq!(edited[0]["msg_id"], first.msg_id.to_string());
    assert_eq!(edited[0]["by"]["uid"], "alice");
    assert_eq!(edited[0]["to"]["uid"], "bob");
    assert_eq!(edited[0]["type"], "text");
    assert_eq!(edited[0]["body_bytes"], 6);
    assert_eq!(edited[0]["notice_msg_id"], edit.msg_id.to_string());
    assert!(edited[0].get("body").is_none(), "no body on the bus");

    let recalled = of("message.recalled", "alice");
    assert_eq!(recalled.len(), 1, "{events:?}");
    assert_eq!(recalled[0]["msg_id"], first.msg_id.to_string());
    assert_eq!(recalled[0]["body_bytes"], 0);
    // The business's recall is keyed by the app's system user.
    let by_business = of("message.recalled", "");
    assert_eq!(
        by_business.len(),
        1,
        "a resend publishes nothing new: {events:?}"
    );
    assert_eq!(by_business[0]["msg_id"], second.msg_id.to_string());
    assert_eq!(by_business[0]["by"], json!({"app": "demo", "uid": ""}));
    assert_eq!(by_business[0]["from"]["uid"], "alice");
    alice.close().await;
    bob.close().await;
}
