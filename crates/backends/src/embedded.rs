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
use switchboard_core::store::{LoginState, OutboxReceipt, PendingAppend};
use switchboard_core::{Appended, BusEvent, Message, NewMessage, Page, Store, StoreError, UserKey};

use crate::read_pool::{ReadContext, ReadPool};
use crate::single_writer::{Command, Cursors, WriteQueue};

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

    /// The written cursor (the one in memory may be ahead).
    fn cursor(&mut self, user: &UserKey, device_id: &str) -> Result<u64, StoreError>;

    fn outbox_pending(&mut self, after: u64, limit: usize) -> Result<Vec<BusEvent>, StoreError>;

    /// The user's token revocation time, `None` when never revoked.
    fn tokens_revoked_before(&mut self, user: &UserKey) -> Result<Option<u64>, StoreError>;

    /// The engine can serve (for `/readyz`).
    fn ping(&mut self) -> Result<(), StoreError>;
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

    async fn ping(&self) -> Result<(), StoreError> {
        self.queue.writer_alive()?;
        self.read(|r| r.ping()).await
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Waiters already queued are answered first; later callers are refused.
        self.queue.close().await
    }
}
