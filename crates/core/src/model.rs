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

/// The `kind` of an entry saying an earlier message was recalled or edited
/// (an amend notice). Its body is a protobuf-encoded [`pb::Message`]: the
/// amended message, whose content (type, body, flags) is read again from
/// the message itself whenever the notice is read ([`Message::resolved`]),
/// so an edited body lives in one place only and a recall removes it
/// everywhere. On the wire the entry carries `Message.amended`.
pub const AMEND_KIND: &str = "switchboard.amend";

/// The `kind` a recalled message is stored under; its body is a
/// [`pb::Message`] with only the app's type (and `recalled`): the app's
/// body is gone.
pub const RECALLED_KIND: &str = "switchboard.recalled";

/// The `kind` an edited message is stored under; its body is a
/// [`pb::Message`] with the app's type, the edited body and
/// `edited_at_ms`.
pub const EDITED_KIND: &str = "switchboard.edited";

/// What an app message says now: its type and body, and whether it was
/// recalled or edited.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Content {
    pub kind: String,
    pub body: Bytes,
    pub recalled: bool,
    pub edited_at_ms: i64,
}

impl Message {
    pub fn to_pb(&self) -> pb::Message {
        let read = self.read_receipt();
        let mut m = pb::Message {
            msg_id: self.id,
            from: Some(self.from.to_pb()),
            to: Some(self.to.to_pb()),
            r#type: String::new(),
            body: Bytes::new(),
            client_msg_id: self.client_msg_id.clone(),
            server_time_ms: self.server_time_ms,
            group: self.group.clone(),
            read: read.map(Box::new),
            amended: self.amend_notice().map(Box::new),
            recalled: false,
            edited_at_ms: 0,
        };
        if m.read.is_none() && m.amended.is_none() {
            let c = self.content();
            m.r#type = c.kind;
            m.body = c.body;
            m.recalled = c.recalled;
            m.edited_at_ms = c.edited_at_ms;
        }
        m
    }

    /// The app's type and body as they are now (for a recalled or edited
    /// message, from its stored envelope).
    pub fn content(&self) -> Content {
        use prost::Message as _;
        let amended = self.kind == RECALLED_KIND || self.kind == EDITED_KIND;
        match amended.then(|| pb::Message::decode(self.body.clone()).ok()) {
            None => Content {
                kind: self.kind.clone(),
                body: self.body.clone(),
                recalled: false,
                edited_at_ms: 0,
            },
            Some(Some(c)) => Content {
                kind: c.r#type,
                body: c.body,
                recalled: self.kind == RECALLED_KIND,
                edited_at_ms: c.edited_at_ms,
            },
            // A damaged envelope shows as recalled: never the raw bytes.
            Some(None) => Content {
                recalled: true,
                ..Content::default()
            },
        }
    }

    /// This message stored with `content` (a recall or an edit of it).
    pub fn with_content(&self, content: Content) -> Message {
        use prost::Message as _;
        let (kind, body) = if content.recalled {
            (RECALLED_KIND, Bytes::new())
        } else {
            (EDITED_KIND, content.body)
        };
        let envelope = pb::Message {
            r#type: content.kind,
            body,
            recalled: content.recalled,
            edited_at_ms: content.edited_at_ms,
            ..Default::default()
        };
        Message {
            kind: kind.into(),
            body: envelope.encode_to_vec().into(),
            ..self.clone()
        }
    }

    /// True for a recalled message.
    pub fn is_recalled(&self) -> bool {
        self.kind == RECALLED_KIND
    }

    /// The amended message an amend notice carries.
    pub fn amend_notice(&self) -> Option<pb::Message> {
        if self.kind != AMEND_KIND {
            return None;
        }
        use prost::Message as _;
        pb::Message::decode(self.body.clone()).ok()
    }

    /// This amend notice carrying `amended` as the message is now (see
    /// [`AMEND_KIND`]); any other message unchanged.
    pub fn resolved(&self, amended: &Message) -> Message {
        use prost::Message as _;
        if self.kind != AMEND_KIND {
            return self.clone();
        }
        Message {
            body: amended.to_pb().encode_to_vec().into(),
            ..self.clone()
        }
    }

    /// The id of the message an amend notice is about.
    pub fn amends_msg_id(&self) -> Option<u64> {
        self.amend_notice().map(|m| m.msg_id)
    }

    /// The read receipt this entry carries, when it is one.
    pub fn read_receipt(&self) -> Option<pb::ReadReceipt> {
        if self.kind != READ_RECEIPT_KIND {
            return None;
        }
        use prost::Message as _;
        pb::ReadReceipt::decode(self.body.clone()).ok()
    }

    /// True for an app's message (not a read receipt or an amend notice;
    /// a recalled or edited message still is one).
    pub fn is_app_message(&self) -> bool {
        self.kind != READ_RECEIPT_KIND && self.kind != AMEND_KIND
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
    /// For an amend notice: the amended message, which replaces the stored
    /// message with its id in the same atomic step (see [`Amendment`]).
    pub amends: Option<Box<Amendment>>,
}

/// A recall or an edit, stored with its notice: the message with id
/// `message.id` is replaced by `message`, unless it was recalled (a recall
/// is final), in which case nothing is stored and the append fails with
/// [`crate::store::StoreError::Recalled`]. A de-duplicated resend of the
/// notice answers the first result before this check.
#[derive(Debug, Clone)]
pub struct Amendment {
    pub message: Message,
}

impl NewMessage {
    /// The de-duplication key, when the sender gave a client_msg_id.
    pub fn dedupe_key(&self) -> Option<(&UserKey, &str)> {
        let m = &self.message;
        (!m.client_msg_id.is_empty()).then_some((&m.from, m.client_msg_id.as_str()))
    }
}
