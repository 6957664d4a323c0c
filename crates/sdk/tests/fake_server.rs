//! The connection task against a scripted fake server: login, gap filling,
//! de-duplication, own messages, reconnect with resend, kicks, timeouts.
//! (Tests against the real server live with the server's test kit.)

use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use switchboard_sdk::proto::{Packet, decode, pb};
use switchboard_sdk::{Client, ClientConfig, Event, Events, SdkError, User, code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn alice() -> User {
    User {
        app: "shop".into(),
        uid: "alice".into(),
    }
}

fn bob() -> User {
    User {
        app: "shop".into(),
        uid: "bob".into(),
    }
}

fn msg(from: User, id: u64, client_msg_id: &str) -> pb::Message {
    pb::Message {
        group: Default::default(),
        msg_id: id,
        from: Some(from),
        to: Some(alice()),
        r#type: "text".into(),
        body: format!("m{id}").into(),
        client_msg_id: client_msg_id.into(),
        server_time_ms: 1,
        read: None,
        ..Default::default()
    }
}

fn push(seq: u64) -> Packet {
    Packet::Push(pb::Push {
        seq,
        message: Some(msg(bob(), 100 + seq, "")),
    })
}

/// One server-side connection speaking raw frames over TCP.
struct Peer {
    io: TcpStream,
    buf: BytesMut,
}

impl Peer {
    async fn accept(l: &TcpListener) -> Peer {
        let (io, _) = timeout(WAIT, l.accept()).await.unwrap().unwrap();
        Peer {
            io,
            buf: BytesMut::new(),
        }
    }

    /// The next client frame, pings answered and skipped.
    async fn recv(&mut self) -> (u32, Packet) {
        loop {
            if let Some(f) = decode(&mut self.buf, 1 << 20).unwrap() {
                let p = Packet::from_frame(&f).unwrap();
                if let Packet::Ping(_) = p {
                    self.send(f.seq, Packet::Pong(pb::Pong::default())).await;
                    continue;
                }
                return (f.seq, p);
            }
            let n = timeout(WAIT, self.io.read_buf(&mut self.buf))
                .await
                .expect("client frame in time")
                .unwrap();
            assert!(n > 0, "client closed");
        }
    }

    async fn send(&mut self, seq: u32, p: Packet) {
        self.io.write_all(&p.encode(seq)).await.unwrap();
    }

    /// Answers the login and the first sync (with `entries`).
    async fn login(l: &TcpListener, cursor: u64, entries: Vec<pb::Push>) -> Peer {
        let mut peer = Peer::accept(l).await;
        let (seq, p) = peer.recv().await;
        assert!(matches!(p, Packet::Login(_)), "{p:?}");
        peer.send(
            seq,
            Packet::LoginAck(pb::LoginAck {
                user: Some(alice()),
                timeline_head: entries.last().map_or(cursor, |e| e.seq),
                cursor,
                keepalive_secs: 30,
                max_frame_bytes: 1 << 20,
                ..Default::default()
            }),
        )
        .await;
        let (seq, p) = peer.recv().await;
        let Packet::Sync(sync) = p else {
            panic!("expected sync, got {p:?}")
        };
        assert_eq!(sync.since, cursor);
        peer.send(
            seq,
            Packet::SyncReply(pb::SyncReply {
                since: Default::default(),
                entries,
                timeline_head: 0,
                has_more: false,
            }),
        )
        .await;
        peer
    }

    async fn expect_ack(&mut self, want: u64) {
        let (_, p) = self.recv().await;
        assert_eq!(
            p,
            Packet::PushAck(pb::PushAck {
                group: Default::default(),
                seq: want
            })
        );
    }
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tcp://{}", l.local_addr().unwrap());
    (l, url)
}

fn config(url: &str) -> ClientConfig {
    ClientConfig::new(url, "token")
        .with_reconnect_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .with_request_timeout(Duration::from_secs(5))
}

async fn next(events: &mut Events) -> Event {
    timeout(WAIT, events.recv())
        .await
        .expect("event in time")
        .expect("events open")
}

async fn expect_message(events: &mut Events, want: u64) {
    match next(events).await {
        Event::Message { seq, message } => {
            assert_eq!((seq, message.msg_id), (want, 100 + want));
        }
        other => panic!("expected message {want}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_login_is_returned_with_its_code() {
    let (l, url) = listener().await;
    let server = tokio::spawn(async move {
        let mut peer = Peer::accept(&l).await;
        let (seq, _) = peer.recv().await;
        peer.send(
            seq,
            Packet::error(code::TOKEN_INVALID, "bad signature", true),
        )
        .await;
    });
    let err = Client::connect(config(&url)).await.unwrap_err();
    assert!(
        matches!(
            err,
            SdkError::Server {
                code: code::TOKEN_INVALID,
                ..
            }
        ),
        "{err:?}"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn gaps_are_filled_by_sync_duplicates_dropped_own_messages_skipped() {
    let (l, url) = listener().await;
    let (dup_done_tx, dup_done) = tokio::sync::oneshot::channel();
    let (client, mut events) = {
        let connect = tokio::spawn(Client::connect(config(&url)));
        let peer = Peer::login(&l, 0, vec![]).await;
        let (c, e) = connect.await.unwrap().unwrap();
        tokio::spawn(server_script(peer, dup_done_tx));
        (c, e)
    };
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    assert_eq!(client.user(), alice());

    async fn server_script(mut peer: Peer, dup_done: tokio::sync::oneshot::Sender<()>) {
        peer.send(0, push(1)).await;
        peer.expect_ack(1).await;
        // 3 before 2: the client syncs from 1.
        peer.send(0, push(3)).await;
        let (seq, p) = peer.recv().await;
        assert_eq!(
            p,
            Packet::Sync(pb::Sync {
                group: Default::default(),
                since: 1,
                limit: 200
            })
        );
        let page = |seqs: &[u64]| {
            seqs.iter()
                .map(|&s| pb::Push {
                    seq: s,
                    message: Some(msg(bob(), 100 + s, "")),
                })
                .collect()
        };
        peer.send(
            seq,
            Packet::SyncReply(pb::SyncReply {
                since: Default::default(),
                entries: page(&[2, 3]),
                timeline_head: 3,
                has_more: false,
            }),
        )
        .await;
        peer.expect_ack(3).await;
        // A resent push is acknowledged again but not delivered again.
        peer.send(0, push(2)).await;
        peer.expect_ack(3).await;
        let _ = dup_done.send(());
        // The client's own message takes seq 4 and is acknowledged, silently.
        let (seq, p) = peer.recv().await;
        let Packet::C2c(c2c) = p else { panic!("{p:?}") };
        assert_eq!(c2c.to, Some(bob()));
        peer.send(
            seq,
            Packet::C2cAck(pb::C2cAck {
                client_msg_id: c2c.client_msg_id,
                msg_id: 999,
                seq: 4,
                server_time_ms: 5,
                duplicate: false,
                devices_reached: 0,
            }),
        )
        .await;
        peer.expect_ack(4).await;
        peer.send(
            0,
            Packet::Push(pb::Push {
                seq: 0,
                message: Some(msg(bob(), 7, "")),
            }),
        )
        .await;
        peer.send(0, push(5)).await;
        peer.expect_ack(5).await;
        // Keep the connection open until the client closes.
        let mut rest = [0u8; 64];
        while peer.io.read(&mut rest).await.is_ok_and(|n| n > 0) {}
    }

    expect_message(&mut events, 1).await;
    expect_message(&mut events, 2).await;
    expect_message(&mut events, 3).await;
    timeout(WAIT, dup_done).await.unwrap().unwrap();
    let receipt = client.send(bob(), "text", "hi").await.unwrap();
    assert_eq!(
        (receipt.msg_id, receipt.seq, receipt.duplicate),
        (999, 4, false)
    );
    assert!(matches!(next(&mut events).await, Event::Online { message } if message.msg_id == 7));
    expect_message(&mut events, 5).await;
    assert_eq!(client.last_seq(), 5);
    client.close().await;
    assert!(matches!(next(&mut events).await, Event::Closed));
    assert!(!client.is_connected());
    assert!(matches!(
        client.send(bob(), "text", "late").await,
        Err(SdkError::Closed)
    ));
}

#[tokio::test]
async fn an_unacked_send_is_resent_with_the_same_id_after_a_reconnect() {
    let (l, url) = listener().await;
    let connect = tokio::spawn(Client::connect(config(&url)));
    let mut peer = Peer::login(&l, 0, vec![]).await;
    let (client, mut events) = connect.await.unwrap().unwrap();
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));

    let sender = client.clone();
    let send = tokio::spawn(async move { sender.send_with_id("cm-1", bob(), "text", "hi").await });
    let (_, p) = peer.recv().await;
    assert!(matches!(p, Packet::C2c(ref c) if c.client_msg_id == "cm-1"));
    // The server stored it, then the connection dropped before the ack.
    drop(peer);
    assert!(matches!(
        next(&mut events).await,
        Event::Disconnected { .. }
    ));

    // The reconnect syncs first: its own message comes back as entry 1 and
    // must not be shown; then the resent c2c gets the duplicate ack.
    let own = pb::Push {
        seq: 1,
        message: Some(msg(alice(), 500, "cm-1")),
    };
    let mut peer = Peer::login(&l, 0, vec![own]).await;
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    // Sync was answered (by `login`) after the resend went out: the resend
    // comes first, then the ack of the own entry.
    let (seq, p) = peer.recv().await;
    assert!(
        matches!(p, Packet::C2c(ref c) if c.client_msg_id == "cm-1"),
        "{p:?}"
    );
    peer.send(
        seq,
        Packet::C2cAck(pb::C2cAck {
            client_msg_id: "cm-1".into(),
            msg_id: 500,
            seq: 1,
            server_time_ms: 1,
            duplicate: true,
            devices_reached: 0,
        }),
    )
    .await;
    let receipt = send.await.unwrap().unwrap();
    assert!(receipt.duplicate);
    assert_eq!(receipt.seq, 1);
    peer.expect_ack(1).await;
    peer.send(0, push(2)).await;
    // The next event is entry 2: entry 1 (our own) was skipped.
    expect_message(&mut events, 2).await;
    peer.expect_ack(2).await;
}

#[tokio::test]
async fn a_replacing_kick_is_terminal() {
    let (l, url) = listener().await;
    let connect = tokio::spawn(Client::connect(config(&url)));
    let mut peer = Peer::login(&l, 0, vec![]).await;
    let (client, mut events) = connect.await.unwrap().unwrap();
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    peer.send(
        0,
        Packet::Kick(pb::Kick {
            code: code::KICK_REPLACED,
            reason: "same device".into(),
        }),
    )
    .await;
    assert!(matches!(
        next(&mut events).await,
        Event::Kicked {
            code: code::KICK_REPLACED,
            ..
        }
    ));
    assert!(matches!(next(&mut events).await, Event::Closed));
    assert!(timeout(WAIT, events.recv()).await.unwrap().is_none());
    assert!(!client.is_connected());
}

#[tokio::test]
async fn other_kicks_reconnect_and_resync_from_the_last_entry() {
    let (l, url) = listener().await;
    let connect = tokio::spawn(Client::connect(config(&url)));
    let mut peer = Peer::login(&l, 0, vec![]).await;
    let (client, mut events) = connect.await.unwrap().unwrap();
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    peer.send(0, push(1)).await;
    expect_message(&mut events, 1).await;
    peer.expect_ack(1).await;
    peer.send(
        0,
        Packet::Kick(pb::Kick {
            code: code::KICK_SHUTDOWN,
            reason: "restart".into(),
        }),
    )
    .await;
    drop(peer);
    assert!(matches!(
        next(&mut events).await,
        Event::Kicked {
            code: code::KICK_SHUTDOWN,
            ..
        }
    ));
    assert!(matches!(
        next(&mut events).await,
        Event::Disconnected { .. }
    ));
    // The server's cursor is still 0 (lazily persisted): the client moves it
    // to 1 and syncs from 1.
    let mut peer = Peer::accept(&l).await;
    let (seq, _) = peer.recv().await;
    peer.send(
        seq,
        Packet::LoginAck(pb::LoginAck {
            user: Some(alice()),
            keepalive_secs: 30,
            ..Default::default()
        }),
    )
    .await;
    peer.expect_ack(1).await;
    let (_, p) = peer.recv().await;
    assert!(
        matches!(p, Packet::Sync(pb::Sync { since: 1, .. })),
        "{p:?}"
    );
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    assert!(client.is_connected());
}

#[tokio::test]
async fn an_unanswered_request_times_out() {
    let (l, url) = listener().await;
    let cfg = config(&url).with_request_timeout(Duration::from_millis(200));
    let connect = tokio::spawn(Client::connect(cfg));
    let _peer = Peer::login(&l, 0, vec![]).await;
    let (client, _events) = connect.await.unwrap().unwrap();
    let err = client.c2s("gps", "{}").await.unwrap_err();
    assert!(matches!(err, SdkError::Timeout), "{err:?}");
}

#[tokio::test]
async fn a_retryable_error_is_retried_until_acked() {
    let (l, url) = listener().await;
    let connect = tokio::spawn(Client::connect(config(&url)));
    let mut peer = Peer::login(&l, 0, vec![]).await;
    let (client, _events) = connect.await.unwrap().unwrap();
    let c = client.clone();
    let report = tokio::spawn(async move { c.c2s_with_id("r-1", "gps", "{}").await });
    let (seq, p) = peer.recv().await;
    assert!(matches!(p, Packet::C2s(ref c) if c.client_msg_id == "r-1"));
    peer.send(seq, Packet::error(code::UNAVAILABLE, "bus down", false))
        .await;
    let (seq, p) = peer.recv().await;
    assert!(matches!(p, Packet::C2s(ref c) if c.client_msg_id == "r-1"));
    peer.send(
        seq,
        Packet::C2sAck(pb::C2sAck {
            client_msg_id: "r-1".into(),
            msg_id: 42,
            duplicate: false,
        }),
    )
    .await;
    assert_eq!(report.await.unwrap().unwrap().msg_id, 42);
    // A non-retryable error fails the request with its code.
    let c = client.clone();
    let report = tokio::spawn(async move { c.c2s("gps", "{}").await });
    let (seq, _) = peer.recv().await;
    peer.send(seq, Packet::error(code::FORBIDDEN, "no", false))
        .await;
    let err = report.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(code::FORBIDDEN));
}

#[tokio::test]
async fn websocket_carries_one_frame_per_message() {
    let (l, url) = listener().await;
    let url = url.replace("tcp://", "ws://") + "/ws";
    let server = tokio::spawn(async move {
        let (io, _) = l.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(io).await.unwrap();
        let mut recv = async || loop {
            let m = ws.next().await.unwrap().unwrap();
            if let tokio_tungstenite::tungstenite::Message::Binary(b) = m {
                let mut buf = BytesMut::from(&b[..]);
                let f = decode(&mut buf, 1 << 20).unwrap().unwrap();
                assert!(buf.is_empty());
                break (f.seq, Packet::from_frame(&f).unwrap());
            }
        };
        let (seq, _) = recv().await;
        let ack = Packet::LoginAck(pb::LoginAck {
            user: Some(alice()),
            keepalive_secs: 30,
            ..Default::default()
        });
        let (sync_seq, sync) = {
            ws.send(ack.encode(seq).into()).await.unwrap();
            let mut recv = async || loop {
                let m = ws.next().await.unwrap().unwrap();
                if let tokio_tungstenite::tungstenite::Message::Binary(b) = m {
                    let mut buf = BytesMut::from(&b[..]);
                    let f = decode(&mut buf, 1 << 20).unwrap().unwrap();
                    break (f.seq, Packet::from_frame(&f).unwrap());
                }
            };
            recv().await
        };
        assert!(matches!(sync, Packet::Sync(_)));
        let reply = Packet::SyncReply(pb::SyncReply {
            since: Default::default(),
            entries: vec![pb::Push {
                seq: 1,
                message: Some(msg(bob(), 101, "")),
            }],
            timeline_head: 1,
            has_more: false,
        });
        ws.send(reply.encode(sync_seq).into()).await.unwrap();
        // Wait for the ack, then hold the connection.
        while let Some(Ok(m)) = ws.next().await {
            if let tokio_tungstenite::tungstenite::Message::Binary(b) = m {
                let mut buf = BytesMut::from(&b[..]);
                let f = decode(&mut buf, 1 << 20).unwrap().unwrap();
                if let Ok(Packet::PushAck(a)) = Packet::from_frame(&f) {
                    assert_eq!(a.seq, 1);
                    break;
                }
            }
        }
    });
    let (client, mut events) = Client::connect(config(&url)).await.unwrap();
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    expect_message(&mut events, 1).await;
    timeout(WAIT, server).await.unwrap().unwrap();
    assert_eq!(client.last_seq(), 1);
}

#[tokio::test]
async fn a_local_addr_is_the_source_of_every_connection() {
    let (l, url) = listener().await;
    let local: std::net::IpAddr = "127.0.0.7".parse().unwrap();
    let server = tokio::spawn(async move {
        let mut sources = Vec::new();
        for _ in 0..2 {
            let peer = Peer::login(&l, 0, vec![]).await;
            sources.push(peer.io.peer_addr().unwrap().ip());
            // Dropped: the client reconnects from the same address.
        }
        sources
    });
    let (client, _events) = Client::connect(config(&url).with_local_addr(local))
        .await
        .unwrap();
    let sources = timeout(WAIT, server).await.unwrap().unwrap();
    assert_eq!(sources, vec![local, local]);
    client.close().await;
}

// ---- groups: one timeline per group, next to the user's own ----

fn group_msg(group: &str, from: User, id: u64, client_msg_id: &str) -> pb::Message {
    pb::Message {
        group: group.into(),
        to: Some(User {
            app: "shop".into(),
            uid: String::new(),
        }),
        ..msg(from, id, client_msg_id)
    }
}

fn group_entry(group: &str, seq: u64) -> pb::Push {
    pb::Push {
        seq,
        message: Some(group_msg(group, bob(), 1000 + seq, "")),
    }
}

fn group_push(group: &str, seq: u64) -> Packet {
    Packet::Push(group_entry(group, seq))
}

fn sync_reply(since: u64, entries: Vec<pb::Push>) -> Packet {
    Packet::SyncReply(pb::SyncReply {
        since,
        timeline_head: entries.last().map_or(since, |e| e.seq),
        entries,
        has_more: false,
    })
}

impl Peer {
    /// Answers the login with `ack` (nothing else).
    async fn login_ack(l: &TcpListener, ack: pb::LoginAck) -> Peer {
        let mut peer = Peer::accept(l).await;
        let (seq, p) = peer.recv().await;
        assert!(matches!(p, Packet::Login(_)), "{p:?}");
        let ack = pb::LoginAck {
            user: Some(alice()),
            keepalive_secs: 30,
            max_frame_bytes: 1 << 20,
            ..ack
        };
        peer.send(seq, Packet::LoginAck(ack)).await;
        peer
    }

    /// The next frame must be a sync of `group` from `since`; returns its header seq.
    async fn expect_sync(&mut self, group: &str, since: u64) -> u32 {
        let (seq, p) = self.recv().await;
        assert_eq!(
            p,
            Packet::Sync(pb::Sync {
                group: group.into(),
                since,
                limit: 200
            })
        );
        seq
    }

    async fn expect_group_ack(&mut self, group: &str, want: u64) {
        let (_, p) = self.recv().await;
        assert_eq!(
            p,
            Packet::PushAck(pb::PushAck {
                group: group.into(),
                seq: want
            })
        );
    }
}

async fn expect_group_message(events: &mut Events, want_group: &str, want: u64) {
    match next(events).await {
        Event::GroupMessage {
            group,
            seq,
            message,
        } => {
            assert_eq!(
                (group.as_str(), seq, message.msg_id),
                (want_group, want, 1000 + want)
            );
            assert_eq!(message.group, want_group);
        }
        other => panic!("expected {want_group} #{want}, got {other:?}"),
    }
}

#[tokio::test]
async fn group_pushes_arrive_in_group_order_next_to_the_user_timeline() {
    let (l, url) = listener().await;
    let connect = tokio::spawn(Client::connect(config(&url).with_group_since("g1", 10)));
    let mut peer = Peer::login(&l, 0, vec![]).await;
    let (client, mut events) = connect.await.unwrap().unwrap();
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    assert_eq!(client.group_position("g1"), Some(10));

    peer.send(0, group_push("g1", 11)).await;
    expect_group_message(&mut events, "g1", 11).await;
    peer.expect_group_ack("g1", 11).await;
    // The user's timeline and the group's are apart: user entry 1 is not a
    // gap of the group's 12, nor the other way round.
    peer.send(0, push(1)).await;
    expect_message(&mut events, 1).await;
    peer.expect_ack(1).await;
    // 13 before 12 on the group: held back until 12 is there (a sync of the
    // group would start at 11 if asked; 12 comes first here).
    peer.send(0, group_push("g1", 13)).await;
    let (seq, p) = peer.recv().await;
    assert_eq!(
        p,
        Packet::Sync(pb::Sync {
            group: "g1".into(),
            since: 11,
            limit: 200
        })
    );
    peer.send(0, group_push("g1", 12)).await;
    peer.send(
        seq,
        sync_reply(11, vec![group_entry("g1", 12), group_entry("g1", 13)]),
    )
    .await;
    expect_group_message(&mut events, "g1", 12).await;
    expect_group_message(&mut events, "g1", 13).await;
    peer.expect_group_ack("g1", 13).await;
    // A resent group push: acknowledged again, not shown again.
    peer.send(0, group_push("g1", 12)).await;
    peer.expect_group_ack("g1", 13).await;
    peer.send(0, push(2)).await;
    expect_message(&mut events, 2).await;
    peer.expect_ack(2).await;
    assert_eq!(client.group_position("g1"), Some(13));
    assert_eq!(client.last_seq(), 2);
    assert_eq!(client.group_positions().len(), 1);
}

#[tokio::test]
async fn a_group_first_seen_by_push_syncs_from_where_the_members_view_starts() {
    let (l, url) = listener().await;
    let connect = tokio::spawn(Client::connect(config(&url)));
    let mut peer = Peer::login(&l, 0, vec![]).await;
    let (client, mut events) = connect.await.unwrap().unwrap();
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    assert_eq!(client.group_position("g2"), None);

    // Joined while online: entry 42 of a group the client has never seen.
    peer.send(0, group_push("g2", 42)).await;
    let seq = peer.expect_sync("g2", 0).await;
    // This member's view starts after 40: the page says so.
    peer.send(
        seq,
        sync_reply(40, vec![group_entry("g2", 41), group_entry("g2", 42)]),
    )
    .await;
    expect_group_message(&mut events, "g2", 41).await;
    expect_group_message(&mut events, "g2", 42).await;
    peer.expect_group_ack("g2", 42).await;
    assert_eq!(client.group_position("g2"), Some(42));
    peer.send(0, group_push("g2", 43)).await;
    expect_group_message(&mut events, "g2", 43).await;
    peer.expect_group_ack("g2", 43).await;
}

#[tokio::test]
async fn login_syncs_only_the_groups_it_lists() {
    let (l, url) = listener().await;
    let cfg = config(&url)
        .with_group_since("g-old", 8)
        .with_group_since("g-quiet", 3);
    let connect = tokio::spawn(Client::connect(cfg));
    let state = |group: &str, head, cursor| pb::GroupState {
        group: group.into(),
        head,
        cursor,
    };
    let mut peer = Peer::login_ack(
        &l,
        pb::LoginAck {
            groups: vec![state("g-old", 9, 7), state("g-new", 2, 0)],
            ..Default::default()
        },
    )
    .await;
    let (client, mut events) = connect.await.unwrap().unwrap();
    // The server's cursor of g-old is behind what the app has: moved up first.
    peer.expect_group_ack("g-old", 8).await;
    // Then one pass: the user's timeline and the two listed groups, not g-quiet.
    let user_sync = peer.expect_sync("", 0).await;
    let old_sync = peer.expect_sync("g-old", 8).await;
    let new_sync = peer.expect_sync("g-new", 0).await;
    peer.send(
        new_sync,
        sync_reply(0, vec![group_entry("g-new", 1), group_entry("g-new", 2)]),
    )
    .await;
    peer.send(old_sync, sync_reply(8, vec![group_entry("g-old", 9)]))
        .await;
    peer.send(user_sync, sync_reply(0, vec![])).await;
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    expect_group_message(&mut events, "g-new", 1).await;
    expect_group_message(&mut events, "g-new", 2).await;
    expect_group_message(&mut events, "g-old", 9).await;
    peer.expect_group_ack("g-new", 2).await;
    peer.expect_group_ack("g-old", 9).await;
    // Nothing else was asked: the next frame is the ack of this push.
    peer.send(0, push(1)).await;
    expect_message(&mut events, 1).await;
    peer.expect_ack(1).await;
    assert_eq!(client.group_position("g-quiet"), Some(3));
    assert_eq!(client.group_position("g-new"), Some(2));
}

#[tokio::test]
async fn a_refused_group_sync_leaves_the_group_and_posts_refused_are_not_retried() {
    let (l, url) = listener().await;
    let connect = tokio::spawn(Client::connect(config(&url).with_group_since("g3", 5)));
    let mut peer = Peer::login(&l, 0, vec![]).await;
    let (client, mut events) = connect.await.unwrap().unwrap();
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));

    peer.send(0, group_push("g3", 6)).await;
    expect_group_message(&mut events, "g3", 6).await;
    peer.expect_group_ack("g3", 6).await;
    // Removed from the group: a push past a hole, and the sync is refused.
    peer.send(0, group_push("g3", 9)).await;
    let seq = peer.expect_sync("g3", 6).await;
    peer.send(
        seq,
        Packet::error(code::NOT_GROUP_MEMBER, "not a member", false),
    )
    .await;
    match next(&mut events).await {
        Event::GroupLeft { group, code } => {
            assert_eq!((group.as_str(), code), ("g3", code::NOT_GROUP_MEMBER));
        }
        other => panic!("expected GroupLeft, got {other:?}"),
    }
    assert_eq!(client.group_position("g3"), None);

    // A broadcast group refuses the post: the error comes back, once.
    let c = client.clone();
    let post = tokio::spawn(async move { c.send_group("news", "text", "hi").await });
    let (seq, p) = peer.recv().await;
    let Packet::C2c(c2c) = p else { panic!("{p:?}") };
    assert_eq!((c2c.group.as_str(), c2c.to), ("news", None));
    peer.send(
        seq,
        Packet::error(code::GROUP_ADMINS_ONLY, "admins only", false),
    )
    .await;
    let err = post.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(code::GROUP_ADMINS_ONLY));
    // The connection stays: the user's timeline goes on (and no resend came first).
    peer.send(0, push(1)).await;
    expect_message(&mut events, 1).await;
    peer.expect_ack(1).await;
}

#[tokio::test]
async fn a_group_post_is_resent_with_its_id_and_not_shown_back() {
    let (l, url) = listener().await;
    let connect = tokio::spawn(Client::connect(config(&url)));
    let mut peer = Peer::login(&l, 0, vec![]).await;
    let (client, mut events) = connect.await.unwrap().unwrap();
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));

    let c = client.clone();
    let post =
        tokio::spawn(async move { c.send_group_with_id("gm-1", "g1", "text", "hi all").await });
    let (_, p) = peer.recv().await;
    assert!(matches!(p, Packet::C2c(ref c) if c.client_msg_id == "gm-1" && c.group == "g1"));
    // Stored, then the connection dropped before the ack.
    drop(peer);
    assert!(matches!(
        next(&mut events).await,
        Event::Disconnected { .. }
    ));

    // The login lists g1 (entry 4 is the post); the resend follows the syncs.
    let mut peer = Peer::login_ack(
        &l,
        pb::LoginAck {
            groups: vec![pb::GroupState {
                group: "g1".into(),
                head: 4,
                cursor: 3,
            }],
            ..Default::default()
        },
    )
    .await;
    let user_sync = peer.expect_sync("", 0).await;
    let group_sync = peer.expect_sync("g1", 3).await;
    let (seq, p) = peer.recv().await;
    assert!(
        matches!(p, Packet::C2c(ref c) if c.client_msg_id == "gm-1" && c.group == "g1"),
        "{p:?}"
    );
    peer.send(user_sync, sync_reply(0, vec![])).await;
    let own = pb::Push {
        seq: 4,
        message: Some(group_msg("g1", alice(), 1004, "gm-1")),
    };
    peer.send(group_sync, sync_reply(3, vec![own])).await;
    peer.send(
        seq,
        Packet::C2cAck(pb::C2cAck {
            client_msg_id: "gm-1".into(),
            msg_id: 1004,
            seq: 4,
            server_time_ms: 1,
            duplicate: true,
            devices_reached: 0,
        }),
    )
    .await;
    let receipt = post.await.unwrap().unwrap();
    assert_eq!((receipt.seq, receipt.duplicate), (4, true));
    peer.expect_group_ack("g1", 4).await;
    // The next group event is 5: the own post (4) was not shown.
    peer.send(0, group_push("g1", 5)).await;
    assert!(matches!(next(&mut events).await, Event::Connected { .. }));
    expect_group_message(&mut events, "g1", 5).await;
    peer.expect_group_ack("g1", 5).await;
    assert_eq!(client.group_position("g1"), Some(5));
}
