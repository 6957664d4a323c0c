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

use fjall::{OwnedWriteBatch as WriteBatch, PersistMode};
use switchboard_core::stats;
use switchboard_core::store::OutboxReceipt;
use switchboard_core::{Appended, BusEvent, Message, NewMessage, StoreError, UserKey, now_ms};

use super::{FjallOptions, Keyspaces, fjall_error, keys};
use crate::single_writer::{
    Command, CursorKey, Cursors, Gather, Group, Heads, Pending, Queued, answer_group,
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
    /// Outbox de-dup key → event id.
    outbox_dedupe: HashMap<Vec<u8>, u64>,
    event_ids: HashSet<u64>,
    delivered: HashSet<u64>,
    /// User key → revocation time written in this group.
    revoked: HashMap<Vec<u8>, u64>,
    /// Timelines whose cached head moved in this group.
    touched: Vec<UserKey>,
}

pub struct Writer {
    ks: Arc<Keyspaces>,
    gather: Gather,
    cursors: Arc<Cursors>,
    dedupe_window: Duration,
    /// Cached head of each timeline seen lately (the last seq written).
    heads: Heads,
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
        }
    }

    /// The thread's body: returns after a `Close` or when every sender is gone.
    pub fn run(mut self) {
        while let Some(group) = self.gather.next_group() {
            self.run_group(group);
        }
        tracing::debug!("fjall writer stopped");
    }

    fn run_group(&mut self, group: Group) {
        let started = Instant::now();
        let commands = group.batch.len();
        let mut b = Batch {
            wb: self.ks.db.batch().durability(Some(PersistMode::SyncAll)),
            dedupe: HashMap::new(),
            msg_ids: HashSet::new(),
            outbox_dedupe: HashMap::new(),
            event_ids: HashSet::new(),
            delivered: HashSet::new(),
            revoked: HashMap::new(),
            touched: Vec::new(),
        };
        let mut pending = Vec::with_capacity(commands);
        let filled = self
            .fill(&mut b, group.batch, &mut pending)
            .and_then(|()| write_cursors(&self.ks, &mut b.wb, &group.cursors))
            .and_then(|()| {
                if !group.purge {
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
        let Batch { wb, touched, .. } = b;
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
        if committed {
            self.cursors.flushed(&group.cursors);
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
        Command::MarkDelivered(_, r) | Command::Purge(r) => Pending::Count(r, none()),
        Command::Revoke(_, _, r) => Pending::Revoked(r, none()),
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

    b.wb.insert(&ks.messages, m.id.to_be_bytes(), keys::encode_message(m));
    for (key, &seq) in timeline_keys.iter().zip(&seqs) {
        b.wb.insert(&ks.timelines, keys::timeline(key, seq), m.id.to_be_bytes());
    }
    b.wb.insert(
        &ks.conversations,
        keys::with_u64(&keys::direction(&from, &to), m.id),
        [],
    );
    let NewMessage { message, timelines } = msg;
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
    for ((app, uid, device), seq) in cursors {
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
