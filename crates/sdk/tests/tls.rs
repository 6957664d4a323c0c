//! `tls://` and `wss://` against a fake server with a generated self-signed
//! certificate: the PEM roots, the server name override and the ring provider.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use switchboard_sdk::proto::{Packet, decode, pb};
use switchboard_sdk::{Client, ClientConfig, Event, SdkError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const WAIT: Duration = Duration::from_secs(5);

struct Cert {
    pem: String,
    acceptor: TlsAcceptor,
}

fn cert() -> Cert {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let der = key.cert.der().clone();
    let private =
        rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![der], private)
    .unwrap();
    Cert {
        pem: key.cert.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    }
}

fn login_ack() -> Packet {
    Packet::LoginAck(pb::LoginAck {
        user: Some(pb::User {
            app: "shop".into(),
            uid: "alice".into(),
        }),
        keepalive_secs: 30,
        ..Default::default()
    })
}

/// Answers login and syncs on a byte stream with frames back to back.
async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    let mut buf = BytesMut::new();
    loop {
        let Some(f) = decode(&mut buf, 1 << 20).unwrap() else {
            if io.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
            continue;
        };
        let reply = match Packet::from_frame(&f).unwrap() {
            Packet::Login(_) => login_ack(),
            Packet::Sync(_) => Packet::SyncReply(pb::SyncReply::default()),
            _ => continue,
        };
        io.write_all(&reply.encode(f.seq)).await.unwrap();
        io.flush().await.unwrap();
    }
}

fn config(url: String, pem: &str) -> ClientConfig {
    ClientConfig::new(url, "token")
        .with_root_certs_pem(pem.as_bytes().to_vec())
        .with_tls_server_name("localhost")
}

#[tokio::test]
async fn tls_connects_with_the_configured_root() {
    let Cert { pem, acceptor } = cert();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tls://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        serve_stream(acceptor.accept(tcp).await.unwrap()).await;
    });
    let (client, mut events) = timeout(WAIT, Client::connect(config(url, &pem)))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(events.recv().await, Some(Event::Connected { .. })));
    assert_eq!(client.user().uid, "alice");
    timeout(WAIT, client.sync_now()).await.unwrap().unwrap();
    client.close().await;
}

#[tokio::test]
async fn tls_refuses_an_untrusted_certificate() {
    let Cert { acceptor, .. } = cert();
    let other = cert();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("tls://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    let err = timeout(WAIT, Client::connect(config(url, &other.pem)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, SdkError::Tls(_)), "{err:?}");
}

#[tokio::test]
async fn wss_connects_over_tls() {
    let Cert { pem, acceptor } = cert();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("wss://{}/ws", l.local_addr().unwrap());
    tokio::spawn(async move {
        let (tcp, _) = l.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tls).await.unwrap();
        while let Some(Ok(m)) = ws.next().await {
            let WsMessage::Binary(b) = m else { continue };
            let f = decode(&mut BytesMut::from(&b[..]), 1 << 20)
                .unwrap()
                .unwrap();
            let reply = match Packet::from_frame(&f).unwrap() {
                Packet::Login(_) => login_ack(),
                Packet::Sync(_) => Packet::SyncReply(pb::SyncReply::default()),
                _ => continue,
            };
            ws.send(WsMessage::Binary(reply.encode(f.seq)))
                .await
                .unwrap();
        }
    });
    let (client, mut events) = timeout(WAIT, Client::connect(config(url, &pem)))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(events.recv().await, Some(Event::Connected { .. })));
    timeout(WAIT, client.sync_now()).await.unwrap().unwrap();
    client.close().await;
}
