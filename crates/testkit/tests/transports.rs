//! Transport features against a real node: TLS on both listeners (with a
//! generated certificate), compression negotiated at login, and JSON frames
//! in WebSocket text messages.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard::config::Tls;
use switchboard_sdk::Client;
use switchboard_testkit::sdk::{bodies, config, connect, demo, messages};
use switchboard_testkit::server::{TestServer, token};
use tokio_tungstenite::tungstenite::Message as WsMessage;

const T: Duration = Duration::from_secs(20);

#[tokio::test]
async fn tls_on_tcp_and_websocket() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let s = TestServer::start_with(|c| {
        c.tls = Some(Tls {
            cert: cert.clone(),
            key: key.clone(),
        })
    })
    .await;

    let tls_url = format!("tls://localhost:{}", s.tcp.port());
    let wss_url = format!("wss://localhost:{}/ws", s.http.port());
    let pem = certified.cert.pem().into_bytes();
    let (alice, _ae) = Client::connect(
        config(&tls_url, &token("demo", "alice"), "a").with_root_certs_pem(pem.clone()),
    )
    .await
    .expect("TLS over TCP");
    let (_bob, mut bob_events) =
        Client::connect(config(&wss_url, &token("demo", "bob"), "b").with_root_certs_pem(pem))
            .await
            .expect("TLS WebSocket");
    alice.send(demo("bob"), "text", "over tls").await.unwrap();
    assert_eq!(bodies(&messages(&mut bob_events, 1, T).await), ["over tls"]);

    // A plain-text client cannot talk to the TLS listener.
    let plain = Client::connect(
        config(&format!("tcp://{}", s.tcp), &token("demo", "eve"), "e")
            .with_request_timeout(Duration::from_secs(2)),
    )
    .await;
    assert!(
        plain.is_err(),
        "a plain client must not log in on the TLS port"
    );
    s.stop().await;
}

#[tokio::test]
async fn compression_is_used_on_the_wire_only_when_negotiated() {
    use switchboard_proto::{Compression, FLAG_DEFLATE, Packet, code, pb};
    use switchboard_testkit::raw::{RawClient, c2c, login};
    let s = TestServer::start().await;
    let mut bob = RawClient::connect(s.tcp).await;
    let mut l = login(&token("demo", "bob"), "b");
    l.compression = vec!["zstd".into(), "deflate".into()];
    let Packet::LoginAck(ack) = bob.request(Packet::Login(l)).await else {
        panic!()
    };
    assert_eq!(ack.compression, "deflate");
    let (mut alice, ack) = RawClient::login(s.tcp, &token("demo", "alice"), "a").await;
    assert_eq!(ack.compression, "", "alice did not offer compression");

    let body = "order-status:shipped;".repeat(500);
    assert!(matches!(
        alice.request(c2c("big", "bob", &body)).await,
        Packet::C2cAck(_)
    ));
    let frame = bob.recv_frame(T).await.expect("the push");
    assert_ne!(
        frame.flags & FLAG_DEFLATE,
        0,
        "a large push to a deflate client is compressed"
    );
    assert!(frame.body.len() < body.len() / 4);
    let plain = Compression::Deflate { threshold: 0 }
        .inflate(frame, 1 << 20)
        .unwrap();
    let Packet::Push(p) = Packet::from_frame(&plain).unwrap() else {
        panic!()
    };
    assert_eq!(p.message.unwrap().body, body.as_bytes());

    // Bob sends a compressed c2c; alice, who did not negotiate, gets it plain.
    let deflate = Compression::Deflate { threshold: 16 };
    let packed = deflate.deflate(c2c("back", "alice", &body).to_frame(9));
    assert_ne!(packed.flags & FLAG_DEFLATE, 0);
    bob.send_bytes(&packed.encode()).await;
    let frame = alice.recv_frame(T).await.expect("the push");
    assert_eq!(frame.flags & FLAG_DEFLATE, 0);

    // A compressed frame from a client that did not negotiate is refused, non-fatally.
    alice.send_bytes(&packed.encode()).await;
    let (seq, p) = alice.recv_within(T).await.unwrap();
    assert!(
        matches!(p, Packet::Error(pb::Error { code: c, fatal: false, .. }) if c == code::BAD_COMPRESSION),
        "{p:?}"
    );
    assert_eq!(seq, 9);
    assert!(matches!(
        alice.request(Packet::Ping(pb::Ping {})).await,
        Packet::Pong(_)
    ));
    s.stop().await;
}

#[tokio::test]
async fn large_bodies_round_trip_through_sdk_compression() {
    let s = TestServer::start().await;
    let (alice, _ae) =
        Client::connect(config(&s.tcp_url(), &token("demo", "alice"), "a").with_compression(true))
            .await
            .unwrap();
    let (_bob, mut bob_events) =
        Client::connect(config(&s.ws_url(), &token("demo", "bob"), "b").with_compression(true))
            .await
            .unwrap();
    // Larger than the compression threshold: both SDK sides compress and inflate.
    let body = "order-status:shipped;".repeat(2000);
    alice.send(demo("bob"), "text", body.clone()).await.unwrap();
    assert_eq!(bodies(&messages(&mut bob_events, 1, T).await), [body]);
    s.stop().await;
}

/// A WebSocket frame far larger than the server's 1 KiB initial read buffer
/// (close to the 64 KiB frame limit, uncompressed) arrives whole.
#[tokio::test]
async fn frames_larger_than_the_websocket_read_buffer_arrive_whole() {
    let s = TestServer::start().await;
    let (bob, _be) = Client::connect(config(&s.ws_url(), &token("demo", "bob"), "b"))
        .await
        .unwrap();
    let (_alice, mut alice_events) =
        Client::connect(config(&s.tcp_url(), &token("demo", "alice"), "a"))
            .await
            .unwrap();
    let body = "courier-position;".repeat(3500);
    assert!(body.len() > 50_000);
    bob.send(demo("alice"), "text", body.clone()).await.unwrap();
    assert_eq!(bodies(&messages(&mut alice_events, 1, T).await), [body]);
    s.stop().await;
}

async fn ws_json(
    s: &TestServer,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (ws, _) = tokio_tungstenite::connect_async(s.ws_url())
        .await
        .expect("ws connect");
    ws
}

async fn next_json<S>(ws: &mut S) -> Value
where
    S: futures::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match tokio::time::timeout(T, ws.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(WsMessage::Text(t))) => {
                return serde_json::from_str(t.as_str()).expect("JSON frame");
            }
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn json_frames_over_websocket_text_messages() {
    let s = TestServer::start().await;
    let mut ws = ws_json(&s).await;
    let login = json!({"cmd": "login", "seq": 1, "body": {"token": token("demo", "browser"), "platform": "web", "deviceId": "tab-1"}});
    ws.send(WsMessage::Text(login.to_string().into()))
        .await
        .unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(ack["cmd"], "login_ack");
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["body"]["user"]["uid"], "browser");

    // An SDK client sends to the browser; the push arrives as JSON.
    let (alice, _ae) = connect(&s.tcp_url(), "alice", "a").await;
    alice
        .send(demo("browser"), "text", "hi browser")
        .await
        .unwrap();
    let push = next_json(&mut ws).await;
    assert_eq!(push["cmd"], "push");
    assert_eq!(push["body"]["seq"], "1");
    assert_eq!(push["body"]["message"]["body"], "aGkgYnJvd3Nlcg==");
    let ack = json!({"cmd": "push_ack", "body": {"seq": "1"}});
    ws.send(WsMessage::Text(ack.to_string().into()))
        .await
        .unwrap();

    // The browser answers with a c2c in JSON (a number for cmd works too).
    let c2c = json!({"cmd": 7, "seq": 2, "body": {"clientMsgId": "j1", "to": {"uid": "alice"}, "type": "text", "body": "aGVsbG8="}});
    ws.send(WsMessage::Text(c2c.to_string().into()))
        .await
        .unwrap();
    let ack = next_json(&mut ws).await;
    assert_eq!(
        (ack["cmd"].as_str(), ack["seq"].as_u64()),
        (Some("c2c_ack"), Some(2))
    );

    // Malformed JSON gets an error, and the connection stays for the next request.
    ws.send(WsMessage::Text(
        r#"{"cmd": "c2c", "seq": 3, "body": {"to": 5}}"#.into(),
    ))
    .await
    .unwrap();
    let err = next_json(&mut ws).await;
    assert_eq!(err["cmd"], "error");
    assert_eq!(err["seq"], 3);
    assert_eq!(err["body"]["code"], 1003);
    ws.send(WsMessage::Text(
        json!({"cmd": "ping", "seq": 4}).to_string().into(),
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["cmd"], "pong");
    s.stop().await;
}
