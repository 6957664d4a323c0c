//! The Switchboard wire protocol, as a pure codec: bytes in, frames out.
//!
//! A frame is a 16-byte big-endian [`Header`] followed by a protobuf body
//! (see `docs/protocol.md`). Nothing here touches a socket: the gate and the
//! SDK feed received bytes to [`decode`] and write what [`Frame::encode`]
//! produces. The same commands travel as JSON in WebSocket text messages
//! ([`json`]).

pub mod code;
mod compress;
mod frame;
pub mod json;
pub mod limits;
mod packet;

pub use compress::{CompressError, Compression};
pub use frame::{FLAG_DEFLATE, Frame, HEADER_LEN, Header, ProtoError, VERSION, decode};
pub use packet::{Command, Packet};

/// Generated protobuf types (`switchboard.v1`), with serde via pbjson.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/switchboard.v1.rs"));
    include!(concat!(env!("OUT_DIR"), "/switchboard.v1.serde.rs"));
}
