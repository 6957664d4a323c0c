//! Body compression, negotiated at login.
//!
//! The client lists what it accepts in `Login.compression`; the server picks
//! one in `LoginAck.compression`. After that either side may send a body
//! deflate-compressed (raw DEFLATE, RFC 1951) with [`crate::FLAG_DEFLATE`]
//! set in `cmd`, and does so for bodies of at least a threshold size; small
//! bodies are not worth it. Inflating stops at a limit, so a small frame
//! cannot expand into an unbounded buffer (a "zip bomb").

use std::io::{Read, Write};

use bytes::Bytes;
use flate2::{read::DeflateDecoder, write::DeflateEncoder};

use crate::frame::{FLAG_DEFLATE, Frame};

/// The negotiated body compression of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Bodies travel as they are.
    #[default]
    None,
    /// Raw DEFLATE (RFC 1951) for bodies of at least `threshold` bytes.
    Deflate { threshold: usize },
}

/// Why a compressed body could not be inflated.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompressError {
    #[error("compressed frame received but compression was not negotiated")]
    NotNegotiated,
    #[error("inflated body is over the limit of {0} bytes")]
    TooLarge(usize),
    #[error("corrupt deflate stream")]
    Corrupt,
}

impl Compression {
    /// The name used in `Login.compression` / `LoginAck.compression`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Deflate { .. } => "deflate",
        }
    }

    /// Picks the first algorithm of the client's list that this side supports.
    pub fn negotiate(offered: &[String], threshold: usize) -> Compression {
        offered
            .iter()
            .find_map(|name| (name == "deflate").then_some(Compression::Deflate { threshold }))
            .unwrap_or_default()
    }

    /// Compresses the frame's body when it is large enough (and the result smaller).
    pub fn deflate(self, frame: Frame) -> Frame {
        let Compression::Deflate { threshold } = self else {
            return frame;
        };
        if frame.flags & FLAG_DEFLATE != 0 || frame.body.len() < threshold {
            return frame;
        }
        let mut enc = DeflateEncoder::new(
            Vec::with_capacity(frame.body.len() / 2),
            flate2::Compression::fast(),
        );
        if enc.write_all(&frame.body).is_err() {
            return frame;
        }
        match enc.finish() {
            Ok(out) if out.len() < frame.body.len() => Frame {
                flags: frame.flags | FLAG_DEFLATE,
                body: Bytes::from(out),
                ..frame
            },
            _ => frame,
        }
    }

    /// Inflates a compressed body (a no-op for an uncompressed frame), refusing
    /// to produce more than `max_body` bytes.
    pub fn inflate(self, frame: Frame, max_body: usize) -> Result<Frame, CompressError> {
        if frame.flags & FLAG_DEFLATE == 0 {
            return Ok(frame);
        }
        if self == Compression::None {
            return Err(CompressError::NotNegotiated);
        }
        let limit = u64::try_from(max_body)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let mut out = Vec::with_capacity(frame.body.len().saturating_mul(2).min(max_body));
        DeflateDecoder::new(&frame.body[..])
            .take(limit)
            .read_to_end(&mut out)
            .map_err(|_| CompressError::Corrupt)?;
        if out.len() > max_body {
            return Err(CompressError::TooLarge(max_body));
        }
        Ok(Frame {
            flags: frame.flags & !FLAG_DEFLATE,
            body: Bytes::from(out),
            ..frame
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big_frame() -> Frame {
        Frame {
            cmd: 7,
            flags: 0,
            seq: 3,
            body: Bytes::from(vec![b'a'; 10_000]),
        }
    }

    #[test]
    fn large_bodies_round_trip() {
        let c = Compression::Deflate { threshold: 512 };
        let packed = c.deflate(big_frame());
        assert_ne!(packed.flags & FLAG_DEFLATE, 0);
        assert!(packed.body.len() < 1000);
        assert_eq!(c.inflate(packed, 65536).unwrap(), big_frame());
    }

    #[test]
    fn small_bodies_stay_plain() {
        let c = Compression::Deflate { threshold: 512 };
        let f = Frame {
            cmd: 7,
            flags: 0,
            seq: 1,
            body: Bytes::from_static(b"hi"),
        };
        assert_eq!(c.deflate(f.clone()), f);
    }

    #[test]
    fn bombs_and_unnegotiated_frames_are_refused() {
        let c = Compression::Deflate { threshold: 1 };
        let packed = c.deflate(big_frame());
        assert_eq!(
            c.inflate(packed.clone(), 1000),
            Err(CompressError::TooLarge(1000))
        );
        assert_eq!(
            Compression::None.inflate(packed, 65536),
            Err(CompressError::NotNegotiated)
        );
        let garbage = Frame {
            cmd: 7,
            flags: FLAG_DEFLATE,
            seq: 1,
            body: Bytes::from_static(&[0xff; 8]),
        };
        assert_eq!(c.inflate(garbage, 65536), Err(CompressError::Corrupt));
    }

    #[test]
    fn negotiation_picks_deflate_only_when_offered() {
        assert_eq!(
            Compression::negotiate(&["zstd".into()], 1),
            Compression::None
        );
        assert_eq!(
            Compression::negotiate(&["zstd".into(), "deflate".into()], 7),
            Compression::Deflate { threshold: 7 }
        );
    }
}
