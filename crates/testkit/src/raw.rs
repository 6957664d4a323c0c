//! A bare-frames client for tests that must misbehave on purpose: send
//! garbage, withhold acks, skip login. Real clients use the SDK.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use switchboard_proto::{Packet, decode, pb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    next_seq: u32,
}

impl RawClient {
    pub async fn connect(addr: std::net::SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawClient {
            stream,
            buf: BytesMut::new(),
            next_seq: 1,
        }
    }

    /// Sends raw bytes.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends a packet with the next request id; returns the id.
    pub async fn send(&mut self, p: Packet) -> u32 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.send_bytes(&p.encode(seq)).await;
        seq
    }

    /// The next packet, `None` when the server closed the connection, or a
    /// panic after `within`.
    pub async fn recv_within(&mut self, within: Duration) -> Option<(u32, Packet)> {
        tokio::time::timeout(within, self.recv())
            .await
            .expect("no frame in time")
    }

    /// The next frame as it came off the wire (still compressed, if it was).
    pub async fn recv_frame(&mut self, within: Duration) -> Option<switchboard_proto::Frame> {
        let read = async {
            loop {
                if let Some(frame) =
                    decode(&mut self.buf, 16 << 20).expect("server sent a bad frame")
                {
                    return Some(frame);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(within, read)
            .await
            .expect("no frame in time")
    }

    /// The next packet, or `None` at end of stream.
    pub async fn recv(&mut self) -> Option<(u32, Packet)> {
        loop {
            if let Some(frame) = decode(&mut self.buf, 16 << 20).expect("server sent a bad frame") {
                let p = Packet::from_frame(&frame).expect("server sent a bad body");
                return Some((frame.seq, p));
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Sends a request and returns the first reply carrying its id (pushes
    /// that arrive meanwhile are skipped).
    pub async fn request(&mut self, p: Packet) -> Packet {
        let seq = self.send(p).await;
        loop {
            match self.recv_within(Duration::from_secs(10)).await {
                Some((s, p)) if s == seq => return p,
                Some(_) => continue,
                None => panic!("connection closed while waiting for reply {seq}"),
            }
        }
    }

    /// Logs in; panics unless the server accepts.
    pub async fn login(
        addr: std::net::SocketAddr,
        token: &str,
        device: &str,
    ) -> (RawClient, pb::LoginAck) {
        let mut c = RawClient::connect(addr).await;
        match c.request(Packet::Login(login(token, device))).await {
            Packet::LoginAck(ack) => (c, ack),
            other => panic!("login refused: {other:?}"),
        }
    }
}

/// A login packet.
pub fn login(token: &str, device: &str) -> pb::Login {
    pb::Login {
        token: token.into(),
        platform: "test".into(),
        device_id: device.into(),
        ..Default::default()
    }
}

/// A c2c packet to `uid` of the sender's app.
pub fn c2c(client_msg_id: &str, to_uid: &str, body: &str) -> Packet {
    Packet::C2c(pb::C2c {
        group: Default::default(),
        client_msg_id: client_msg_id.into(),
        to: Some(pb::User {
            app: String::new(),
            uid: to_uid.into(),
        }),
        r#type: "text".into(),
        body: Bytes::copy_from_slice(body.as_bytes()),
        transient: false,
    })
}
