//! Group messages on the client protocol: post, sync, acknowledge, and what
//! a device learns of its groups at login.
//!
//! A group message is stored once, on the group's timeline
//! ([`Store::group_append`](crate::store::Store::group_append)), then pushed
//! to every online member device through the one delivery path; offline
//! members read it with a group sync. Membership is checked by the store in
//! the same atomic step as the append, so a member removed while its message
//! is in flight either got in before the removal or is refused.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::LogicError;
use crate::events::{self, MessageStoredData};
use crate::group::{GroupKey, GroupRefusal, GroupState, NewGroupMessage};
use crate::logic::{C2cOrder, Logic, SyncPage, after};
use crate::model::{Entry, Message, UserKey};
use crate::route::{Delivery, Target};
use crate::store::{Appended, StoreError};

/// A message a member posts to a group.
#[derive(Debug, Clone)]
pub struct GroupPost {
    /// Unique per sender; a resend is answered with the first result.
    pub client_msg_id: String,
    /// The group's id, in the sender's app.
    pub gid: String,
    pub kind: String,
    pub body: Bytes,
}

/// A stored group message.
#[derive(Debug, Clone)]
pub struct GroupPosted {
    pub message: Arc<Message>,
    /// The entry's sequence on the group's timeline.
    pub seq: u64,
    pub duplicate: bool,
}

/// A page of a group's timeline: [`SyncPage`] and where it really starts
/// (a member sees only the entries after it joined, unless the group's
/// history is visible).
#[derive(Debug, Clone)]
pub struct GroupSyncPage {
    pub page: SyncPage,
    pub since: u64,
}

impl Logic {
    /// [`Logic::group_post`] in the sender's order (see [`C2cOrder`]): it
    /// waits until the sender's earlier messages (to users or groups) are
    /// pushed, so one connection's posts keep their order on the group's
    /// timeline. Calls are made in the order of the requests; the future
    /// may run concurrently with the sender's others.
    pub fn group_post_in_order(
        self: &Arc<Self>,
        order: &mut C2cOrder,
        from: UserKey,
        origin_conn: Option<u64>,
        post: GroupPost,
    ) -> impl Future<Output = Result<GroupPosted, LogicError>> + Send + 'static {
        let mut links = order.next();
        let this = self.clone();
        async move {
            after(links.prev_pushed.take()).await;
            let result = this.group_post(&from, origin_conn, post).await;
            drop(links.queued.take());
            drop(links.pushed.take());
            result
        }
    }

    /// Stores a member's message on the group's timeline, durably (checked
    /// against membership and the group's post policy, screened like a
    /// c2c), then pushes it to every online member device but `origin_conn`.
    pub async fn group_post(
        &self,
        from: &UserKey,
        origin_conn: Option<u64>,
        post: GroupPost,
    ) -> Result<GroupPosted, LogicError> {
        let group = GroupKey::new(from.app.clone(), post.gid);
        self.check_content(&post.client_msg_id, &post.kind, &post.body)?;
        switchboard_proto::limits::check_id("group", &group.gid)?;
        let message = Message {
            id: self.next_id(),
            from: from.clone(),
            to: UserKey::new(group.app.clone(), ""),
            kind: post.kind,
            body: post.body,
            client_msg_id: post.client_msg_id,
            server_time_ms: crate::now_ms(),
            group: group.gid.clone(),
        };
        self.group_store_and_deliver(group, message, true, origin_conn)
            .await
    }

    /// Stores `message` (its `group` set) on the group's timeline and
    /// pushes it: a member's post (`check_sender`) or the business's post
    /// through the HTTP API (as a user, checked, or as the system, not).
    pub async fn group_store_and_deliver(
        &self,
        group: GroupKey,
        mut message: Message,
        check_sender: bool,
        origin_conn: Option<u64>,
    ) -> Result<GroupPosted, LogicError> {
        self.screen_message(&mut message).await?;
        let new = NewGroupMessage {
            message,
            group: group.clone(),
            check_sender,
            amends: None,
        };
        let appended = self.store().group_append(new).await?;
        let seq =
            appended.seqs.first().copied().ok_or_else(|| {
                LogicError::Internal("the store returned no group sequence".into())
            })?;
        // A duplicate is pushed again, as for c2c: the first attempt may have
        // stored without pushing (a crash in between); devices drop what
        // they already have by sequence.
        let entry = Entry {
            seq,
            message: appended.message.clone(),
        };
        if !appended.duplicate {
            self.stats.record_stored(1);
        }
        let delivery = Delivery {
            entries: vec![(Target::Group(group.clone()), entry)],
            skip_conn: origin_conn.map(|c| (self.config().node.clone(), c)),
        };
        tokio::join!(
            self.deliver_stored(&delivery, appended.duplicate),
            self.publish_group_stored(&group, &appended, seq),
        );
        Ok(GroupPosted {
            message: appended.message,
            seq,
            duplicate: appended.duplicate,
        })
    }

    async fn publish_group_stored(&self, group: &GroupKey, appended: &Appended, seq: u64) {
        let m = &appended.message;
        let mut data = MessageStoredData::new(m, &[], &[]);
        data.group = Some(events::GroupSeqRef {
            gid: group.gid.clone(),
            seq,
        });
        let dedupe = format!("stored:{}", m.id);
        // Keyed by the sender, like a c2c's event: each sender's events stay in order.
        self.publish_stored_event(&m.from, &m.kind, &data, &dedupe)
            .await;
    }

    /// A page of the group's timeline for a member: entries after `since`,
    /// or after where the member's view starts when that is later.
    pub async fn group_sync(
        &self,
        user: &UserKey,
        gid: &str,
        since: u64,
        limit: u32,
    ) -> Result<GroupSyncPage, LogicError> {
        switchboard_proto::limits::check_id("group", gid)?;
        let key = GroupKey::new(user.app.clone(), gid);
        let store = self.store();
        let (group, member) = tokio::try_join!(store.group(&key), store.member(&key, &user.uid))?;
        let group = group.ok_or(StoreError::Group(GroupRefusal::NotFound))?;
        let member = member.ok_or(StoreError::Group(GroupRefusal::NotMember))?;
        let since = since.max(member.visible_after(&group.spec));
        let limit = self.sync_limit(limit);
        let mut page = store.group_entries_after(&key, since, limit).await?;
        self.resolve_amends(&mut page.entries).await?;
        Ok(GroupSyncPage {
            page: SyncPage::from_page(page, since),
            since,
        })
    }

    /// Moves a device's cursor on a group's timeline: everything up to
    /// `seq` was received. Clamped to the group's head, like
    /// [`Logic::ack`]; an ack for a group the user is not in moves nothing.
    pub async fn ack_group(
        &self,
        user: &UserKey,
        device_id: &str,
        gid: &str,
        seq: u64,
    ) -> Result<(), LogicError> {
        self.ack_group_from(None, user, device_id, gid, seq).await
    }

    /// [`Logic::ack_group`] from connection `conn_id` of this node. A
    /// connection the hub has subscribed to the group is a member's: its
    /// ack skips the two reads that prove membership (every store clamps a
    /// group cursor to the head and drops one for a group that is gone), so
    /// a busy group's acks cost one cursor write each, not two reads on the
    /// reader threads as well.
    pub async fn ack_group_from(
        &self,
        conn_id: Option<u64>,
        user: &UserKey,
        device_id: &str,
        gid: &str,
        seq: u64,
    ) -> Result<(), LogicError> {
        switchboard_proto::limits::check_id("group", gid)?;
        let key = GroupKey::new(user.app.clone(), gid);
        let store = self.store();
        if conn_id.is_some_and(|c| self.route().hub().is_subscribed(c, &key)) {
            return Ok(store
                .advance_group_cursor(user, device_id, &key, seq)
                .await?);
        }
        let (group, member) = tokio::try_join!(store.group(&key), store.member(&key, &user.uid))?;
        let (Some(group), Some(_)) = (group, member) else {
            return Ok(());
        };
        Ok(store
            .advance_group_cursor(user, device_id, &key, seq.min(group.head))
            .await?)
    }

    /// At login: subscribes the connection `conn_id` (registered in the
    /// hub) to every group of the user, and returns the groups with their
    /// heads and where this device reads from. The states are read again
    /// after the subscription, so an entry stored in between is either
    /// pushed or under the head the device is told; a user in no group
    /// costs one read.
    pub async fn login_groups(
        &self,
        conn_id: u64,
        user: &UserKey,
        device_id: &str,
    ) -> Result<Vec<GroupState>, LogicError> {
        let first = self.group_states(user, device_id).await?;
        if first.is_empty() {
            return Ok(first);
        }
        let gids: Vec<String> = first.iter().map(|g| g.gid.clone()).collect();
        self.subscribe_groups(conn_id, user, &gids);
        let again = self.group_states(user, device_id).await?;
        // Groups joined in between were subscribed by the membership change
        // (the connection is in the hub); subscribing again changes nothing.
        let gids: Vec<String> = again.iter().map(|g| g.gid.clone()).collect();
        self.subscribe_groups(conn_id, user, &gids);
        Ok(again)
    }

    /// Every group of the user, with the group's head and where this device
    /// reads from.
    pub async fn group_states(
        &self,
        user: &UserKey,
        device_id: &str,
    ) -> Result<Vec<GroupState>, LogicError> {
        Ok(self.store().group_states(user, device_id).await?)
    }
}
