//! The durable store of messages, timelines, device cursors and the outbox.
//!
//! Contract every implementation keeps (the conformance suite in
//! `switchboard-testkit` checks it against each one):
//! - [`Store::append`] returns only once the message and all its timeline
//!   entries are durable (fsync'd, or committed in PostgreSQL); entries of
//!   one call commit atomically.
//! - Each user's timeline is gap-free and strictly increasing from 1.
//! - A second append with the same `(from, client_msg_id)` inside the
//!   de-duplication window stores nothing and returns the first result with
//!   `duplicate = true`.
//! - Cursors only move forward; they may be persisted lazily (a crash may
//!   move a cursor back a little, never forward).
//! - [`Store::submit_append`] splits an append in two: once it returns, the
//!   append holds its place in the store's order (an append submitted later
//!   gets higher sequences on every timeline the two share); the returned
//!   [`PendingAppend`] resolves when it is durable, with what `append` would
//!   have returned. This lets one connection have many appends in flight and
//!   still keep its order (the gate's pipeline).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use async_trait::async_trait;

use crate::bus::BusEvent;
use crate::group::{
    Group, GroupKey, GroupRefusal, GroupSpec, GroupState, Member, MembersChanged, NewGroupMessage,
    Role,
};
use crate::model::{Entry, Message, NewMessage, UserKey};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or refused the write; nothing was stored.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The request is invalid for the store (e.g. a value too large).
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// Stored data could not be read back (corruption, schema mismatch).
    #[error("store data corrupt: {0}")]
    Corrupt(String),
    /// A group operation was refused (no such group, not a member, ...);
    /// nothing was stored.
    #[error(transparent)]
    Group(#[from] GroupRefusal),
    /// An amendment ([`crate::model::Amendment`]) of a message that was
    /// recalled, or is not stored; nothing was stored.
    #[error("the message was recalled")]
    Recalled,
}

/// The result of an append.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The stored message (the first one, for a duplicate).
    pub message: std::sync::Arc<Message>,
    /// The sequence of each timeline entry, aligned with `NewMessage::timelines`.
    pub seqs: Vec<u64>,
    /// True when this was a resend of an already stored `(from, client_msg_id)`.
    pub duplicate: bool,
}

impl Appended {
    /// The entries, one per timeline, in the order of `NewMessage::timelines`.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.seqs.iter().map(|&seq| Entry {
            seq,
            message: self.message.clone(),
        })
    }
}

/// An append that has its place in the store's order and resolves once it
/// is durable (see [`Store::submit_append`]). Dropping it does not cancel
/// the append: it may still be stored, only nobody learns the result.
#[must_use = "an append's result is only known once this resolves"]
pub struct PendingAppend(Pin<Box<dyn Future<Output = Result<Appended, StoreError>> + Send>>);

impl PendingAppend {
    /// Wraps a future that resolves once the append is durable.
    pub fn new(
        durable: impl Future<Output = Result<Appended, StoreError>> + Send + 'static,
    ) -> PendingAppend {
        PendingAppend(Box::pin(durable))
    }

    /// An append whose result is already known (durable, or failed).
    pub fn ready(result: Result<Appended, StoreError>) -> PendingAppend {
        PendingAppend::new(std::future::ready(result))
    }
}

impl Future for PendingAppend {
    type Output = Result<Appended, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for PendingAppend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingAppend")
    }
}

/// A page of a timeline.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub entries: Vec<Entry>,
    /// The highest sequence on the timeline when the page was read.
    pub head: u64,
}

/// What a device learns at login: its user's timeline head and its cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginState {
    pub timeline_head: u64,
    pub cursor: u64,
}

/// An event accepted into the outbox (for the bus to deliver).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxReceipt {
    pub id: u64,
    pub duplicate: bool,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a message and one entry per timeline, durably, atomically,
    /// de-duplicating on `(from, client_msg_id)`.
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError>;

    /// [`Store::append`] in two phases: returns once the append has its
    /// place in the store's order, and the [`PendingAppend`] resolves once
    /// it is durable (with exactly what `append` would return). Of two
    /// appends where the second is submitted after the first's submit
    /// returned, the first gets the lower sequence on every shared timeline,
    /// and a de-duplicated resend of the first answers the first's result.
    ///
    /// The default awaits the whole `append` before returning, which keeps
    /// the order trivially and gains no overlap (PostgreSQL uses it: its
    /// appends spread over several writer tasks, so queue order is not
    /// commit order). A store with one FIFO writer queue (SQLite) overrides
    /// it to return as soon as the append is queued.
    async fn submit_append(&self, msg: NewMessage) -> Result<PendingAppend, StoreError> {
        Ok(PendingAppend::ready(self.append(msg).await))
    }

    /// Entries with `seq > since`, in order, at most `limit`.
    async fn entries_after(
        &self,
        user: &UserKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, StoreError>;

    /// The messages between `a` and `b`, sent either way, newest first
    /// (by message id), only those with an id below `before_msg_id` when it
    /// is given, at most `limit`. With `a == b`: the messages the user sent
    /// to themself. Paging: pass the last id of a page as the next
    /// `before_msg_id`.
    async fn conversation(
        &self,
        a: &UserKey,
        b: &UserKey,
        before_msg_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<std::sync::Arc<Message>>, StoreError>;

    /// The stored message with this id (of any timeline or group), as it
    /// is now (recalled or edited).
    async fn message(&self, id: u64) -> Result<Option<Message>, StoreError>;

    /// The highest sequence on the user's timeline (0 when empty).
    async fn timeline_head(&self, user: &UserKey) -> Result<u64, StoreError>;

    /// The device's cursor (0 when the device is new).
    async fn cursor(&self, user: &UserKey, device_id: &str) -> Result<u64, StoreError>;

    /// [`Store::timeline_head`] and [`Store::cursor`] together, for a login:
    /// a store may answer both with one read (the default makes two).
    async fn login_state(&self, user: &UserKey, device_id: &str) -> Result<LoginState, StoreError> {
        Ok(LoginState {
            timeline_head: self.timeline_head(user).await?,
            cursor: self.cursor(user, device_id).await?,
        })
    }

    /// Moves the device's cursor forward to `seq` (never back). May be lazy.
    async fn advance_cursor(
        &self,
        user: &UserKey,
        device_id: &str,
        seq: u64,
    ) -> Result<(), StoreError>;

    /// Appends an event to the durable outbox that the bus drains,
    /// de-duplicating on `(user, dedupe_id)` when `dedupe_id` is not empty.
    async fn outbox_append(
        &self,
        event: &BusEvent,
        dedupe_id: &str,
    ) -> Result<OutboxReceipt, StoreError>;

    /// Up to `limit` undelivered outbox events with an id above `after`,
    /// lowest id first (the webhook dispatcher drains the outbox with it).
    /// A store without an outbox answers `Unavailable`.
    async fn outbox_pending_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BusEvent>, StoreError> {
        let _ = (after, limit);
        Err(StoreError::Unavailable(
            "this store has no outbox to drain".into(),
        ))
    }

    /// Marks outbox events delivered, durably; returns how many were pending.
    async fn outbox_mark_delivered(&self, ids: &[u64]) -> Result<usize, StoreError> {
        let _ = ids;
        Err(StoreError::Unavailable(
            "this store has no outbox to drain".into(),
        ))
    }

    /// Records that the user's login tokens issued (`iat`) before
    /// `issued_before` (seconds since the epoch) are refused, durably, for
    /// every node. A revocation never moves back: an earlier time than the
    /// stored one changes nothing. Returns the time now in force.
    async fn revoke_tokens(&self, user: &UserKey, issued_before: u64) -> Result<u64, StoreError>;

    /// The user's revocation time ([`Store::revoke_tokens`]), `None` when
    /// the user's tokens were never revoked.
    async fn tokens_revoked_before(&self, user: &UserKey) -> Result<Option<u64>, StoreError>;

    // ---- Groups (see `crate::group`). Every group operation is atomic,
    // and durable when it returns, like `append`.

    /// Creates the group, or updates its settings (name, meta, post policy,
    /// history) when it exists. Returns the group as stored and whether it
    /// was created by this call.
    async fn put_group(&self, spec: &GroupSpec) -> Result<(Group, bool), StoreError>;

    /// The group, `None` when there is no such group.
    async fn group(&self, key: &GroupKey) -> Result<Option<Group>, StoreError>;

    /// Deletes the group: its settings, members and timeline. False when
    /// there was no such group. A group created again with the same id
    /// starts empty, at head 0.
    async fn delete_group(&self, key: &GroupKey) -> Result<bool, StoreError>;

    /// Adds members (or changes the role of existing ones), atomically.
    /// A new member's `joined_seq` is the group's head at this call. A
    /// member already there with the same role is not changed. Refused
    /// with [`GroupRefusal::NotFound`] for no such group and
    /// [`GroupRefusal::Full`] when the group would have more than
    /// `max_members` (nothing is added then).
    async fn add_members(
        &self,
        key: &GroupKey,
        members: &[(String, Role)],
        max_members: u64,
    ) -> Result<MembersChanged, StoreError>;

    /// Removes members, atomically; uids that are not members are skipped.
    /// Refused with [`GroupRefusal::NotFound`] for no such group.
    async fn remove_members(
        &self,
        key: &GroupKey,
        uids: &[String],
    ) -> Result<MembersChanged, StoreError>;

    /// One member, `None` when `uid` is not a member (or no such group).
    async fn member(&self, key: &GroupKey, uid: &str) -> Result<Option<Member>, StoreError>;

    /// Members in ascending uid order, those after `after` when given, at
    /// most `limit`.
    async fn members(
        &self,
        key: &GroupKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError>;

    /// The ids of the user's groups in ascending order, those after
    /// `after` when given, at most `limit`.
    async fn user_groups(
        &self,
        user: &UserKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;

    /// Every group of the user with its head, this device's cursor and
    /// where the member's view starts, in ascending group id order: what a
    /// device needs at login, in one call.
    async fn group_states(
        &self,
        user: &UserKey,
        device_id: &str,
    ) -> Result<Vec<GroupState>, StoreError>;

    /// Stores a message once, as the next entry of the group's timeline
    /// (`Appended::seqs` holds that one sequence), durably. With
    /// `check_sender`, the sender must be a member allowed to post by the
    /// group's policy, checked in the same atomic step (a member removed
    /// before the append commits can't post). De-duplicates on
    /// `(from, client_msg_id)` per group like [`Store::append`]: a resend
    /// gets the first result with `duplicate = true`, even when the sender
    /// was removed since.
    async fn group_append(&self, msg: NewGroupMessage) -> Result<Appended, StoreError>;

    /// Group timeline entries with `seq > since`, in order, at most `limit`.
    async fn group_entries_after(
        &self,
        key: &GroupKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, StoreError>;

    /// Moves the device's cursor on the group's timeline forward to `seq`
    /// (never back), clamped to the group's head; nothing when there is no
    /// such group (deleted). May be lazy, like [`Store::advance_cursor`].
    /// Membership is the caller's to check.
    async fn advance_group_cursor(
        &self,
        user: &UserKey,
        device_id: &str,
        key: &GroupKey,
        seq: u64,
    ) -> Result<(), StoreError>;

    // ---- Conversation views (see `crate::conversation`).

    /// The user's stored conversation view, `None` when there is none.
    /// The view is derived state, rebuilt from the timelines when lost: a
    /// store may keep it less durably than messages.
    async fn conversation_view(&self, user: &UserKey) -> Result<Option<bytes::Bytes>, StoreError>;

    /// Stores (replaces) the user's conversation view.
    async fn put_conversation_view(
        &self,
        user: &UserKey,
        view: bytes::Bytes,
    ) -> Result<(), StoreError>;

    /// Checks that the backend is reachable (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Flushes lazy state (cursors) and stops background work. Idempotent.
    async fn close(&self) -> Result<(), StoreError>;
}
