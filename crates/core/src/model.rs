//! Users, messages and timeline entries.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use switchboard_proto::pb;

/// A user: `app` + `uid` is the key everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKey {
    pub app: String,
    pub uid: String,
}

impl UserKey {
    pub fn new(app: impl Into<String>, uid: impl Into<String>) -> UserKey {
        UserKey {
            app: app.into(),
            uid: uid.into(),
        }
    }

    pub fn to_pb(&self) -> pb::User {
        pb::User {
            app: self.app.clone(),
            uid: self.uid.clone(),
        }
    }

    pub fn from_pb(u: &pb::User) -> UserKey {
        UserKey::new(u.app.clone(), u.uid.clone())
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.uid)
    }
}

/// A stored (or online-only) message. The body is opaque bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: u64,
    pub from: UserKey,
    pub to: UserKey,
    /// The app's own label ("text", "order", ...), the protocol's `type`.
    pub kind: String,
    pub body: Bytes,
    /// The sender's idempotency id; empty for server-originated messages.
    pub client_msg_id: String,
    pub server_time_ms: i64,
    /// The group's id for a message to a group (then `to` is `(app, "")`
    /// and the entry's sequence is on the group's timeline); empty otherwise.
    pub group: String,
}

/// The `kind` under which a read-receipt entry is stored; its body is the
/// protobuf-encoded [`pb::ReadReceipt`]. On the wire the entry carries
/// `Message.read` instead of a type and body. App types may not start
/// with [`switchboard_proto::limits::RESERVED_TYPE_PREFIX`], so no app
/// message is ever taken for one.
pub const READ_RECEIPT_KIND: &str = "switchboard.read";

impl Message {
    pub fn to_pb(&self) -> pb::Message {
        let read = self.read_receipt();
        let (kind, body) = match read {
            Some(_) => (String::new(), Bytes::new()),
            None => (self.kind.clone(), self.body.clone()),
        };
        pb::Message {
            msg_id: self.id,
            from: Some(self.from.to_pb()),
            to: Some(self.to.to_pb()),
            r#type: kind,
            body,
            client_msg_id: self.client_msg_id.clone(),
            server_time_ms: self.server_time_ms,
            group: self.group.clone(),
            read: read.map(Box::new),
        }
    }

    /// The read receipt this entry carries, when it is one.
    pub fn read_receipt(&self) -> Option<pb::ReadReceipt> {
        if self.kind != READ_RECEIPT_KIND {
            return None;
        }
        use prost::Message as _;
        pb::ReadReceipt::decode(self.body.clone()).ok()
    }

    /// True for an app's message (not a read receipt).
    pub fn is_app_message(&self) -> bool {
        self.kind != READ_RECEIPT_KIND
    }
}

/// One entry of a user's timeline: a sequence number and the message.
/// Sequence 0 marks an online-only message that is on no timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub message: Arc<Message>,
}

impl Entry {
    pub fn to_pb(&self) -> pb::Push {
        pb::Push {
            seq: self.seq,
            message: Some(self.message.to_pb()),
        }
    }
}

/// A message to store, with the timelines that get an entry for it.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub message: Message,
    /// The timelines that receive an entry, in order (receiver first, then
    /// the sender for a c2c). Duplicates are not allowed.
    pub timelines: Vec<UserKey>,
}

impl NewMessage {
    /// The de-duplication key, when the sender gave a client_msg_id.
    pub fn dedupe_key(&self) -> Option<(&UserKey, &str)> {
        let m = &self.message;
        (!m.client_msg_id.is_empty()).then_some((&m.from, m.client_msg_id.as_str()))
    }
}
