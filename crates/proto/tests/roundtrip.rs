//! Property tests of the wire codec: every command survives the binary frame,
//! the JSON text frame and deflate; the decoder never panics on garbage and
//! never hands out a frame over the limit.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use switchboard_proto::{Command, Compression, FLAG_DEFLATE, Frame, Packet, decode, json, pb};

const MAX: usize = 1 << 20;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9_.-]{0,12}",
        1 => any::<String>(),
    ]
}

fn blob() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        vec(any::<u8>(), 0..64),
        // Repetitive bodies, so deflate has something to bite on.
        (any::<u8>(), 0usize..3000).prop_map(|(b, n)| vec![b; n]),
    ]
    .prop_map(Bytes::from)
}

fn user() -> impl Strategy<Value = pb::User> {
    (text(), text()).prop_map(|(app, uid)| pb::User { app, uid })
}

fn message() -> impl Strategy<Value = pb::Message> {
    (
        any::<u64>(),
        proptest::option::of(user()),
        proptest::option::of(user()),
        text(),
        blob(),
        text(),
        any::<i64>(),
    )
        .prop_map(
            |(msg_id, from, to, r#type, body, client_msg_id, server_time_ms)| pb::Message {
                group: Default::default(),
                msg_id,
                from,
                to,
                r#type,
                body,
                client_msg_id,
                server_time_ms,
                read: None,
                ..Default::default()
            },
        )
}

fn push() -> impl Strategy<Value = pb::Push> {
    (any::<u64>(), proptest::option::of(message()))
        .prop_map(|(seq, message)| pb::Push { seq, message })
}

/// Arbitrary field values for one command. The match is exhaustive, so a new
/// command does not compile until it has a strategy here.
fn packet_for(cmd: Command) -> BoxedStrategy<Packet> {
    match cmd {
        Command::Login => (text(), text(), text(), vec(text(), 0..3), text())
            .prop_map(
                |(token, platform, device_id, compression, client_version)| {
                    Packet::Login(pb::Login {
                        token,
                        platform,
                        device_id,
                        compression,
                        client_version,
                    })
                },
            )
            .boxed(),
        Command::LoginAck => (
            proptest::option::of(user()),
            any::<u64>(),
            any::<u64>(),
            text(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            text(),
        )
            .prop_map(
                |(
                    user,
                    timeline_head,
                    cursor,
                    compression,
                    keepalive_secs,
                    max_frame_bytes,
                    server_time_ms,
                    node,
                )| {
                    Packet::LoginAck(pb::LoginAck {
                        groups: Default::default(),
                        user,
                        timeline_head,
                        cursor,
                        compression,
                        keepalive_secs,
                        max_frame_bytes,
                        server_time_ms,
                        node,
                    })
                },
            )
            .boxed(),
        Command::Logout => Just(Packet::Logout(pb::Logout {})).boxed(),
        Command::LogoutAck => Just(Packet::LogoutAck(pb::LogoutAck {})).boxed(),
        Command::Ping => Just(Packet::Ping(pb::Ping {})).boxed(),
        Command::Pong => any::<u64>()
            .prop_map(|server_time_ms| Packet::Pong(pb::Pong { server_time_ms }))
            .boxed(),
        Command::C2c => (
            text(),
            proptest::option::of(user()),
            text(),
            blob(),
            any::<bool>(),
        )
            .prop_map(|(client_msg_id, to, r#type, body, transient)| {
                Packet::C2c(pb::C2c {
                    group: Default::default(),
                    client_msg_id,
                    to,
                    r#type,
                    body,
                    transient,
                })
            })
            .boxed(),
        Command::C2cAck => (
            text(),
            any::<u64>(),
            any::<u64>(),
            any::<i64>(),
            any::<bool>(),
            any::<u32>(),
        )
            .prop_map(
                |(client_msg_id, msg_id, seq, server_time_ms, duplicate, devices_reached)| {
                    Packet::C2cAck(pb::C2cAck {
                        client_msg_id,
                        msg_id,
                        seq,
                        server_time_ms,
                        duplicate,
                        devices_reached,
                    })
                },
            )
            .boxed(),
        Command::Push => push().prop_map(Packet::Push).boxed(),
        Command::PushAck => any::<u64>()
            .prop_map(|seq| {
                Packet::PushAck(pb::PushAck {
                    group: Default::default(),
                    seq,
                })
            })
            .boxed(),
        Command::Sync => (any::<u64>(), any::<u32>())
            .prop_map(|(since, limit)| {
                Packet::Sync(pb::Sync {
                    group: Default::default(),
                    since,
                    limit,
                })
            })
            .boxed(),
        Command::SyncReply => (vec(push(), 0..4), any::<u64>(), any::<bool>())
            .prop_map(|(entries, timeline_head, has_more)| {
                Packet::SyncReply(pb::SyncReply {
                    since: Default::default(),
                    entries,
                    timeline_head,
                    has_more,
                })
            })
            .boxed(),
        Command::C2s => (text(), text(), blob())
            .prop_map(|(client_msg_id, r#type, body)| {
                Packet::C2s(pb::C2s {
                    client_msg_id,
                    r#type,
                    body,
                })
            })
            .boxed(),
        Command::C2sAck => (text(), any::<u64>(), any::<bool>())
            .prop_map(|(client_msg_id, msg_id, duplicate)| {
                Packet::C2sAck(pb::C2sAck {
                    client_msg_id,
                    msg_id,
                    duplicate,
                })
            })
            .boxed(),
        Command::Error => (any::<u32>(), text(), any::<bool>())
            .prop_map(|(code, message, fatal)| Packet::error(code, message, fatal))
            .boxed(),
        Command::Kick => (any::<u32>(), text())
            .prop_map(|(code, reason)| Packet::Kick(pb::Kick { code, reason }))
            .boxed(),
        Command::MarkRead => (proptest::option::of(user()), text(), any::<u64>())
            .prop_map(|(peer, group, seq)| Packet::MarkRead(pb::MarkRead { peer, group, seq }))
            .boxed(),
        Command::MarkReadAck => (any::<u64>(), any::<u64>())
            .prop_map(|(seq, msg_id)| Packet::MarkReadAck(pb::MarkReadAck { seq, msg_id }))
            .boxed(),
        Command::Amend => (text(), any::<u64>(), any::<bool>(), vec(any::<u8>(), 0..64))
            .prop_map(|(client_msg_id, msg_id, recall, body)| {
                Packet::Amend(pb::Amend {
                    client_msg_id,
                    msg_id,
                    recall,
                    body: body.into(),
                })
            })
            .boxed(),
        Command::AmendAck => (text(), any::<u64>(), any::<u64>(), any::<bool>(), text())
            .prop_map(|(client_msg_id, msg_id, seq, duplicate, group)| {
                Packet::AmendAck(pb::AmendAck {
                    client_msg_id,
                    msg_id,
                    seq,
                    duplicate,
                    group,
                })
            })
            .boxed(),
        Command::ListConversations => (text(), any::<u32>())
            .prop_map(|(after, limit)| {
                Packet::ListConversations(pb::ListConversations { after, limit })
            })
            .boxed(),
        Command::ConversationList => (
            vec(
                (
                    proptest::option::of(user()),
                    text(),
                    proptest::option::of(push()),
                    any::<i64>(),
                    any::<u64>(),
                    any::<u64>(),
                    any::<u64>(),
                ),
                0..3,
            ),
            text(),
            any::<u64>(),
        )
            .prop_map(|(convs, next, total_unread)| {
                Packet::ConversationList(pb::ConversationList {
                    conversations: convs
                        .into_iter()
                        .map(
                            |(peer, group, last, last_time_ms, unread, read_seq, peer_read)| {
                                pb::Conversation {
                                    peer,
                                    group,
                                    last,
                                    last_time_ms,
                                    unread,
                                    read_seq,
                                    peer_read_msg_id: peer_read,
                                }
                            },
                        )
                        .collect(),
                    next,
                    total_unread,
                })
            })
            .boxed(),
    }
}

/// Any command of `Command::ALL`, with arbitrary fields.
fn packet() -> impl Strategy<Value = Packet> {
    select(Command::ALL).prop_flat_map(packet_for)
}

/// Decodes every complete frame in `buf`.
fn drain(buf: &mut BytesMut, out: &mut Vec<(u32, Packet)>) {
    while let Some(frame) = decode(buf, MAX).expect("valid frames decode") {
        assert_eq!(frame.flags, 0);
        out.push((frame.seq, Packet::from_frame(&frame).expect("valid body")));
    }
}

#[test]
fn every_command_has_a_strategy_and_a_json_name() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for (i, &cmd) in Command::ALL.iter().enumerate() {
        let p = packet_for(cmd).new_tree(&mut runner).unwrap().current();
        assert_eq!(p.command(), cmd);
        assert_eq!(Command::from_u16(cmd as u16), Some(cmd));
        assert_eq!(Command::from_json_name(cmd.json_name()), Some(cmd));
        assert_eq!(cmd as usize, i + 1, "commands are numbered 1.. in order");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn binary_frame_round_trip(p in packet(), seq in any::<u32>()) {
        let bytes = p.encode(seq);
        prop_assert_eq!(&bytes[..], &p.to_frame(seq).encode()[..]);
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = decode(&mut buf, bytes.len()).unwrap().unwrap();
        prop_assert!(buf.is_empty());
        prop_assert_eq!(frame.seq, seq);
        prop_assert_eq!(frame.cmd, p.command() as u16);
        prop_assert_eq!(Packet::from_frame(&frame).unwrap(), p);
    }

    #[test]
    fn json_frame_round_trip(p in packet(), seq in any::<u32>()) {
        let text = json::encode(&p, seq);
        let (got_seq, got) = json::decode(&text).unwrap();
        prop_assert_eq!(got_seq, seq);
        prop_assert_eq!(got, p.clone());

        // The command may also be given by number.
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["cmd"] = serde_json::Value::from(p.command() as u16);
        let (got_seq, got) = json::decode(&v.to_string()).unwrap();
        prop_assert_eq!(got_seq, seq);
        prop_assert_eq!(got, p);
    }

    #[test]
    fn concatenated_frames_in_arbitrary_chunks(
        packets in vec((packet(), any::<u32>()), 0..8),
        cuts in vec(1usize..300, 1..64),
    ) {
        let mut wire = BytesMut::new();
        for (p, seq) in &packets {
            p.encode_frame_into(*seq, &mut wire);
        }
        let wire = wire.freeze();

        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut rest = &wire[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            i += 1;
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            drain(&mut buf, &mut got);
        }
        prop_assert!(buf.is_empty());
        let want: Vec<(u32, Packet)> = packets.into_iter().map(|(p, s)| (s, p)).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn deflate_round_trip(p in packet(), seq in any::<u32>(), threshold in 0usize..600) {
        let c = Compression::Deflate { threshold };
        let frame = c.deflate(p.to_frame(seq));
        let plain_len = p.encode_body().len();
        if frame.flags & FLAG_DEFLATE != 0 {
            prop_assert!(plain_len >= threshold);
            prop_assert!(frame.body.len() < plain_len);
        } else {
            prop_assert_eq!(frame.body.len(), plain_len);
        }
        let mut buf = BytesMut::from(&frame.encode()[..]);
        let decoded = decode(&mut buf, MAX).unwrap().unwrap();
        prop_assert_eq!(&decoded, &frame);
        let inflated = c.inflate(decoded, plain_len).unwrap();
        prop_assert_eq!(inflated.flags, 0);
        prop_assert_eq!(Packet::from_frame(&inflated).unwrap(), p);
    }

    #[test]
    fn deflate_round_trip_of_raw_bodies(body in blob(), threshold in 0usize..100) {
        let c = Compression::Deflate { threshold };
        let plain = Frame { cmd: 7, flags: 0, seq: 1, body };
        let packed = c.deflate(plain.clone());
        prop_assert_eq!(c.inflate(packed.clone(), plain.body.len()).unwrap(), plain.clone());
        if packed.flags & FLAG_DEFLATE != 0 && !plain.body.is_empty() {
            prop_assert!(c.inflate(packed, plain.body.len() - 1).is_err());
        }
    }

    #[test]
    fn decode_never_panics_nor_exceeds_the_limit(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..256),
            // A plausible header (version 1, small lengths) followed by garbage.
            (0u32..200, 0u16..40, any::<u32>(), any::<u32>(), vec(any::<u8>(), 0..256))
                .prop_map(|(len, hdrlen, cmd, seq, tail)| {
                    let mut v = Vec::new();
                    v.extend_from_slice(&len.to_be_bytes());
                    v.extend_from_slice(&hdrlen.to_be_bytes());
                    v.extend_from_slice(&1u16.to_be_bytes());
                    v.extend_from_slice(&(cmd & 0x0001_ffff).to_be_bytes());
                    v.extend_from_slice(&seq.to_be_bytes());
                    v.extend_from_slice(&tail);
                    v
                }),
        ],
        max in 0usize..300,
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            let before = buf.len();
            match decode(&mut buf, max) {
                Ok(Some(frame)) => {
                    let taken = before - buf.len();
                    prop_assert!(taken <= max, "frame of {} bytes over max {}", taken, max);
                    prop_assert!(taken >= 16 + frame.body.len());
                    let _ = Packet::from_frame(&frame);
                    let _ = Compression::Deflate { threshold: 0 }.inflate(frame, max);
                }
                Ok(None) => {
                    prop_assert_eq!(buf.len(), before);
                    break;
                }
                Err(e) => {
                    prop_assert!(e.is_fatal());
                    prop_assert_eq!(buf.len(), before);
                    break;
                }
            }
        }
        if let Ok(text) = std::str::from_utf8(&bytes) {
            let _ = json::decode(text);
        }
    }
}
