//! docs/protocol.md §11 replayed against a running node (issue 15 item 4).
//!
//! `crates/proto/tests/protocol_examples.rs` checks the examples against the
//! codec; this test parses the hex of every example out of the document and
//! plays the exchange on a real node over TCP: client frames are sent byte
//! for byte as the document shows them, and every server frame received is
//! compared byte for byte with the document's, after normalizing only what
//! the server generates or what depends on history the test does not
//! replay: message ids (`msg_id`), times (`server_time_ms`), and the
//! sequence numbers of Alice's own timeline (`LoginAck.timeline_head` and
//! `cursor`, `C2cAck.seq`, `AmendAck.seq`: the document's Alice has 42
//! entries already). The recall names the message by the id this node gave
//! it.
//! Bob's timeline is replayed: six messages before the example's make its
//! push entry 7, as in the document, so his `seq`s are compared as they are.

use std::collections::HashMap;
use std::time::Duration;

use bytes::BytesMut;
use switchboard_proto::{Packet, decode, pb};
use switchboard_testkit::raw::{RawClient, c2c};
use switchboard_testkit::server::TestServer;

/// The secret the document's token is signed with.
const DOC_SECRET: &str = "demo-secret-for-the-examples";
const T: Duration = Duration::from_secs(10);

/// Where the notes of an annotated hex line start: the offset (4), two
/// spaces, then 53 columns of bytes.
const HEX_END: usize = 4 + 2 + 53;

/// The frame bytes of each example in §11, by name (`login`, `c2c_ack`, …).
fn doc_frames() -> HashMap<String, Vec<u8>> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/protocol.md"
    ))
    .expect("docs/protocol.md");
    let section = doc
        .split("## 11. Example exchange")
        .nth(1)
        .expect("§11 in docs/protocol.md");
    let mut frames = HashMap::new();
    let (mut name, mut hex) = (None::<String>, None::<Vec<u8>>);
    for line in section.lines() {
        if let Some(rest) = line.strip_prefix("### `") {
            name = rest.split('`').next().map(str::to_owned);
        } else if line == "```text" {
            hex = Some(Vec::new());
        } else if line == "```" {
            if let (Some(n), Some(bytes)) = (name.take(), hex.take()) {
                frames.insert(n, bytes);
            }
        } else if let Some(bytes) = hex.as_mut() {
            // "OOOO  bb bb …  notes": the bytes are the two-digit hex
            // tokens after the offset, in the columns before the notes (a
            // note may start with a field number such as 10).
            let bytes_part = line.get(..HEX_END).unwrap_or(line);
            let hex_byte = |t: &&str| t.len() == 2 && t.bytes().all(|b| b.is_ascii_hexdigit());
            for b in bytes_part.split_whitespace().skip(1).take_while(hex_byte) {
                bytes.push(u8::from_str_radix(b, 16).expect("a hex byte"));
            }
        }
    }
    frames
}

fn decode_all(bytes: &[u8]) -> (u32, Packet) {
    let mut buf = BytesMut::from(bytes);
    let frame = decode(&mut buf, usize::MAX)
        .expect("a frame")
        .expect("a whole frame");
    assert!(buf.is_empty(), "one frame per example");
    (
        frame.seq,
        Packet::from_frame(&frame).expect("a known packet"),
    )
}

/// The next frame from the server, as bytes (re-encoded: the codec is
/// canonical, and `protocol_examples.rs` checks it against these bytes).
async fn next(c: &mut RawClient) -> (u32, Packet) {
    c.recv_within(T).await.expect("a frame from the server")
}

fn normalize_message(m: &mut Option<pb::Message>, doc: &Option<pb::Message>) {
    if let (Some(m), Some(d)) = (m.as_mut(), doc.as_ref()) {
        m.msg_id = d.msg_id;
        m.server_time_ms = d.server_time_ms;
        // An amend notice: the amended message's too.
        if let (Some(a), Some(da)) = (m.amended.as_mut(), d.amended.as_ref()) {
            a.msg_id = da.msg_id;
            a.server_time_ms = da.server_time_ms;
        }
    }
}

/// `got` with the server-generated fields taken from `doc` (see the module doc).
fn normalized(got: Packet, doc: &Packet) -> Packet {
    match (got, doc) {
        (Packet::LoginAck(mut g), Packet::LoginAck(d)) => {
            g.timeline_head = d.timeline_head;
            g.cursor = d.cursor;
            g.server_time_ms = d.server_time_ms;
            Packet::LoginAck(g)
        }
        (Packet::C2cAck(mut g), Packet::C2cAck(d)) => {
            g.msg_id = d.msg_id;
            g.seq = d.seq;
            g.server_time_ms = d.server_time_ms;
            Packet::C2cAck(g)
        }
        (Packet::AmendAck(mut g), Packet::AmendAck(d)) => {
            g.msg_id = d.msg_id;
            g.seq = d.seq;
            Packet::AmendAck(g)
        }
        (Packet::Push(mut g), Packet::Push(d)) => {
            normalize_message(&mut g.message, &d.message);
            Packet::Push(g)
        }
        (Packet::SyncReply(mut g), Packet::SyncReply(d)) => {
            for (e, de) in g.entries.iter_mut().zip(&d.entries) {
                normalize_message(&mut e.message, &de.message);
            }
            Packet::SyncReply(g)
        }
        (g, _) => g,
    }
}

/// Asserts the server's frame equals the document's, byte for byte after
/// normalization.
fn check(name: &str, got: (u32, Packet), doc: &HashMap<String, Vec<u8>>) {
    let want = &doc[name];
    let (_, doc_packet) = decode_all(want);
    let bytes = normalized(got.1, &doc_packet).encode(got.0);
    assert_eq!(
        &bytes[..],
        &want[..],
        "the server's {name} differs from docs/protocol.md §11"
    );
}

#[tokio::test]
async fn every_example_of_the_protocol_doc_is_what_a_running_node_sends() {
    let doc = doc_frames();
    for name in [
        "login",
        "login_ack",
        "c2c",
        "c2c_ack",
        "push",
        "push_ack",
        "sync",
        "sync_reply",
        "error",
        "recall",
        "recall_ack",
        "recall_push",
    ] {
        assert!(doc.contains_key(name), "§11 has no hex for {name}");
    }
    let s = TestServer::start_with(|c| {
        c.node = "local".into();
        let demo = c.apps.iter_mut().find(|a| a.name == "demo").expect("demo");
        demo.jwt_secret = Some(DOC_SECRET.into());
        // The document's Alice may not message app `shop`.
        demo.cross_app.clear();
    })
    .await;
    let bob_token =
        switchboard_core::auth::issue_token(DOC_SECRET, "demo", "bob", 3600).expect("token");

    // Alice logs in with the document's own frame (its token verifies).
    let mut alice = RawClient::connect(s.tcp).await;
    alice.send_bytes(&doc["login"]).await;
    check("login_ack", next(&mut alice).await, &doc);

    // Bob's timeline gets entries 1..6 first, so the example's is 7.
    for i in 0..6 {
        let reply = alice.request(c2c(&format!("before-{i}"), "bob", "x")).await;
        assert!(matches!(reply, Packet::C2cAck(_)), "{reply:?}");
    }
    let (mut phone, _) = RawClient::login(s.tcp, &bob_token, "phone-1").await;

    alice.send_bytes(&doc["c2c"]).await;
    let ack = next(&mut alice).await;
    let Packet::C2cAck(sent) = &ack.1 else {
        panic!("not a c2c_ack: {ack:?}")
    };
    let sent_id = sent.msg_id;
    check("c2c_ack", ack, &doc);
    check("push", next(&mut phone).await, &doc);
    phone.send_bytes(&doc["push_ack"]).await;
    assert!(matches!(
        phone.request(Packet::Ping(pb::Ping {})).await,
        Packet::Pong(_)
    ));

    let (mut laptop, _) = RawClient::login(s.tcp, &bob_token, "laptop-1").await;
    laptop.send_bytes(&doc["sync"]).await;
    check("sync_reply", next(&mut laptop).await, &doc);

    // Request 3: a c2c to a user of app `shop`, refused with the document's text.
    let (seq, _) = decode_all(&doc["error"]);
    let to_shop = Packet::C2c(pb::C2c {
        group: Default::default(),
        client_msg_id: "m-2".into(),
        to: Some(pb::User {
            app: "shop".into(),
            uid: "carol".into(),
        }),
        r#type: "text".into(),
        body: bytes::Bytes::from_static(b"{}"),
        transient: false,
    });
    alice.send_bytes(&to_shop.encode(seq)).await;
    check("error", next(&mut alice).await, &doc);

    // Request 10: Alice recalls her message (the document's frame, with the
    // id this node gave it); Bob's phone gets the notice as entry 8.
    let (seq, Packet::Amend(mut recall)) = decode_all(&doc["recall"]) else {
        panic!("the recall example is not an amend")
    };
    recall.msg_id = sent_id;
    alice.send_bytes(&Packet::Amend(recall).encode(seq)).await;
    check("recall_ack", next(&mut alice).await, &doc);
    check("recall_push", next(&mut phone).await, &doc);
    s.stop().await;
}
