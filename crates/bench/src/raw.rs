//! Minimal raw-frame clients, lighter than the SDK, for the scenarios that
//! hold thousands of connections in one generator process (`connections`,
//! `fanout`): a Switchboard client that logs in and then reads pushes, a
//! WebSocket login for idle connections, and an MQTT 3.1.1 client that
//! connects and subscribes. They bind to a chosen
//! 127.0.0.x source address so several generators can share one server port.

use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, BufMut, BytesMut};
use switchboard_proto::{Packet, decode, pb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::BenchError;

/// Connects from `source` (port chosen by the kernel) to `addr`.
pub async fn connect_from(
    source: Option<IpAddr>,
    addr: SocketAddr,
) -> Result<TcpStream, BenchError> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let s = socket.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A logged-in Switchboard connection speaking bare frames.
pub struct RawClient {
    pub stream: TcpStream,
    buf: BytesMut,
    next_seq: u32,
}

/// A push as the raw client sees it.
pub struct RawPush {
    pub seq: u64,
    pub body: bytes::Bytes,
    /// The group whose timeline `seq` is on (empty: the user's own).
    pub group: String,
}

impl RawClient {
    /// Connects and logs in; returns the client and its `LoginAck`.
    pub async fn login(
        source: Option<IpAddr>,
        addr: SocketAddr,
        token: String,
        device_id: String,
    ) -> Result<(RawClient, pb::LoginAck), BenchError> {
        let stream = connect_from(source, addr).await?;
        let mut c = RawClient {
            stream,
            buf: BytesMut::new(),
            next_seq: 1,
        };
        let login = Packet::Login(pb::Login {
            token,
            platform: "bench".into(),
            device_id,
            ..Default::default()
        });
        c.send(&login).await?;
        loop {
            match c.next_packet().await? {
                Some(Packet::LoginAck(ack)) => {
                    // An idle connection keeps no read buffer.
                    c.buf = BytesMut::new();
                    return Ok((c, ack));
                }
                Some(Packet::Error(e)) => {
                    return Err(BenchError::Refused(format!(
                        "login: {} {}",
                        e.code, e.message
                    )));
                }
                Some(_) => continue,
                None => return Err(BenchError::Refused("closed during login".into())),
            }
        }
    }

    pub async fn send(&mut self, p: &Packet) -> Result<u32, BenchError> {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        self.stream.write_all(&p.encode(seq)).await?;
        Ok(seq)
    }

    /// The next packet, or `None` at end of stream.
    pub async fn next_packet(&mut self) -> Result<Option<Packet>, BenchError> {
        loop {
            if let Some(frame) = decode(&mut self.buf, 16 << 20)? {
                return Ok(Some(Packet::from_frame(&frame)?));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// The next push (other packets are skipped), or `None` at end of stream.
    pub async fn next_push(&mut self) -> Result<Option<RawPush>, BenchError> {
        loop {
            match self.next_packet().await? {
                Some(Packet::Push(p)) => {
                    let (body, group) = p.message.map(|m| (m.body, m.group)).unwrap_or_default();
                    return Ok(Some(RawPush {
                        seq: p.seq,
                        body,
                        group,
                    }));
                }
                Some(Packet::Kick(k)) => {
                    return Err(BenchError::Refused(format!(
                        "kicked: {} {}",
                        k.code, k.reason
                    )));
                }
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }

    /// Acknowledges every push up to `seq`.
    pub async fn ack(&mut self, seq: u64) -> Result<(), BenchError> {
        self.ack_in(seq, "").await
    }

    /// Acknowledges every push up to `seq` of `group`'s timeline (empty:
    /// the user's own).
    pub async fn ack_in(&mut self, seq: u64, group: &str) -> Result<(), BenchError> {
        self.send(&Packet::PushAck(pb::PushAck {
            seq,
            group: group.into(),
        }))
        .await
        .map(drop)
    }
}

/// Upgrades to WebSocket on `http://addr/ws`, logs in with one binary
/// message and waits for the `LoginAck`; returns the socket under the
/// WebSocket, for a connection that stays idle (nothing more is read or
/// written through the WebSocket layer, so dropping it loses nothing).
pub async fn ws_login(
    source: Option<IpAddr>,
    addr: SocketAddr,
    token: String,
    device_id: String,
) -> Result<TcpStream, BenchError> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

    let stream = connect_from(source, addr).await?;
    // Small buffers: one generator holds up to 10,000 of these while logging in.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}/ws"),
        stream,
        Some(config),
    )
    .await
    .map_err(|e| BenchError::Refused(format!("WebSocket upgrade: {e}")))?;
    let login = Packet::Login(pb::Login {
        token,
        platform: "bench".into(),
        device_id,
        ..Default::default()
    });
    ws.send(Message::Binary(login.encode(1)))
        .await
        .map_err(|e| BenchError::Refused(format!("WebSocket send: {e}")))?;
    loop {
        let msg = match ws.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(BenchError::Refused(format!("WebSocket: {e}"))),
            None => return Err(BenchError::Refused("closed during login".into())),
        };
        let Message::Binary(data) = msg else {
            continue;
        };
        let mut buf = BytesMut::from(&data[..]);
        let Some(frame) = decode(&mut buf, 16 << 20)? else {
            return Err(BenchError::Refused(
                "incomplete frame in a binary message".into(),
            ));
        };
        match Packet::from_frame(&frame)? {
            Packet::LoginAck(_) => return Ok(ws.into_inner()),
            Packet::Error(e) => {
                return Err(BenchError::Refused(format!(
                    "login: {} {}",
                    e.code, e.message
                )));
            }
            _ => continue,
        }
    }
}

/// MQTT 3.1.1 CONNECT with a clean session and no keepalive (idle forever);
/// waits for CONNACK.
pub async fn mqtt_connect(
    source: Option<IpAddr>,
    addr: SocketAddr,
    client_id: &str,
) -> Result<TcpStream, BenchError> {
    let mut s = connect_from(source, addr).await?;
    let mut var = BytesMut::new();
    var.put_u16(4);
    var.put_slice(b"MQTT");
    var.put_u8(4); // protocol level 3.1.1
    var.put_u8(0x02); // clean session
    var.put_u16(0); // keepalive off
    var.put_u16(client_id.len() as u16);
    var.put_slice(client_id.as_bytes());
    let mut pkt = BytesMut::new();
    pkt.put_u8(0x10);
    put_remaining_len(&mut pkt, var.len());
    pkt.put_slice(&var);
    s.write_all(&pkt).await?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await?;
    if ack[0] != 0x20 || ack[3] != 0 {
        return Err(BenchError::Refused(format!("CONNACK {ack:?}")));
    }
    Ok(s)
}

fn put_remaining_len(buf: &mut BytesMut, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if n == 0 {
            break;
        }
    }
}

/// Skips a whole MQTT packet's remaining length bytes (for tests of the encoder).
#[allow(dead_code)]
fn get_remaining_len(buf: &mut impl Buf) -> Option<usize> {
    let mut n = 0usize;
    for i in 0..4 {
        let b = buf.try_get_u8().ok()?;
        n |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_roundtrip() {
        for n in [0, 127, 128, 16_383, 16_384, 2_097_151] {
            let mut b = BytesMut::new();
            put_remaining_len(&mut b, n);
            assert_eq!(get_remaining_len(&mut b.freeze()), Some(n));
        }
    }
}
