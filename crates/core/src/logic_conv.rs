//! Conversations on the client protocol and the HTTP API: the list with
//! unread counts, marking read (read receipts), and transient messages.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use switchboard_proto::limits::check_id;
use switchboard_proto::pb;

use crate::conversation::{ConvState, PageCursor, View};
use crate::error::LogicError;
use crate::events::{self, ReadData, UserRef};
use crate::group::{GroupKey, GroupRefusal, PostPolicy, Role};
use crate::logic::Logic;
use crate::model::{Entry, Message, NewMessage, READ_RECEIPT_KIND, UserKey};
use crate::route::{Delivery, Target};
use crate::store::StoreError;

/// Entries of the user's timeline read per store call while folding.
const FOLD_PAGE: usize = 1000;

/// Conversations per page when the client does not say, and at most.
pub const DEFAULT_CONVERSATIONS_PAGE: usize = 50;
pub const MAX_CONVERSATIONS_PAGE: usize = 200;

/// A transient message: pushed to the devices online now, nothing stored.
#[derive(Debug, Clone)]
pub struct TransientRequest {
    /// Echoed in the push (may be empty; never de-duplicated).
    pub client_msg_id: String,
    /// The receiver (an empty app: the sender's app), or...
    pub to: UserKey,
    /// ...the group, in the sender's app, when not empty.
    pub group: String,
    pub kind: String,
    pub body: Bytes,
}

/// What a transient message reached.
#[derive(Debug, Clone)]
pub struct TransientSent {
    pub msg_id: u64,
    pub server_time_ms: i64,
    /// Devices the push was handed to.
    pub devices: usize,
}

/// The conversation a read position is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadTarget {
    /// A 1:1 conversation; `seq` is on the reader's own timeline.
    Peer(UserKey),
    /// A group of the reader's app; `seq` is on the group's timeline.
    Group(String),
}

/// A stored read receipt.
#[derive(Debug, Clone)]
pub struct MarkedRead {
    /// The receipt entry's sequence on the reader's timeline.
    pub seq: u64,
    pub msg_id: u64,
}

/// One conversation as the list shows it.
#[derive(Debug, Clone)]
pub struct ConversationItem {
    pub target: ReadTarget,
    /// The last entry (on the user's timeline, or the group's); `None`
    /// when the conversation has none the user may see yet.
    pub last: Option<Entry>,
    pub last_time_ms: i64,
    pub unread: u64,
    pub read_seq: u64,
    /// 1:1: the peer read up to this message (0: nothing known).
    pub peer_read_msg_id: u64,
}

/// A page of the conversation list.
#[derive(Debug, Clone)]
pub struct ConversationList {
    pub conversations: Vec<ConversationItem>,
    /// The next page's cursor; `None` on the last page.
    pub next: Option<String>,
    /// Unread entries over all the user's conversations.
    pub total_unread: u64,
}

impl ConversationItem {
    pub fn to_pb(&self) -> pb::Conversation {
        let (peer, group) = match &self.target {
            ReadTarget::Peer(u) => (Some(u.to_pb()), String::new()),
            ReadTarget::Group(g) => (None, g.clone()),
        };
        pb::Conversation {
            peer,
            group,
            last: self.last.as_ref().map(Entry::to_pb),
            last_time_ms: self.last_time_ms,
            unread: self.unread,
            read_seq: self.read_seq,
            peer_read_msg_id: self.peer_read_msg_id,
        }
    }
}

impl Logic {
    /// Pushes a transient message to the receiver's devices online now (or
    /// the group's member devices online now, but the sender's connection
    /// `origin_conn`): nothing is stored, nothing is resent, the pushes
    /// carry seq 0. Returns how many devices it was handed to. The checks
    /// are a c2c's (limits, apps, membership and post policy), the screen
    /// is not run (nothing is stored for it to protect).
    pub async fn transient(
        &self,
        from: &UserKey,
        origin_conn: Option<u64>,
        req: TransientRequest,
    ) -> Result<TransientSent, LogicError> {
        if !req.client_msg_id.is_empty() {
            check_id("client_msg_id", &req.client_msg_id)?;
        }
        switchboard_proto::limits::check_type(&req.kind)?;
        self.check_body(&req.body)?;
        let (target, to) = if req.group.is_empty() {
            let to = self.checked_peer(from, req.to)?;
            (Target::User(to.clone()), to)
        } else {
            check_id("group", &req.group)?;
            let key = GroupKey::new(from.app.clone(), req.group.clone());
            self.check_may_post(&key, &from.uid).await?;
            (Target::Group(key), UserKey::new(from.app.clone(), ""))
        };
        let message = Message {
            id: self.next_id(),
            from: from.clone(),
            to,
            kind: req.kind,
            body: req.body,
            client_msg_id: req.client_msg_id,
            server_time_ms: crate::now_ms(),
            group: req.group,
        };
        let (msg_id, server_time_ms) = (message.id, message.server_time_ms);
        let delivery = Delivery {
            entries: vec![(
                target,
                Entry {
                    seq: 0,
                    message: Arc::new(message),
                },
            )],
            skip_conn: origin_conn.map(|c| (self.config().node.clone(), c)),
        };
        let reach = self.try_deliver(&delivery).await?;
        self.stats.record_online_message();
        Ok(TransientSent {
            msg_id,
            server_time_ms,
            devices: reach.iter().map(|r| r.devices).sum(),
        })
    }

    /// A receiver named by a client: the sender's app when the app is
    /// empty, a known app that may be messaged from the sender's.
    pub(crate) fn checked_peer(
        &self,
        from: &UserKey,
        mut to: UserKey,
    ) -> Result<UserKey, LogicError> {
        if to.app.is_empty() {
            to.app = from.app.clone();
        }
        check_id("to.uid", &to.uid)?;
        if self.apps().get(&to.app).is_none() {
            return Err(LogicError::InvalidArgument(format!(
                "unknown app {}",
                to.app
            )));
        }
        if !self.apps().may_message(&from.app, &to.app) {
            return Err(LogicError::CrossAppForbidden {
                from: from.app.clone(),
                to: to.app.clone(),
            });
        }
        Ok(to)
    }

    /// The user is a member of the group and may post to it.
    async fn check_may_post(&self, key: &GroupKey, uid: &str) -> Result<(), LogicError> {
        let store = self.store();
        let (group, member) = tokio::try_join!(store.group(key), store.member(key, uid))?;
        let group = group.ok_or(StoreError::Group(GroupRefusal::NotFound))?;
        let member = member.ok_or(StoreError::Group(GroupRefusal::NotMember))?;
        if group.spec.post_policy == PostPolicy::Admins && member.role != Role::Admin {
            return Err(StoreError::Group(GroupRefusal::AdminsOnly).into());
        }
        Ok(())
    }

    /// The reader read a conversation up to `seq` (on the reader's own
    /// timeline for a 1:1 conversation, on the group's for a group). Stored
    /// as a read-receipt entry on the reader's timeline (the reader's other
    /// devices learn it) and, for a 1:1 conversation, on the peer's (the
    /// peer's devices get the "read" mark), then pushed to all of them but
    /// `origin_conn`. The entry at `seq` must be an app message of the
    /// conversation; a group position is clamped to the group's head.
    pub async fn mark_read(
        &self,
        reader: &UserKey,
        origin_conn: Option<u64>,
        target: ReadTarget,
        seq: u64,
    ) -> Result<MarkedRead, LogicError> {
        if seq == 0 {
            return Err(LogicError::InvalidArgument(
                "seq must be the sequence of an entry (1 or more)".into(),
            ));
        }
        let (receipt, to, timelines) = match target {
            ReadTarget::Peer(peer) => {
                // An empty uid names the app's system sender: the
                // conversation of the business's pushes.
                let peer = if peer.uid.is_empty() && (peer.app.is_empty() || peer.app == reader.app)
                {
                    Logic::system_sender(&reader.app)
                } else {
                    self.checked_peer(reader, peer)?
                };
                let page = self.store().entries_after(reader, seq - 1, 1).await?;
                let entry = page
                    .entries
                    .into_iter()
                    .next()
                    .filter(|e| e.seq == seq)
                    .ok_or_else(|| {
                        LogicError::InvalidArgument(format!(
                            "there is no entry {seq} on your timeline (head {})",
                            page.head
                        ))
                    })?;
                let m = &entry.message;
                let between =
                    (m.from == *reader && m.to == peer) || (m.from == peer && m.to == *reader);
                if !between || !m.is_app_message() || !m.group.is_empty() {
                    return Err(LogicError::InvalidArgument(format!(
                        "entry {seq} is not a message of your conversation with {peer}"
                    )));
                }
                let receipt = pb::ReadReceipt {
                    peer: Some(peer.to_pb()),
                    group: String::new(),
                    seq,
                    msg_id: m.id,
                };
                // The system sender has no devices to tell.
                let mut timelines = Vec::with_capacity(2);
                if peer != *reader && !peer.uid.is_empty() {
                    timelines.push(peer.clone());
                }
                timelines.push(reader.clone());
                (receipt, peer, timelines)
            }
            ReadTarget::Group(gid) => {
                check_id("group", &gid)?;
                let key = GroupKey::new(reader.app.clone(), gid.clone());
                let store = self.store();
                let (group, member) =
                    tokio::try_join!(store.group(&key), store.member(&key, &reader.uid))?;
                let group = group.ok_or(StoreError::Group(GroupRefusal::NotFound))?;
                member.ok_or(StoreError::Group(GroupRefusal::NotMember))?;
                let seq = seq.min(group.head);
                if seq == 0 {
                    return Err(LogicError::InvalidArgument(
                        "the group has no entries to read yet".into(),
                    ));
                }
                let page = store.group_entries_after(&key, seq - 1, 1).await?;
                let msg_id = page.entries.first().map_or(0, |e| e.message.id);
                let receipt = pb::ReadReceipt {
                    peer: None,
                    group: gid,
                    seq,
                    msg_id,
                };
                // A note to self: only the reader's devices need it.
                (receipt, reader.clone(), vec![reader.clone()])
            }
        };
        let message = Message {
            id: self.next_id(),
            from: reader.clone(),
            to,
            kind: READ_RECEIPT_KIND.into(),
            body: receipt.encode_to_vec().into(),
            client_msg_id: String::new(),
            server_time_ms: crate::now_ms(),
            group: String::new(),
        };
        let appended = self
            .store()
            .append(NewMessage {
                message,
                timelines: timelines.clone(),
                amends: None,
            })
            .await?;
        let delivery = Delivery {
            entries: timelines
                .iter()
                .zip(appended.entries())
                .map(|(user, entry)| (Target::User(user.clone()), entry))
                .collect(),
            skip_conn: origin_conn.map(|c| (self.config().node.clone(), c)),
        };
        self.deliver(delivery).await;
        let data = ReadData {
            reader: reader.into(),
            peer: receipt
                .peer
                .as_ref()
                .map(|p| UserRef::from(&UserKey::from_pb(p))),
            group: (!receipt.group.is_empty()).then(|| receipt.group.clone()),
            seq: receipt.seq,
            msg_id: receipt.msg_id.to_string(),
        };
        self.publish_event(events::CONVERSATION_READ, reader, "", &data, "")
            .await;
        let own = timelines.iter().position(|u| u == reader).unwrap_or(0);
        Ok(MarkedRead {
            seq: appended.seqs.get(own).copied().unwrap_or(0),
            msg_id: appended.message.id,
        })
    }

    /// A page of the user's conversations, most recent first, with unread
    /// counts. Folds what is new since the stored view (the user's timeline
    /// after the view's position, and each group that moved) and stores the
    /// view again when it changed.
    pub async fn conversations(
        &self,
        user: &UserKey,
        after: Option<&str>,
        limit: u32,
    ) -> Result<ConversationList, LogicError> {
        let after = match after.filter(|a| !a.is_empty()) {
            Some(a) => Some(PageCursor::decode(a).ok_or_else(|| {
                LogicError::InvalidArgument("after is not a cursor of this list".into())
            })?),
            None => None,
        };
        let limit = match limit as usize {
            0 => DEFAULT_CONVERSATIONS_PAGE,
            n => n.min(MAX_CONVERSATIONS_PAGE),
        };
        let view = self.conversation_view(user).await?;
        let (page, next) = view.page(after.as_ref(), limit);
        let lasts =
            futures::future::try_join_all(page.iter().map(|c| self.last_entry(user, c))).await?;
        Ok(ConversationList {
            conversations: page
                .iter()
                .zip(lasts)
                .map(|(c, last)| ConversationItem {
                    target: if c.group.is_empty() {
                        ReadTarget::Peer(UserKey::new(c.peer_app.clone(), c.peer_uid.clone()))
                    } else {
                        ReadTarget::Group(c.group.clone())
                    },
                    last,
                    last_time_ms: c.last_time_ms,
                    unread: c.unread(),
                    read_seq: c.read_seq,
                    peer_read_msg_id: c.peer_read_msg_id,
                })
                .collect(),
            next: next.map(|n| n.encode()),
            total_unread: view.total_unread(),
        })
    }

    /// The user's conversation view, brought up to date and stored when
    /// it moved.
    pub(crate) async fn conversation_view(&self, user: &UserKey) -> Result<View, LogicError> {
        let store = self.store();
        let stored = store.conversation_view(user).await?;
        let before = stored.clone();
        let mut view = stored.as_deref().map(View::decode).unwrap_or_default();
        loop {
            let page = store
                .entries_after(user, view.through_seq, FOLD_PAGE)
                .await?;
            let Some(last) = page.entries.last().map(|e| e.seq) else {
                break;
            };
            for e in &page.entries {
                view.fold_own(user, e.seq, &e.message);
            }
            if last >= page.head {
                break;
            }
        }
        let groups = store.group_states(user, "").await?;
        let gids: HashSet<&str> = groups.iter().map(|g| g.gid.as_str()).collect();
        view.keep_groups(&gids);
        for g in &groups {
            let Some(from) = view.group_needs(&g.gid, g.head, g.visible_after) else {
                continue;
            };
            let key = GroupKey::new(user.app.clone(), g.gid.clone());
            let page = store
                .group_entries_after(&key, from, crate::conversation::GROUP_SCAN)
                .await?;
            for e in &page.entries {
                view.fold_group(user, &g.gid, e);
            }
            view.group_seen(&g.gid, g.head);
        }
        let encoded = view.encode();
        if before.as_ref() != Some(&encoded) {
            // Derived state: a failed write only means folding again later.
            if let Err(e) = store.put_conversation_view(user, encoded).await {
                tracing::warn!(error = %e, %user, "could not store the conversation view");
            }
        }
        Ok(view)
    }

    /// The entry a conversation's `last_seq` names.
    async fn last_entry(&self, user: &UserKey, c: &ConvState) -> Result<Option<Entry>, LogicError> {
        if c.last_seq == 0 {
            return Ok(None);
        }
        let page = if c.group.is_empty() {
            self.store().entries_after(user, c.last_seq - 1, 1).await?
        } else {
            let key = GroupKey::new(user.app.clone(), c.group.clone());
            self.store()
                .group_entries_after(&key, c.last_seq - 1, 1)
                .await?
        };
        Ok(page
            .entries
            .into_iter()
            .next()
            .filter(|e| e.seq == c.last_seq))
    }
}
