//! The example exchange of `docs/protocol.md`, produced by the real codec.
//!
//! Each example packet is encoded as a binary frame (rendered as annotated hex:
//! header fields, then every protobuf field, nested messages indented) and as
//! a JSON text frame. Both renderings must equal the strings below, and those
//! strings must appear verbatim in `docs/protocol.md`, so the document cannot
//! drift from the code. Field names in the annotations come from
//! `proto/switchboard.proto`.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use switchboard_proto::{Packet, code, decode, json, pb};

const TOKEN: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhcHAiOiJkZW1vIiwic3ViIjoiYWxpY2UiLCJleHAiOjQxMDI0NDQ4MDB9.OKl-q2HyyEOmh7Kl4WXKu7zxG67RCCO79xLgmnuuzEk";
const MSG_ID: u64 = 4_194_304_000_000_001;
const TIME_MS: i64 = 1_767_225_600_000;

fn user(uid: &str) -> Option<pb::User> {
    Some(pb::User {
        app: "demo".into(),
        uid: uid.into(),
    })
}

fn message() -> pb::Message {
    pb::Message {
        group: Default::default(),
        msg_id: MSG_ID,
        from: user("alice"),
        to: user("bob"),
        r#type: "text".into(),
        body: Bytes::from_static(br#"{"text":"hi"}"#),
        client_msg_id: "m-1".into(),
        server_time_ms: TIME_MS,
        read: None,
        ..Default::default()
    }
}

/// Entry 12 of group `order-1001`: the courier's message.
fn group_entry() -> pb::Push {
    pb::Push {
        seq: 12,
        message: Some(pb::Message {
            group: "order-1001".into(),
            msg_id: MSG_ID + 1,
            from: Some(pb::User {
                app: "demo".into(),
                uid: "carol".into(),
            }),
            to: Some(pb::User {
                app: "demo".into(),
                uid: String::new(),
            }),
            r#type: "text".into(),
            body: Bytes::from_static(br#"{"text":"on my way"}"#),
            client_msg_id: "m-2".into(),
            server_time_ms: TIME_MS,
            read: None,
            ..Default::default()
        }),
    }
}

/// Entry 8 of Bob's timeline: Alice recalled her message (entry 7).
fn recall_notice() -> pb::Push {
    pb::Push {
        seq: 8,
        message: Some(pb::Message {
            msg_id: MSG_ID + 3,
            r#type: String::new(),
            body: Bytes::new(),
            client_msg_id: "r-1".into(),
            amended: Some(Box::new(pb::Message {
                body: Bytes::new(),
                recalled: true,
                ..message()
            })),
            ..message()
        }),
    }
}

/// The exchange of the document, in order: (header seq, packet).
fn examples() -> Vec<(&'static str, u32, Packet)> {
    vec![
        (
            "login",
            1,
            Packet::Login(pb::Login {
                token: TOKEN.into(),
                platform: "mobile".into(),
                device_id: "phone-1".into(),
                compression: vec!["deflate".into()],
                client_version: "sb-demo/1.0".into(),
            }),
        ),
        (
            "login_ack",
            1,
            Packet::LoginAck(pb::LoginAck {
                groups: Default::default(),
                user: user("alice"),
                timeline_head: 42,
                cursor: 40,
                compression: "deflate".into(),
                keepalive_secs: 30,
                max_frame_bytes: 65536,
                server_time_ms: TIME_MS as u64,
                node: "local".into(),
            }),
        ),
        (
            "c2c",
            2,
            Packet::C2c(pb::C2c {
                group: Default::default(),
                client_msg_id: "m-1".into(),
                to: user("bob"),
                r#type: "text".into(),
                body: Bytes::from_static(br#"{"text":"hi"}"#),
                transient: false,
            }),
        ),
        (
            "c2c_ack",
            2,
            Packet::C2cAck(pb::C2cAck {
                client_msg_id: "m-1".into(),
                msg_id: MSG_ID,
                seq: 43,
                server_time_ms: TIME_MS,
                duplicate: false,
                devices_reached: 0,
            }),
        ),
        (
            "push",
            0,
            Packet::Push(pb::Push {
                seq: 7,
                message: Some(message()),
            }),
        ),
        (
            "push_ack",
            5,
            Packet::PushAck(pb::PushAck {
                group: Default::default(),
                seq: 7,
            }),
        ),
        (
            "sync",
            6,
            Packet::Sync(pb::Sync {
                group: Default::default(),
                since: 6,
                limit: 100,
            }),
        ),
        (
            "sync_reply",
            6,
            Packet::SyncReply(pb::SyncReply {
                since: Default::default(),
                entries: vec![pb::Push {
                    seq: 7,
                    message: Some(message()),
                }],
                timeline_head: 7,
                has_more: false,
            }),
        ),
        (
            "login_ack_groups",
            1,
            Packet::LoginAck(pb::LoginAck {
                groups: vec![pb::GroupState {
                    group: "order-1001".into(),
                    head: 12,
                    cursor: 11,
                }],
                user: user("bob"),
                timeline_head: 7,
                cursor: 7,
                compression: String::new(),
                keepalive_secs: 30,
                max_frame_bytes: 65536,
                server_time_ms: TIME_MS as u64,
                node: "local".into(),
            }),
        ),
        (
            "group_c2c",
            4,
            Packet::C2c(pb::C2c {
                group: "order-1001".into(),
                client_msg_id: "m-2".into(),
                to: None,
                r#type: "text".into(),
                body: Bytes::from_static(br#"{"text":"on my way"}"#),
                transient: false,
            }),
        ),
        (
            "group_c2c_ack",
            4,
            Packet::C2cAck(pb::C2cAck {
                client_msg_id: "m-2".into(),
                msg_id: MSG_ID + 1,
                seq: 12,
                server_time_ms: TIME_MS,
                duplicate: false,
                devices_reached: 0,
            }),
        ),
        ("group_push", 0, Packet::Push(group_entry())),
        (
            "group_push_ack",
            8,
            Packet::PushAck(pb::PushAck {
                group: "order-1001".into(),
                seq: 12,
            }),
        ),
        (
            "group_sync",
            9,
            Packet::Sync(pb::Sync {
                group: "order-1001".into(),
                since: 0,
                limit: 100,
            }),
        ),
        (
            "group_sync_reply",
            9,
            Packet::SyncReply(pb::SyncReply {
                since: 11,
                entries: vec![group_entry()],
                timeline_head: 12,
                has_more: false,
            }),
        ),
        (
            "error",
            3,
            Packet::error(
                code::CROSS_APP_FORBIDDEN,
                "users of app demo may not message users of app shop",
                false,
            ),
        ),
        (
            "recall",
            10,
            Packet::Amend(pb::Amend {
                client_msg_id: "r-1".into(),
                msg_id: MSG_ID,
                recall: true,
                body: Bytes::new(),
            }),
        ),
        (
            "recall_ack",
            10,
            Packet::AmendAck(pb::AmendAck {
                client_msg_id: "r-1".into(),
                msg_id: MSG_ID + 3,
                seq: 44,
                duplicate: false,
                group: String::new(),
            }),
        ),
        ("recall_push", 0, Packet::Push(recall_notice())),
    ]
}

/// message name → field number → (name, type).
type Schema = HashMap<String, HashMap<u64, (String, String)>>;

fn schema() -> Schema {
    let src = include_str!("../proto/switchboard.proto");
    let mut schema = Schema::new();
    let mut current: Option<String> = None;
    for line in src.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("message ") {
            let name = rest.split_whitespace().next().unwrap().to_string();
            schema.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let Some(msg) = &current else { continue };
        if line.starts_with("//") || !line.ends_with(';') || !line.contains('=') {
            continue;
        }
        let (decl, num) = line.trim_end_matches(';').split_once('=').unwrap();
        let words: Vec<&str> = decl.split_whitespace().collect();
        let (ty, name) = (words[words.len() - 2], words[words.len() - 1]);
        let num: u64 = num.trim().parse().unwrap();
        schema
            .get_mut(msg)
            .unwrap()
            .insert(num, (name.to_string(), ty.to_string()));
    }
    schema
}

fn varint(b: &[u8], i: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*i];
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

const HEX_COL: usize = 53;

/// One line per 16 bytes at most, the note on the first.
fn line(out: &mut String, offset: usize, bytes: &[u8], note: &str) {
    for (k, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let hex = hex.join(" ");
        let note = if k == 0 { note } else { "" };
        let l = format!("{:04x}  {hex:<HEX_COL$}{note}", offset + 16 * k);
        out.push_str(l.trim_end());
        out.push('\n');
    }
}

fn shown(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.chars().count() > 32 => {
            format!(
                "\"{}…\" ({} bytes)",
                s.chars().take(20).collect::<String>(),
                bytes.len()
            )
        }
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("{} bytes", bytes.len()),
    }
}

/// Annotates every field of a protobuf message at `base` in the frame.
fn fields(out: &mut String, schema: &Schema, msg: &str, b: &[u8], base: usize, depth: usize) {
    let indent = "  ".repeat(depth);
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let tag = varint(b, &mut i);
        let (num, wire) = (tag >> 3, tag & 7);
        let (name, ty) = schema[msg]
            .get(&num)
            .cloned()
            .unwrap_or_else(|| (format!("field{num}"), "?".into()));
        match wire {
            0 => {
                let v = varint(b, &mut i);
                let v = if ty == "bool" {
                    (v != 0).to_string()
                } else {
                    v.to_string()
                };
                line(
                    out,
                    base + start,
                    &b[start..i],
                    &format!("{indent}{num} {name} = {v}"),
                );
            }
            2 => {
                let len = varint(b, &mut i) as usize;
                let value = &b[i..i + len];
                if schema.contains_key(&ty) {
                    line(
                        out,
                        base + start,
                        &b[start..i],
                        &format!("{indent}{num} {name}: {ty}, {len} bytes"),
                    );
                    fields(out, schema, &ty, value, base + i, depth + 1);
                } else {
                    line(
                        out,
                        base + start,
                        &b[start..i + len],
                        &format!("{indent}{num} {name} = {}", shown(value)),
                    );
                }
                i += len;
            }
            w => panic!("wire type {w} is not used by switchboard.v1"),
        }
    }
}

/// The frame as annotated hex: the header on the first line, then the body.
fn annotated_hex(schema: &Schema, packet: &Packet, seq: u32) -> String {
    let wire = packet.encode(seq);
    let mut buf = BytesMut::from(&wire[..]);
    let frame = decode(&mut buf, wire.len()).unwrap().unwrap();
    assert_eq!(Packet::from_frame(&frame).unwrap(), *packet);

    let h = &wire[..16];
    let g = |r: std::ops::Range<usize>| {
        h[r].iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let hex = format!(
        "{}  {}  {}  {}  {}",
        g(0..4),
        g(4..6),
        g(6..8),
        g(8..12),
        g(12..16)
    );
    let mut out = format!(
        "0000  {hex:<HEX_COL$}len={} hdrlen=16 version=1 cmd={} ({}) seq={seq}\n",
        wire.len(),
        frame.cmd,
        packet.command().json_name(),
    );
    let msg = format!("{:?}", packet.command());
    fields(&mut out, schema, &msg, &wire[16..], 16, 0);
    out
}

const LOGIN_HEX: &str = r#"0000  00 00 00 c7  00 10  00 01  00 00 00 01  00 00 00 01  len=199 hdrlen=16 version=1 cmd=1 (login) seq=1
0010  0a 8d 01 65 79 4a 68 62 47 63 69 4f 69 4a 49 55      1 token = "eyJhbGciOiJIUzI1NiIs…" (141 bytes)
0020  7a 49 31 4e 69 49 73 49 6e 52 35 63 43 49 36 49
0030  6b 70 58 56 43 4a 39 2e 65 79 4a 68 63 48 41 69
0040  4f 69 4a 6b 5a 57 31 76 49 69 77 69 63 33 56 69
0050  49 6a 6f 69 59 57 78 70 59 32 55 69 4c 43 4a 6c
0060  65 48 41 69 4f 6a 51 78 4d 44 49 30 4e 44 51 34
0070  4d 44 42 39 2e 4f 4b 6c 2d 71 32 48 79 79 45 4f
0080  6d 68 37 4b 6c 34 57 58 4b 75 37 7a 78 47 36 37
0090  52 43 43 4f 37 39 78 4c 67 6d 6e 75 75 7a 45 6b
00a0  12 06 6d 6f 62 69 6c 65                              2 platform = "mobile"
00a8  1a 07 70 68 6f 6e 65 2d 31                           3 device_id = "phone-1"
00b1  22 07 64 65 66 6c 61 74 65                           4 compression = "deflate"
00ba  2a 0b 73 62 2d 64 65 6d 6f 2f 31 2e 30               5 client_version = "sb-demo/1.0"
"#;
const LOGIN_ACK_HEX: &str = r#"0000  00 00 00 40  00 10  00 01  00 00 00 02  00 00 00 01  len=64 hdrlen=16 version=1 cmd=2 (login_ack) seq=1
0010  0a 0d                                                1 user: User, 13 bytes
0012  0a 04 64 65 6d 6f                                      1 app = "demo"
0018  12 05 61 6c 69 63 65                                   2 uid = "alice"
001f  10 2a                                                2 timeline_head = 42
0021  18 28                                                3 cursor = 40
0023  22 07 64 65 66 6c 61 74 65                           4 compression = "deflate"
002c  28 1e                                                5 keepalive_secs = 30
002e  30 80 80 04                                          6 max_frame_bytes = 65536
0032  38 80 d0 ea b6 b7 33                                 7 server_time_ms = 1767225600000
0039  42 05 6c 6f 63 61 6c                                 8 node = "local"
"#;
const C2C_HEX: &str = r#"0000  00 00 00 37  00 10  00 01  00 00 00 07  00 00 00 02  len=55 hdrlen=16 version=1 cmd=7 (c2c) seq=2
0010  0a 03 6d 2d 31                                       1 client_msg_id = "m-1"
0015  12 0b                                                2 to: User, 11 bytes
0017  0a 04 64 65 6d 6f                                      1 app = "demo"
001d  12 03 62 6f 62                                         2 uid = "bob"
0022  1a 04 74 65 78 74                                    3 type = "text"
0028  22 0d 7b 22 74 65 78 74 22 3a 22 68 69 22 7d         4 body = "{\"text\":\"hi\"}"
"#;
const C2C_ACK_HEX: &str = r#"0000  00 00 00 27  00 10  00 01  00 00 00 08  00 00 00 02  len=39 hdrlen=16 version=1 cmd=8 (c2c_ack) seq=2
0010  0a 03 6d 2d 31                                       1 client_msg_id = "m-1"
0015  10 81 80 80 80 a8 d6 b9 07                           2 msg_id = 4194304000000001
001e  18 2b                                                3 seq = 43
0020  20 80 d0 ea b6 b7 33                                 4 server_time_ms = 1767225600000
"#;
const PUSH_HEX: &str = r#"0000  00 00 00 5a  00 10  00 01  00 00 00 09  00 00 00 00  len=90 hdrlen=16 version=1 cmd=9 (push) seq=0
0010  08 07                                                1 seq = 7
0012  12 46                                                2 message: Message, 70 bytes
0014  08 81 80 80 80 a8 d6 b9 07                             1 msg_id = 4194304000000001
001d  12 0d                                                  2 from: User, 13 bytes
001f  0a 04 64 65 6d 6f                                        1 app = "demo"
0025  12 05 61 6c 69 63 65                                     2 uid = "alice"
002c  1a 0b                                                  3 to: User, 11 bytes
002e  0a 04 64 65 6d 6f                                        1 app = "demo"
0034  12 03 62 6f 62                                           2 uid = "bob"
0039  22 04 74 65 78 74                                      4 type = "text"
003f  2a 0d 7b 22 74 65 78 74 22 3a 22 68 69 22 7d           5 body = "{\"text\":\"hi\"}"
004e  32 03 6d 2d 31                                         6 client_msg_id = "m-1"
0053  38 80 d0 ea b6 b7 33                                   7 server_time_ms = 1767225600000
"#;
const PUSH_ACK_HEX: &str = r#"0000  00 00 00 12  00 10  00 01  00 00 00 0a  00 00 00 05  len=18 hdrlen=16 version=1 cmd=10 (push_ack) seq=5
0010  08 07                                                1 seq = 7
"#;
const SYNC_HEX: &str = r#"0000  00 00 00 14  00 10  00 01  00 00 00 0b  00 00 00 06  len=20 hdrlen=16 version=1 cmd=11 (sync) seq=6
0010  08 06                                                1 since = 6
0012  10 64                                                2 limit = 100
"#;
const SYNC_REPLY_HEX: &str = r#"0000  00 00 00 5e  00 10  00 01  00 00 00 0c  00 00 00 06  len=94 hdrlen=16 version=1 cmd=12 (sync_reply) seq=6
0010  0a 4a                                                1 entries: Push, 74 bytes
0012  08 07                                                  1 seq = 7
0014  12 46                                                  2 message: Message, 70 bytes
0016  08 81 80 80 80 a8 d6 b9 07                               1 msg_id = 4194304000000001
001f  12 0d                                                    2 from: User, 13 bytes
0021  0a 04 64 65 6d 6f                                          1 app = "demo"
0027  12 05 61 6c 69 63 65                                       2 uid = "alice"
002e  1a 0b                                                    3 to: User, 11 bytes
0030  0a 04 64 65 6d 6f                                          1 app = "demo"
0036  12 03 62 6f 62                                             2 uid = "bob"
003b  22 04 74 65 78 74                                        4 type = "text"
0041  2a 0d 7b 22 74 65 78 74 22 3a 22 68 69 22 7d             5 body = "{\"text\":\"hi\"}"
0050  32 03 6d 2d 31                                           6 client_msg_id = "m-1"
0055  38 80 d0 ea b6 b7 33                                     7 server_time_ms = 1767225600000
005c  10 07                                                2 timeline_head = 7
"#;
const ERROR_HEX: &str = r#"0000  00 00 00 48  00 10  00 01  00 00 00 0f  00 00 00 03  len=72 hdrlen=16 version=1 cmd=15 (error) seq=3
0010  08 b8 17                                             1 code = 3000
0013  12 33 75 73 65 72 73 20 6f 66 20 61 70 70 20 64      2 message = "users of app demo ma…" (51 bytes)
0023  65 6d 6f 20 6d 61 79 20 6e 6f 74 20 6d 65 73 73
0033  61 67 65 20 75 73 65 72 73 20 6f 66 20 61 70 70
0043  20 73 68 6f 70
"#;

const LOGIN_JSON: &str = r#"{"cmd":"login","seq":1,"body":{"token":"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJhcHAiOiJkZW1vIiwic3ViIjoiYWxpY2UiLCJleHAiOjQxMDI0NDQ4MDB9.OKl-q2HyyEOmh7Kl4WXKu7zxG67RCCO79xLgmnuuzEk","platform":"mobile","deviceId":"phone-1","compression":["deflate"],"clientVersion":"sb-demo/1.0"}}"#;
const LOGIN_ACK_JSON: &str = r#"{"cmd":"login_ack","seq":1,"body":{"user":{"app":"demo","uid":"alice"},"timelineHead":"42","cursor":"40","compression":"deflate","keepaliveSecs":30,"maxFrameBytes":65536,"serverTimeMs":"1767225600000","node":"local"}}"#;
const C2C_JSON: &str = r#"{"cmd":"c2c","seq":2,"body":{"clientMsgId":"m-1","to":{"app":"demo","uid":"bob"},"type":"text","body":"eyJ0ZXh0IjoiaGkifQ=="}}"#;
const C2C_ACK_JSON: &str = r#"{"cmd":"c2c_ack","seq":2,"body":{"clientMsgId":"m-1","msgId":"4194304000000001","seq":"43","serverTimeMs":"1767225600000"}}"#;
const PUSH_JSON: &str = r#"{"cmd":"push","seq":0,"body":{"seq":"7","message":{"msgId":"4194304000000001","from":{"app":"demo","uid":"alice"},"to":{"app":"demo","uid":"bob"},"type":"text","body":"eyJ0ZXh0IjoiaGkifQ==","clientMsgId":"m-1","serverTimeMs":"1767225600000"}}}"#;
const PUSH_ACK_JSON: &str = r#"{"cmd":"push_ack","seq":5,"body":{"seq":"7"}}"#;
const SYNC_JSON: &str = r#"{"cmd":"sync","seq":6,"body":{"since":"6","limit":100}}"#;
const SYNC_REPLY_JSON: &str = r#"{"cmd":"sync_reply","seq":6,"body":{"entries":[{"seq":"7","message":{"msgId":"4194304000000001","from":{"app":"demo","uid":"alice"},"to":{"app":"demo","uid":"bob"},"type":"text","body":"eyJ0ZXh0IjoiaGkifQ==","clientMsgId":"m-1","serverTimeMs":"1767225600000"}}],"timelineHead":"7"}}"#;
const ERROR_JSON: &str = r#"{"cmd":"error","seq":3,"body":{"code":3000,"message":"users of app demo may not message users of app shop"}}"#;

const LOGIN_ACK_GROUPS_HEX: &str = r#"0000  00 00 00 47  00 10  00 01  00 00 00 02  00 00 00 01  len=71 hdrlen=16 version=1 cmd=2 (login_ack) seq=1
0010  0a 0b                                                1 user: User, 11 bytes
0012  0a 04 64 65 6d 6f                                      1 app = "demo"
0018  12 03 62 6f 62                                         2 uid = "bob"
001d  10 07                                                2 timeline_head = 7
001f  18 07                                                3 cursor = 7
0021  28 1e                                                5 keepalive_secs = 30
0023  30 80 80 04                                          6 max_frame_bytes = 65536
0027  38 80 d0 ea b6 b7 33                                 7 server_time_ms = 1767225600000
002e  42 05 6c 6f 63 61 6c                                 8 node = "local"
0035  4a 10                                                9 groups: GroupState, 16 bytes
0037  0a 0a 6f 72 64 65 72 2d 31 30 30 31                    1 group = "order-1001"
0043  10 0c                                                  2 head = 12
0045  18 0b                                                  3 cursor = 11
"#;
const LOGIN_ACK_GROUPS_JSON: &str = r#"{"cmd":"login_ack","seq":1,"body":{"user":{"app":"demo","uid":"bob"},"timelineHead":"7","cursor":"7","keepaliveSecs":30,"maxFrameBytes":65536,"serverTimeMs":"1767225600000","node":"local","groups":[{"group":"order-1001","head":"12","cursor":"11"}]}}"#;

const GROUP_C2C_HEX: &str = r#"0000  00 00 00 3d  00 10  00 01  00 00 00 07  00 00 00 04  len=61 hdrlen=16 version=1 cmd=7 (c2c) seq=4
0010  0a 03 6d 2d 32                                       1 client_msg_id = "m-2"
0015  1a 04 74 65 78 74                                    3 type = "text"
001b  22 14 7b 22 74 65 78 74 22 3a 22 6f 6e 20 6d 79      4 body = "{\"text\":\"on my way\"}"
002b  20 77 61 79 22 7d
0031  2a 0a 6f 72 64 65 72 2d 31 30 30 31                  5 group = "order-1001"
"#;
const GROUP_C2C_JSON: &str = r#"{"cmd":"c2c","seq":4,"body":{"clientMsgId":"m-2","type":"text","body":"eyJ0ZXh0Ijoib24gbXkgd2F5In0=","group":"order-1001"}}"#;

const GROUP_C2C_ACK_HEX: &str = r#"0000  00 00 00 27  00 10  00 01  00 00 00 08  00 00 00 04  len=39 hdrlen=16 version=1 cmd=8 (c2c_ack) seq=4
0010  0a 03 6d 2d 32                                       1 client_msg_id = "m-2"
0015  10 82 80 80 80 a8 d6 b9 07                           2 msg_id = 4194304000000002
001e  18 0c                                                3 seq = 12
0020  20 80 d0 ea b6 b7 33                                 4 server_time_ms = 1767225600000
"#;
const GROUP_C2C_ACK_JSON: &str = r#"{"cmd":"c2c_ack","seq":4,"body":{"clientMsgId":"m-2","msgId":"4194304000000002","seq":"12","serverTimeMs":"1767225600000"}}"#;

const GROUP_PUSH_HEX: &str = r#"0000  00 00 00 68  00 10  00 01  00 00 00 09  00 00 00 00  len=104 hdrlen=16 version=1 cmd=9 (push) seq=0
0010  08 0c                                                1 seq = 12
0012  12 54                                                2 message: Message, 84 bytes
0014  08 82 80 80 80 a8 d6 b9 07                             1 msg_id = 4194304000000002
001d  12 0d                                                  2 from: User, 13 bytes
001f  0a 04 64 65 6d 6f                                        1 app = "demo"
0025  12 05 63 61 72 6f 6c                                     2 uid = "carol"
002c  1a 06                                                  3 to: User, 6 bytes
002e  0a 04 64 65 6d 6f                                        1 app = "demo"
0034  22 04 74 65 78 74                                      4 type = "text"
003a  2a 14 7b 22 74 65 78 74 22 3a 22 6f 6e 20 6d 79        5 body = "{\"text\":\"on my way\"}"
004a  20 77 61 79 22 7d
0050  32 03 6d 2d 32                                         6 client_msg_id = "m-2"
0055  38 80 d0 ea b6 b7 33                                   7 server_time_ms = 1767225600000
005c  42 0a 6f 72 64 65 72 2d 31 30 30 31                    8 group = "order-1001"
"#;
const GROUP_PUSH_JSON: &str = r#"{"cmd":"push","seq":0,"body":{"seq":"12","message":{"msgId":"4194304000000002","from":{"app":"demo","uid":"carol"},"to":{"app":"demo"},"type":"text","body":"eyJ0ZXh0Ijoib24gbXkgd2F5In0=","clientMsgId":"m-2","serverTimeMs":"1767225600000","group":"order-1001"}}}"#;

const GROUP_PUSH_ACK_HEX: &str = r#"0000  00 00 00 1e  00 10  00 01  00 00 00 0a  00 00 00 08  len=30 hdrlen=16 version=1 cmd=10 (push_ack) seq=8
0010  08 0c                                                1 seq = 12
0012  12 0a 6f 72 64 65 72 2d 31 30 30 31                  2 group = "order-1001"
"#;
const GROUP_PUSH_ACK_JSON: &str =
    r#"{"cmd":"push_ack","seq":8,"body":{"seq":"12","group":"order-1001"}}"#;

const GROUP_SYNC_HEX: &str = r#"0000  00 00 00 1e  00 10  00 01  00 00 00 0b  00 00 00 09  len=30 hdrlen=16 version=1 cmd=11 (sync) seq=9
0010  10 64                                                2 limit = 100
0012  1a 0a 6f 72 64 65 72 2d 31 30 30 31                  3 group = "order-1001"
"#;
const GROUP_SYNC_JSON: &str = r#"{"cmd":"sync","seq":9,"body":{"limit":100,"group":"order-1001"}}"#;

const GROUP_SYNC_REPLY_HEX: &str = r#"0000  00 00 00 6e  00 10  00 01  00 00 00 0c  00 00 00 09  len=110 hdrlen=16 version=1 cmd=12 (sync_reply) seq=9
0010  0a 58                                                1 entries: Push, 88 bytes
0012  08 0c                                                  1 seq = 12
0014  12 54                                                  2 message: Message, 84 bytes
0016  08 82 80 80 80 a8 d6 b9 07                               1 msg_id = 4194304000000002
001f  12 0d                                                    2 from: User, 13 bytes
0021  0a 04 64 65 6d 6f                                          1 app = "demo"
0027  12 05 63 61 72 6f 6c                                       2 uid = "carol"
002e  1a 06                                                    3 to: User, 6 bytes
0030  0a 04 64 65 6d 6f                                          1 app = "demo"
0036  22 04 74 65 78 74                                        4 type = "text"
003c  2a 14 7b 22 74 65 78 74 22 3a 22 6f 6e 20 6d 79          5 body = "{\"text\":\"on my way\"}"
004c  20 77 61 79 22 7d
0052  32 03 6d 2d 32                                           6 client_msg_id = "m-2"
0057  38 80 d0 ea b6 b7 33                                     7 server_time_ms = 1767225600000
005e  42 0a 6f 72 64 65 72 2d 31 30 30 31                      8 group = "order-1001"
006a  10 0c                                                2 timeline_head = 12
006c  20 0b                                                4 since = 11
"#;
const GROUP_SYNC_REPLY_JSON: &str = r#"{"cmd":"sync_reply","seq":9,"body":{"entries":[{"seq":"12","message":{"msgId":"4194304000000002","from":{"app":"demo","uid":"carol"},"to":{"app":"demo"},"type":"text","body":"eyJ0ZXh0Ijoib24gbXkgd2F5In0=","clientMsgId":"m-2","serverTimeMs":"1767225600000","group":"order-1001"}}],"timelineHead":"12","since":"11"}}"#;

const RECALL_HEX: &str = r#"0000  00 00 00 20  00 10  00 01  00 00 00 15  00 00 00 0a  len=32 hdrlen=16 version=1 cmd=21 (amend) seq=10
0010  0a 03 72 2d 31                                       1 client_msg_id = "r-1"
0015  10 81 80 80 80 a8 d6 b9 07                           2 msg_id = 4194304000000001
001e  18 01                                                3 recall = true
"#;
const RECALL_JSON: &str = r#"{"cmd":"amend","seq":10,"body":{"clientMsgId":"r-1","msgId":"4194304000000001","recall":true}}"#;

const RECALL_ACK_HEX: &str = r#"0000  00 00 00 20  00 10  00 01  00 00 00 16  00 00 00 0a  len=32 hdrlen=16 version=1 cmd=22 (amend_ack) seq=10
0010  0a 03 72 2d 31                                       1 client_msg_id = "r-1"
0015  10 84 80 80 80 a8 d6 b9 07                           2 msg_id = 4194304000000004
001e  18 2c                                                3 seq = 44
"#;
const RECALL_ACK_JSON: &str = r#"{"cmd":"amend_ack","seq":10,"body":{"clientMsgId":"r-1","msgId":"4194304000000004","seq":"44"}}"#;

const RECALL_PUSH_HEX: &str = r#"0000  00 00 00 80  00 10  00 01  00 00 00 09  00 00 00 00  len=128 hdrlen=16 version=1 cmd=9 (push) seq=0
0010  08 08                                                1 seq = 8
0012  12 6c                                                2 message: Message, 108 bytes
0014  08 84 80 80 80 a8 d6 b9 07                             1 msg_id = 4194304000000004
001d  12 0d                                                  2 from: User, 13 bytes
001f  0a 04 64 65 6d 6f                                        1 app = "demo"
0025  12 05 61 6c 69 63 65                                     2 uid = "alice"
002c  1a 0b                                                  3 to: User, 11 bytes
002e  0a 04 64 65 6d 6f                                        1 app = "demo"
0034  12 03 62 6f 62                                           2 uid = "bob"
0039  32 03 72 2d 31                                         6 client_msg_id = "r-1"
003e  38 80 d0 ea b6 b7 33                                   7 server_time_ms = 1767225600000
0045  52 39                                                  10 amended: Message, 57 bytes
0047  08 81 80 80 80 a8 d6 b9 07                               1 msg_id = 4194304000000001
0050  12 0d                                                    2 from: User, 13 bytes
0052  0a 04 64 65 6d 6f                                          1 app = "demo"
0058  12 05 61 6c 69 63 65                                       2 uid = "alice"
005f  1a 0b                                                    3 to: User, 11 bytes
0061  0a 04 64 65 6d 6f                                          1 app = "demo"
0067  12 03 62 6f 62                                             2 uid = "bob"
006c  22 04 74 65 78 74                                        4 type = "text"
0072  32 03 6d 2d 31                                           6 client_msg_id = "m-1"
0077  38 80 d0 ea b6 b7 33                                     7 server_time_ms = 1767225600000
007e  58 01                                                    11 recalled = true
"#;
const RECALL_PUSH_JSON: &str = r#"{"cmd":"push","seq":0,"body":{"seq":"8","message":{"msgId":"4194304000000004","from":{"app":"demo","uid":"alice"},"to":{"app":"demo","uid":"bob"},"clientMsgId":"r-1","serverTimeMs":"1767225600000","amended":{"msgId":"4194304000000001","from":{"app":"demo","uid":"alice"},"to":{"app":"demo","uid":"bob"},"type":"text","clientMsgId":"m-1","serverTimeMs":"1767225600000","recalled":true}}}}"#;

fn expected(name: &str) -> (&'static str, &'static str) {
    match name {
        "login" => (LOGIN_HEX, LOGIN_JSON),
        "login_ack" => (LOGIN_ACK_HEX, LOGIN_ACK_JSON),
        "c2c" => (C2C_HEX, C2C_JSON),
        "c2c_ack" => (C2C_ACK_HEX, C2C_ACK_JSON),
        "push" => (PUSH_HEX, PUSH_JSON),
        "push_ack" => (PUSH_ACK_HEX, PUSH_ACK_JSON),
        "sync" => (SYNC_HEX, SYNC_JSON),
        "sync_reply" => (SYNC_REPLY_HEX, SYNC_REPLY_JSON),
        "error" => (ERROR_HEX, ERROR_JSON),
        "login_ack_groups" => (LOGIN_ACK_GROUPS_HEX, LOGIN_ACK_GROUPS_JSON),
        "group_c2c" => (GROUP_C2C_HEX, GROUP_C2C_JSON),
        "group_c2c_ack" => (GROUP_C2C_ACK_HEX, GROUP_C2C_ACK_JSON),
        "group_push" => (GROUP_PUSH_HEX, GROUP_PUSH_JSON),
        "group_push_ack" => (GROUP_PUSH_ACK_HEX, GROUP_PUSH_ACK_JSON),
        "group_sync" => (GROUP_SYNC_HEX, GROUP_SYNC_JSON),
        "group_sync_reply" => (GROUP_SYNC_REPLY_HEX, GROUP_SYNC_REPLY_JSON),
        "recall" => (RECALL_HEX, RECALL_JSON),
        "recall_ack" => (RECALL_ACK_HEX, RECALL_ACK_JSON),
        "recall_push" => (RECALL_PUSH_HEX, RECALL_PUSH_JSON),
        other => {
            if std::env::var_os("PRINT_EXAMPLES").is_some() {
                return ("", "");
            }
            panic!("no expected encoding for {other}")
        }
    }
}

#[test]
fn examples_match_the_codec_and_the_document() {
    let schema = schema();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol.md"
    ))
    .unwrap_or_default();
    for (name, seq, packet) in examples() {
        let (want_hex, want_json) = expected(name);
        let hex = annotated_hex(&schema, &packet, seq);
        let text = json::encode(&packet, seq);
        if want_hex.is_empty() {
            println!("=== {name}\n{hex}\n{text}\n");
            continue;
        }
        assert_eq!(hex, want_hex, "hex of {name}");
        assert_eq!(text, want_json, "JSON of {name}");
        assert_eq!(json::decode(&text).unwrap(), (seq, packet));
        assert!(
            doc.contains(want_hex),
            "docs/protocol.md lacks the hex of {name}"
        );
        assert!(
            doc.contains(want_json),
            "docs/protocol.md lacks the JSON of {name}"
        );
    }
}
