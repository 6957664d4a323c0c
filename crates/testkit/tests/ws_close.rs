//! How a connection ends, seen by a raw client that follows docs/protocol.md
//! (issue 15 items 2, 3, 6; issue 14 item 6): a WebSocket closed after a
//! fatal error or a kick carries a close code and a reason naming it, an
//! oversized message gets `FRAME_TOO_LARGE` first, every error answering a
//! login is fatal, and a JSON login is never answered with compression.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_proto::{Command, HEADER_LEN, Packet, VERSION, code, decode, pb};
use switchboard_testkit::raw::{RawClient, login};
use switchboard_testkit::server::{TestServer, token};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

const T: Duration = Duration::from_secs(10);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(s: &TestServer) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(s.ws_url())
        .await
        .expect("ws connect");
    ws
}

/// What the server sent before it closed, and its close frame.
#[derive(Debug)]
struct Ending {
    frames: Vec<WsMessage>,
    close: Option<CloseFrame>,
}

/// Reads until the server closes the WebSocket.
async fn ending(ws: &mut Ws) -> Ending {
    let mut frames = Vec::new();
    loop {
        match tokio::time::timeout(T, ws.next())
            .await
            .expect("the server closes in time")
        {
            Some(Ok(WsMessage::Close(close))) => return Ending { frames, close },
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => {}
            Some(Ok(m)) => frames.push(m),
            other => panic!("the connection ended without a close frame: {other:?}"),
        }
    }
}

fn close_of(e: &Ending) -> (u16, String) {
    let c = e.close.as_ref().expect("a close code");
    (u16::from(c.code), c.reason.to_string())
}

/// The binary frames of a WebSocket message, as packets.
fn packet(m: &WsMessage) -> Packet {
    let WsMessage::Binary(data) = m else {
        panic!("expected a binary message, got {m:?}")
    };
    let mut buf = BytesMut::from(&data[..]);
    let frame = decode(&mut buf, usize::MAX)
        .expect("a frame")
        .expect("a whole frame");
    Packet::from_frame(&frame).expect("a known packet")
}

fn json_of(m: &WsMessage) -> Value {
    let WsMessage::Text(t) = m else {
        panic!("expected a text message, got {m:?}")
    };
    serde_json::from_str(t.as_str()).expect("a JSON frame")
}

fn error_of(p: &Packet) -> (u32, bool) {
    match p {
        Packet::Error(e) => (e.code, e.fatal),
        other => panic!("expected an error, got {other:?}"),
    }
}

async fn send_packet(ws: &mut Ws, seq: u32, p: Packet) {
    ws.send(WsMessage::Binary(p.encode(seq))).await.unwrap();
}

#[tokio::test]
async fn an_oversized_binary_message_gets_frame_too_large_then_a_close_code() {
    let s = TestServer::start().await;
    let mut c = ws(&s).await;
    // An honest header saying 70,000 bytes, and the body: over the 64 KiB
    // limit (and under twice it, which the WebSocket layer reads whole).
    let len = 70_000usize;
    let mut big = BytesMut::with_capacity(len);
    big.extend_from_slice(&(len as u32).to_be_bytes());
    big.extend_from_slice(&(HEADER_LEN as u16).to_be_bytes());
    big.extend_from_slice(&VERSION.to_be_bytes());
    big.extend_from_slice(&(Command::Ping as u32).to_be_bytes());
    big.extend_from_slice(&1u32.to_be_bytes());
    big.resize(len, 0);
    c.send(WsMessage::Binary(big.freeze())).await.unwrap();
    let end = ending(&mut c).await;
    assert_eq!(end.frames.len(), 1, "{end:?}");
    assert_eq!(
        error_of(&packet(&end.frames[0])),
        (code::FRAME_TOO_LARGE, true)
    );
    assert_eq!(close_of(&end), (4101, "FRAME_TOO_LARGE".to_string()));
    s.stop().await;
}

#[tokio::test]
async fn an_oversized_json_text_message_gets_frame_too_large_then_a_close_code() {
    let s = TestServer::start().await;
    let mut c = ws(&s).await;
    // A JSON client (its first message was text), then a text message over the limit.
    c.send(WsMessage::Text(
        json!({"cmd": "ping", "seq": 1}).to_string().into(),
    ))
    .await
    .unwrap();
    let pong = tokio::time::timeout(T, c.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(json_of(&pong)["cmd"], "pong");
    let padding = "x".repeat(70_000);
    let big = json!({"cmd": "ping", "seq": 2, "body": {"pad": padding}});
    c.send(WsMessage::Text(big.to_string().into()))
        .await
        .unwrap();
    let end = ending(&mut c).await;
    assert_eq!(end.frames.len(), 1, "{end:?}");
    let err = json_of(&end.frames[0]);
    assert_eq!(err["cmd"], "error");
    assert_eq!(err["body"]["code"], code::FRAME_TOO_LARGE);
    assert_eq!(err["body"]["fatal"], true);
    assert_eq!(close_of(&end), (4101, "FRAME_TOO_LARGE".to_string()));
    s.stop().await;
}

#[tokio::test]
async fn a_kick_closes_the_websocket_with_the_kick_code() {
    let s = TestServer::start().await;
    let mut c = ws(&s).await;
    send_packet(&mut c, 1, Packet::Login(login(&s.token("kicked"), "tab"))).await;
    let ack = tokio::time::timeout(T, c.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(packet(&ack), Packet::LoginAck(_)), "{ack:?}");

    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/apps/demo/users/kicked/kick", s.http))
        .bearer_auth("demo-api-key")
        .send()
        .await
        .expect("kick over HTTP");
    assert_eq!(resp.status().as_u16(), 200);
    let end = ending(&mut c).await;
    let kick = end.frames.iter().map(packet).find_map(|p| match p {
        Packet::Kick(k) => Some(k.code),
        _ => None,
    });
    assert_eq!(kick, Some(code::KICK_ADMIN), "{end:?}");
    assert_eq!(close_of(&end), (4006, "KICK_ADMIN".to_string()));
    s.stop().await;
}

#[tokio::test]
async fn a_fatal_login_error_closes_the_websocket_with_its_code() {
    let s = TestServer::start().await;
    let mut c = ws(&s).await;
    send_packet(&mut c, 1, Packet::Login(login("not-a-jwt", "tab"))).await;
    let end = ending(&mut c).await;
    assert_eq!(end.frames.len(), 1, "{end:?}");
    assert_eq!(
        error_of(&packet(&end.frames[0])),
        (code::TOKEN_INVALID, true)
    );
    assert_eq!(close_of(&end), (4201, "TOKEN_INVALID".to_string()));
    s.stop().await;
}

#[tokio::test]
async fn a_logout_closes_the_websocket_normally() {
    let s = TestServer::start().await;
    let mut c = ws(&s).await;
    send_packet(&mut c, 1, Packet::Login(login(&s.token("leaving"), "tab"))).await;
    let _ack = tokio::time::timeout(T, c.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    send_packet(&mut c, 2, Packet::Logout(pb::Logout {})).await;
    let end = ending(&mut c).await;
    assert!(matches!(packet(&end.frames[0]), Packet::LogoutAck(_)));
    assert_eq!(close_of(&end), (1000, String::new()));
    s.stop().await;
}

/// Issue 15 item 3: an undecodable login is answered with a fatal
/// `BAD_BODY`, and the connection is closed (TCP, and JSON over WebSocket).
#[tokio::test]
async fn an_undecodable_login_is_a_fatal_bad_body() {
    let s = TestServer::start().await;
    let mut tcp = RawClient::connect(s.tcp).await;
    // Field 1 (token) as a length-delimited string with a length past the end.
    let frame = switchboard_proto::Frame {
        cmd: Command::Login as u16,
        flags: 0,
        seq: 1,
        body: Bytes::from_static(&[0x0a, 0x7f, b'x']),
    };
    tcp.send_bytes(&frame.encode()).await;
    match tcp.recv_within(T).await {
        Some((1, p)) => assert_eq!(error_of(&p), (code::BAD_BODY, true)),
        other => panic!("expected a fatal BAD_BODY, got {other:?}"),
    }
    assert!(tcp.recv_within(T).await.is_none(), "connection closed");

    let mut c = ws(&s).await;
    c.send(WsMessage::Text(
        json!({"cmd": "login", "seq": 1, "body": {"token": 5}})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let end = ending(&mut c).await;
    let err = json_of(&end.frames[0]);
    assert_eq!(
        (&err["seq"], &err["body"]["code"], &err["body"]["fatal"]),
        (&json!(1), &json!(code::BAD_BODY), &json!(true))
    );
    assert_eq!(close_of(&end), (4103, "BAD_BODY".to_string()));
    s.stop().await;
}

/// Issue 15 item 6: JSON frames are never compressed, so a JSON login
/// offering deflate is answered with no compression; a binary one gets it.
#[tokio::test]
async fn a_json_login_offering_deflate_gets_no_compression() {
    let s = TestServer::start().await;
    let mut c = ws(&s).await;
    let login_json = json!({"cmd": "login", "seq": 1, "body": {
        "token": token("demo", "jason"), "deviceId": "tab", "compression": ["deflate"]}});
    c.send(WsMessage::Text(login_json.to_string().into()))
        .await
        .unwrap();
    let ack = json_of(
        &tokio::time::timeout(T, c.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
    );
    assert_eq!(ack["cmd"], "login_ack");
    assert_eq!(ack["body"].get("compression"), None, "{ack}");

    let mut b = ws(&s).await;
    let mut l = login(&token("demo", "bin"), "tab");
    l.compression = vec!["deflate".into()];
    send_packet(&mut b, 1, Packet::Login(l)).await;
    let ack = packet(
        &tokio::time::timeout(T, b.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
    );
    let Packet::LoginAck(ack) = ack else {
        panic!("{ack:?}")
    };
    assert_eq!(ack.compression, "deflate");
    s.stop().await;
}
