//! Transports: how frames travel on one connection.
//!
//! A [`Transport`] turns its stream into packets and back. TCP (plain or
//! TLS) carries frames back to back; a WebSocket binary message carries one
//! frame and a text message one JSON frame. The transport also applies the
//! negotiated compression, so the session code sees only packets and
//! encoded frames.

use std::future::Future;
use std::io;

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket, close_code};
use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use switchboard_proto::{
    Command, Compression, Frame, HEADER_LEN, Packet, ProtoError, code, decode, json,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What one received frame turned into.
// Made for every frame read and matched at once: moving a packet on the
// stack is cheaper than a heap allocation per frame to box it.
#[allow(clippy::large_enum_variant)]
pub enum Incoming {
    /// A packet with its request id.
    Packet(u32, Packet),
    /// A well-framed request that could not be understood (unknown command,
    /// bad body, bad compression); answered with an error, the connection stays.
    Bad(u32, u32, String),
    /// As `Bad`, for a `login` frame: before login that error is fatal,
    /// since every error answering a login is (protocol.md §6).
    BadLogin(u32, u32, String),
}

/// Why a connection's stream ended badly.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The stream broke the framing; the connection must close after an error frame.
    #[error(transparent)]
    Proto(#[from] ProtoError),
}

pub trait Transport: Send {
    /// The transport's name in metrics (`tcp`, TLS or not; `ws`).
    const KIND: &'static str;

    /// The next packet; `Ok(None)` when the peer closed. Cancel-safe: it is
    /// polled inside `select!`, and bytes read so far stay buffered.
    fn recv(&mut self) -> impl Future<Output = Result<Option<Incoming>, TransportError>> + Send;

    /// Writes encoded frames as one batch (one syscall for TCP where possible).
    fn send(&mut self, frames: &[Bytes]) -> impl Future<Output = io::Result<()>> + Send;

    /// Sets the compression negotiated at login.
    fn set_compression(&mut self, c: Compression);

    /// Whether frames on this connection can be compressed: not JSON text
    /// frames, which have no flag bit for it (protocol.md §8), so a JSON
    /// login offering deflate is answered with no compression.
    fn can_compress(&self) -> bool {
        true
    }

    /// Closes the stream politely. `code` is the fatal error or kick code
    /// that ends the connection, if any (a WebSocket names it in its close
    /// frame; a byte stream has no place for it: the frame before said it).
    fn close(&mut self, code: Option<u32>) -> impl Future<Output = ()> + Send;
}

/// Inflates and decodes a binary frame.
fn packet_of(frame: Frame, compression: Compression, max: usize) -> Incoming {
    let seq = frame.seq;
    let bad = if frame.cmd == Command::Login as u16 {
        Incoming::BadLogin
    } else {
        Incoming::Bad
    };
    let frame = match compression.inflate(frame, max) {
        Ok(f) => f,
        Err(e) => return bad(seq, switchboard_proto::code::BAD_COMPRESSION, e.to_string()),
    };
    match Packet::from_frame(&frame) {
        Ok(p) => Incoming::Packet(seq, p),
        Err(e) => bad(seq, e.code(), e.to_string()),
    }
}

/// Compresses an encoded frame when that was negotiated and it is large.
fn maybe_deflate(bytes: &Bytes, compression: Compression) -> Bytes {
    let Compression::Deflate { threshold } = compression else {
        return bytes.clone();
    };
    if bytes.len() < HEADER_LEN + threshold {
        return bytes.clone();
    }
    let mut buf = BytesMut::from(&bytes[..]);
    match decode(&mut buf, usize::MAX) {
        Ok(Some(frame)) => compression.deflate(frame).encode(),
        _ => bytes.clone(),
    }
}

/// Reads what is available into `buf` (empty) through a 4 KiB stack chunk
/// that lives only during one poll, so a connection waiting for its next
/// frame keeps no heap buffer. Cancel-safe: bytes are moved into `buf` in
/// the same poll that read them.
async fn read_fresh<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
        let mut rb = tokio::io::ReadBuf::uninit(&mut chunk);
        match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut rb) {
            std::task::Poll::Ready(Ok(())) => {
                buf.extend_from_slice(rb.filled());
                std::task::Poll::Ready(Ok(rb.filled().len()))
            }
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    })
    .await
}

/// Frames back to back over a byte stream (TCP or TLS over TCP).
pub struct StreamTransport<S> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    max_frame: usize,
    compression: Compression,
}

impl<S> StreamTransport<S> {
    pub fn new(stream: S, max_frame: usize) -> StreamTransport<S> {
        // No read buffer until bytes arrive, and none again once every
        // buffered frame is decoded: an idle connection holds 0 bytes here
        // (a 4 KiB buffer was most of an idle connection's memory).
        StreamTransport {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            max_frame,
            compression: Compression::None,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for StreamTransport<S> {
    const KIND: &'static str = "tcp";

    async fn recv(&mut self) -> Result<Option<Incoming>, TransportError> {
        loop {
            if let Some(frame) = decode(&mut self.rbuf, self.max_frame)? {
                if self.rbuf.is_empty() {
                    // Let go of the buffer (frames already decoded keep
                    // their own share of it): the next read allocates anew.
                    self.rbuf = BytesMut::new();
                }
                return Ok(Some(packet_of(frame, self.compression, self.max_frame)));
            }
            let n = if self.rbuf.is_empty() {
                // Wait for bytes without holding a buffer: read into a stack
                // chunk inside one poll and copy out only what arrived.
                read_fresh(&mut self.stream, &mut self.rbuf).await?
            } else {
                if self.rbuf.capacity() == self.rbuf.len() {
                    self.rbuf.reserve(4096);
                }
                self.stream.read_buf(&mut self.rbuf).await?
            };
            if n == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a frame",
                    )
                    .into())
                };
            }
        }
    }

    async fn send(&mut self, frames: &[Bytes]) -> io::Result<()> {
        if let ([one], Compression::None) = (frames, self.compression) {
            return self.stream.write_all(one).await;
        }
        self.wbuf.clear();
        for f in frames {
            self.wbuf
                .extend_from_slice(&maybe_deflate(f, self.compression));
        }
        self.stream.write_all(&self.wbuf).await?;
        if self.wbuf.capacity() > 64 * 1024 {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }

    fn set_compression(&mut self, c: Compression) {
        self.compression = c;
    }

    async fn close(&mut self, _code: Option<u32>) {
        let _ = self.stream.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// One frame per WebSocket message: binary frames, or JSON in text messages.
pub struct WsTransport {
    socket: WebSocket,
    max_frame: usize,
    compression: Compression,
    /// The client speaks JSON (its first frame was a text message); replies
    /// and pushes then go as text too.
    json: Option<bool>,
}

impl WsTransport {
    pub fn new(socket: WebSocket, max_frame: usize) -> WsTransport {
        WsTransport {
            socket,
            max_frame,
            compression: Compression::None,
            json: None,
        }
    }

    fn to_message(&self, frame: &Bytes) -> WsMessage {
        if self.json == Some(true) {
            let mut buf = BytesMut::from(&frame[..]);
            if let Ok(Some(f)) = decode(&mut buf, usize::MAX)
                && let Ok(p) = Packet::from_frame(&f)
            {
                return WsMessage::Text(json::encode(&p, f.seq).into());
            }
        }
        WsMessage::Binary(maybe_deflate(frame, self.compression))
    }
}

impl Transport for WsTransport {
    const KIND: &'static str = "ws";

    async fn recv(&mut self) -> Result<Option<Incoming>, TransportError> {
        loop {
            let msg = match self.socket.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(ws_read_error(e, self.max_frame)),
                Some(Ok(m)) => m,
            };
            match msg {
                WsMessage::Binary(data) => {
                    self.json.get_or_insert(false);
                    if data.len() > self.max_frame {
                        return Err(ProtoError::TooLarge {
                            len: data.len(),
                            max: self.max_frame,
                        }
                        .into());
                    }
                    let mut buf = BytesMut::from(&data[..]);
                    let frame = decode(&mut buf, self.max_frame)?.ok_or(ProtoError::Malformed(
                        "incomplete frame in a binary message",
                    ))?;
                    if !buf.is_empty() {
                        return Err(ProtoError::Malformed(
                            "a binary message must carry exactly one frame",
                        )
                        .into());
                    }
                    return Ok(Some(packet_of(frame, self.compression, self.max_frame)));
                }
                WsMessage::Text(text) => {
                    self.json.get_or_insert(true);
                    if text.len() > self.max_frame {
                        return Err(ProtoError::TooLarge {
                            len: text.len(),
                            max: self.max_frame,
                        }
                        .into());
                    }
                    return Ok(Some(match json::decode(text.as_str()) {
                        Ok((seq, p)) => Incoming::Packet(seq, p),
                        Err((seq, e @ ProtoError::Body { cmd, .. }))
                            if Command::from_json_name(cmd) == Some(Command::Login) =>
                        {
                            Incoming::BadLogin(seq, e.code(), e.to_string())
                        }
                        Err((seq, e)) if !e.is_fatal() => {
                            Incoming::Bad(seq, e.code(), e.to_string())
                        }
                        Err((_, e)) => return Err(e.into()),
                    }));
                }
                WsMessage::Close(_) => return Ok(None),
                // Control frames are answered by tungstenite itself.
                WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            }
        }
    }

    async fn send(&mut self, frames: &[Bytes]) -> io::Result<()> {
        for f in frames {
            let m = self.to_message(f);
            self.socket.feed(m).await.map_err(io::Error::other)?;
        }
        self.socket.flush().await.map_err(io::Error::other)
    }

    fn set_compression(&mut self, c: Compression) {
        self.compression = c;
    }

    fn can_compress(&self) -> bool {
        self.json != Some(true)
    }

    async fn close(&mut self, code: Option<u32>) {
        // A browser sees the close event even when it never parses the
        // error or kick frame before it: the close code and reason name it
        // (protocol.md §1). An ordinary end (logout, shutdown of a quiet
        // connection, the peer leaving) closes with 1000.
        let frame = match code {
            Some(c) => CloseFrame {
                code: code::ws_close_code(c),
                reason: code::name(c).into(),
            },
            None => CloseFrame {
                code: close_code::NORMAL,
                reason: "".into(),
            },
        };
        if self
            .socket
            .send(WsMessage::Close(Some(frame)))
            .await
            .is_err()
        {
            return;
        }
        // Wait for the peer's close (the caller bounds the wait): closing
        // with its frames still unread would reset the connection, and a
        // reset can discard our error and close frames before it reads them.
        while let Some(Ok(m)) = self.socket.next().await {
            if matches!(m, WsMessage::Close(_)) {
                break;
            }
        }
    }
}

/// A WebSocket read error. A message over the limit is refused by the
/// WebSocket layer from its header, before it is buffered: that is this
/// protocol's `FRAME_TOO_LARGE`, answered like TCP's (the socket can still
/// write). Anything else ends the connection as an I/O error.
fn ws_read_error(e: axum::Error, max: usize) -> TransportError {
    let inner = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<tungstenite::Error>());
    if let Some(tungstenite::Error::Capacity(tungstenite::error::CapacityError::MessageTooLong {
        size,
        ..
    })) = inner
    {
        return ProtoError::TooLarge { len: *size, max }.into();
    }
    io::Error::other(e).into()
}
