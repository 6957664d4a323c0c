//! The one writer thread of [`FjallStore`](super::FjallStore).
//!
//! It owns the cache of timeline heads. For each group ([`Gather`]) it
//! checks every command against what is stored and what the group already
//! holds (a batch does not read its own writes), puts all of the group's
//! keys into ONE fjall write batch, commits it with `PersistMode::SyncAll`
//! (the journal is written and fsync'd), and only then answers every
//! waiter. If the commit fails it forgets the heads the group touched and
//! answers every waiter `Unavailable`; nothing of the group was applied.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fjall::{OwnedWriteBatch as WriteBatch, PersistMode, Readable, Snapshot};
use switchboard_core::group::{
    GroupKey, GroupRefusal, MembersChanged, NewGroupMessage, PostPolicy, Role,
};
use switchboard_core::model::Amendment;
use switchboard_core::stats;
use switchboard_core::store::OutboxReceipt;
use switchboard_core::{Appended, BusEvent, Message, NewMessage, StoreError, UserKey, now_ms};

use super::{FjallOptions, Keyspaces, fjall_error, keys, read};
use crate::single_writer::{
    Command, CursorKey, Cursors, Gather, Group, GroupDone, GroupOp, Heads, Pending, Queued,
    answer_group,
};

/// Most expired entries of each kind one group deletes; the rest go with
/// the next groups, so a purge after a long pause does not make one huge
/// batch.
const PURGE_CHUNK: usize = 10_000;

/// A failure inside a group: `Reject` fails one command, `Abort` the whole
/// group (a read error, a broken invariant).
enum Failure {
    Reject(StoreError),
    Abort(StoreError),
}

impl From<fjall::Error> for Failure {
    fn from(e: fjall::Error) -> Failure {
        Failure::Abort(fjall_error(e))
    }
}

/// What the group being built holds that later commands in it must see.
struct Batch {
    wb: WriteBatch,
    /// De-dup key → the first append's result.
    dedupe: HashMap<Vec<u8>, (Arc<Message>, Vec<u64>)>,
    msg_ids: HashSet<u64>,
    /// Messages recalled in this group.
    recalled: HashSet<u64>,
    /// Outbox de-dup key → event id.
    outbox_dedupe: HashMap<Vec<u8>, u64>,
    event_ids: HashSet<u64>,
    delivered: HashSet<u64>,
    /// User key → revocation time written in this group.
    revoked: HashMap<Vec<u8>, u64>,
    /// Timelines whose cached head moved in this group.
    touched: Vec<UserKey>,
    /// Group timelines whose cached head moved (or that were deleted).
    groups_touched: Vec<Vec<u8>>,
}

pub struct Writer {
    ks: Arc<Keyspaces>,
    gather: Gather,
    cursors: Arc<Cursors>,
    dedupe_window: Duration,
    /// Cached head of each timeline seen lately (the last seq written).
    heads: Heads,
    /// The same for group timelines, and the last generation handed out.
    groups: GroupCache,
}

/// The writer's cache of group timeline heads (by group key) and of the
/// last group generation handed out.
#[derive(Default)]
struct GroupCache {
    heads: HashMap<Vec<u8>, u64>,
    last_generation: Option<u64>,
}

impl GroupCache {
    /// As [`Heads::settle`]; a failed part also forgets the generation.
    fn settle(&mut self, committed: bool, touched: &[Vec<u8>]) {
        if !committed {
            for k in touched {
                self.heads.remove(k);
            }
            self.last_generation = None;
        } else if self.heads.len() > 100_000 {
            self.heads.clear();
        }
    }

    fn head(&mut self, ks: &Keyspaces, snap: &Snapshot, gk: &[u8]) -> Result<u64, StoreError> {
        if let Some(&h) = self.heads.get(gk) {
            return Ok(h);
        }
        let h = super::read::group_head(snap, ks, gk)?;
        self.heads.insert(gk.to_vec(), h);
        Ok(h)
    }
}

impl Writer {
    pub fn new(
        ks: Arc<Keyspaces>,
        rx: std::sync::mpsc::Receiver<Queued>,
        cursors: Arc<Cursors>,
        opts: &FjallOptions,
    ) -> Writer {
        Writer {
            ks,
            gather: Gather::new(
                rx,
                cursors.clone(),
                opts.max_batch,
                opts.cursor_flush_interval,
                opts.purge_interval,
            ),
            cursors,
            dedupe_window: opts.dedupe_window,
            heads: Heads::default(),
            groups: GroupCache::default(),
        }
    }

    /// The thread's body: returns after a `Close` or when every sender is gone.
    pub fn run(mut self) {
        while let Some(group) = self.gather.next_group() {
            self.run_group(group);
        }
        tracing::debug!("fjall writer stopped");
    }

    /// Runs one group of commands. A membership or settings change to a
    /// group commits on its own, between the commands before and after it
    /// (a fjall batch does not read its own writes, and an append must see
    /// the membership it is checked against); they are rare, appends are
    /// not. The cursors and the purge go with the last part.
    fn run_group(&mut self, group: Group) {
        let Group {
            batch,
            purge,
            cursors,
        } = group;
        let mut parts: Vec<Vec<Queued>> = Vec::new();
        let mut current = Vec::new();
        for q in batch {
            if matches!(&q.cmd, Command::Group(op, _) if op.is_membership()) {
                if !current.is_empty() {
                    parts.push(std::mem::take(&mut current));
                }
                parts.push(vec![q]);
            } else {
                current.push(q);
            }
        }
        parts.push(current);
        let last = parts.len() - 1;
        for (i, part) in parts.into_iter().enumerate() {
            let is_last = i == last;
            if part.is_empty() && !(is_last && (purge || !cursors.is_empty())) {
                continue;
            }
            let (c, p): (&[(CursorKey, u64)], bool) = if is_last {
                (&cursors, purge)
            } else {
                (&[], false)
            };
            self.run_part(part, c, p);
        }
    }

    fn run_part(&mut self, batch: Vec<Queued>, cursors: &[(CursorKey, u64)], purge: bool) {
        let started = Instant::now();
        let commands = batch.len();
        let mut b = Batch {
            wb: self.ks.db.batch().durability(Some(PersistMode::SyncAll)),
            dedupe: HashMap::new(),
            msg_ids: HashSet::new(),
            recalled: HashSet::new(),
            outbox_dedupe: HashMap::new(),
            event_ids: HashSet::new(),
            delivered: HashSet::new(),
            revoked: HashMap::new(),
            touched: Vec::new(),
            groups_touched: Vec::new(),
        };
        let mut pending = Vec::with_capacity(commands);
        let filled = self
            .fill(&mut b, batch, &mut pending)
            .and_then(|()| write_cursors(&self.ks, &mut b.wb, cursors))
            .and_then(|()| {
                if !purge {
                    return Ok(());
                }
                let (n, more) = purge_expired(&self.ks, &mut b, self.dedupe_window)?;
                if n > 0 {
                    tracing::debug!(entries = n, "purged expired de-dup and outbox entries");
                }
                if more {
                    self.gather.purge_soon();
                }
                Ok(())
            });
        let Batch {
            wb,
            touched,
            groups_touched,
            ..
        } = b;
        let outcome = filled.and_then(|()| {
            let commit = Instant::now();
            let committed = wb.commit().map_err(|e| {
                if matches!(e, fjall::Error::Poisoned) {
                    self.ks.poisoned.store(true, Ordering::Release);
                }
                fjall_error(e)
            });
            metrics::histogram!(stats::STORE_COMMIT_SECONDS, "store" => "fjall")
                .record(commit.elapsed().as_secs_f64());
            committed
        });
        let committed = outcome.is_ok();
        self.heads.settle(committed, &touched);
        self.groups.settle(committed, &groups_touched);
        if committed {
            self.cursors.flushed(cursors);
        }
        answer_group("fjall", started, commands, outcome, pending);
    }

    /// Puts every command of the group into the batch. `Err` aborts the
    /// group: every waiter, of the commands not yet looked at too, is in
    /// `pending` and fails with the group.
    fn fill(
        &mut self,
        b: &mut Batch,
        batch: Vec<Queued>,
        pending: &mut Vec<Pending>,
    ) -> Result<(), StoreError> {
        let mut rest = batch.into_iter();
        while let Some(q) = rest.next() {
            // The slot is free again as soon as the command is dequeued.
            drop(q.permit);
            if let Err(e) = self.one(b, q.cmd, pending) {
                pending.extend(rest.map(|q| unanswered(q.cmd)));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Puts one command into the batch and its waiter into `pending`.
    fn one(
        &mut self,
        b: &mut Batch,
        cmd: Command,
        pending: &mut Vec<Pending>,
    ) -> Result<(), StoreError> {
        fn settle<T>(
            r: Result<T, Failure>,
            wait: impl FnOnce(Result<T, StoreError>) -> Pending,
            pending: &mut Vec<Pending>,
        ) -> Result<(), StoreError> {
            match r {
                Ok(v) => pending.push(wait(Ok(v))),
                Err(Failure::Reject(e)) => pending.push(wait(Err(e))),
                Err(Failure::Abort(e)) => {
                    pending.push(wait(Err(StoreError::Unavailable(String::new()))));
                    return Err(e);
                }
            }
            Ok(())
        }
        match cmd {
            Command::Append(msg, reply) => settle(
                append(&self.ks, &mut self.heads, b, msg),
                |r| Pending::Append(reply, r),
                pending,
            ),
            Command::Group(op, reply) => {
                settle(self.group_op(b, op), |r| Pending::Group(reply, r), pending)
            }
            Command::Outbox(event, dedupe_id, reply) => settle(
                outbox_append(&self.ks, b, &event, &dedupe_id),
                |r| Pending::Outbox(reply, r),
                pending,
            ),
            Command::MarkDelivered(ids, reply) => {
                let r = mark_delivered(&self.ks, b, &ids);
                let failed = r
                    .as_ref()
                    .err()
                    .map(|e| StoreError::Unavailable(e.to_string()));
                pending.push(Pending::Count(reply, r));
                failed.map_or(Ok(()), Err)
            }
            Command::Revoke(user, issued_before, reply) => {
                let r = revoke_tokens(&self.ks, b, &user, issued_before);
                let failed = r
                    .as_ref()
                    .err()
                    .map(|e| StoreError::Unavailable(e.to_string()));
                pending.push(Pending::Revoked(reply, r));
                failed.map_or(Ok(()), Err)
            }
            Command::PutView(user, view, reply) => {
                match keys::user(&user) {
                    Ok(key) => {
                        b.wb.insert(&self.ks.conversation_views, key, view.as_ref());
                        pending.push(Pending::Unit(reply));
                    }
                    // A key that cannot be made is this request's fault,
                    // not the group's.
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
                Ok(())
            }
            Command::Purge(reply) => {
                let r = purge_expired(&self.ks, b, self.dedupe_window);
                if let Ok((_, true)) = r {
                    self.gather.purge_soon();
                }
                let failed = r
                    .as_ref()
                    .err()
                    .map(|e| StoreError::Unavailable(e.to_string()));
                pending.push(Pending::Count(reply, r.map(|(n, _)| n)));
                failed.map_or(Ok(()), Err)
            }
            Command::Flush(reply) | Command::Close(reply) => {
                pending.push(Pending::Unit(reply));
                Ok(())
            }
        }
    }
}

/// The waiter of a command the group never got to; it fails with the group.
fn unanswered(cmd: Command) -> Pending {
    fn none<T>() -> Result<T, StoreError> {
        Err(StoreError::Unavailable(String::new()))
    }
    match cmd {
        Command::Append(_, r) => Pending::Append(r, none()),
        Command::Outbox(_, _, r) => Pending::Outbox(r, none()),
        Command::Group(_, r) => Pending::Group(r, none()),
        Command::MarkDelivered(_, r) | Command::Purge(r) => Pending::Count(r, none()),
        Command::Revoke(_, _, r) => Pending::Revoked(r, none()),
        Command::PutView(_, _, r) => Pending::Unit(r),
        Command::Flush(r) | Command::Close(r) => Pending::Unit(r),
    }
}

/// Appends one message to the batch. A duplicate (also of a message earlier
/// in this group) returns the first result. Nothing goes into the batch
/// before every check passed, so a rejected append leaves no trace.
fn append(
    ks: &Keyspaces,
    heads: &mut Heads,
    b: &mut Batch,
    msg: NewMessage,
) -> Result<Appended, Failure> {
    for (i, t) in msg.timelines.iter().enumerate() {
        if msg.timelines[..i].contains(t) {
            return Err(Failure::Reject(StoreError::Invalid(format!(
                "timeline {t} listed twice"
            ))));
        }
    }
    let m = &msg.message;
    let from = keys::user(&m.from).map_err(Failure::Reject)?;
    let to = keys::user(&m.to).map_err(Failure::Reject)?;
    let timeline_keys = msg
        .timelines
        .iter()
        .map(keys::user)
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::Reject)?;
    let dedupe_key = match msg.dedupe_key() {
        Some((_, cmid)) => Some(keys::user_and(&from, cmid).map_err(Failure::Reject)?),
        None => None,
    };
    if let Some(key) = &dedupe_key {
        if let Some((first, seqs)) = b.dedupe.get(key) {
            return Ok(Appended {
                message: first.clone(),
                seqs: seqs.clone(),
                duplicate: true,
            });
        }
        if let Some(v) = ks.dedupe.get(key)? {
            let (msg_id, seqs) = keys::decode_dedupe(&v).map_err(Failure::Reject)?;
            let first = ks
                .messages
                .get(msg_id.to_be_bytes())?
                .ok_or_else(|| {
                    Failure::Reject(StoreError::Corrupt(format!(
                        "de-dup entry points at missing message {msg_id}"
                    )))
                })
                .and_then(|v| keys::decode_message(&v).map_err(Failure::Reject))?;
            return Ok(Appended {
                message: Arc::new(first),
                seqs,
                duplicate: true,
            });
        }
    }
    // A reused message id is the caller's bug: reject that one command.
    if b.msg_ids.contains(&m.id) || ks.messages.contains_key(m.id.to_be_bytes())? {
        return Err(Failure::Reject(StoreError::Invalid(format!(
            "message id {} is already stored",
            m.id
        ))));
    }

    let mut seqs = Vec::with_capacity(timeline_keys.len());
    for (user, key) in msg.timelines.iter().zip(&timeline_keys) {
        let head = match heads.get(user) {
            Some(h) => h,
            None => super::read::head(&ks.timelines, key).map_err(Failure::Abort)?,
        };
        seqs.push(head + 1);
    }

    if let Some(a) = &msg.amends {
        amend(ks, b, a)?;
    }
    b.wb.insert(&ks.messages, m.id.to_be_bytes(), keys::encode_message(m));
    for (key, &seq) in timeline_keys.iter().zip(&seqs) {
        b.wb.insert(&ks.timelines, keys::timeline(key, seq), m.id.to_be_bytes());
    }
    b.wb.insert(
        &ks.conversations,
        keys::with_u64(&keys::direction(&from, &to), m.id),
        [],
    );
    let NewMessage {
        message, timelines, ..
    } = msg;
    let message = Arc::new(message);
    if let Some(key) = dedupe_key {
        let created = now_ms();
        b.wb.insert(&ks.dedupe_by_time, keys::by_time(created, &key), []);
        b.wb.insert(
            &ks.dedupe,
            key.clone(),
            keys::dedupe_value(message.id, created, &seqs),
        );
        b.dedupe.insert(key, (message.clone(), seqs.clone()));
    }
    b.msg_ids.insert(message.id);
    for (user, &seq) in timelines.iter().zip(&seqs) {
        heads.insert(user.clone(), seq);
    }
    b.touched.extend(timelines);
    Ok(Appended {
        message,
        seqs,
        duplicate: false,
    })
}

/// Replaces a stored message by its amended form (the last step of an
/// amend notice's append, so a refusal leaves nothing of it in the batch).
/// A recalled message stays recalled.
fn amend(ks: &Keyspaces, b: &mut Batch, a: &Amendment) -> Result<(), Failure> {
    let id = a.message.id;
    let stored = match ks.messages.get(id.to_be_bytes())? {
        Some(v) => Some(keys::decode_message(&v).map_err(Failure::Reject)?),
        None => None,
    };
    if b.recalled.contains(&id) || stored.as_ref().is_some_and(Message::is_recalled) {
        return Err(Failure::Reject(StoreError::Recalled));
    }
    if stored.is_none() && !b.msg_ids.contains(&id) {
        return Err(Failure::Reject(StoreError::Invalid(format!(
            "no message {id} to amend"
        ))));
    }
    b.wb.insert(
        &ks.messages,
        id.to_be_bytes(),
        keys::encode_message(&a.message),
    );
    if a.message.is_recalled() {
        b.recalled.insert(id);
    }
    Ok(())
}

fn outbox_append(
    ks: &Keyspaces,
    b: &mut Batch,
    event: &BusEvent,
    dedupe_id: &str,
) -> Result<OutboxReceipt, Failure> {
    let dedupe_key = if dedupe_id.is_empty() {
        None
    } else {
        let user = keys::user(&event.user).map_err(Failure::Reject)?;
        Some(keys::user_and(&user, dedupe_id).map_err(Failure::Reject)?)
    };
    if let Some(key) = &dedupe_key {
        let first = match b.outbox_dedupe.get(key) {
            Some(&id) => Some(id),
            None => ks
                .outbox_dedupe
                .get(key)?
                .map(|v| keys::u64_at(&v, 0))
                .transpose()
                .map_err(Failure::Reject)?,
        };
        if let Some(id) = first {
            return Ok(OutboxReceipt {
                id,
                duplicate: true,
            });
        }
    }
    if b.event_ids.contains(&event.id) || ks.outbox.contains_key(event.id.to_be_bytes())? {
        return Err(Failure::Reject(StoreError::Invalid(format!(
            "event id {} is already in the outbox",
            event.id
        ))));
    }
    let id = event.id.to_be_bytes();
    b.wb.insert(&ks.outbox, id, keys::encode_event(event, dedupe_id));
    b.wb.insert(&ks.outbox_pending, id, []);
    if let Some(key) = dedupe_key {
        b.wb.insert(&ks.outbox_dedupe, key.clone(), id);
        b.outbox_dedupe.insert(key, event.id);
    }
    b.event_ids.insert(event.id);
    Ok(OutboxReceipt {
        id: event.id,
        duplicate: false,
    })
}

/// Raises the user's revocation time (never lowers it, also against an
/// earlier revocation of this group); returns the one in force.
fn revoke_tokens(
    ks: &Keyspaces,
    b: &mut Batch,
    user: &UserKey,
    issued_before: u64,
) -> Result<u64, StoreError> {
    let key = keys::user(user)?;
    let stored = match b.revoked.get(&key) {
        Some(&t) => Some(t),
        None => match ks.revocations.get(&key).map_err(fjall_error)? {
            Some(v) => Some(keys::u64_at(&v, 0)?),
            None => None,
        },
    };
    let in_force = stored.map_or(issued_before, |t| t.max(issued_before));
    if stored != Some(in_force) {
        b.wb.insert(&ks.revocations, key.clone(), in_force.to_be_bytes());
        b.revoked.insert(key, in_force);
    }
    Ok(in_force)
}

/// Moves pending events to delivered; returns how many were pending.
fn mark_delivered(ks: &Keyspaces, b: &mut Batch, ids: &[u64]) -> Result<usize, StoreError> {
    let now = now_ms();
    let mut n = 0;
    for &id in ids {
        let pending = !b.delivered.contains(&id)
            && (b.event_ids.contains(&id)
                || ks
                    .outbox_pending
                    .contains_key(id.to_be_bytes())
                    .map_err(fjall_error)?);
        if pending {
            b.wb.remove(&ks.outbox_pending, id.to_be_bytes());
            b.wb.insert(
                &ks.outbox_delivered,
                keys::by_time(now, &id.to_be_bytes()),
                [],
            );
            b.delivered.insert(id);
            n += 1;
        }
    }
    Ok(n)
}

/// Deletes de-dup entries and delivered outbox events older than the
/// window, at most [`PURGE_CHUNK`] of each; returns how many, and whether
/// expired ones are left.
fn purge_expired(
    ks: &Keyspaces,
    b: &mut Batch,
    window: Duration,
) -> Result<(usize, bool), StoreError> {
    let cutoff = now_ms().saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
    let end = keys::time_key(cutoff);
    let mut n = 0;
    let mut more = false;
    for (i, kv) in ks.dedupe_by_time.range(..end).enumerate() {
        if i == PURGE_CHUNK {
            more = true;
            break;
        }
        let key = kv.key().map_err(fjall_error)?;
        let dedupe_key = key
            .get(8..)
            .ok_or_else(|| keys::corrupt("de-dup time key"))?;
        b.wb.remove(&ks.dedupe, dedupe_key);
        b.wb.remove(&ks.dedupe_by_time, key.clone());
        n += 1;
    }
    for (i, kv) in ks.outbox_delivered.range(..end).enumerate() {
        if i == PURGE_CHUNK {
            more = true;
            break;
        }
        let key = kv.key().map_err(fjall_error)?;
        let id = keys::u64_at(&key, 8)?;
        if let Some(v) = ks.outbox.get(id.to_be_bytes()).map_err(fjall_error)? {
            let (event, dedupe_id) = keys::decode_event(&v)?;
            if !dedupe_id.is_empty() {
                let user = keys::user(&event.user)?;
                b.wb.remove(&ks.outbox_dedupe, keys::user_and(&user, &dedupe_id)?);
            }
        }
        b.wb.remove(&ks.outbox, id.to_be_bytes());
        b.wb.remove(&ks.outbox_delivered, key.clone());
        n += 1;
    }
    Ok((n, more))
}

/// Writes cursors, never moving one back: a cursor written earlier and
/// since forgotten in memory may be ahead of what memory holds now.
fn write_cursors(
    ks: &Keyspaces,
    wb: &mut WriteBatch,
    cursors: &[(CursorKey, u64)],
) -> Result<(), StoreError> {
    for ((app, uid, device, gid), seq) in cursors {
        if !gid.is_empty() {
            write_group_cursor(ks, wb, (app, uid, device, gid), *seq)?;
            continue;
        }
        let key = keys::cursor(app, uid, device)?;
        let stored = match ks.cursors.get(&key).map_err(fjall_error)? {
            Some(v) => keys::u64_at(&v, 0)?,
            None => 0,
        };
        if *seq > stored {
            wb.insert(&ks.cursors, key, seq.to_be_bytes());
        }
    }
    Ok(())
}

/// Writes a device's cursor on a group under the group's generation now,
/// never past its head (an ack of a deleted group of the same id must not
/// hide the new one's entries); dropped when there is no such group.
fn write_group_cursor(
    ks: &Keyspaces,
    wb: &mut WriteBatch,
    (app, uid, device, gid): (&str, &str, &str, &str),
    seq: u64,
) -> Result<(), StoreError> {
    let snap = ks.db.snapshot();
    let gk = keys::group(&GroupKey::new(app, gid))?;
    let Some(rec) = super::read::group_record(&snap, ks, &gk)? else {
        return Ok(());
    };
    let seq = seq.min(super::read::group_head(&snap, ks, &gk)?);
    let uk = keys::user(&UserKey::new(app, uid))?;
    let key = keys::group_cursor(&uk, device, gid, rec.generation)?;
    let stored = match snap.get(&ks.group_cursors, &key).map_err(fjall_error)? {
        Some(v) => keys::u64_at(&v, 0)?,
        None => 0,
    };
    if seq > stored {
        wb.insert(&ks.group_cursors, key, seq.to_be_bytes());
    }
    Ok(())
}

/// The key of a generation counter in the `groups` keyspace (a group's
/// key is at least 4 bytes long).
const GENERATION_KEY: [u8; 1] = [0];

impl Writer {
    /// Runs one group op against the store (membership ops run alone in
    /// their batch, see [`Writer::run_group`], so the store is up to date
    /// for them; an append sees the heads of earlier appends through the
    /// cache). Nothing goes into the batch before every check passed.
    fn group_op(&mut self, b: &mut Batch, op: GroupOp) -> Result<GroupDone, Failure> {
        let ks = self.ks.clone();
        let snap = ks.db.snapshot();
        let reject = Failure::Reject;
        match op {
            GroupOp::Put(spec) => {
                let gk = keys::group(&spec.key).map_err(reject)?;
                let stored = read::group_record(&snap, &ks, &gk).map_err(Failure::Abort)?;
                let created = stored.is_none();
                let rec = match stored {
                    Some(rec) => keys::GroupRecord {
                        post_policy: spec.post_policy,
                        history_visible: spec.history_visible,
                        name: spec.name.clone(),
                        meta: spec.meta.clone(),
                        ..rec
                    },
                    None => keys::GroupRecord {
                        generation: self.next_generation(b, &snap)?,
                        created_ms: now_ms(),
                        members: 0,
                        post_policy: spec.post_policy,
                        history_visible: spec.history_visible,
                        name: spec.name.clone(),
                        meta: spec.meta.clone(),
                    },
                };
                let head = if created {
                    // A group deleted earlier left no timeline behind.
                    self.groups.heads.insert(gk.clone(), 0);
                    b.groups_touched.push(gk.clone());
                    0
                } else {
                    self.groups.head(&ks, &snap, &gk).map_err(Failure::Abort)?
                };
                b.wb.insert(&ks.groups, gk, keys::encode_group(&rec));
                Ok(GroupDone::Put(
                    read::to_group(&spec.key, rec, head),
                    created,
                ))
            }
            GroupOp::Delete(key) => {
                let gk = keys::group(&key).map_err(reject)?;
                if read::group_record(&snap, &ks, &gk)
                    .map_err(Failure::Abort)?
                    .is_none()
                {
                    return Ok(GroupDone::Deleted(false));
                }
                b.wb.remove(&ks.groups, gk.clone());
                for kv in snap.prefix(&ks.group_members, &gk) {
                    let k = kv.key()?;
                    let uid = String::from_utf8(k[gk.len()..].to_vec())
                        .map_err(|_| Failure::Abort(keys::corrupt("member key")))?;
                    let uk =
                        keys::user(&UserKey::new(key.app.clone(), uid)).map_err(Failure::Abort)?;
                    b.wb.remove(&ks.user_groups, keys::raw_after(&uk, &key.gid));
                    b.wb.remove(&ks.group_members, k.clone());
                }
                for kv in snap.prefix(&ks.group_timelines, &gk) {
                    let (k, v) = kv.into_inner()?;
                    b.wb.remove(&ks.messages, v);
                    b.wb.remove(&ks.group_timelines, k);
                }
                self.groups.heads.remove(&gk);
                b.groups_touched.push(gk);
                Ok(GroupDone::Deleted(true))
            }
            GroupOp::Add(key, members, max_members) => {
                let gk = keys::group(&key).map_err(reject)?;
                let Some(mut rec) = read::group_record(&snap, &ks, &gk).map_err(Failure::Abort)?
                else {
                    return Err(reject(GroupRefusal::NotFound.into()));
                };
                let head = self.groups.head(&ks, &snap, &gk).map_err(Failure::Abort)?;
                let now = now_ms();
                // uid -> its role after this call, for the writes at the end.
                let mut wanted: HashMap<&str, Role> = HashMap::new();
                let mut writes = Vec::new();
                let mut changed = Vec::new();
                for (uid, role) in &members {
                    let current = match wanted.get(uid.as_str()) {
                        Some(&r) => Some((r, head, now)),
                        None => read::member_at(&snap, &ks, &gk, uid)
                            .map_err(Failure::Abort)?
                            .map(|m| (m.role, m.joined_seq, m.joined_ms)),
                    };
                    let (joined_seq, joined_ms) = match current {
                        Some((r, _, _)) if r == *role => continue,
                        Some((_, seq, ms)) => (seq, ms),
                        None => {
                            rec.members += 1;
                            let uk = keys::user(&UserKey::new(key.app.clone(), uid.clone()))
                                .map_err(reject)?;
                            writes.push((None, keys::raw_after(&uk, &key.gid), Vec::new()));
                            (head, now)
                        }
                    };
                    wanted.insert(uid, *role);
                    writes.push((
                        Some(()),
                        keys::raw_after(&gk, uid),
                        keys::encode_member(*role, joined_seq, joined_ms),
                    ));
                    if !changed.contains(uid) {
                        changed.push(uid.clone());
                    }
                }
                if rec.members > max_members {
                    return Err(reject(GroupRefusal::Full.into()));
                }
                for (member, k, v) in writes {
                    if member.is_some() {
                        b.wb.insert(&ks.group_members, k, v);
                    } else {
                        b.wb.insert(&ks.user_groups, k, v);
                    }
                }
                b.wb.insert(&ks.groups, gk, keys::encode_group(&rec));
                Ok(GroupDone::Members(MembersChanged {
                    changed,
                    members: rec.members,
                }))
            }
            GroupOp::Remove(key, uids) => {
                let gk = keys::group(&key).map_err(reject)?;
                let Some(mut rec) = read::group_record(&snap, &ks, &gk).map_err(Failure::Abort)?
                else {
                    return Err(reject(GroupRefusal::NotFound.into()));
                };
                let mut changed: Vec<String> = Vec::new();
                for uid in &uids {
                    if changed.contains(uid) {
                        continue;
                    }
                    let mk = keys::raw_after(&gk, uid);
                    if !snap.contains_key(&ks.group_members, &mk)? {
                        continue;
                    }
                    let uk =
                        keys::user(&UserKey::new(key.app.clone(), uid.clone())).map_err(reject)?;
                    b.wb.remove(&ks.group_members, mk);
                    b.wb.remove(&ks.user_groups, keys::raw_after(&uk, &key.gid));
                    rec.members = rec.members.saturating_sub(1);
                    changed.push(uid.clone());
                }
                if !changed.is_empty() {
                    b.wb.insert(&ks.groups, gk, keys::encode_group(&rec));
                }
                Ok(GroupDone::Members(MembersChanged {
                    changed,
                    members: rec.members,
                }))
            }
            GroupOp::Append(msg) => self.group_append(b, &snap, *msg).map(GroupDone::Appended),
        }
    }

    /// A generation no group had before (written with the batch).
    fn next_generation(&mut self, b: &mut Batch, snap: &Snapshot) -> Result<u64, Failure> {
        let last = match self.groups.last_generation {
            Some(g) => g,
            None => match snap.get(&self.ks.groups, GENERATION_KEY)? {
                Some(v) => keys::u64_at(&v, 0).map_err(Failure::Abort)?,
                None => 0,
            },
        };
        let next = last + 1;
        self.groups.last_generation = Some(next);
        b.wb.insert(&self.ks.groups, GENERATION_KEY, next.to_be_bytes());
        Ok(next)
    }

    fn group_append(
        &mut self,
        b: &mut Batch,
        snap: &Snapshot,
        msg: NewGroupMessage,
    ) -> Result<Appended, Failure> {
        let ks = self.ks.clone();
        let reject = Failure::Reject;
        let m = &msg.message;
        if m.group != msg.group.gid {
            return Err(reject(StoreError::Invalid(format!(
                "message.group {:?} is not the group {}",
                m.group, msg.group
            ))));
        }
        let gk = keys::group(&msg.group).map_err(reject)?;
        let Some(rec) = read::group_record(snap, &ks, &gk).map_err(Failure::Abort)? else {
            return Err(reject(GroupRefusal::NotFound.into()));
        };
        let from = keys::user(&m.from).map_err(reject)?;
        let dedupe_key = if m.client_msg_id.is_empty() {
            None
        } else {
            Some(keys::group_dedupe(&from, &m.client_msg_id, &gk, rec.generation).map_err(reject)?)
        };
        // A resend answers the first result, whatever the membership now.
        if let Some(key) = &dedupe_key {
            if let Some((first, seqs)) = b.dedupe.get(key) {
                return Ok(Appended {
                    message: first.clone(),
                    seqs: seqs.clone(),
                    duplicate: true,
                });
            }
            if let Some(v) = ks.dedupe.get(key)? {
                let (msg_id, seqs) = keys::decode_dedupe(&v).map_err(reject)?;
                let first = read::message(&ks, msg_id).map_err(reject)?;
                return Ok(Appended {
                    message: Arc::new(first),
                    seqs,
                    duplicate: true,
                });
            }
        }
        if msg.check_sender {
            let member = if m.from.app == msg.group.app {
                read::member_at(snap, &ks, &gk, &m.from.uid).map_err(Failure::Abort)?
            } else {
                None
            };
            match member {
                None => return Err(reject(GroupRefusal::NotMember.into())),
                Some(mb) if rec.post_policy == PostPolicy::Admins && mb.role != Role::Admin => {
                    return Err(reject(GroupRefusal::AdminsOnly.into()));
                }
                Some(_) => {}
            }
        }
        if b.msg_ids.contains(&m.id) || ks.messages.contains_key(m.id.to_be_bytes())? {
            return Err(reject(StoreError::Invalid(format!(
                "message id {} is already stored",
                m.id
            ))));
        }
        let seq = self.groups.head(&ks, snap, &gk).map_err(Failure::Abort)? + 1;
        if let Some(a) = &msg.amends {
            amend(&ks, b, a)?;
        }
        b.wb.insert(&ks.messages, m.id.to_be_bytes(), keys::encode_message(m));
        b.wb.insert(
            &ks.group_timelines,
            keys::timeline(&gk, seq),
            m.id.to_be_bytes(),
        );
        let message = Arc::new(msg.message);
        if let Some(key) = dedupe_key {
            let created = now_ms();
            b.wb.insert(&ks.dedupe_by_time, keys::by_time(created, &key), []);
            b.wb.insert(
                &ks.dedupe,
                key.clone(),
                keys::dedupe_value(message.id, created, &[seq]),
            );
            b.dedupe.insert(key, (message.clone(), vec![seq]));
        }
        b.msg_ids.insert(message.id);
        self.groups.heads.insert(gk.clone(), seq);
        b.groups_touched.push(gk);
        Ok(Appended {
            message,
            seqs: vec![seq],
            duplicate: false,
        })
    }
}
