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
use switchboard_core::stats;
use switchboard_core::store::OutboxReceipt;
use switchboard_core::{Appended, BusEvent, NewMessage, StoreError, UserKey, now_ms};

use super::checkpoint::{self, By, Checkpointer};
use super::read::{decode_seqs, encode_seqs, message_by_id};
use super::{SqliteOptions, unavailable};
use crate::single_writer::{
    Command, CursorKey, Cursors, Gather, Group, Heads, Pending, Queued, answer_group,
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
    // INSERT OR IGNORE: a reused message id is the caller's bug; reject that
    // one command instead of failing the whole group.
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO message
             (msg_id, app, from_uid, to_app, to_uid, kind, body, client_msg_id, server_time_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
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
            m.server_time_ms
        ])?;
    if inserted == 0 {
        return Err(Failure::Reject(StoreError::Invalid(format!(
            "message id {} is already stored",
            m.id
        ))));
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
    let NewMessage { message, timelines } = msg;
    touched.extend(timelines);
    Ok(Appended {
        message: Arc::new(message),
        seqs,
        duplicate: false,
    })
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
    Ok(a + b)
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
    for ((app, uid, device), seq) in cursors {
        // advance_cursor rejects seqs above i64::MAX, so this never clamps.
        let seq = i64::try_from(*seq).unwrap_or(i64::MAX);
        stmt.execute(params![app, uid, device, seq])
            .map_err(unavailable)?;
    }
    Ok(())
}
