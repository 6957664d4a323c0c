//! The fixed 16-byte header and the frame decoder.
//!
//! ```text
//!  0      4        6         8      12     16
//!  ┌──────┬────────┬─────────┬──────┬──────┬──────────── … ┐
//!  │ len  │ hdrlen │ version │ cmd  │ seq  │ body (protobuf)│
//!  └──────┴────────┴─────────┴──────┴──────┴──────────── … ┘
//! ```
//! Big-endian. `len` is the whole frame, header included. The low 16 bits of
//! `cmd` are the command number, the high 16 bits are flags ([`FLAG_DEFLATE`]).
//! `hdrlen` lets a later version grow the header: a decoder skips header
//! bytes past the 16 it knows.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Length of the header this version writes.
pub const HEADER_LEN: usize = 16;
/// Protocol version this crate speaks.
pub const VERSION: u16 = 1;
/// `cmd` flag: the body is deflate-compressed (only after it was negotiated at login).
pub const FLAG_DEFLATE: u32 = 1 << 16;
/// Flags this version knows; a frame with any other flag bit set is malformed.
const KNOWN_FLAGS: u32 = FLAG_DEFLATE;

/// Why bytes could not be decoded into a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtoError {
    /// The header's `len` is over the configured maximum.
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    /// The header is inconsistent (length shorter than header, bad header length, unknown flags).
    #[error("malformed frame header: {0}")]
    Malformed(&'static str),
    /// The version is not one this side speaks.
    #[error("unsupported protocol version {0}")]
    Version(u16),
    /// The command number is not known (the frame itself was well formed).
    #[error("unknown command {0}")]
    UnknownCommand(u16),
    /// The body did not decode as the command's message.
    #[error("bad body for {cmd}: {reason}")]
    Body { cmd: &'static str, reason: String },
}

impl ProtoError {
    /// The stable code for this error (`code` module).
    pub fn code(&self) -> u32 {
        match self {
            ProtoError::TooLarge { .. } => crate::code::FRAME_TOO_LARGE,
            ProtoError::Malformed(_) => crate::code::BAD_FRAME,
            ProtoError::Version(_) => crate::code::UNSUPPORTED_VERSION,
            ProtoError::UnknownCommand(_) => crate::code::UNKNOWN_COMMAND,
            ProtoError::Body { .. } => crate::code::BAD_BODY,
        }
    }

    /// Whether the stream can no longer be trusted and must be closed. After
    /// an unknown command or a bad body the framing is intact, so the
    /// connection carries on.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            ProtoError::TooLarge { .. } | ProtoError::Malformed(_) | ProtoError::Version(_)
        )
    }
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub header_len: u16,
    pub version: u16,
    pub cmd: u32,
    pub seq: u32,
}

impl Header {
    /// The command number (low 16 bits of `cmd`).
    pub fn command(&self) -> u16 {
        (self.cmd & 0xFFFF) as u16
    }
    /// The flag bits (high 16 bits of `cmd`).
    pub fn flags(&self) -> u32 {
        self.cmd & 0xFFFF_0000
    }
}

/// One frame: a command number, flags, the request id and the raw body
/// (still compressed when [`FLAG_DEFLATE`] is set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub cmd: u16,
    pub flags: u32,
    pub seq: u32,
    pub body: Bytes,
}

impl Frame {
    /// Encodes header and body into one buffer (the bytes sent on the wire).
    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + self.body.len());
        self.encode_into(&mut buf);
        buf.freeze()
    }

    /// Appends header and body to `buf`.
    pub fn encode_into(&self, buf: &mut BytesMut) {
        put_header(buf, self.cmd, self.flags, self.seq, self.body.len());
        buf.extend_from_slice(&self.body);
    }
}

/// Writes a header for a body of `body_len` bytes.
pub(crate) fn put_header(buf: &mut BytesMut, cmd: u16, flags: u32, seq: u32, body_len: usize) {
    let len = u32::try_from(HEADER_LEN + body_len).unwrap_or(u32::MAX);
    buf.reserve(HEADER_LEN);
    buf.put_u32(len);
    buf.put_u16(HEADER_LEN as u16);
    buf.put_u16(VERSION);
    buf.put_u32(u32::from(cmd) | flags);
    buf.put_u32(seq);
}

/// Decodes one frame from the front of `buf`.
///
/// `Ok(None)` means "not enough bytes yet": read more and call again. The
/// length in the header is checked against `max_frame` *before* any body is
/// buffered, so a peer announcing a 4 GiB frame is refused after 16 bytes.
/// On error the buffer is left as it was; a fatal error means the stream must
/// be closed, a non-fatal one ([`ProtoError::is_fatal`]) has consumed the bad
/// frame and the next call continues with the following one.
pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, ProtoError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let header = peek_header(buf)?;
    let len = header.len as usize;
    if len > max_frame {
        return Err(ProtoError::TooLarge {
            len,
            max: max_frame,
        });
    }
    if buf.len() < len {
        // Reserve what the frame needs (bounded by max_frame above) so the
        // next read fills it without repeated reallocation.
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(len);
    frame.advance(usize::from(header.header_len));
    let body = frame.freeze();
    Ok(Some(Frame {
        cmd: header.command(),
        flags: header.flags(),
        seq: header.seq,
        body,
    }))
}

fn peek_header(buf: &[u8]) -> Result<Header, ProtoError> {
    let mut b = &buf[..HEADER_LEN];
    let header = Header {
        len: b.get_u32(),
        header_len: b.get_u16(),
        version: b.get_u16(),
        cmd: b.get_u32(),
        seq: b.get_u32(),
    };
    if header.version != VERSION {
        return Err(ProtoError::Version(header.version));
    }
    if usize::from(header.header_len) < HEADER_LEN {
        return Err(ProtoError::Malformed("header length below 16"));
    }
    if header.flags() & !KNOWN_FLAGS != 0 {
        return Err(ProtoError::Malformed("unknown flag bits in cmd"));
    }
    if (header.len as usize) < usize::from(header.header_len) {
        return Err(ProtoError::Malformed(
            "frame length shorter than its header",
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(cmd: u16, seq: u32, body: &[u8]) -> Frame {
        Frame {
            cmd,
            flags: 0,
            seq,
            body: Bytes::copy_from_slice(body),
        }
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let bytes = frame(7, 42, b"hello").encode();
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.put_u8(*b);
            let got = decode(&mut buf, 1024).unwrap();
            if i + 1 < bytes.len() {
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some(frame(7, 42, b"hello")));
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn back_to_back_frames() {
        let mut buf = BytesMut::new();
        frame(5, 1, b"").encode_into(&mut buf);
        frame(7, 2, b"abc").encode_into(&mut buf);
        assert_eq!(decode(&mut buf, 64).unwrap().unwrap().seq, 1);
        assert_eq!(decode(&mut buf, 64).unwrap().unwrap().body, &b"abc"[..]);
        assert_eq!(decode(&mut buf, 64).unwrap(), None);
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::new();
        buf.put_u32(u32::MAX);
        buf.put_u16(16);
        buf.put_u16(VERSION);
        buf.put_u32(7);
        buf.put_u32(1);
        let err = decode(&mut buf, 65536).unwrap_err();
        assert!(matches!(err, ProtoError::TooLarge { .. }));
        assert!(err.is_fatal());
        assert!(buf.capacity() < 1024, "no body buffer was reserved");
    }

    #[test]
    fn inconsistent_headers_are_malformed() {
        for (len, hdrlen, version) in [
            (10u32, 16u16, VERSION),
            (20, 8, VERSION),
            (20, 32, VERSION),
            (16, 16, 9),
        ] {
            let mut buf = BytesMut::new();
            buf.put_u32(len);
            buf.put_u16(hdrlen);
            buf.put_u16(version);
            buf.put_u32(7);
            buf.put_u32(1);
            buf.put_slice(&[0; 16]);
            let err = decode(&mut buf, 1024).unwrap_err();
            assert!(err.is_fatal(), "{err}");
        }
    }

    #[test]
    fn longer_headers_from_later_versions_are_skipped() {
        let mut buf = BytesMut::new();
        buf.put_u32(16 + 4 + 3);
        buf.put_u16(20);
        buf.put_u16(VERSION);
        buf.put_u32(7);
        buf.put_u32(9);
        buf.put_u32(0xdead_beef);
        buf.put_slice(b"abc");
        let f = decode(&mut buf, 1024).unwrap().unwrap();
        assert_eq!((f.cmd, f.seq, &f.body[..]), (7, 9, &b"abc"[..]));
    }
}
