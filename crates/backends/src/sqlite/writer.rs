//! The one writer thread of [`SqliteStore`](super::SqliteStore).
//!
//! It owns the write connection and the cache of timeline heads. It waits for
//! a command, drains up to `max_batch` more that are already queued, runs them
//! all in ONE transaction (group commit) together with, when due, the dirty
//! device cursors (every `cursor_flush_interval`) and the de-dup purge, and
//! only after COMMIT returned (an fsync of the WAL with `synchronous=FULL`)
//! answers every waiter. If the transaction fails it rolls back, forgets the
//! heads the batch touched (they reload from `MAX(seq)`) and answers every
//! waiter `Unavailable`. When the WAL has grown long, it then checkpoints
//! before the next group (see `checkpoint`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use switchboard_core::model::{Amendment, RECALLED_KIND};
use switchboard_core::stats;
use switchboard_core::store::OutboxReceipt;
use switchboard_core::{Appended, BusEvent, NewMessage, StoreError, UserKey, now_ms};

use super::checkpoint::{self, By, Checkpointer};
use super::read::{self, decode_seqs, encode_seqs, message_by_id};
use super::{SqliteOptions, unavailable};
use crate::single_writer::{
    Command, CursorKey, Cursors, Gather, Group, GroupDone, GroupOp, Heads, Pending, Queued,
    answer_group,
};
use switchboard_core::group::{
    GroupRefusal, Member, MembersChanged, NewGroupMessage, PostPolicy, Role,
};

/// A failure inside a batch: `Reject` fails one command, `Abort` the whole
/// transaction (I/O, disk full, a broken invariant).
enum Failure {
    Reject(StoreError),
    Abort(StoreError),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Failure {
        Failure::Abort(unavailable(e))
    }
}

pub struct Writer {
    conn: Connection,
    gather: Gather,
    cursors: Arc<Cursors>,
    opts: SqliteOptions,
    /// Cached head of each timeline seen lately (the last seq written).
    heads: Heads,
    /// Frames in the WAL after the last commit (SQLite's WAL hook).
    wal_frames: Arc<AtomicI64>,
    /// The WAL length at which the writer checkpoints next.
    next_checkpoint: i64,
    /// Stopped (dropped) with the writer.
    checkpointer: Checkpointer,
}

impl Writer {
    pub fn new(
        mut conn: Connection,
        rx: Receiver<Queued>,
        cursors: Arc<Cursors>,
        checkpointer: Checkpointer,
        opts: SqliteOptions,
    ) -> Result<Writer, StoreError> {
        let wal_frames = Arc::new(AtomicI64::new(0));
        let seen = wal_frames.clone();
        // Set after `wal_autocheckpoint = 0`, which would replace it.
        conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, frames| {
            seen.store(i64::from(frames), Ordering::Relaxed);
            Ok(())
        }))
        .map_err(unavailable)?;
        let gather = Gather::new(
            rx,
            cursors.clone(),
            opts.max_batch,
            opts.cursor_flush_interval,
            opts.purge_interval,
        );
        Ok(Writer {
            conn,
            gather,
            cursors,
            next_checkpoint: i64::from(opts.max_wal_frames.max(1)),
            opts,
            heads: Heads::default(),
            wal_frames,
            checkpointer,
        })
    }

    /// The thread's body: returns after a `Close` or when every sender is gone.
    pub fn run(mut self) {
        while let Some(group) = self.gather.next_group() {
            self.run_batch(group);
        }
        tracing::debug!("sqlite writer stopped");
    }

    /// Runs one group: every command, the cursors due, maybe the purge, one
    /// COMMIT.
    fn run_batch(&mut self, group: Group) {
        let Group {
            batch,
            purge,
            cursors,
        } = group;
        let started = Instant::now();
        let commands = batch.len();
        let mut pending = Vec::with_capacity(batch.len());
        let mut touched: Vec<UserKey> = Vec::new();
        let outcome = (|| -> Result<(), StoreError> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            for q in batch {
                // The slot is free again as soon as the command is dequeued.
                drop(q.permit);
                match q.cmd {
                    Command::Append(msg, reply) => {
                        let r = match append(&tx, &mut self.heads, &mut touched, msg) {
                            Ok(a) => Ok(a),
                            Err(Failure::Reject(e)) => Err(e),
                            Err(Failure::Abort(e)) => {
                                pending.push(Pending::Append(
                                    reply,
                                    Err(StoreError::Unavailable(String::new())),
                                ));
                                return Err(e);
                            }
                        };
                        pending.push(Pending::Append(reply, r));
                    }
                    Command::Group(op, reply) => {
                        let r = match group_op(&tx, op) {
                            Ok(a) => Ok(a),
                            Err(Failure::Reject(e)) => Err(e),
                            Err(Failure::Abort(e)) => {
                                pending.push(Pending::Group(
                                    reply,
                                    Err(StoreError::Unavailable(String::new())),
                                ));
                                return Err(e);
                            }
                        };
                        pending.push(Pending::Group(reply, r));
                    }
                    Command::Outbox(event, dedupe_id, reply) => {
                        let r = match outbox_append(&tx, &event, &dedupe_id) {
                            Ok(a) => Ok(a),
                            Err(Failure::Reject(e)) => Err(e),
                            Err(Failure::Abort(e)) => {
                                pending.push(Pending::Outbox(
                                    reply,
                                    Err(StoreError::Unavailable(String::new())),
                                ));
                                return Err(e);
                            }
                        };
                        pending.push(Pending::Outbox(reply, r));
                    }
                    Command::MarkDelivered(ids, reply) => {
                        let r = mark_delivered(&tx, &ids);
                        let failed = r
                            .as_ref()
                            .err()
                            .map(|e| StoreError::Unavailable(e.to_string()));
                        pending.push(Pending::Count(reply, r));
                        if let Some(e) = failed {
                            return Err(e);
                        }
                    }
                    Command::Revoke(user, issued_before, reply) => {
                        let r = revoke_tokens(&tx, &user, issued_before);
                        let failed = r
                            .as_ref()
                            .err()
                            .map(|e| StoreError::Unavailable(e.to_string()));
                        pending.push(Pending::Revoked(reply, r));
                        if let Some(e) = failed {
                            return Err(e);
                        }
                    }
                    Command::PutView(user, view, reply) => {
                        tx.prepare_cached(
                            "INSERT INTO conversation_view (app, uid, view) VALUES (?1, ?2, ?3)
                             ON CONFLICT (app, uid) DO UPDATE SET view = excluded.view",
                        )
                        .and_then(|mut s| s.execute(params![user.app, user.uid, view.as_ref()]))
                        .map_err(unavailable)?;
                        pending.push(Pending::Unit(reply));
                    }
                    Command::Purge(reply) => {
                        let r = purge_expired(&tx, self.opts.dedupe_window);
                        let failed = r
                            .as_ref()
                            .err()
                            .map(|e| StoreError::Unavailable(e.to_string()));
                        pending.push(Pending::Count(reply, r));
                        if let Some(e) = failed {
                            return Err(e);
                        }
                    }
                    Command::Flush(reply) | Command::Close(reply) => {
                        pending.push(Pending::Unit(reply))
                    }
                }
            }
            flush_cursors(&tx, &cursors)?;
            if purge {
                let n = purge_expired(&tx, self.opts.dedupe_window)?;
                if n > 0 {
                    tracing::debug!(rows = n, "purged expired de-dup and outbox rows");
                }
            }
            let commit = Instant::now();
            let committed = tx.commit().map_err(unavailable);
            metrics::histogram!(stats::STORE_COMMIT_SECONDS, "store" => "sqlite")
                .record(commit.elapsed().as_secs_f64());
            committed
        })();
        let committed = outcome.is_ok();
        self.heads.settle(committed, &touched);
        if committed {
            self.cursors.flushed(&cursors);
        }
        if answer_group("sqlite", started, commands, outcome, pending) {
            self.checkpoint_if_long();
        }
    }
}

impl Writer {
    /// Checkpoints on the writer's connection once the WAL reached
    /// `next_checkpoint` frames, so the next transaction starts the WAL
    /// over. It waits for the moment just after a pass of the checkpointer
    /// thread, when little is left to copy: the writer stalls for that copy
    /// and the database file's fsync (a tail of a whole interval measured
    /// 10-25 ms). If the WAL could not start over (a reader still reads old
    /// frames), it tries again a quarter of the limit later rather than
    /// after every group.
    fn checkpoint_if_long(&mut self) {
        let max = i64::from(self.opts.max_wal_frames.max(1));
        let frames = self.wal_frames.load(Ordering::Relaxed);
        if frames < max {
            // The WAL started over since the last attempt.
            self.next_checkpoint = max;
            return;
        }
        if frames < self.next_checkpoint {
            return;
        }
        // Frames not yet copied. The thread's count may be from before the
        // WAL last started over (then this is negative: go ahead); a thread
        // that stopped copying is overruled at twice the limit.
        let tail = frames - self.checkpointer.backfilled();
        if tail > max / 50 && frames < 2 * max {
            return;
        }
        let started = Instant::now();
        match checkpoint::passive(&self.conn) {
            Ok(wal) if wal.busy => {
                // The thread is in a pass right now: the next group will do.
                return;
            }
            Ok(_) => checkpoint::record(By::Writer, started),
            Err(e) => tracing::warn!(error = %e, "sqlite checkpoint failed"),
        }
        self.next_checkpoint = frames + max / 4;
    }
}

/// Appends one message inside the batch's transaction. A duplicate (also of
/// a message earlier in this batch: the transaction sees its own writes)
/// returns the first result.
fn append(
    tx: &Transaction<'_>,
    heads: &mut Heads,
    touched: &mut Vec<UserKey>,
    msg: NewMessage,
) -> Result<Appended, Failure> {
    for (i, t) in msg.timelines.iter().enumerate() {
        if msg.timelines[..i].contains(t) {
            return Err(Failure::Reject(StoreError::Invalid(format!(
                "timeline {t} listed twice"
            ))));
        }
    }
    if let Some((from, cmid)) = msg.dedupe_key() {
        let mut stmt = tx.prepare_cached(
            "SELECT msg_id, seqs FROM dedupe WHERE app = ?1 AND uid = ?2 AND client_msg_id = ?3",
        )?;
        let hit: Option<(i64, Vec<u8>)> = stmt
            .query_row(params![from.app, from.uid, cmid], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        if let Some((msg_id, seqs)) = hit {
            let seqs = decode_seqs(&seqs).map_err(Failure::Reject)?;
            let first = message_by_id(tx, msg_id as u64)
                .map_err(Failure::Reject)?
                .ok_or_else(|| {
                    Failure::Reject(StoreError::Corrupt(format!(
                        "de-dup row points at missing message {msg_id}"
                    )))
                })?;
            return Ok(Appended {
                message: Arc::new(first),
                seqs,
                duplicate: true,
            });
        }
    }

    let m = &msg.message;
    if let Some(a) = &msg.amends {
        check_amendment(tx, a)?;
    }
    // INSERT OR IGNORE: a reused message id is the caller's bug; reject that
    // one command instead of failing the whole group.
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO message
             (msg_id, app, from_uid, to_app, to_uid, kind, body, client_msg_id, server_time_ms,
              group_gid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            m.id as i64,
            m.from.app,
            m.from.uid,
            m.to.app,
            m.to.uid,
            m.kind,
            m.body.as_ref(),
            m.client_msg_id,
            m.server_time_ms,
            m.group
        ])?;
    if inserted == 0 {
        return Err(Failure::Reject(StoreError::Invalid(format!(
            "message id {} is already stored",
            m.id
        ))));
    }
    if let Some(a) = &msg.amends {
        write_amendment(tx, a)?;
    }

    let mut seqs = Vec::with_capacity(msg.timelines.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO timeline (app, uid, seq, msg_id) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for user in &msg.timelines {
            let head = match heads.get(user) {
                Some(h) => h,
                None => super::read::head(tx, user).map_err(Failure::Abort)?,
            };
            let seq = head + 1;
            // A clash here means the cached head is wrong: abort the group so
            // the heads reload, rather than leave a gap or a duplicate.
            insert.execute(params![user.app, user.uid, seq as i64, m.id as i64])?;
            seqs.push(seq);
        }
    }
    for (user, &seq) in msg.timelines.iter().zip(&seqs) {
        heads.insert(user.clone(), seq);
    }

    if let Some((from, cmid)) = msg.dedupe_key() {
        tx.prepare_cached(
            "INSERT INTO dedupe (app, uid, client_msg_id, msg_id, seqs, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![from.app, from.uid, cmid, m.id as i64, encode_seqs(&seqs), now_ms()])?;
    }
    let NewMessage {
        message, timelines, ..
    } = msg;
    touched.extend(timelines);
    Ok(Appended {
        message: Arc::new(message),
        seqs,
        duplicate: false,
    })
}

/// Refuses an amendment of a recalled message (a recall is final) or of
/// none; reads only, so a refusal leaves nothing of the command behind.
fn check_amendment(tx: &Transaction<'_>, a: &Amendment) -> Result<(), Failure> {
    let kind: Option<String> = tx
        .prepare_cached("SELECT kind FROM message WHERE msg_id = ?1")?
        .query_row(params![a.message.id as i64], |r| r.get(0))
        .optional()?;
    match kind {
        None => Err(Failure::Reject(StoreError::Invalid(format!(
            "no message {} to amend",
            a.message.id
        )))),
        Some(k) if k == RECALLED_KIND => Err(Failure::Reject(StoreError::Recalled)),
        Some(_) => Ok(()),
    }
}

/// Replaces a message by its amended form ([`check_amendment`] passed).
fn write_amendment(tx: &Transaction<'_>, a: &Amendment) -> Result<(), Failure> {
    tx.prepare_cached("UPDATE message SET kind = ?2, body = ?3 WHERE msg_id = ?1")?
        .execute(params![
            a.message.id as i64,
            a.message.kind,
            a.message.body.as_ref()
        ])?;
    Ok(())
}

fn outbox_append(
    tx: &Transaction<'_>,
    event: &BusEvent,
    dedupe_id: &str,
) -> Result<OutboxReceipt, Failure> {
    if !dedupe_id.is_empty() {
        let first: Option<i64> = tx
            .prepare_cached("SELECT id FROM outbox WHERE app = ?1 AND uid = ?2 AND dedupe_id = ?3")?
            .query_row(params![event.user.app, event.user.uid, dedupe_id], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(id) = first {
            return Ok(OutboxReceipt {
                id: id as u64,
                duplicate: true,
            });
        }
    }
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO outbox (id, topic, app, uid, kind, body, time_ms, dedupe_id, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?
        .execute(params![
            event.id as i64,
            event.topic,
            event.user.app,
            event.user.uid,
            event.kind,
            event.body.as_ref(),
            event.time_ms,
            dedupe_id,
            now_ms()
        ])?;
    if inserted == 0 {
        return Err(Failure::Reject(StoreError::Invalid(format!(
            "event id {} is already in the outbox",
            event.id
        ))));
    }
    Ok(OutboxReceipt {
        id: event.id,
        duplicate: false,
    })
}

fn mark_delivered(tx: &Transaction<'_>, ids: &[u64]) -> Result<usize, StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "UPDATE outbox SET delivered_ms = ?2 WHERE id = ?1 AND delivered_ms IS NULL",
        )
        .map_err(unavailable)?;
    let now = now_ms();
    let mut n = 0;
    for &id in ids {
        n += stmt.execute(params![id as i64, now]).map_err(unavailable)?;
    }
    Ok(n)
}

/// Raises the user's revocation time (never lowers it); returns the one in force.
fn revoke_tokens(
    tx: &Transaction<'_>,
    user: &UserKey,
    issued_before: u64,
) -> Result<u64, StoreError> {
    let before = i64::try_from(issued_before).map_err(|_| {
        StoreError::Invalid(format!("revocation time {issued_before} out of range"))
    })?;
    let now: i64 = tx
        .prepare_cached(
            "INSERT INTO token_revocation (app, uid, issued_before) VALUES (?1, ?2, ?3)
             ON CONFLICT (app, uid) DO UPDATE
               SET issued_before = max(issued_before, excluded.issued_before)
             RETURNING issued_before",
        )
        .and_then(|mut s| s.query_row(params![user.app, user.uid, before], |r| r.get(0)))
        .map_err(unavailable)?;
    u64::try_from(now).map_err(|_| StoreError::Corrupt(format!("negative revocation time {now}")))
}

/// Deletes de-dup rows and delivered outbox rows older than the window.
fn purge_expired(tx: &Transaction<'_>, window: Duration) -> Result<usize, StoreError> {
    let cutoff = now_ms().saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
    let a = tx
        .prepare_cached("DELETE FROM dedupe WHERE created_ms < ?1")
        .and_then(|mut s| s.execute(params![cutoff]))
        .map_err(unavailable)?;
    let b = tx
        .prepare_cached("DELETE FROM outbox WHERE delivered_ms IS NOT NULL AND delivered_ms < ?1")
        .and_then(|mut s| s.execute(params![cutoff]))
        .map_err(unavailable)?;
    let c = tx
        .prepare_cached("DELETE FROM group_dedupe WHERE created_ms < ?1")
        .and_then(|mut s| s.execute(params![cutoff]))
        .map_err(unavailable)?;
    Ok(a + b + c)
}

/// Upserts cursors; `MAX` keeps a cursor from moving back on disk.
fn flush_cursors(tx: &Transaction<'_>, cursors: &[(CursorKey, u64)]) -> Result<(), StoreError> {
    if cursors.is_empty() {
        return Ok(());
    }
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO cursor (app, uid, device_id, seq) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (app, uid, device_id) DO UPDATE SET seq = MAX(seq, excluded.seq)",
        )
        .map_err(unavailable)?;
    // A group cursor goes to the group of that id now, never past its head
    // (an ack from before a delete must not hide the new group's entries);
    // none when there is no such group.
    let mut group_stmt = tx
        .prepare_cached(
            "INSERT INTO group_cursor (app, uid, device_id, group_id, seq)
             SELECT ?1, ?2, ?3, id, MIN(?5, head) FROM grp WHERE app = ?1 AND gid = ?4
             ON CONFLICT (app, uid, device_id, group_id) DO UPDATE
               SET seq = MAX(seq, excluded.seq)",
        )
        .map_err(unavailable)?;
    for ((app, uid, device, gid), seq) in cursors {
        // advance_cursor rejects seqs above i64::MAX, so this never clamps.
        let seq = i64::try_from(*seq).unwrap_or(i64::MAX);
        if gid.is_empty() {
            stmt.execute(params![app, uid, device, seq])
                .map_err(unavailable)?;
        } else {
            group_stmt
                .execute(params![app, uid, device, gid, seq])
                .map_err(unavailable)?;
        }
    }
    Ok(())
}

/// Runs one group op in the batch's transaction (which sees the writes of
/// the commands before it). Every check runs before the first write, so a
/// refused op leaves no trace.
fn group_op(tx: &Transaction<'_>, op: GroupOp) -> Result<GroupDone, Failure> {
    let reject = |r: GroupRefusal| Failure::Reject(r.into());
    match op {
        GroupOp::Put(spec) => {
            let key = &spec.key;
            let existed = read::group_row(tx, key).map_err(Failure::Abort)?.is_some();
            if existed {
                tx.prepare_cached(
                    "UPDATE grp SET name = ?3, meta = ?4, post_policy = ?5, history_visible = ?6
                     WHERE app = ?1 AND gid = ?2",
                )?
                .execute(params![
                    key.app,
                    key.gid,
                    spec.name,
                    spec.meta.as_ref(),
                    spec.post_policy.as_str(),
                    spec.history_visible
                ])?;
            } else {
                tx.prepare_cached(
                    "INSERT INTO grp (app, gid, name, meta, post_policy, history_visible,
                                      created_ms, head, members)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 0)",
                )?
                .execute(params![
                    key.app,
                    key.gid,
                    spec.name,
                    spec.meta.as_ref(),
                    spec.post_policy.as_str(),
                    spec.history_visible,
                    now_ms()
                ])?;
            }
            let (_, group) = read::group_row(tx, key)
                .map_err(Failure::Abort)?
                .ok_or_else(|| Failure::Abort(StoreError::Corrupt("group row vanished".into())))?;
            Ok(GroupDone::Put(group, !existed))
        }
        GroupOp::Delete(key) => {
            let Some((id, _)) = read::group_row(tx, &key).map_err(Failure::Abort)? else {
                return Ok(GroupDone::Deleted(false));
            };
            tx.prepare_cached(
                "DELETE FROM user_group WHERE app = ?1 AND gid = ?2
                   AND uid IN (SELECT uid FROM group_member WHERE group_id = ?3)",
            )?
            .execute(params![key.app, key.gid, id])?;
            tx.prepare_cached(
                "DELETE FROM message WHERE msg_id IN
                   (SELECT msg_id FROM group_timeline WHERE group_id = ?1)",
            )?
            .execute(params![id])?;
            for sql in [
                "DELETE FROM group_timeline WHERE group_id = ?1",
                "DELETE FROM group_member WHERE group_id = ?1",
                "DELETE FROM group_dedupe WHERE group_id = ?1",
                "DELETE FROM grp WHERE id = ?1",
            ] {
                tx.prepare_cached(sql)?.execute(params![id])?;
            }
            Ok(GroupDone::Deleted(true))
        }
        GroupOp::Add(key, members, max_members) => {
            let Some((id, group)) = read::group_row(tx, &key).map_err(Failure::Abort)? else {
                return Err(reject(GroupRefusal::NotFound));
            };
            // The call's effect first (a uid given twice: its last role).
            let mut wanted: Vec<(&str, Role, Option<Member>)> = Vec::new();
            for (uid, role) in &members {
                if let Some(w) = wanted.iter_mut().find(|w| w.0 == uid) {
                    w.1 = *role;
                    continue;
                }
                let current = read::member_by_id(tx, id, uid).map_err(Failure::Abort)?;
                wanted.push((uid, *role, current));
            }
            wanted.retain(|(_, role, current)| current.as_ref().is_none_or(|c| c.role != *role));
            let added = wanted.iter().filter(|w| w.2.is_none()).count() as u64;
            let count = group.members + added;
            if count > max_members {
                return Err(reject(GroupRefusal::Full));
            }
            let now = now_ms();
            let head = i64::try_from(group.head).unwrap_or(i64::MAX);
            let mut upsert = tx.prepare_cached(
                "INSERT INTO group_member (group_id, uid, role, joined_seq, joined_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (group_id, uid) DO UPDATE SET role = excluded.role",
            )?;
            let mut index = tx.prepare_cached(
                "INSERT OR IGNORE INTO user_group (app, uid, gid, group_id) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (uid, role, current) in &wanted {
                upsert.execute(params![id, uid, role.as_str(), head, now])?;
                if current.is_none() {
                    index.execute(params![key.app, uid, key.gid, id])?;
                }
            }
            tx.prepare_cached("UPDATE grp SET members = ?2 WHERE id = ?1")?
                .execute(params![id, count as i64])?;
            Ok(GroupDone::Members(MembersChanged {
                changed: wanted.iter().map(|w| w.0.to_owned()).collect(),
                members: count,
            }))
        }
        GroupOp::Remove(key, uids) => {
            let Some((id, group)) = read::group_row(tx, &key).map_err(Failure::Abort)? else {
                return Err(reject(GroupRefusal::NotFound));
            };
            let mut delete =
                tx.prepare_cached("DELETE FROM group_member WHERE group_id = ?1 AND uid = ?2")?;
            let mut unindex = tx.prepare_cached(
                "DELETE FROM user_group WHERE app = ?1 AND uid = ?2 AND gid = ?3",
            )?;
            let mut changed = Vec::new();
            for uid in &uids {
                if delete.execute(params![id, uid])? > 0 {
                    unindex.execute(params![key.app, uid, key.gid])?;
                    changed.push(uid.clone());
                }
            }
            let count = group.members.saturating_sub(changed.len() as u64);
            tx.prepare_cached("UPDATE grp SET members = ?2 WHERE id = ?1")?
                .execute(params![id, count as i64])?;
            Ok(GroupDone::Members(MembersChanged {
                changed,
                members: count,
            }))
        }
        GroupOp::Append(msg) => group_append(tx, *msg).map(GroupDone::Appended),
    }
}

fn group_append(tx: &Transaction<'_>, msg: NewGroupMessage) -> Result<Appended, Failure> {
    let m = &msg.message;
    if m.group != msg.group.gid {
        return Err(Failure::Reject(StoreError::Invalid(format!(
            "message.group {:?} is not the group {}",
            m.group, msg.group
        ))));
    }
    let Some((id, group)) = read::group_row(tx, &msg.group).map_err(Failure::Abort)? else {
        return Err(Failure::Reject(GroupRefusal::NotFound.into()));
    };
    // A resend answers the first result, whatever the membership now.
    if !m.client_msg_id.is_empty() {
        let hit: Option<(i64, i64)> = tx
            .prepare_cached(
                "SELECT msg_id, seq FROM group_dedupe
                 WHERE group_id = ?1 AND app = ?2 AND uid = ?3 AND client_msg_id = ?4",
            )?
            .query_row(params![id, m.from.app, m.from.uid, m.client_msg_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        if let Some((msg_id, seq)) = hit {
            let first = message_by_id(tx, msg_id as u64)
                .map_err(Failure::Reject)?
                .ok_or_else(|| {
                    Failure::Reject(StoreError::Corrupt(format!(
                        "group de-dup row points at missing message {msg_id}"
                    )))
                })?;
            return Ok(Appended {
                message: Arc::new(first),
                seqs: vec![read::to_u64(seq, "group_dedupe.seq").map_err(Failure::Reject)?],
                duplicate: true,
            });
        }
    }
    if msg.check_sender {
        let member = if m.from.app == msg.group.app {
            read::member_by_id(tx, id, &m.from.uid).map_err(Failure::Abort)?
        } else {
            None
        };
        match member {
            None => return Err(Failure::Reject(GroupRefusal::NotMember.into())),
            Some(mb) if group.spec.post_policy == PostPolicy::Admins && mb.role != Role::Admin => {
                return Err(Failure::Reject(GroupRefusal::AdminsOnly.into()));
            }
            Some(_) => {}
        }
    }
    if let Some(a) = &msg.amends {
        check_amendment(tx, a)?;
    }
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO message
             (msg_id, app, from_uid, to_app, to_uid, kind, body, client_msg_id, server_time_ms,
              group_gid)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?
        .execute(params![
            m.id as i64,
            m.from.app,
            m.from.uid,
            m.to.app,
            m.to.uid,
            m.kind,
            m.body.as_ref(),
            m.client_msg_id,
            m.server_time_ms,
            m.group
        ])?;
    if inserted == 0 {
        return Err(Failure::Reject(StoreError::Invalid(format!(
            "message id {} is already stored",
            m.id
        ))));
    }
    if let Some(a) = &msg.amends {
        write_amendment(tx, a)?;
    }
    let seq: i64 = tx
        .prepare_cached("UPDATE grp SET head = head + 1 WHERE id = ?1 RETURNING head")?
        .query_row(params![id], |r| r.get(0))?;
    tx.prepare_cached("INSERT INTO group_timeline (group_id, seq, msg_id) VALUES (?1, ?2, ?3)")?
        .execute(params![id, seq, m.id as i64])?;
    if !m.client_msg_id.is_empty() {
        tx.prepare_cached(
            "INSERT INTO group_dedupe (group_id, app, uid, client_msg_id, msg_id, seq, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            id,
            m.from.app,
            m.from.uid,
            m.client_msg_id,
            m.id as i64,
            seq,
            now_ms()
        ])?;
    }
    Ok(Appended {
        message: Arc::new(msg.message),
        seqs: vec![read::to_u64(seq, "grp.head").map_err(Failure::Abort)?],
        duplicate: false,
    })
}
