//! Groups: a conversation of many members, stored once ("read diffusion").
//!
//! A group has one timeline, numbered 1, 2, 3... like a user's, that every
//! member reads; a message to a group of 100,000 is one entry, not 100,000.
//! Each member device keeps its own cursor per group. A member sees the
//! entries after the moment it joined (its `joined_seq`), or the whole
//! timeline when the group's `history_visible` is set. Business servers own
//! membership (the HTTP API); clients post and read.

use bytes::Bytes;

use crate::model::{Message, UserKey};

/// A group: `app` + `gid` is the key, `gid` chosen by the business.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub app: String,
    pub gid: String,
}

impl GroupKey {
    pub fn new(app: impl Into<String>, gid: impl Into<String>) -> GroupKey {
        GroupKey {
            app: app.into(),
            gid: gid.into(),
        }
    }
}

impl std::fmt::Display for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/group/{}", self.app, self.gid)
    }
}

/// Who may post to a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PostPolicy {
    /// Every member.
    #[default]
    Members,
    /// Only the members marked admin: a broadcast channel.
    Admins,
}

impl PostPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PostPolicy::Members => "members",
            PostPolicy::Admins => "admins",
        }
    }

    pub fn parse(s: &str) -> Option<PostPolicy> {
        match s {
            "members" => Some(PostPolicy::Members),
            "admins" => Some(PostPolicy::Admins),
            _ => None,
        }
    }
}

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Member,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "member" => Some(Role::Member),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// What the business sets on a group (create, or update in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    pub key: GroupKey,
    /// Display name (free text).
    pub name: String,
    /// The business's own metadata, opaque (JSON text by convention).
    pub meta: Bytes,
    pub post_policy: PostPolicy,
    /// Members added later also see the entries from before they joined.
    pub history_visible: bool,
}

/// A stored group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub spec: GroupSpec,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: i64,
    /// The highest sequence on its timeline (0 when empty).
    pub head: u64,
    /// How many members it has.
    pub members: u64,
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub uid: String,
    pub role: Role,
    /// The group's head when the member was (last) added: it sees the
    /// entries after it, unless the group's history is visible.
    pub joined_seq: u64,
    pub joined_ms: i64,
}

impl Member {
    /// The first sequence this member may read, minus one.
    pub fn visible_after(&self, group: &GroupSpec) -> u64 {
        if group.history_visible {
            0
        } else {
            self.joined_seq
        }
    }
}

/// One of a user's groups as a device sees it at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    pub gid: String,
    /// The group timeline's head.
    pub head: u64,
    /// This device's cursor on the group timeline (0 when it has none).
    pub cursor: u64,
    /// The member sees entries after this sequence only
    /// ([`Member::visible_after`]).
    pub visible_after: u64,
}

impl GroupState {
    /// Where this device's reading starts: its cursor, never before what
    /// the member may see.
    pub fn read_from(&self) -> u64 {
        self.cursor.max(self.visible_after)
    }

    /// True when the group has entries this device has not acknowledged.
    pub fn has_unread(&self) -> bool {
        self.head > self.read_from()
    }
}

/// A message to store on a group's timeline.
#[derive(Debug, Clone)]
pub struct NewGroupMessage {
    /// `message.group` is the group's id; `message.to` is `(app, "")`.
    pub message: Message,
    pub group: GroupKey,
    /// Check that `message.from` is a member allowed to post (by the
    /// group's post policy), in the same atomic step as the append. False
    /// for a post by the business as the system.
    pub check_sender: bool,
    /// For an amend notice: the amended message (see
    /// [`crate::model::Amendment`]).
    pub amends: Option<Box<crate::model::Amendment>>,
}

/// Why a group operation was refused (carried by
/// [`crate::store::StoreError::Group`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GroupRefusal {
    /// No such group (never created, or deleted).
    #[error("no such group")]
    NotFound,
    /// The sender is not a member of the group.
    #[error("not a member of the group")]
    NotMember,
    /// The group lets only its admins post.
    #[error("only the group's admins may post")]
    AdminsOnly,
    /// Adding these members would take the group over its maximum size.
    #[error("the group would be over its maximum size")]
    Full,
}

/// The members an add or remove call changed (`changed`), in the order
/// given; members already in the wanted state are left out (idempotence).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembersChanged {
    pub changed: Vec<String>,
    /// The group's member count after the call.
    pub members: u64,
}

/// The user key of a group member.
pub fn member_key(group: &GroupKey, uid: &str) -> UserKey {
    UserKey::new(group.app.clone(), uid)
}
