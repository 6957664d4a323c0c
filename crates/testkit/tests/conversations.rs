//! Conversations against a real node with real SDK clients: the list with
//! unread counts (after offline sends, sync, reads on another device, a
//! restart), read receipts reaching every device of both parties,
//! transient messages reaching only the devices online now and never
//! appearing in sync, and each bad input answered with its code.

use std::time::Duration;

use serde_json::json;
use switchboard_proto::{Packet, pb};
use switchboard_sdk::{Client, Event, Events, SdkError, code};
use switchboard_testkit::http::Http;
use switchboard_testkit::raw::RawClient;
use switchboard_testkit::sdk::{bodies, connect, demo, messages, no_more_messages};
use switchboard_testkit::server::TestServer;

const T: Duration = Duration::from_secs(20);

/// The conversation with `uid` in `client`'s list.
async fn conv_with(client: &Client, uid: &str) -> switchboard_sdk::Conversation {
    let list = client.conversations("", 0).await.expect("list");
    list.conversations
        .into_iter()
        .find(|c| c.peer.as_ref().is_some_and(|p| p.uid == uid))
        .unwrap_or_else(|| panic!("no conversation with {uid}"))
}

/// Waits for a read receipt entry (skipping other events).
async fn receipt(events: &mut Events) -> (u64, switchboard_sdk::Message) {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Message { seq, message })) if message.read.is_some() => {
                return (seq, message);
            }
            Ok(Some(Event::Message { message, .. })) => panic!("not a receipt: {message:?}"),
            Ok(Some(Event::Closed)) | Ok(None) => panic!("closed"),
            Ok(Some(_)) => {}
            Err(_) => panic!("no read receipt within {T:?}"),
        }
    }
}

/// Waits for a transient (online-only) message.
async fn online(events: &mut Events) -> switchboard_sdk::Message {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(Event::Online { message })) => return message,
            Ok(Some(Event::Closed)) | Ok(None) => panic!("closed"),
            Ok(Some(_)) => {}
            Err(_) => panic!("no online message within {T:?}"),
        }
    }
}

fn server_code(e: SdkError) -> u32 {
    match e {
        SdkError::Server { code, .. } => code,
        other => panic!("not a server error: {other:?}"),
    }
}

#[tokio::test]
async fn unread_counts_receipts_and_reads_on_every_device() {
    let s = TestServer::start().await;
    let url = s.tcp_url();
    let (alice, _ae) = connect(&url, "alice", "a1").await;
    let (_alice2, mut alice2_events) = connect(&s.ws_url(), "alice", "a2").await;
    // Bob is offline while alice writes three messages and carol one.
    for body in ["one", "two", "three"] {
        alice.send(demo("bob"), "text", body).await.unwrap();
    }
    let (carol, _ce) = connect(&url, "carol", "c1").await;
    carol.send(demo("bob"), "text", "hey").await.unwrap();
    messages(&mut alice2_events, 3, T).await;

    let (bob, mut bob_events) = connect(&url, "bob", "b1").await;
    let got = messages(&mut bob_events, 4, T).await;
    assert_eq!(bodies(&got), ["one", "two", "three", "hey"]);
    let list = bob.conversations("", 0).await.unwrap();
    assert_eq!(list.total_unread, 4);
    assert_eq!(list.conversations.len(), 2);
    // Most recent first: carol's message came last.
    assert_eq!(list.conversations[0].peer.as_ref().unwrap().uid, "carol");
    let with_alice = &list.conversations[1];
    assert_eq!(with_alice.unread, 3);
    let last = with_alice.last.as_ref().unwrap();
    assert_eq!(last.seq, 3);
    assert_eq!(&last.message.as_ref().unwrap().body[..], b"three");
    // The sender's view: nothing unread, the last entry is its own.
    let alice_view = conv_with(&alice, "bob").await;
    assert_eq!(alice_view.unread, 0);
    assert_eq!(alice_view.peer_read_msg_id, 0);

    // Bob reads alice's first two on another device.
    let (bob2, mut bob2_events) = connect(&s.ws_url(), "bob", "b2").await;
    messages(&mut bob2_events, 4, T).await;
    let ack = bob2.mark_read(demo("alice"), got[1].0).await.unwrap();
    assert_eq!(ack.seq, 5, "the receipt is entry 5 of bob's timeline");
    // Bob's first device learns it: its count drops.
    let (seq, r) = receipt(&mut bob_events).await;
    assert_eq!(seq, 5);
    let read = r.read.unwrap();
    assert_eq!(read.seq, got[1].0);
    assert_eq!(read.msg_id, got[1].1.msg_id);
    assert_eq!(conv_with(&bob, "alice").await.unread, 1);
    assert_eq!(bob.conversations("", 0).await.unwrap().total_unread, 2);
    // Both of alice's devices get the receipt ("read" under her messages);
    // the one that sent finds the message by id.
    let (_, r1) = receipt(&mut alice2_events).await;
    assert_eq!(r1.from.as_ref().unwrap().uid, "bob");
    assert_eq!(r1.read.as_ref().unwrap().msg_id, got[1].1.msg_id);
    assert_eq!(
        conv_with(&alice, "bob").await.peer_read_msg_id,
        got[1].1.msg_id
    );
    // Reading everything clears the badge; a reply reads too.
    bob.mark_read(demo("alice"), got[2].0).await.unwrap();
    bob.send(demo("carol"), "text", "hi carol").await.unwrap();
    let list = bob.conversations("", 0).await.unwrap();
    assert_eq!(list.total_unread, 0, "{list:?}");
    // Paging: one at a time, most recent first.
    let first = bob.conversations("", 1).await.unwrap();
    assert_eq!(first.conversations.len(), 1);
    assert_eq!(first.conversations[0].peer.as_ref().unwrap().uid, "carol");
    let second = bob.conversations(first.next.clone(), 1).await.unwrap();
    assert_eq!(second.conversations[0].peer.as_ref().unwrap().uid, "alice");
    assert!(second.next.is_empty());

    // The list survives a restart, and keeps counting after it.
    for c in [alice, bob, bob2, carol] {
        c.close().await;
    }
    let s = s.restart().await;
    let (alice, _ae) = connect(&s.tcp_url(), "alice", "a1").await;
    alice.send(demo("bob"), "text", "after").await.unwrap();
    let (bob, _be) = connect(&s.tcp_url(), "bob", "b1").await;
    let list = bob.conversations("", 0).await.unwrap();
    assert_eq!(list.total_unread, 1);
    assert_eq!(list.conversations[0].peer.as_ref().unwrap().uid, "alice");
    // The HTTP API answers the same list.
    let http = Http::new(&s);
    let (status, body) = http
        .get("/v1/apps/demo/users/bob/conversations?limit=10")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total_unread"], 1);
    assert_eq!(body["conversations"][0]["peer"]["uid"], "alice");
    assert_eq!(body["conversations"][0]["unread"], 1);
    assert_eq!(body["conversations"][0]["last"]["message"]["body"], "after");
    // History is messages only: the receipts between them are not in it.
    let (status, body) = http
        .get("/v1/apps/demo/conversations/alice/bob/messages?limit=2")
        .await;
    assert_eq!(status, 200, "{body}");
    let bodies_of = |body: &serde_json::Value| -> Vec<String> {
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["body"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(bodies_of(&body), ["after", "three"]);
    let (_, body) = http
        .get(&format!(
            "/v1/apps/demo/conversations/alice/bob/messages?before={}",
            body["next_before"].as_str().unwrap()
        ))
        .await;
    assert_eq!(bodies_of(&body), ["two", "one"]);
    s.stop().await;
}

#[tokio::test]
async fn group_conversations_count_unread_and_reads() {
    let s = TestServer::start().await;
    let http = Http::new(&s);
    let (status, reply) = http
        .put("/v1/apps/demo/groups/order-1", json!({"name": "Order 1"}))
        .await;
    assert_eq!(status, 201, "{reply}");
    let (status, reply) = http
        .post(
            "/v1/apps/demo/groups/order-1/members",
            json!({"members": [{"uid": "cust"}, {"uid": "shop"}, {"uid": "courier"}]}),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
    let url = s.tcp_url();
    let (shop, _se) = connect(&url, "shop", "s1").await;
    let (courier, _ce) = connect(&url, "courier", "k1").await;
    shop.send_group("order-1", "text", "packed").await.unwrap();
    let last = courier
        .send_group("order-1", "text", "on my way")
        .await
        .unwrap();
    let (cust, _cue) = connect(&url, "cust", "c1").await;
    let list = cust.conversations("", 0).await.unwrap();
    let g = list
        .conversations
        .iter()
        .find(|c| c.group == "order-1")
        .expect("the group is listed");
    assert_eq!(g.unread, 2);
    assert_eq!(g.last.as_ref().unwrap().seq, last.seq);
    // The shop posted first: the courier's message is its one unread.
    let shop_list = shop.conversations("", 0).await.unwrap();
    assert_eq!(shop_list.conversations[0].unread, 1);
    // Reading the group clears it; an own post reads it too.
    cust.mark_group_read("order-1", last.seq).await.unwrap();
    assert_eq!(cust.conversations("", 0).await.unwrap().total_unread, 0);
    shop.send_group("order-1", "text", "thanks").await.unwrap();
    assert_eq!(shop.conversations("", 0).await.unwrap().total_unread, 0);
    // A removed member no longer lists the group.
    let (status, _) = http
        .post(
            "/v1/apps/demo/groups/order-1/members/remove",
            json!({"uids": ["cust"]}),
        )
        .await;
    assert_eq!(status, 200);
    let list = cust.conversations("", 0).await.unwrap();
    assert!(list.conversations.iter().all(|c| c.group != "order-1"));
    assert_eq!(
        server_code(cust.mark_group_read("order-1", 1).await.unwrap_err()),
        code::NOT_GROUP_MEMBER
    );
    s.stop().await;
}

#[tokio::test]
async fn transient_messages_reach_only_online_devices_and_are_never_stored() {
    let s = TestServer::start().await;
    let url = s.tcp_url();
    let (alice, _ae) = connect(&url, "alice", "a1").await;
    let (bob, mut bob_events) = connect(&url, "bob", "b1").await;
    let (_bob2, mut bob2_events) = connect(&s.ws_url(), "bob", "b2").await;
    let sent = alice
        .send_transient(demo("bob"), "typing", "{}")
        .await
        .unwrap();
    assert_eq!(sent.devices_reached, 2);
    for events in [&mut bob_events, &mut bob2_events] {
        let m = online(events).await;
        assert_eq!(m.r#type, "typing");
        assert_eq!(m.msg_id, sent.msg_id);
        assert_eq!(m.from.as_ref().unwrap().uid, "alice");
    }
    // Nobody online: reached nobody, and nothing waits for carol.
    let none = alice
        .send_transient(demo("carol"), "typing", "{}")
        .await
        .unwrap();
    assert_eq!(none.devices_reached, 0);
    let (carol, mut carol_events) = connect(&url, "carol", "c1").await;
    no_more_messages(&mut carol_events, Duration::from_millis(300)).await;
    assert!(
        carol
            .conversations("", 0)
            .await
            .unwrap()
            .conversations
            .is_empty()
    );
    // Not on any timeline: bob's next real message is entry 1.
    let real = alice.send(demo("bob"), "text", "hello").await.unwrap();
    assert_eq!(real.seq, 1);
    let got = messages(&mut bob_events, 1, T).await;
    assert_eq!(got[0].0, 1);
    assert_eq!(bob.conversations("", 0).await.unwrap().total_unread, 1);
    // Bad input: unknown app, reserved type; others stay served.
    let e = alice
        .send_transient(
            switchboard_sdk::User {
                app: "nope".into(),
                uid: "x".into(),
            },
            "typing",
            "",
        )
        .await
        .unwrap_err();
    assert_eq!(server_code(e), code::INVALID_ARGUMENT);
    let e = alice
        .send(demo("bob"), "switchboard.read", "forged")
        .await
        .unwrap_err();
    assert_eq!(server_code(e), code::INVALID_ARGUMENT);
    let e = alice
        .send_group_transient("no-such-group", "typing", "")
        .await
        .unwrap_err();
    assert_eq!(server_code(e), code::GROUP_NOT_FOUND);
    assert_eq!(
        alice
            .send_transient(demo("bob"), "typing", "")
            .await
            .unwrap()
            .devices_reached,
        2
    );
    s.stop().await;
}

#[tokio::test]
async fn transient_messages_have_their_own_rate_budget() {
    let s = TestServer::start_with(|c| {
        c.gate.transient_rate_per_sec = 1;
        c.gate.transient_rate_burst = 2;
    })
    .await;
    let url = s.tcp_url();
    let (alice, _ae) = connect(&url, "alice", "a1").await;
    let (_bob, mut bob_events) = connect(&url, "bob", "b1").await;
    // Raw frames, all sent at once: the SDK would retry a RATE_LIMITED.
    let (mut raw, _) = RawClient::login(s.tcp, &s.token("carol"), "c1").await;
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(
            raw.send(Packet::C2c(pb::C2c {
                client_msg_id: format!("t{i}"),
                to: Some(demo("bob")),
                r#type: "typing".into(),
                transient: true,
                ..Default::default()
            }))
            .await,
        );
    }
    let (mut acked, mut limited) = (0, 0);
    while acked + limited < sent.len() {
        match raw.recv_within(T).await.expect("an answer") {
            (_, Packet::C2cAck(a)) => {
                assert_eq!(a.seq, 0);
                acked += 1;
            }
            (_, Packet::Error(e)) => {
                assert_eq!(e.code, code::RATE_LIMITED);
                assert!(!e.fatal);
                limited += 1;
            }
            (_, other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(limited >= 5, "only {limited} of 10 refused");
    assert!(acked >= 2, "the burst goes through: {acked}");
    // Real messages still go through: their budget is untouched.
    for body in ["a", "b", "c"] {
        alice.send(demo("bob"), "text", body).await.unwrap();
    }
    assert_eq!(
        bodies(&messages(&mut bob_events, 3, T).await),
        ["a", "b", "c"]
    );
    s.stop().await;
}

#[tokio::test]
async fn bad_read_marks_and_cursors_get_their_codes() {
    let s = TestServer::start().await;
    let url = s.tcp_url();
    let (alice, _ae) = connect(&url, "alice", "a1").await;
    let (bob, mut bob_events) = connect(&url, "bob", "b1").await;
    alice.send(demo("bob"), "text", "hi").await.unwrap();
    let got = messages(&mut bob_events, 1, T).await;
    fn invalid<T: std::fmt::Debug>(r: Result<T, SdkError>) {
        assert_eq!(server_code(r.unwrap_err()), code::INVALID_ARGUMENT);
    }
    // Seq 0, past the head, of another conversation.
    invalid(bob.mark_read(demo("alice"), 0).await);
    invalid(bob.mark_read(demo("alice"), 99).await);
    invalid(bob.mark_read(demo("carol"), got[0].0).await);
    // A group that does not exist.
    assert_eq!(
        server_code(bob.mark_group_read("nope", 1).await.unwrap_err()),
        code::GROUP_NOT_FOUND
    );
    // A cursor the server did not make.
    invalid(bob.conversations("garbage", 0).await);
    // And the connection still serves.
    bob.mark_read(demo("alice"), got[0].0).await.unwrap();
    assert_eq!(bob.conversations("", 0).await.unwrap().total_unread, 0);
    let http = Http::new(&s);
    let (status, body) = http
        .get("/v1/apps/demo/users/bob/conversations?after=garbage")
        .await;
    assert_eq!(status, 400, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn business_pushes_form_a_conversation_with_the_system_sender() {
    let s = TestServer::start().await;
    let http = Http::new(&s);
    let (status, body) = http
        .post(
            "/v1/apps/demo/push",
            json!({"to": ["bob"], "type": "order.status", "body": "shipped"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (bob, mut bob_events) = connect(&s.tcp_url(), "bob", "b1").await;
    let got = messages(&mut bob_events, 1, T).await;
    let list = bob.conversations("", 0).await.unwrap();
    assert_eq!(list.total_unread, 1);
    let system = list.conversations[0].peer.clone().unwrap();
    assert_eq!((system.app.as_str(), system.uid.as_str()), ("demo", ""));
    bob.mark_read(system, got[0].0).await.unwrap();
    assert_eq!(bob.conversations("", 0).await.unwrap().total_unread, 0);
    s.stop().await;
}
