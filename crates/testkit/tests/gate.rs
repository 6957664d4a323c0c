//! The gate against misbehaving clients: bad frames, bad tokens, limits,
//! withheld acks. Each test runs a real node on ephemeral ports and checks
//! what a client would notice: the error code, whether the connection stays,
//! and that another client is still served.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use switchboard_proto::{Packet, VERSION, code, pb};
use switchboard_testkit::raw::{RawClient, c2c, login};
use switchboard_testkit::server::{TestServer, token};

const T: Duration = Duration::from_secs(10);

fn error_code(p: &Packet) -> (u32, bool) {
    match p {
        Packet::Error(e) => (e.code, e.fatal),
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn expect_closed(c: &mut RawClient) {
    assert!(
        c.recv_within(T).await.is_none(),
        "connection should be closed"
    );
}

/// Alice sends bob a message and bob receives it: the node still serves.
async fn still_chatting(s: &TestServer, tag: &str) {
    let (mut alice, _) = RawClient::login(s.tcp, &s.token(&format!("alice-{tag}")), "a").await;
    let (mut bob, _) = RawClient::login(s.tcp, &s.token(&format!("bob-{tag}")), "b").await;
    let ack = alice
        .request(c2c(
            &format!("m-{tag}"),
            &format!("bob-{tag}"),
            "still here",
        ))
        .await;
    assert!(matches!(ack, Packet::C2cAck(_)), "{ack:?}");
    match bob.recv_within(T).await {
        Some((0, Packet::Push(p))) => {
            assert_eq!(p.message.unwrap().body, Bytes::from_static(b"still here"))
        }
        other => panic!("bob got {other:?}"),
    }
}

#[tokio::test]
async fn requests_before_login_are_refused_and_the_connection_stays() {
    let s = TestServer::start().await;
    let mut c = RawClient::connect(s.tcp).await;
    let (code, fatal) = error_code(&c.request(c2c("m1", "bob", "hi")).await);
    assert_eq!((code, fatal), (code::NOT_LOGGED_IN, false));
    assert!(matches!(
        c.request(Packet::Ping(pb::Ping {})).await,
        Packet::Pong(_)
    ));
    let ack = c
        .request(Packet::Login(login(&s.token("alice"), "d1")))
        .await;
    assert!(matches!(ack, Packet::LoginAck(_)), "{ack:?}");
    s.stop().await;
}

#[tokio::test]
async fn bad_tokens_get_their_codes_and_are_closed() {
    let s = TestServer::start().await;
    let expired = {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let claims = switchboard_core::auth::Claims {
            app: "demo".into(),
            sub: "alice".into(),
            exp: 1_000_000,
        };
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(switchboard_testkit::server::SECRET.as_bytes()),
        )
        .unwrap()
    };
    let wrong_secret =
        switchboard_core::auth::issue_token("not-the-secret-of-demo", "demo", "alice", 60).unwrap();
    let unknown_app =
        switchboard_core::auth::issue_token("whatever-secret-1234", "nope", "alice", 60).unwrap();
    // A token of app "other" signed with demo's secret.
    let wrong_app_key = switchboard_core::auth::issue_token(
        switchboard_testkit::server::SECRET,
        "other",
        "alice",
        60,
    )
    .unwrap();
    for (tok, want) in [
        ("garbage".to_string(), code::TOKEN_INVALID),
        (expired, code::TOKEN_EXPIRED),
        (wrong_secret, code::TOKEN_INVALID),
        (unknown_app, code::UNKNOWN_APP),
        (wrong_app_key, code::TOKEN_INVALID),
    ] {
        let mut c = RawClient::connect(s.tcp).await;
        let (got, fatal) = error_code(&c.request(Packet::Login(login(&tok, "d"))).await);
        assert_eq!((got, fatal), (want, true), "token {tok}");
        expect_closed(&mut c).await;
    }
    still_chatting(&s, "tokens").await;
    s.stop().await;
}

#[tokio::test]
async fn garbage_and_oversized_frames_close_only_that_connection() {
    let s = TestServer::start_with(|c| c.gate.max_frame_bytes = 4096).await;
    let (mut alice, _) = RawClient::login(s.tcp, &s.token("alice"), "a").await;

    let mut garbage = RawClient::connect(s.tcp).await;
    garbage
        .send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (_, p) = garbage.recv_within(T).await.expect("an error frame");
    let (c, fatal) = error_code(&p);
    assert!(
        fatal
            && (c == code::BAD_FRAME
                || c == code::UNSUPPORTED_VERSION
                || c == code::FRAME_TOO_LARGE),
        "{c}"
    );
    expect_closed(&mut garbage).await;

    let mut big = RawClient::connect(s.tcp).await;
    let mut header = BytesMut::new();
    header.put_u32(1 << 30);
    header.put_u16(16);
    header.put_u16(VERSION);
    header.put_u32(7);
    header.put_u32(1);
    big.send_bytes(&header).await;
    let (_, p) = big.recv_within(T).await.expect("an error frame");
    assert_eq!(error_code(&p), (code::FRAME_TOO_LARGE, true));
    expect_closed(&mut big).await;

    // A logged-in client sending an oversized body is closed too.
    let (mut loud, _) = RawClient::login(s.tcp, &s.token("loud"), "l").await;
    loud.send(c2c("big", "bob", &"x".repeat(8000))).await;
    let (_, p) = loud.recv_within(T).await.expect("an error frame");
    assert_eq!(error_code(&p), (code::FRAME_TOO_LARGE, true));
    expect_closed(&mut loud).await;

    // Alice, connected all along, is still served.
    assert!(matches!(
        alice.request(c2c("m1", "bob", "hi")).await,
        Packet::C2cAck(_)
    ));
    still_chatting(&s, "garbage").await;
    s.stop().await;
}

#[tokio::test]
async fn unknown_commands_and_bad_bodies_get_an_error_and_the_connection_stays() {
    let s = TestServer::start().await;
    let (mut c, _) = RawClient::login(s.tcp, &s.token("alice"), "a").await;
    let mut frame = BytesMut::new();
    frame.put_u32(16 + 3);
    frame.put_u16(16);
    frame.put_u16(VERSION);
    frame.put_u32(999);
    frame.put_u32(77);
    frame.put_slice(b"abc");
    c.send_bytes(&frame).await;
    let (seq, p) = c.recv_within(T).await.unwrap();
    assert_eq!((seq, error_code(&p)), (77, (code::UNKNOWN_COMMAND, false)));

    let mut bad = BytesMut::new();
    bad.put_u32(16 + 2);
    bad.put_u16(16);
    bad.put_u16(VERSION);
    bad.put_u32(7); // c2c
    bad.put_u32(78);
    bad.put_slice(&[0xff, 0xff]);
    c.send_bytes(&bad).await;
    let (seq, p) = c.recv_within(T).await.unwrap();
    assert_eq!((seq, error_code(&p)), (78, (code::BAD_BODY, false)));

    // Empty or missing fields are refused with INVALID_ARGUMENT.
    let (code_, _) = error_code(&c.request(c2c("", "bob", "x")).await);
    assert_eq!(code_, code::INVALID_ARGUMENT);
    assert!(matches!(
        c.request(c2c("m1", "bob", "hi")).await,
        Packet::C2cAck(_)
    ));
    s.stop().await;
}

#[tokio::test]
async fn no_login_within_the_deadline_closes_the_connection() {
    let s = TestServer::start_with(|c| c.gate.login_timeout_ms = 300).await;
    let mut c = RawClient::connect(s.tcp).await;
    let (_, p) = c.recv_within(T).await.expect("an error frame");
    assert_eq!(error_code(&p), (code::LOGIN_TIMEOUT, true));
    expect_closed(&mut c).await;
    s.stop().await;
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_idle_timeout() {
    let s = TestServer::start_with(|c| {
        c.gate.keepalive_secs = 1;
        c.gate.idle_keepalives = 1;
    })
    .await;
    let (mut c, ack) = RawClient::login(s.tcp, &s.token("alice"), "a").await;
    assert_eq!(ack.keepalive_secs, 1);
    match c.recv_within(T).await {
        Some((0, Packet::Kick(k))) => assert_eq!(k.code, code::KICK_IDLE_TIMEOUT),
        other => panic!("expected an idle kick, got {other:?}"),
    }
    expect_closed(&mut c).await;
    s.stop().await;
}

#[tokio::test]
async fn unacked_pushes_are_resent_then_the_connection_is_closed() {
    let s = TestServer::start_with(|c| {
        c.gate.ack_timeout_ms = 200;
        c.gate.max_resends = 3;
    })
    .await;
    let (mut alice, _) = RawClient::login(s.tcp, &s.token("alice"), "a").await;
    let (mut bob, _) = RawClient::login(s.tcp, &s.token("bob"), "b").await;
    assert!(matches!(
        alice.request(c2c("m1", "bob", "ack me")).await,
        Packet::C2cAck(_)
    ));
    let mut pushes = 0;
    let kick = loop {
        match bob.recv_within(T).await {
            Some((_, Packet::Push(p))) => {
                assert_eq!(p.seq, 1);
                pushes += 1;
            }
            Some((_, Packet::Kick(k))) => break k,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(pushes, 4, "the first push and three resends");
    assert_eq!(kick.code, code::KICK_ACK_TIMEOUT);
    expect_closed(&mut bob).await;

    // Bob comes back: his cursor did not move, so sync gives the message again.
    let (mut bob, ack) = RawClient::login(s.tcp, &s.token("bob"), "b").await;
    assert_eq!((ack.cursor, ack.timeline_head), (0, 1));
    match bob
        .request(Packet::Sync(pb::Sync {
            group: Default::default(),
            since: ack.cursor,
            limit: 10,
        }))
        .await
    {
        Packet::SyncReply(r) => assert_eq!(r.entries.len(), 1),
        other => panic!("{other:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn acked_pushes_are_not_resent_and_move_the_cursor() {
    let s = TestServer::start_with(|c| c.gate.ack_timeout_ms = 200).await;
    let (mut alice, _) = RawClient::login(s.tcp, &s.token("alice"), "a").await;
    let (mut bob, _) = RawClient::login(s.tcp, &s.token("bob"), "b").await;
    for i in 0..3 {
        alice.request(c2c(&format!("m{i}"), "bob", "x")).await;
    }
    let mut last = 0;
    while last < 3 {
        if let Some((_, Packet::Push(p))) = bob.recv_within(T).await {
            last = p.seq;
        }
    }
    bob.send(Packet::PushAck(pb::PushAck {
        group: Default::default(),
        seq: 3,
    }))
    .await;
    // Nothing comes back within several ack timeouts but our own pong.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(matches!(
        bob.request(Packet::Ping(pb::Ping {})).await,
        Packet::Pong(_)
    ));
    drop(bob);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, ack) = RawClient::login(s.tcp, &s.token("bob"), "b").await;
    assert_eq!(ack.cursor, 3);
    s.stop().await;
}

/// Issue 15 item 1: a push_ack past the head must not move the cursor past
/// it, or the device would see nothing to sync and miss the next message.
#[tokio::test]
async fn a_push_ack_beyond_the_head_never_moves_the_cursor_past_it() {
    let s = TestServer::start().await;
    let (mut alice, _) = RawClient::login(s.tcp, &s.token("alice"), "a").await;
    let (mut bob, ack) = RawClient::login(s.tcp, &s.token("bob"), "b").await;
    assert_eq!((ack.timeline_head, ack.cursor), (0, 0));
    bob.send(Packet::PushAck(pb::PushAck {
        group: Default::default(),
        seq: 999_999,
    }))
    .await;
    // The ack has no answer: a ping behind it proves it was handled.
    assert!(matches!(
        bob.request(Packet::Ping(pb::Ping {})).await,
        Packet::Pong(_)
    ));
    drop(bob);
    alice.request(c2c("m1", "bob", "after the bad ack")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut bob, ack) = RawClient::login(s.tcp, &s.token("bob"), "b").await;
    assert_eq!(ack.timeline_head, 1);
    assert_eq!(ack.cursor, 0, "clamped to the head (0) at ack time");
    let Packet::SyncReply(r) = bob
        .request(Packet::Sync(pb::Sync {
            group: Default::default(),
            since: ack.cursor,
            limit: 0,
        }))
        .await
    else {
        panic!()
    };
    assert_eq!(r.entries.len(), 1, "the new message is there to sync");
    // An ack past the head now clamps to the head, 1.
    bob.send(Packet::PushAck(pb::PushAck {
        group: Default::default(),
        seq: 50,
    }))
    .await;
    bob.request(Packet::Ping(pb::Ping {})).await;
    drop(bob);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, ack) = RawClient::login(s.tcp, &s.token("bob"), "b").await;
    assert_eq!((ack.timeline_head, ack.cursor), (1, 1));
    s.stop().await;
}

#[tokio::test]
async fn a_resent_c2c_is_stored_once_and_answered_with_the_first_ack() {
    let s = TestServer::start().await;
    let (mut alice, _) = RawClient::login(s.tcp, &s.token("alice"), "a").await;
    let Packet::C2cAck(first) = alice.request(c2c("same-id", "bob", "once")).await else {
        panic!()
    };
    let Packet::C2cAck(again) = alice.request(c2c("same-id", "bob", "once")).await else {
        panic!()
    };
    assert!(!first.duplicate && again.duplicate);
    assert_eq!((first.msg_id, first.seq), (again.msg_id, again.seq));
    let (mut bob, ack) = RawClient::login(s.tcp, &s.token("bob"), "b").await;
    assert_eq!(ack.timeline_head, 1, "stored once");
    let Packet::SyncReply(r) = bob
        .request(Packet::Sync(pb::Sync {
            group: Default::default(),
            since: 0,
            limit: 0,
        }))
        .await
    else {
        panic!()
    };
    assert_eq!(r.entries.len(), 1);
    s.stop().await;
}

/// Issue 15 item 6, decided: a resent c2c pushes the stored entry again, to
/// every online device, even one that acked it (the first attempt may have
/// stored and not pushed: a crash in between); devices drop it by seq.
#[tokio::test]
async fn a_resent_c2c_pushes_the_same_entry_again_even_to_devices_that_acked_it() {
    let s = TestServer::start().await;
    let (mut alice, _) = RawClient::login(s.tcp, &s.token("alice"), "a").await;
    let (mut bob, _) = RawClient::login(s.tcp, &s.token("bob"), "b").await;
    alice.request(c2c("again", "bob", "once")).await;
    let Some((0, Packet::Push(first))) = bob.recv_within(T).await else {
        panic!("bob got no push")
    };
    bob.send(Packet::PushAck(pb::PushAck {
        group: Default::default(),
        seq: first.seq,
    }))
    .await;
    bob.request(Packet::Ping(pb::Ping {})).await;
    let Packet::C2cAck(ack) = alice.request(c2c("again", "bob", "once")).await else {
        panic!()
    };
    assert!(ack.duplicate);
    let Some((0, Packet::Push(again))) = bob.recv_within(T).await else {
        panic!("bob got no second push")
    };
    assert_eq!(again, first, "the same entry, same seq and message id");
    s.stop().await;
}

#[tokio::test]
async fn device_limits_kick_the_oldest_and_a_reused_device_id_replaces() {
    let s = TestServer::start_with(|c| c.logic.max_devices_per_user = 2).await;
    let (mut d1, _) = RawClient::login(s.tcp, &s.token("alice"), "d1").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (mut d2, _) = RawClient::login(s.tcp, &s.token("alice"), "d2").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_d3, _) = RawClient::login(s.tcp, &s.token("alice"), "d3").await;
    match d1.recv_within(T).await {
        Some((0, Packet::Kick(k))) => assert_eq!(k.code, code::KICK_TOO_MANY_DEVICES),
        other => panic!("{other:?}"),
    }
    expect_closed(&mut d1).await;
    let (_d2b, _) = RawClient::login(s.tcp, &s.token("alice"), "d2").await;
    match d2.recv_within(T).await {
        Some((0, Packet::Kick(k))) => assert_eq!(k.code, code::KICK_REPLACED),
        other => panic!("{other:?}"),
    }
    s.stop().await;
}

#[tokio::test]
async fn the_request_rate_is_limited_per_connection() {
    let s = TestServer::start_with(|c| {
        c.gate.rate_per_sec = 1;
        c.gate.rate_burst = 3;
    })
    .await;
    let (mut c, _) = RawClient::login(s.tcp, &s.token("alice"), "a").await;
    let mut codes = Vec::new();
    for i in 0..5 {
        match c.request(c2c(&format!("m{i}"), "bob", "x")).await {
            Packet::C2cAck(_) => codes.push(0),
            p => codes.push(error_code(&p).0),
        }
    }
    assert_eq!(codes, vec![0, 0, 0, code::RATE_LIMITED, code::RATE_LIMITED]);
    // Pings are not limited and the connection stays.
    assert!(matches!(
        c.request(Packet::Ping(pb::Ping {})).await,
        Packet::Pong(_)
    ));
    s.stop().await;
}

#[tokio::test]
async fn cross_app_messages_need_configuration() {
    let s = TestServer::start().await;
    let (mut alice, _) = RawClient::login(s.tcp, &s.token("alice"), "a").await;
    let to = |app: &str| {
        Packet::C2c(pb::C2c {
            group: Default::default(),
            client_msg_id: format!("to-{app}"),
            to: Some(pb::User {
                app: app.into(),
                uid: "carol".into(),
            }),
            r#type: "text".into(),
            body: Bytes::from_static(b"hi"),
            transient: false,
        })
    };
    assert!(
        matches!(alice.request(to("shop")).await, Packet::C2cAck(_)),
        "demo and shop are paired"
    );
    assert_eq!(
        error_code(&alice.request(to("other")).await).0,
        code::CROSS_APP_FORBIDDEN
    );
    assert_eq!(
        error_code(&alice.request(to("nope")).await).0,
        code::INVALID_ARGUMENT
    );
    let (mut carol, ack) = RawClient::login(s.tcp, &token("shop", "carol"), "c").await;
    assert_eq!(ack.timeline_head, 1);
    let Packet::SyncReply(r) = carol
        .request(Packet::Sync(pb::Sync {
            group: Default::default(),
            since: 0,
            limit: 0,
        }))
        .await
    else {
        panic!()
    };
    assert_eq!(
        r.entries[0]
            .message
            .as_ref()
            .unwrap()
            .from
            .as_ref()
            .unwrap()
            .app,
        "demo"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_user_syncs_and_acks_only_its_own_timeline() {
    let s = TestServer::start().await;
    let (mut alice, _) = RawClient::login(s.tcp, &s.token("alice"), "a").await;
    alice.request(c2c("m1", "carol", "for carol only")).await;
    let (mut mallory, ack) = RawClient::login(s.tcp, &s.token("mallory"), "m").await;
    assert_eq!(ack.timeline_head, 0);
    let Packet::SyncReply(r) = mallory
        .request(Packet::Sync(pb::Sync {
            group: Default::default(),
            since: 0,
            limit: 0,
        }))
        .await
    else {
        panic!()
    };
    assert!(r.entries.is_empty());
    // Acking a sequence moves only mallory's own cursor; carol still gets everything.
    mallory
        .send(Packet::PushAck(pb::PushAck {
            group: Default::default(),
            seq: 1,
        }))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut carol, ack) = RawClient::login(s.tcp, &s.token("carol"), "m").await;
    assert_eq!((ack.cursor, ack.timeline_head), (0, 1));
    let Packet::SyncReply(r) = carol
        .request(Packet::Sync(pb::Sync {
            group: Default::default(),
            since: 0,
            limit: 0,
        }))
        .await
    else {
        panic!()
    };
    assert_eq!(r.entries.len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn past_the_connection_limit_new_clients_are_refused() {
    let s = TestServer::start_with(|c| c.gate.max_connections = 2).await;
    let (_a, _) = RawClient::login(s.tcp, &s.token("alice"), "a").await;
    let (_b, _) = RawClient::login(s.tcp, &s.token("bob"), "b").await;
    let mut c = RawClient::connect(s.tcp).await;
    let (_, p) = c.recv_within(T).await.expect("an error frame");
    assert_eq!(error_code(&p), (code::SERVER_FULL, true));
    expect_closed(&mut c).await;
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_acks_nothing_is_closed_at_the_unacked_limit() {
    let s = TestServer::start_with(|c| {
        c.gate.max_unacked = 5;
        c.gate.rate_burst = 1000;
    })
    .await;
    let (mut alice, _) = RawClient::login(s.tcp, &s.token("alice"), "a").await;
    let (mut bob, _) = RawClient::login(s.tcp, &s.token("bob"), "b").await;
    for i in 0..6 {
        alice.request(c2c(&format!("m{i}"), "bob", "x")).await;
    }
    let kick = loop {
        match bob.recv_within(T).await {
            Some((_, Packet::Push(_))) => continue,
            Some((_, Packet::Kick(k))) => break k,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(kick.code, code::KICK_SLOW_CONSUMER);
    still_chatting(&s, "unacked").await;
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    let s = TestServer::start_with(|c| {
        c.gate.outbound_queue = 4;
        c.gate.write_timeout_ms = 300;
        c.gate.rate_burst = 10_000;
        c.gate.rate_per_sec = 10_000;
    })
    .await;
    let (mut alice, _) = RawClient::login(s.tcp, &s.token("alice"), "a").await;
    // Bob logs in and then never reads again.
    let (mut bob, _) = RawClient::login(s.tcp, &s.token("bob"), "b").await;
    let body = "y".repeat(50_000);
    for i in 0..300 {
        let p = alice.request(c2c(&format!("m{i}"), "bob", &body)).await;
        assert!(
            matches!(p, Packet::C2cAck(_)),
            "the sender is never held up: {p:?}"
        );
    }
    // Bob's connection was closed by the server: reading what was buffered
    // ends in end-of-stream, not in an endless stream of pushes.
    let mut frames = 0;
    while bob.recv_within(T).await.is_some() {
        frames += 1;
        assert!(frames < 300, "bob was never cut off");
    }
    let gate = &s.server.as_ref().unwrap().gate;
    assert!(
        gate.hub
            .connections_of(&switchboard_core::UserKey::new("demo", "bob"))
            .is_empty()
    );
    still_chatting(&s, "slow").await;
    s.stop().await;
}

#[tokio::test]
async fn a_stopping_node_kicks_logged_in_clients_and_closes_the_others() {
    let s = TestServer::start().await;
    let tcp = s.tcp;
    let (mut alice, _) = RawClient::login(tcp, &s.token("alice"), "a").await;
    let mut anonymous = RawClient::connect(tcp).await;
    // The connection is accepted and waiting for its login.
    anonymous.send(Packet::Ping(pb::Ping {})).await;
    assert!(matches!(
        anonymous.recv_within(T).await,
        Some((_, Packet::Pong(_)))
    ));
    let stopping = tokio::spawn(s.stop());
    match alice.recv_within(T).await {
        Some((0, Packet::Kick(k))) => assert_eq!(k.code, code::KICK_SHUTDOWN),
        other => panic!("alice got {other:?}"),
    }
    expect_closed(&mut alice).await;
    expect_closed(&mut anonymous).await;
    tokio::time::timeout(T, stopping)
        .await
        .expect("the node stops")
        .expect("stop");
}
