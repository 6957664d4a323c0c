//! Typed packets: a command number bound to its protobuf body.

use bytes::{Bytes, BytesMut};
use prost::Message as _;

use crate::frame::{Frame, HEADER_LEN, ProtoError, put_header};
use crate::pb;

macro_rules! commands {
    ($($(#[$doc:meta])* $name:ident = $num:literal, $json:literal;)*) => {
        /// Command numbers (the low 16 bits of the header's `cmd`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Command {
            $($(#[$doc])* $name = $num,)*
        }

        impl Command {
            /// Every command, in number order.
            pub const ALL: &'static [Command] = &[$(Command::$name,)*];

            /// The command for a number, if it is one this version knows.
            pub fn from_u16(n: u16) -> Option<Command> {
                match n {
                    $($num => Some(Command::$name),)*
                    _ => None,
                }
            }

            /// The command's name in JSON frames (`"c2c"`, `"push_ack"`, ...).
            pub fn json_name(self) -> &'static str {
                match self {
                    $(Command::$name => $json,)*
                }
            }

            /// The command for a JSON name.
            pub fn from_json_name(name: &str) -> Option<Command> {
                match name {
                    $($json => Some(Command::$name),)*
                    _ => None,
                }
            }
        }

        /// A command with its decoded body.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Packet {
            $($(#[$doc])* $name(pb::$name),)*
        }

        impl Packet {
            /// The packet's command.
            pub fn command(&self) -> Command {
                match self {
                    $(Packet::$name(_) => Command::$name,)*
                }
            }

            /// Decodes a protobuf body for `cmd`.
            pub fn decode(cmd: u16, body: Bytes) -> Result<Packet, ProtoError> {
                let command = Command::from_u16(cmd).ok_or(ProtoError::UnknownCommand(cmd))?;
                let bad = |e: prost::DecodeError| ProtoError::Body {
                    cmd: command.json_name(),
                    reason: e.to_string(),
                };
                Ok(match command {
                    $(Command::$name => Packet::$name(pb::$name::decode(body).map_err(bad)?),)*
                })
            }

            /// The protobuf-encoded body alone.
            pub fn encode_body(&self) -> Bytes {
                match self {
                    $(Packet::$name(m) => Bytes::from(m.encode_to_vec()),)*
                }
            }

            /// Appends a whole frame (header and body) to `buf` without an
            /// intermediate body buffer.
            pub fn encode_frame_into(&self, seq: u32, buf: &mut BytesMut) {
                let len = match self {
                    $(Packet::$name(m) => m.encoded_len(),)*
                };
                put_header(buf, self.command() as u16, 0, seq, len);
                buf.reserve(len);
                // Encoding into a BytesMut only fails when capacity is short,
                // and it was reserved just above.
                let _ = match self {
                    $(Packet::$name(m) => m.encode(buf),)*
                };
            }

            /// Serializes the body in protobuf's canonical JSON mapping, fields
            /// in field-number order (no intermediate `Value`, whose key order
            /// would depend on serde_json's features).
            pub(crate) fn serialize_json_body<S: serde::Serializer>(
                &self,
                serializer: S,
            ) -> Result<S::Ok, S::Error> {
                match self {
                    $(Packet::$name(m) => serde::Serialize::serialize(m, serializer),)*
                }
            }

            pub(crate) fn from_json_value(
                command: Command,
                value: serde_json::Value,
            ) -> Result<Packet, serde_json::Error> {
                Ok(match command {
                    $(Command::$name => Packet::$name(serde_json::from_value(value)?),)*
                })
            }
        }

        $(
            impl From<pb::$name> for Packet {
                fn from(m: pb::$name) -> Packet {
                    Packet::$name(m)
                }
            }
        )*
    };
}

commands! {
    /// Client → server: authenticate the connection.
    Login = 1, "login";
    /// Server → client: login accepted.
    LoginAck = 2, "login_ack";
    /// Client → server: log out and close.
    Logout = 3, "logout";
    /// Server → client: logout done; the server closes next.
    LogoutAck = 4, "logout_ack";
    /// Either way: keepalive request.
    Ping = 5, "ping";
    /// Answer to ping.
    Pong = 6, "pong";
    /// Client → server: message to another user.
    C2c = 7, "c2c";
    /// Server → client: the c2c is stored.
    C2cAck = 8, "c2c_ack";
    /// Server → client: a timeline entry (or online-only message).
    Push = 9, "push";
    /// Client → server: pushes received up to a sequence.
    PushAck = 10, "push_ack";
    /// Client → server: entries after a sequence.
    Sync = 11, "sync";
    /// Server → client: a page of entries.
    SyncReply = 12, "sync_reply";
    /// Client → server: report to the business.
    C2s = 13, "c2s";
    /// Server → client: the report is durable.
    C2sAck = 14, "c2s_ack";
    /// Server → client: a request failed.
    Error = 15, "error";
    /// Server → client: the connection is being closed.
    Kick = 16, "kick";
    /// Client → server: a conversation was read up to an entry.
    MarkRead = 17, "mark_read";
    /// Server → client: the read receipt is stored.
    MarkReadAck = 18, "mark_read_ack";
    /// Client → server: the user's conversations, a page.
    ListConversations = 19, "list_conversations";
    /// Server → client: a page of conversations.
    ConversationList = 20, "conversation_list";
    /// Client → server: recall or edit a message the user sent.
    Amend = 21, "amend";
    /// Server → client: the recall or edit is stored.
    AmendAck = 22, "amend_ack";
}

impl Packet {
    /// Encodes the packet into a complete frame with request id `seq`.
    pub fn encode(&self, seq: u32) -> Bytes {
        let mut buf = BytesMut::with_capacity(HEADER_LEN + 64);
        self.encode_frame_into(seq, &mut buf);
        buf.freeze()
    }

    /// Wraps the packet into an (uncompressed) [`Frame`].
    pub fn to_frame(&self, seq: u32) -> Frame {
        Frame {
            cmd: self.command() as u16,
            flags: 0,
            seq,
            body: self.encode_body(),
        }
    }

    /// Decodes an uncompressed frame's body. Compressed frames go through
    /// [`crate::Compression::inflate`] first.
    pub fn from_frame(frame: &Frame) -> Result<Packet, ProtoError> {
        Packet::decode(frame.cmd, frame.body.clone())
    }

    /// An `Error` packet.
    pub fn error(code: u32, message: impl Into<String>, fatal: bool) -> Packet {
        Packet::Error(pb::Error {
            code,
            message: message.into(),
            fatal,
        })
    }
}
