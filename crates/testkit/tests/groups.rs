//! Groups on the wire, against a real node: a message to a group is stored
//! once and reaches every online device of every member once, in the
//! group's order; offline members and devices sync it; a member added later
//! sees the group from its joining; removed members get nothing more; every
//! refusal has its own code. Membership goes through the HTTP API, as a
//! business server does it; clients speak raw frames, so every field the
//! protocol defines is checked as it is on the wire.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use switchboard_proto::{Packet, code, pb};
use switchboard_testkit::http::Http;
use switchboard_testkit::raw::RawClient;
use switchboard_testkit::server::TestServer;

const T: Duration = Duration::from_secs(10);

async fn create(http: &Http, gid: &str, body: Value) {
    let (status, reply) = http.put(&format!("/v1/apps/demo/groups/{gid}"), body).await;
    assert!(status == 200 || status == 201, "{status} {reply}");
}

async fn add(http: &Http, gid: &str, members: &[(&str, &str)]) {
    let members: Vec<Value> = members
        .iter()
        .map(|(uid, role)| json!({"uid": uid, "role": role}))
        .collect();
    let (status, reply) = http
        .post(
            &format!("/v1/apps/demo/groups/{gid}/members"),
            json!({ "members": members }),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
}

async fn remove(http: &Http, gid: &str, uids: &[&str]) {
    let (status, reply) = http
        .post(
            &format!("/v1/apps/demo/groups/{gid}/members/remove"),
            json!({ "uids": uids }),
        )
        .await;
    assert_eq!(status, 200, "{reply}");
}

fn post(client_msg_id: &str, gid: &str, body: &str) -> Packet {
    Packet::C2c(pb::C2c {
        client_msg_id: client_msg_id.into(),
        to: None,
        r#type: "text".into(),
        body: Bytes::copy_from_slice(body.as_bytes()),
        group: gid.into(),
        transient: false,
    })
}

fn group_sync(gid: &str, since: u64) -> Packet {
    Packet::Sync(pb::Sync {
        since,
        limit: 0,
        group: gid.into(),
    })
}

fn group_ack(gid: &str, seq: u64) -> Packet {
    Packet::PushAck(pb::PushAck {
        seq,
        group: gid.into(),
    })
}

async fn login(s: &TestServer, uid: &str, device: &str) -> (RawClient, pb::LoginAck) {
    RawClient::login(s.tcp, &s.token(uid), device).await
}

/// The pushes a client receives until `n` arrived: (group, seq, body).
async fn pushes(c: &mut RawClient, n: usize) -> Vec<(String, u64, String)> {
    let mut got = Vec::new();
    while got.len() < n {
        match c.recv_within(T).await {
            Some((_, Packet::Push(p))) => {
                let m = p.message.unwrap_or_default();
                got.push((
                    m.group,
                    p.seq,
                    String::from_utf8_lossy(&m.body).into_owned(),
                ));
            }
            Some(_) => {}
            None => panic!("only {} of {n} pushes arrived: {got:?}", got.len()),
        }
    }
    got
}

/// Nothing but pings and acks for `within`.
async fn no_push(c: &mut RawClient, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(tokio::time::Instant::now()) {
        // recv is cancel-safe: a timeout loses no frame.
        match tokio::time::timeout(left, c.recv()).await {
            Ok(Some((_, Packet::Push(p)))) => panic!("unexpected push {p:?}"),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

fn error_code(p: &Packet) -> u32 {
    match p {
        Packet::Error(e) => e.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_group_message_reaches_every_member_device_once_in_order() {
    let s = TestServer::start().await;
    let http = Http::new(&s);
    create(&http, "order-1", json!({"name": "Order 1"})).await;
    add(
        &http,
        "order-1",
        &[("alice", "member"), ("bob", "member"), ("carol", "member")],
    )
    .await;
    let (mut alice, _) = login(&s, "alice", "a-phone").await;
    let (mut alice2, _) = login(&s, "alice", "a-laptop").await;
    let (mut bob1, _) = login(&s, "bob", "b-phone").await;
    let (mut bob2, _) = login(&s, "bob", "b-laptop").await;
    let (mut carol, _) = login(&s, "carol", "c-phone").await;
    let (mut dave, _) = login(&s, "dave", "d-phone").await;

    // Alice pipelines 20 posts: acked in order, seqs 1..=20 on the group.
    let mut seqs = Vec::new();
    for i in 0..20 {
        seqs.push(
            alice
                .send(post(&format!("m{i}"), "order-1", &format!("hi {i}")))
                .await,
        );
    }
    let mut acked = Vec::new();
    while acked.len() < 20 {
        match alice.recv_within(T).await {
            Some((seq, Packet::C2cAck(a))) => acked.push((seq, a.seq)),
            Some((_, Packet::Push(p))) => panic!("the sender's connection got a push: {p:?}"),
            Some(_) => {}
            None => panic!("acks missing"),
        }
    }
    assert_eq!(
        acked,
        seqs.iter()
            .zip(1..=20u64)
            .map(|(&s, g)| (s, g))
            .collect::<Vec<_>>()
    );
    let want: Vec<(String, u64, String)> = (1..=20u64)
        .map(|i| ("order-1".to_string(), i, format!("hi {}", i - 1)))
        .collect();
    for c in [&mut alice2, &mut bob1, &mut bob2, &mut carol] {
        assert_eq!(pushes(c, 20).await, want);
        no_push(c, Duration::from_millis(200)).await;
    }
    // Not a member: nothing.
    no_push(&mut dave, Duration::from_millis(200)).await;
    no_push(&mut alice, Duration::from_millis(100)).await;

    // A resend is answered with the first ack, and stores nothing new.
    match alice.request(post("m3", "order-1", "other body")).await {
        Packet::C2cAck(a) => {
            assert!(a.duplicate);
            assert_eq!(a.seq, 4);
        }
        other => panic!("{other:?}"),
    }
    let (status, g) = http.get("/v1/apps/demo/groups/order-1").await;
    assert_eq!(status, 200, "{g}");
    assert_eq!(g["head"], 20, "{g}");
    s.stop().await;
}

#[tokio::test]
async fn offline_members_learn_their_unread_groups_at_login_and_sync_only_those() {
    let s = TestServer::start().await;
    let http = Http::new(&s);
    for gid in ["g-busy", "g-quiet", "g-read"] {
        create(&http, gid, json!({})).await;
        add(&http, gid, &[("alice", "member"), ("bob", "member")]).await;
    }
    let (mut alice, _) = login(&s, "alice", "a1").await;
    // Bob reads g-read fully on one device, then goes offline.
    let (mut bob, ack) = login(&s, "bob", "b1").await;
    assert!(ack.groups.is_empty(), "{:?}", ack.groups);
    alice.request(post("r1", "g-read", "read me")).await;
    assert_eq!(pushes(&mut bob, 1).await[0].1, 1);
    bob.send(group_ack("g-read", 1)).await;
    bob.request(Packet::Ping(pb::Ping {})).await;
    drop(bob);
    for i in 0..5 {
        alice
            .request(post(&format!("b{i}"), "g-busy", &format!("busy {i}")))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (mut bob, ack) = login(&s, "bob", "b1").await;
    assert_eq!(
        ack.groups,
        [pb::GroupState {
            group: "g-busy".into(),
            head: 5,
            cursor: 0,
        }]
    );
    let Packet::SyncReply(page) = bob.request(group_sync("g-busy", 0)).await else {
        panic!("no sync reply")
    };
    assert_eq!(page.timeline_head, 5);
    assert_eq!(page.since, 0);
    assert!(!page.has_more);
    let got: Vec<(u64, String)> = page
        .entries
        .iter()
        .map(|e| {
            let m = e.message.clone().unwrap_or_default();
            assert_eq!(m.group, "g-busy");
            (e.seq, String::from_utf8_lossy(&m.body).into_owned())
        })
        .collect();
    assert_eq!(
        got,
        (1..=5u64)
            .map(|i| (i, format!("busy {}", i - 1)))
            .collect::<Vec<_>>()
    );
    bob.send(group_ack("g-busy", 5)).await;
    bob.request(Packet::Ping(pb::Ping {})).await;
    drop(bob);
    // A second device of Bob's has its own cursors: it sees both groups.
    let (_bob2, ack) = login(&s, "bob", "b2").await;
    let mut listed: Vec<_> = ack.groups.iter().map(|g| g.group.as_str()).collect();
    listed.sort();
    assert_eq!(listed, ["g-busy", "g-read"]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_bob, ack) = login(&s, "bob", "b1").await;
    assert!(ack.groups.is_empty(), "{:?}", ack.groups);
    s.stop().await;
}

#[tokio::test]
async fn a_member_added_later_sees_the_group_from_its_joining_unless_history_is_visible() {
    let s = TestServer::start().await;
    let http = Http::new(&s);
    create(&http, "closed", json!({})).await;
    create(&http, "open", json!({"history_visible": true})).await;
    for gid in ["closed", "open"] {
        add(&http, gid, &[("alice", "member")]).await;
    }
    let (mut alice, _) = login(&s, "alice", "a1").await;
    for gid in ["closed", "open"] {
        for i in 0..3 {
            alice
                .request(post(&format!("{gid}{i}"), gid, "before"))
                .await;
        }
    }
    // Bob is online when he is added: pushes start at once.
    let (mut bob, _) = login(&s, "bob", "b1").await;
    add(&http, "closed", &[("bob", "member")]).await;
    add(&http, "open", &[("bob", "member")]).await;
    alice.request(post("closed-after", "closed", "after")).await;
    assert_eq!(
        pushes(&mut bob, 1).await,
        [("closed".to_string(), 4, "after".to_string())]
    );
    // Syncing from 0 (no position yet) starts after his joining.
    let Packet::SyncReply(page) = bob.request(group_sync("closed", 0)).await else {
        panic!()
    };
    assert_eq!(page.since, 3);
    assert_eq!(page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [4]);
    let Packet::SyncReply(page) = bob.request(group_sync("open", 0)).await else {
        panic!()
    };
    assert_eq!(page.since, 0);
    assert_eq!(
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // At login, the closed group reads from his joining.
    drop(bob);
    let (_bob, ack) = login(&s, "bob", "b2").await;
    let closed = ack.groups.iter().find(|g| g.group == "closed").unwrap();
    assert_eq!((closed.head, closed.cursor), (4, 3));
    let open = ack.groups.iter().find(|g| g.group == "open").unwrap();
    assert_eq!((open.head, open.cursor), (3, 0));
    s.stop().await;
}

#[tokio::test]
async fn refusals_have_their_own_codes_and_store_nothing() {
    let s = TestServer::start().await;
    let http = Http::new(&s);
    create(&http, "team", json!({})).await;
    create(&http, "news", json!({"post_policy": "admins"})).await;
    add(&http, "team", &[("alice", "member"), ("bob", "member")]).await;
    add(&http, "news", &[("alice", "admin"), ("bob", "member")]).await;
    let (mut alice, _) = login(&s, "alice", "a1").await;
    let (mut bob, _) = login(&s, "bob", "b1").await;
    let (mut mallory, _) = login(&s, "mallory", "m1").await;

    let r = mallory.request(post("x1", "team", "let me in")).await;
    assert_eq!(error_code(&r), code::NOT_GROUP_MEMBER);
    let r = mallory.request(group_sync("team", 0)).await;
    assert_eq!(error_code(&r), code::NOT_GROUP_MEMBER);
    let r = alice.request(post("x2", "no-such-group", "hello")).await;
    assert_eq!(error_code(&r), code::GROUP_NOT_FOUND);
    let r = bob.request(post("x3", "news", "me too")).await;
    assert_eq!(error_code(&r), code::GROUP_ADMINS_ONLY);
    let both = Packet::C2c(pb::C2c {
        client_msg_id: "x4".into(),
        to: Some(pb::User {
            app: String::new(),
            uid: "bob".into(),
        }),
        r#type: "text".into(),
        body: Bytes::from_static(b"?"),
        group: "team".into(),
        transient: false,
    });
    assert_eq!(
        error_code(&alice.request(both).await),
        code::INVALID_ARGUMENT
    );
    let long = "g".repeat(129);
    assert_eq!(
        error_code(&alice.request(post("x5", &long, "?")).await),
        code::INVALID_ARGUMENT
    );
    // The admin posts to the broadcast group; the member gets it.
    match alice.request(post("n1", "news", "sale today")).await {
        Packet::C2cAck(a) => assert_eq!(a.seq, 1),
        other => panic!("{other:?}"),
    }
    assert_eq!(pushes(&mut bob, 1).await[0].2, "sale today");
    // Nothing refused was stored.
    let (_, g) = http.get("/v1/apps/demo/groups/team").await;
    assert_eq!(g["head"], 0, "{g}");

    // Removed: no more pushes, and no more reading.
    remove(&http, "team", &["bob"]).await;
    alice.request(post("t1", "team", "after bob left")).await;
    no_push(&mut bob, Duration::from_millis(300)).await;
    let r = bob.request(group_sync("team", 0)).await;
    assert_eq!(error_code(&r), code::NOT_GROUP_MEMBER);
    let r = bob.request(post("t2", "team", "still here?")).await;
    assert_eq!(error_code(&r), code::NOT_GROUP_MEMBER);
    // Deleted: gone for everyone.
    let (status, _) = http.delete("/v1/apps/demo/groups/team").await;
    assert!(status == 200 || status == 204, "{status}");
    let r = alice.request(post("t3", "team", "anyone?")).await;
    assert_eq!(error_code(&r), code::GROUP_NOT_FOUND);
    // Everyone else is still served.
    match alice.request(post("n2", "news", "still on")).await {
        Packet::C2cAck(a) => assert_eq!(a.seq, 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(pushes(&mut bob, 1).await[0].2, "still on");
    s.stop().await;
}

#[tokio::test]
async fn group_messages_survive_a_restart_and_pushes_are_resent_until_acked() {
    let s = TestServer::start().await;
    let http = Http::new(&s);
    create(&http, "crew", json!({})).await;
    add(&http, "crew", &[("alice", "member"), ("bob", "member")]).await;
    let (mut alice, _) = login(&s, "alice", "a1").await;
    for i in 0..10 {
        alice
            .request(post(&format!("c{i}"), "crew", &format!("c{i}")))
            .await;
    }
    drop(alice);
    let s = s.restart().await;
    let (mut bob, ack) = login(&s, "bob", "b1").await;
    assert_eq!(ack.groups.len(), 1);
    assert_eq!((ack.groups[0].head, ack.groups[0].cursor), (10, 0));
    let Packet::SyncReply(page) = bob.request(group_sync("crew", 0)).await else {
        panic!()
    };
    assert_eq!(page.entries.len(), 10);
    s.stop().await;
}
