//! Platform events for business servers: their topics and the JSON of their
//! `data` (the bus body of an event), one place so the logic, the dispatcher
//! and `docs/bus.md` say the same thing.
//!
//! Ids travel as strings: a 64-bit id does not fit a JavaScript number.

use serde::{Deserialize, Serialize};

use crate::model::{Message, UserKey};

/// A client-to-server report (`c2s`); its body is the client's bytes.
pub const C2S: &str = "c2s";
/// A device of a user logged in.
pub const USER_ONLINE: &str = "user.online";
/// A device of a user left (disconnect, logout, kicked).
pub const USER_OFFLINE: &str = "user.offline";
/// A c2c message was stored (metadata, not the body).
pub const MESSAGE_STORED: &str = "message.stored";

/// A message was recalled (by its sender, or by the business over HTTP).
pub const MESSAGE_RECALLED: &str = "message.recalled";
/// A message's body was edited by its sender.
pub const MESSAGE_EDITED: &str = "message.edited";
/// A user marked a conversation read up to an entry.
pub const CONVERSATION_READ: &str = "conversation.read";
/// Stored messages found none of a user's devices online: what a push
/// notification needs (docs/bus.md), collapsed per receiver over the app's
/// window. Made only for apps with `notifications` set.
pub const NOTIFICATION: &str = "notification";

/// A group was created through the HTTP API.
pub const GROUP_CREATED: &str = "group.created";
/// A group was deleted through the HTTP API.
pub const GROUP_DELETED: &str = "group.deleted";
/// Members were added to a group (or changed role).
pub const GROUP_MEMBERS_ADDED: &str = "group.members_added";
/// Members were removed from a group.
pub const GROUP_MEMBERS_REMOVED: &str = "group.members_removed";

/// Every topic, for configuration checks.
pub const TOPICS: &[&str] = &[
    C2S,
    USER_ONLINE,
    USER_OFFLINE,
    MESSAGE_STORED,
    MESSAGE_RECALLED,
    MESSAGE_EDITED,
    CONVERSATION_READ,
    NOTIFICATION,
    GROUP_CREATED,
    GROUP_DELETED,
    GROUP_MEMBERS_ADDED,
    GROUP_MEMBERS_REMOVED,
];

/// `data` of the `group.*` events. Group events are keyed by the app's
/// system user (uid `""`), so one app's membership changes reach a webhook
/// in the order they happened (a create before its members).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupData {
    pub gid: String,
    /// The members the call changed, in request order (`members_added`,
    /// `members_removed`; empty for `created` and `deleted`): members
    /// already in the wanted state are left out, and a call that changed
    /// nobody publishes no event.
    #[serde(default)]
    pub uids: Vec<String>,
    /// The group's member count after the change.
    pub members: u64,
}

/// `data` of `user.online` and `user.offline`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceData {
    pub device_id: String,
    pub platform: String,
    /// The node that holds (held) the connection.
    pub node: String,
    /// When the device logged in (ms since the Unix epoch).
    pub since_ms: i64,
    /// Devices of the user online after this change: 0 in a `user.offline`
    /// means the user is now fully offline.
    pub online_devices: usize,
    /// Why the device left (`user.offline` only): `disconnect`,
    /// `too_many_devices`, or `node_lost` (its node stopped without logging
    /// it out: killed, powered off, or cut off from presence for longer than
    /// its TTL; announced by another node, or by the restarted one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A user in event data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRef {
    pub app: String,
    pub uid: String,
}

impl From<&UserKey> for UserRef {
    fn from(u: &UserKey) -> UserRef {
        UserRef {
            app: u.app.clone(),
            uid: u.uid.clone(),
        }
    }
}

/// One timeline entry a stored message took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRef {
    pub app: String,
    pub uid: String,
    pub seq: u64,
}

/// `data` of `message.stored`. The body is left out on purpose: events are
/// for reacting (counters, assignment, moderation queues); a server that
/// needs the content reads the conversation through the HTTP API, so the
/// outbox does not store every message twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageStoredData {
    pub msg_id: String,
    pub from: UserRef,
    pub to: UserRef,
    #[serde(rename = "type")]
    pub kind: String,
    pub client_msg_id: String,
    pub server_time_ms: i64,
    pub body_bytes: usize,
    /// The entries the message took: the receiver's, then the sender's
    /// (empty for a group message, which takes one entry on its group).
    pub seqs: Vec<SeqRef>,
    /// For a message to a group: the group and the entry's sequence on its
    /// timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupSeqRef>,
}

/// A group timeline entry, in `message.stored`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSeqRef {
    pub gid: String,
    pub seq: u64,
}

impl MessageStoredData {
    pub fn new(message: &Message, timelines: &[UserKey], seqs: &[u64]) -> MessageStoredData {
        MessageStoredData {
            msg_id: message.id.to_string(),
            from: (&message.from).into(),
            to: (&message.to).into(),
            kind: message.kind.clone(),
            client_msg_id: message.client_msg_id.clone(),
            server_time_ms: message.server_time_ms,
            body_bytes: message.body.len(),
            seqs: timelines
                .iter()
                .zip(seqs)
                .map(|(u, &seq)| SeqRef {
                    app: u.app.clone(),
                    uid: u.uid.clone(),
                    seq,
                })
                .collect(),
            group: None,
        }
    }
}

/// `data` of `notification`: one per receiver per window, for every stored
/// message in it that found none of the receiver's devices online. It names
/// the last of them; `messages` and `conversations` say how many it stands
/// for. The event's user is the receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationData {
    /// The receiver: whose phone to notify.
    pub to: UserRef,
    /// The sender of the last message (uid `""`: the app's system, an s2c).
    pub from: UserRef,
    /// The last message's 1:1 conversation: the receiver's peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<UserRef>,
    /// The last message's group conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The last message's type.
    #[serde(rename = "type")]
    pub kind: String,
    pub msg_id: String,
    pub server_time_ms: i64,
    /// The start of the last message's body, when the app allows previews
    /// and the body is UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    /// The receiver's unread count over all conversations when the
    /// notification was made: the app icon's badge. Absent when it could
    /// not be read (the store failed); the notification goes anyway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub badge: Option<u64>,
    /// Messages this notification stands for (1 or more).
    pub messages: u64,
    /// Distinct conversations among them.
    pub conversations: u64,
    /// When the first of them was stored (ms since the Unix epoch).
    pub first_time_ms: i64,
}

/// `data` of `message.recalled` and `message.edited`. Like
/// `message.stored`, no body: read the message as it is now through the
/// history API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AmendedData {
    /// The message recalled or edited.
    pub msg_id: String,
    /// Who did it: the sender, or the app's system user (uid `""`) for a
    /// recall by the business.
    pub by: UserRef,
    pub from: UserRef,
    /// The receiver (`uid` `""` for a group message).
    pub to: UserRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The message's app type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The amend notice's id (the entry every party's devices got).
    pub notice_msg_id: String,
    /// When it was recalled or edited (ms since the Unix epoch).
    pub time_ms: i64,
    /// The new body's size (`message.edited`; 0 for a recall).
    pub body_bytes: usize,
}

/// `data` of `conversation.read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadData {
    pub reader: UserRef,
    /// The other user of a 1:1 conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<UserRef>,
    /// The group of a group conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Read up to this entry: on the reader's timeline (1:1) or the group's.
    pub seq: u64,
    /// The message at that entry.
    pub msg_id: String,
}
