//! [`Embedded`]: the one [`Store`] of both embedded
//! engines. Writes go to the engine's writer thread through the writer queue
//! (`single_writer`); reads go to its reader threads (`read_pool`), whose
//! context ([`Reads`]) is all that differs between SQLite
//! ([`SqliteStore`](crate::SqliteStore)) and fjall
//! ([`FjallStore`](crate::FjallStore)); cursors move in memory and reach the
//! disk with a later group.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use switchboard_core::group::{
    Group, GroupKey, GroupSpec, GroupState, Member, MembersChanged, NewGroupMessage, Role,
};
use switchboard_core::store::{LoginState, OutboxReceipt, PendingAppend};
use switchboard_core::{Appended, BusEvent, Message, NewMessage, Page, Store, StoreError, UserKey};

use crate::read_pool::{ReadContext, ReadPool};
use crate::single_writer::{Command, Cursors, GroupDone, GroupOp, WriteQueue};

/// What a reader thread of an embedded store answers.
pub trait Reads: ReadContext {
    /// Highest cursor the engine stores (SQLite keeps integers as i64).
    const MAX_CURSOR: u64 = u64::MAX;

    fn entries_after(
        &mut self,
        user: &UserKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, StoreError>;

    fn conversation(
        &mut self,
        a: &UserKey,
        b: &UserKey,
        before_msg_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, StoreError>;

    fn head(&mut self, user: &UserKey) -> Result<u64, StoreError>;

    /// A stored message by id, `None` when absent.
    fn message(&mut self, msg_id: u64) -> Result<Option<Message>, StoreError>;

    /// The written cursor (the one in memory may be ahead).
    fn cursor(&mut self, user: &UserKey, device_id: &str) -> Result<u64, StoreError>;

    fn outbox_pending(&mut self, after: u64, limit: usize) -> Result<Vec<BusEvent>, StoreError>;

    /// The user's token revocation time, `None` when never revoked.
    fn tokens_revoked_before(&mut self, user: &UserKey) -> Result<Option<u64>, StoreError>;

    /// The user's conversation view, `None` when none was stored.
    fn conversation_view(&mut self, user: &UserKey) -> Result<Option<bytes::Bytes>, StoreError>;

    /// The engine can serve (for `/readyz`).
    fn ping(&mut self) -> Result<(), StoreError>;

    fn group(&mut self, key: &GroupKey) -> Result<Option<Group>, StoreError>;

    fn member(&mut self, key: &GroupKey, uid: &str) -> Result<Option<Member>, StoreError>;

    fn members(
        &mut self,
        key: &GroupKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError>;

    fn user_groups(
        &mut self,
        user: &UserKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// With the WRITTEN group cursors (the ones in memory may be ahead).
    fn group_states(
        &mut self,
        user: &UserKey,
        device_id: &str,
    ) -> Result<Vec<GroupState>, StoreError>;

    fn group_entries_after(
        &mut self,
        key: &GroupKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, StoreError>;
}

/// An embedded store: one writer thread, a few reader threads.
pub struct Embedded<R> {
    path: PathBuf,
    queue: WriteQueue,
    reads: ReadPool<R>,
    cursors: Arc<Cursors>,
}

impl<R> std::fmt::Debug for Embedded<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<R: Reads> Embedded<R> {
    /// The store over a started writer (`queue`) and its readers.
    pub(crate) fn new(
        path: &Path,
        queue: WriteQueue,
        reads: ReadPool<R>,
        cursors: Arc<Cursors>,
    ) -> Arc<Embedded<R>> {
        Arc::new(Embedded {
            path: path.to_owned(),
            queue,
            reads,
            cursors,
        })
    }

    /// The store's file or directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Up to `limit` undelivered outbox events, lowest id first (for the
    /// webhook dispatcher).
    pub async fn outbox_pending(&self, limit: usize) -> Result<Vec<BusEvent>, StoreError> {
        self.read(move |r| r.outbox_pending(0, limit)).await
    }

    /// Deletes expired de-dup entries and delivered outbox events older than
    /// the window now (the writer also does it every `purge_interval`);
    /// returns how many went.
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        self.queue.write(Command::Purge).await
    }

    /// Writes every advanced cursor now.
    pub async fn flush_cursors(&self) -> Result<(), StoreError> {
        self.queue.write(Command::Flush).await
    }

    /// Runs a group write on the writer thread.
    async fn group_write(&self, op: GroupOp) -> Result<GroupDone, StoreError> {
        self.queue.write(|r| Command::Group(op, r)).await
    }

    /// Runs a read on one of the reader threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut R) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.queue.check_open()?;
        self.reads.run(f).await
    }
}

#[async_trait]
impl<R: Reads> Store for Embedded<R> {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        self.queue.write(|r| Command::Append(msg, r)).await
    }

    /// Returns once the append is in the writer's FIFO queue: appends
    /// submitted one after another commit in that order (in one group or
    /// in consecutive ones), and a resend of a queued append finds the
    /// first in its group or in the store and answers its result.
    async fn submit_append(&self, msg: NewMessage) -> Result<PendingAppend, StoreError> {
        // This caller awaits its permit before the next submit starts, so
        // queue order is submit order.
        let permit = self.queue.admit().await?;
        let durable = self
            .queue
            .enqueue(|r| Command::Append(msg, r), Some(permit))?;
        Ok(PendingAppend::new(durable))
    }

    async fn entries_after(
        &self,
        user: &UserKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let user = user.clone();
        self.read(move |r| r.entries_after(&user, since, limit))
            .await
    }

    async fn conversation(
        &self,
        a: &UserKey,
        b: &UserKey,
        before_msg_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, StoreError> {
        let (a, b) = (a.clone(), b.clone());
        self.read(move |r| r.conversation(&a, &b, before_msg_id, limit))
            .await
    }

    async fn timeline_head(&self, user: &UserKey) -> Result<u64, StoreError> {
        let user = user.clone();
        self.read(move |r| r.head(&user)).await
    }

    async fn cursor(&self, user: &UserKey, device_id: &str) -> Result<u64, StoreError> {
        // Memory before the written one (`Cursors::get`).
        let in_memory = self.cursors.get(&Cursors::key(user, device_id));
        let (user, device) = (user.clone(), device_id.to_owned());
        let written = self.read(move |r| r.cursor(&user, &device)).await?;
        Ok(in_memory.max(written))
    }

    /// Head and cursor in one read: one trip to a reader instead of two.
    async fn login_state(&self, user: &UserKey, device_id: &str) -> Result<LoginState, StoreError> {
        // As `cursor`: memory before the written one.
        let in_memory = self.cursors.get(&Cursors::key(user, device_id));
        let (user, device) = (user.clone(), device_id.to_owned());
        let (timeline_head, written) = self
            .read(move |r| Ok((r.head(&user)?, r.cursor(&user, &device)?)))
            .await?;
        Ok(LoginState {
            timeline_head,
            cursor: in_memory.max(written),
        })
    }

    async fn advance_cursor(
        &self,
        user: &UserKey,
        device_id: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.queue.check_open()?;
        if seq > R::MAX_CURSOR {
            return Err(StoreError::Invalid(format!("cursor {seq} out of range")));
        }
        self.cursors.advance(Cursors::key(user, device_id), seq);
        Ok(())
    }

    async fn outbox_append(
        &self,
        event: &BusEvent,
        dedupe_id: &str,
    ) -> Result<OutboxReceipt, StoreError> {
        let event = event.clone();
        let dedupe_id = dedupe_id.to_owned();
        self.queue
            .write(|r| Command::Outbox(event, dedupe_id, r))
            .await
    }

    async fn outbox_pending_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BusEvent>, StoreError> {
        self.read(move |r| r.outbox_pending(after, limit)).await
    }

    async fn outbox_mark_delivered(&self, ids: &[u64]) -> Result<usize, StoreError> {
        let ids = ids.to_vec();
        self.queue.write(|r| Command::MarkDelivered(ids, r)).await
    }

    async fn revoke_tokens(&self, user: &UserKey, issued_before: u64) -> Result<u64, StoreError> {
        if issued_before > R::MAX_CURSOR {
            return Err(StoreError::Invalid(format!(
                "revocation time {issued_before} out of range"
            )));
        }
        let user = user.clone();
        self.queue
            .write(|r| Command::Revoke(user, issued_before, r))
            .await
    }

    async fn tokens_revoked_before(&self, user: &UserKey) -> Result<Option<u64>, StoreError> {
        let user = user.clone();
        self.read(move |r| r.tokens_revoked_before(&user)).await
    }

    async fn message(&self, id: u64) -> Result<Option<Message>, StoreError> {
        self.read(move |r| r.message(id)).await
    }

    async fn conversation_view(&self, user: &UserKey) -> Result<Option<bytes::Bytes>, StoreError> {
        let user = user.clone();
        self.read(move |r| r.conversation_view(&user)).await
    }

    async fn put_conversation_view(
        &self,
        user: &UserKey,
        view: bytes::Bytes,
    ) -> Result<(), StoreError> {
        let user = user.clone();
        self.queue.write(|r| Command::PutView(user, view, r)).await
    }

    async fn put_group(&self, spec: &GroupSpec) -> Result<(Group, bool), StoreError> {
        match self.group_write(GroupOp::Put(spec.clone())).await? {
            GroupDone::Put(g, created) => Ok((g, created)),
            other => Err(mismatch(&other)),
        }
    }

    async fn group(&self, key: &GroupKey) -> Result<Option<Group>, StoreError> {
        let key = key.clone();
        self.read(move |r| r.group(&key)).await
    }

    async fn delete_group(&self, key: &GroupKey) -> Result<bool, StoreError> {
        match self.group_write(GroupOp::Delete(key.clone())).await? {
            GroupDone::Deleted(d) => {
                // Acks of the deleted group's entries, not yet written.
                self.cursors.forget_group(&key.app, &key.gid);
                Ok(d)
            }
            other => Err(mismatch(&other)),
        }
    }

    async fn add_members(
        &self,
        key: &GroupKey,
        members: &[(String, Role)],
        max_members: u64,
    ) -> Result<MembersChanged, StoreError> {
        let op = GroupOp::Add(key.clone(), members.to_vec(), max_members);
        match self.group_write(op).await? {
            GroupDone::Members(c) => Ok(c),
            other => Err(mismatch(&other)),
        }
    }

    async fn remove_members(
        &self,
        key: &GroupKey,
        uids: &[String],
    ) -> Result<MembersChanged, StoreError> {
        match self
            .group_write(GroupOp::Remove(key.clone(), uids.to_vec()))
            .await?
        {
            GroupDone::Members(c) => Ok(c),
            other => Err(mismatch(&other)),
        }
    }

    async fn member(&self, key: &GroupKey, uid: &str) -> Result<Option<Member>, StoreError> {
        let (key, uid) = (key.clone(), uid.to_owned());
        self.read(move |r| r.member(&key, &uid)).await
    }

    async fn members(
        &self,
        key: &GroupKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        let (key, after) = (key.clone(), after.map(str::to_owned));
        self.read(move |r| r.members(&key, after.as_deref(), limit))
            .await
    }

    async fn user_groups(
        &self,
        user: &UserKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let (user, after) = (user.clone(), after.map(str::to_owned));
        self.read(move |r| r.user_groups(&user, after.as_deref(), limit))
            .await
    }

    /// One read for every group, then the cursors still in memory. (Read
    /// after the written ones, a cursor flushed in between is missed and
    /// the device's cursor is a little behind: it gets a few entries
    /// again, which the contract allows, never fewer.)
    async fn group_states(
        &self,
        user: &UserKey,
        device_id: &str,
    ) -> Result<Vec<GroupState>, StoreError> {
        let (u, device) = (user.clone(), device_id.to_owned());
        let mut states = self.read(move |r| r.group_states(&u, &device)).await?;
        for s in &mut states {
            let in_memory = self
                .cursors
                .get(&Cursors::group_key(user, device_id, &s.gid));
            // A cursor never passes the head (one left in memory by a
            // deleted group of the same id must not hide entries).
            s.cursor = s.cursor.max(in_memory).min(s.head);
        }
        Ok(states)
    }

    async fn group_append(&self, msg: NewGroupMessage) -> Result<Appended, StoreError> {
        match self.group_write(GroupOp::Append(Box::new(msg))).await? {
            GroupDone::Appended(a) => Ok(a),
            other => Err(mismatch(&other)),
        }
    }

    async fn group_entries_after(
        &self,
        key: &GroupKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        let key = key.clone();
        self.read(move |r| r.group_entries_after(&key, since, limit))
            .await
    }

    async fn advance_group_cursor(
        &self,
        user: &UserKey,
        device_id: &str,
        key: &GroupKey,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.queue.check_open()?;
        if seq > R::MAX_CURSOR {
            return Err(StoreError::Invalid(format!("cursor {seq} out of range")));
        }
        if key.app != user.app {
            return Err(StoreError::Invalid(format!(
                "{user} is not of the app of group {key}"
            )));
        }
        self.cursors
            .advance(Cursors::group_key(user, device_id, &key.gid), seq);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.queue.writer_alive()?;
        self.read(|r| r.ping()).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Waiters already queued are answered first; later callers are refused.
        self.queue.close().await
    }
}

/// A writer answered a group op with another op's answer: a bug.
fn mismatch(done: &GroupDone) -> StoreError {
    StoreError::Corrupt(format!("the writer answered a group op with {done:?}"))
}
