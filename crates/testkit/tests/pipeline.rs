//! Pipelined requests: a client that sends many requests without waiting
//! gets every answer, in request order, and the delivery contract still
//! holds (stored once, pushed once, in order); the gate reads no more than
//! `max_in_flight` requests ahead of its answers.

use std::time::Duration;

use bytes::BytesMut;
use switchboard_proto::{Packet, pb};
use switchboard_testkit::raw::{RawClient, c2c};
use switchboard_testkit::server::TestServer;

const T: Duration = Duration::from_secs(20);

/// A node whose rate limit does not get in the way of a burst.
async fn server(max_in_flight: usize) -> TestServer {
    TestServer::start_with(|c| {
        c.gate.rate_per_sec = 100_000;
        c.gate.rate_burst = 100_000;
        c.gate.max_in_flight = max_in_flight;
    })
    .await
}

/// Sends `packets` in one write, numbered from the client's next request id;
/// returns their ids.
async fn send_burst(c: &mut RawClient, packets: Vec<Packet>) -> Vec<u32> {
    let mut ids = Vec::new();
    let mut buf = BytesMut::new();
    let first = c.send(Packet::Ping(pb::Ping {})).await;
    // The ping above fixes the next id; its pong is skipped by the caller.
    for (i, p) in packets.into_iter().enumerate() {
        let id = first + 1 + i as u32;
        buf.extend_from_slice(&p.encode(id));
        ids.push(id);
    }
    c.send_bytes(&buf).await;
    ids
}

/// The next `n` answers (pongs and pushes skipped), with their request ids.
async fn answers(c: &mut RawClient, n: usize) -> Vec<(u32, Packet)> {
    let mut out = Vec::new();
    while out.len() < n {
        match c.recv_within(T).await {
            Some((_, Packet::Pong(_) | Packet::Push(_))) => continue,
            Some(a) => out.push(a),
            None => panic!("closed after {} answers", out.len()),
        }
    }
    out
}

/// Pushes until `n` distinct timeline seqs arrived; acks them all. Returns
/// (seq, client_msg_id) in arrival order, and how many were repeats.
async fn pushes(c: &mut RawClient, n: usize) -> (Vec<(u64, String)>, usize) {
    let mut got: Vec<(u64, String)> = Vec::new();
    let mut repeats = 0;
    while got.len() < n {
        match c.recv_within(T).await {
            Some((_, Packet::Push(p))) => {
                if got.iter().any(|(s, _)| *s == p.seq) {
                    repeats += 1;
                    continue;
                }
                let m = p.message.expect("push carries its message");
                got.push((p.seq, m.client_msg_id));
            }
            Some(_) => continue,
            None => panic!("closed after {} pushes", got.len()),
        }
    }
    let last = got.last().map(|(s, _)| *s).unwrap_or(0);
    c.send(Packet::PushAck(pb::PushAck {
        group: Default::default(),
        seq: last,
    }))
    .await;
    (got, repeats)
}

#[tokio::test]
async fn a_burst_of_200_is_acked_in_order_and_delivered_once_in_order() {
    let s = server(64).await;
    let (mut bob, _) = RawClient::login(s.tcp, &s.token("bob-burst"), "b").await;
    let (mut alice, _) = RawClient::login(s.tcp, &s.token("alice-burst"), "a").await;
    let burst = (0..200)
        .map(|i| c2c(&format!("m{i}"), "bob-burst", &format!("body {i}")))
        .collect();
    let ids = send_burst(&mut alice, burst).await;

    let got = answers(&mut alice, 200).await;
    let mut msg_ids = Vec::new();
    for (i, (id, p)) in got.into_iter().enumerate() {
        assert_eq!(id, ids[i], "answers come in request order");
        match p {
            Packet::C2cAck(a) => {
                assert_eq!(a.client_msg_id, format!("m{i}"));
                assert_eq!(a.seq, i as u64 + 1, "alice's timeline in send order");
                assert!(!a.duplicate);
                msg_ids.push(a.msg_id);
            }
            other => panic!("request {i} got {other:?}"),
        }
    }

    let (delivered, repeats) = pushes(&mut bob, 200).await;
    assert_eq!(repeats, 0, "each message pushed once");
    for (i, (seq, cmid)) in delivered.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "bob's pushes in timeline order");
        assert_eq!(
            *cmid,
            format!("m{i}"),
            "bob's timeline in alice's send order"
        );
    }

    // The same on disk: bob's timeline holds the 200 messages once, in order.
    let mut synced = Vec::new();
    let mut since = 0;
    loop {
        let Packet::SyncReply(page) = bob
            .request(Packet::Sync(pb::Sync {
                group: Default::default(),
                since,
                limit: 0,
            }))
            .await
        else {
            panic!("sync failed");
        };
        for e in &page.entries {
            synced.push(e.message.as_ref().expect("entry message").msg_id);
            since = e.seq;
        }
        if !page.has_more {
            break;
        }
    }
    assert_eq!(synced, msg_ids);
    s.stop().await;
}

#[tokio::test]
async fn duplicates_in_a_burst_are_stored_once_and_answered_with_the_first_ack() {
    let s = server(64).await;
    let (mut bob, _) = RawClient::login(s.tcp, &s.token("bob-dup"), "b").await;
    let (mut alice, _) = RawClient::login(s.tcp, &s.token("alice-dup"), "a").await;
    // Resends right behind their originals, while those are in flight.
    let order = ["m0", "m1", "m0", "m2", "m1", "m0", "m2", "m3"];
    let burst = order.iter().map(|m| c2c(m, "bob-dup", m)).collect();
    let ids = send_burst(&mut alice, burst).await;

    let got = answers(&mut alice, order.len()).await;
    let mut first: std::collections::HashMap<&str, pb::C2cAck> = Default::default();
    for (i, (id, p)) in got.into_iter().enumerate() {
        assert_eq!(id, ids[i], "answers come in request order");
        let Packet::C2cAck(a) = p else {
            panic!("request {i} got {p:?}")
        };
        assert_eq!(a.client_msg_id, order[i]);
        match first.get(order[i]) {
            None => {
                assert!(!a.duplicate, "{} is new", order[i]);
                first.insert(order[i], a);
            }
            Some(f) => {
                assert!(a.duplicate, "request {i} resends {}", order[i]);
                assert_eq!((a.msg_id, a.seq), (f.msg_id, f.seq), "the first ack again");
            }
        }
    }
    let seqs: Vec<u64> = ["m0", "m1", "m2", "m3"]
        .iter()
        .map(|m| first[m].seq)
        .collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 4],
        "stored once each, in first-send order"
    );

    // Bob may get a resend's push again (same seq); by seq, four messages.
    let (delivered, _) = pushes(&mut bob, 4).await;
    let cmids: Vec<&str> = delivered.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(cmids, ["m0", "m1", "m2", "m3"]);
    let Packet::SyncReply(page) = bob
        .request(Packet::Sync(pb::Sync {
            group: Default::default(),
            since: 0,
            limit: 0,
        }))
        .await
    else {
        panic!("sync failed");
    };
    assert_eq!(page.entries.len(), 4, "nothing stored twice");
    assert_eq!(page.timeline_head, 4);
    s.stop().await;
}

/// With `max_in_flight` 4 the gate stops reading after four unanswered
/// requests. A ping is answered as soon as it is read, so counting the acks
/// that reach the client before the pong shows how far ahead the gate read:
/// the ping behind 8 c2c can only be read once at least 5 were answered.
#[tokio::test]
async fn the_gate_reads_at_most_max_in_flight_requests_ahead() {
    let s = server(4).await;
    let (_bob, _) = RawClient::login(s.tcp, &s.token("bob-bound"), "b").await;
    let (mut alice, _) = RawClient::login(s.tcp, &s.token("alice-bound"), "a").await;
    let mut burst: Vec<Packet> = (0..8)
        .map(|i| c2c(&format!("m{i}"), "bob-bound", "x"))
        .collect();
    burst.push(Packet::Ping(pb::Ping {}));
    let ids = send_burst(&mut alice, burst).await;
    let ping_id = ids[8];

    let mut acks_before_pong = None;
    let mut acks = Vec::new();
    while acks.len() < 8 || acks_before_pong.is_none() {
        match alice.recv_within(T).await {
            Some((id, Packet::Pong(_))) if id == ping_id => acks_before_pong = Some(acks.len()),
            Some((_, Packet::Pong(_))) => continue,
            Some((id, Packet::C2cAck(a))) => acks.push((id, a.seq)),
            other => panic!("unexpected {other:?}"),
        }
    }
    let n = acks_before_pong.unwrap_or(0);
    assert!(
        n >= 5,
        "the ping was read with {} requests unanswered",
        8 - n
    );
    let expected: Vec<(u32, u64)> = (0..8).map(|i| (ids[i], i as u64 + 1)).collect();
    assert_eq!(acks, expected, "every c2c answered, in order");
    s.stop().await;
}

/// A logout behind requests in flight is answered after them.
#[tokio::test]
async fn logout_answers_the_requests_in_flight_first() {
    let s = server(64).await;
    let (mut alice, _) = RawClient::login(s.tcp, &s.token("alice-bye"), "a").await;
    let mut burst: Vec<Packet> = (0..5)
        .map(|i| c2c(&format!("m{i}"), "bob-bye", "x"))
        .collect();
    burst.push(Packet::Logout(pb::Logout {}));
    let ids = send_burst(&mut alice, burst).await;
    let got = answers(&mut alice, 6).await;
    for (i, (id, p)) in got.iter().enumerate() {
        assert_eq!(*id, ids[i]);
        if i < 5 {
            assert!(matches!(p, Packet::C2cAck(_)), "{p:?}");
        } else {
            assert!(matches!(p, Packet::LogoutAck(_)), "{p:?}");
        }
    }
    assert!(alice.recv_within(T).await.is_none(), "closed after logout");
    s.stop().await;
}
