//! What the embedded stores ([`SqliteStore`](crate::SqliteStore),
//! [`FjallStore`](crate::FjallStore)) share: ONE writer thread behind a
//! bounded FIFO queue, and device cursors kept in memory until the writer
//! flushes them.
//!
//! - [`WriteQueue`]: callers take a permit of a fair (FIFO) semaphore before
//!   they queue a command, so a full queue makes them wait asynchronously
//!   instead of blocking a runtime thread, and commands reach the writer in
//!   the order their callers asked. Once [`WriteQueue::enqueue`] returned,
//!   the command's place in the writer's order is fixed (what
//!   `Store::submit_append` promises).
//! - [`Gather`]: the writer's side, which hands out one group at a time
//!   with the cursors and the purge when they are due.
//! - [`Cursors`]: the cursors advanced in memory and not yet written.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use switchboard_core::group::{
    Group as StoredGroup, GroupKey, GroupSpec, MembersChanged, NewGroupMessage, Role,
};
use switchboard_core::stats;
use switchboard_core::store::OutboxReceipt;
use switchboard_core::{Appended, BusEvent, NewMessage, StoreError, UserKey};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Where a writer sends a command's answer.
pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A queued command with the admission permit that reserved its slot; the
/// writer drops the permit as soon as it dequeues the command.
pub struct Queued {
    pub cmd: Command,
    pub permit: Option<OwnedSemaphorePermit>,
}

/// The callers' side of the writer's queue, and the writer thread: stopped
/// by [`WriteQueue::close`], or at drop (best effort: the closing command
/// flushes cursors; drop blocks for at most one group).
pub struct WriteQueue {
    queue: SyncSender<Queued>,
    /// One permit per queue slot.
    admission: Arc<Semaphore>,
    closed: AtomicBool,
    // A std Mutex: taken once, at close or drop.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl WriteQueue {
    /// A queue of `capacity` commands and the writer's end of it; start the
    /// writer with [`WriteQueue::spawn`]. The channel has one slot more
    /// than there are permits: the closing command of a drop never needs a
    /// permit and always finds room.
    pub fn new(capacity: usize) -> (WriteQueue, Receiver<Queued>) {
        let capacity = capacity.max(1);
        let (queue, rx) = sync_channel(capacity + 1);
        let q = WriteQueue {
            queue,
            admission: Arc::new(Semaphore::new(capacity)),
            closed: AtomicBool::new(false),
            thread: Mutex::new(None),
        };
        (q, rx)
    }

    /// Starts the writer thread (`body` owns the queue's other end).
    pub fn spawn(
        &self,
        name: &str,
        body: impl FnOnce() + Send + 'static,
    ) -> Result<(), StoreError> {
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(body)
            .map_err(|e| StoreError::Unavailable(format!("starting the writer thread: {e}")))?;
        *self.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
        Ok(())
    }

    /// `Unavailable` when the writer thread is not running.
    pub fn writer_alive(&self) -> Result<(), StoreError> {
        let alive = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|h| !h.is_finished());
        if !alive {
            return Err(StoreError::Unavailable("writer thread stopped".into()));
        }
        Ok(())
    }

    /// Refuses later callers, lets the writer answer everything queued and
    /// write what is due (the cursors), and joins it. Idempotent: only the
    /// first call does it.
    pub async fn close(&self) -> Result<(), StoreError> {
        let first = !self.closed.swap(true, Ordering::AcqRel);
        self.admission.close();
        if !first {
            return Ok(());
        }
        // The closing command needs no permit: the queue has a slot for it.
        let flushed = async { self.enqueue(Command::Close, None)?.await }.await;
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            // The thread exits right after answering the closing command.
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        flushed
    }

    /// `Unavailable` once [`WriteQueue::close`] was called.
    pub fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("store is closed".into()));
        }
        Ok(())
    }

    /// A place in the queue: the admission semaphore is fair (FIFO), so
    /// callers are admitted in the order they asked.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, StoreError> {
        self.check_open()?;
        self.admission
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("store is closed".into()))
    }

    /// Queues a command and waits for its answer.
    pub async fn write<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, StoreError> {
        let permit = self.admit().await?;
        self.enqueue(make, Some(permit))?.await
    }

    /// Queues a command without waiting for its answer: the queue is FIFO
    /// and the writer runs commands in queue order, so once this returned
    /// the command's place is fixed. The future answers once the writer
    /// did (for a write, once the group holding it is durable).
    pub fn enqueue<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<impl Future<Output = Result<T, StoreError>> + Send + 'static, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.queue
            .try_send(Queued {
                cmd: make(tx),
                permit,
            })
            .map_err(|e| match e {
                TrySendError::Full(_) => StoreError::Unavailable("writer queue full".into()),
                TrySendError::Disconnected(_) => {
                    StoreError::Unavailable("writer thread stopped".into())
                }
            })?;
        Ok(async move {
            rx.await
                .map_err(|_| StoreError::Unavailable("writer thread stopped".into()))?
        })
    }
}

impl Drop for WriteQueue {
    /// Best effort when the store was not closed: the closing command
    /// (blocking for a slot, which the spare one guarantees), then a join.
    fn drop(&mut self) {
        let handle = self
            .thread
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if !*self.closed.get_mut() {
            let (tx, _rx) = oneshot::channel();
            // Fails only when the thread already stopped.
            let _ = self.queue.send(Queued {
                cmd: Command::Close(tx),
                permit: None,
            });
        }
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// An answer held until the group's fate is known.
pub enum Pending {
    Append(Reply<Appended>, Result<Appended, StoreError>),
    Outbox(Reply<OutboxReceipt>, Result<OutboxReceipt, StoreError>),
    /// Outbox events marked delivered, entries purged.
    Count(Reply<usize>, Result<usize, StoreError>),
    /// A token revocation time now in force.
    Revoked(Reply<u64>, Result<u64, StoreError>),
    Group(Reply<GroupDone>, Result<GroupDone, StoreError>),
    Unit(Reply<()>),
}

impl Pending {
    /// The group is durable: the held result goes out.
    pub fn answer(self) {
        // A waiter that gave up (dropped its future) is not an error.
        let _ = match self {
            Pending::Append(tx, r) => tx.send(r).map_err(drop),
            Pending::Outbox(tx, r) => tx.send(r).map_err(drop),
            Pending::Count(tx, r) => tx.send(r).map_err(drop),
            Pending::Revoked(tx, r) => tx.send(r).map_err(drop),
            Pending::Group(tx, r) => tx.send(r).map_err(drop),
            Pending::Unit(tx) => tx.send(Ok(())).map_err(drop),
        };
    }

    /// The group failed: nothing of it was stored, whatever was held.
    pub fn fail(self, e: &str) {
        fn err<T>(e: &str) -> Result<T, StoreError> {
            Err(StoreError::Unavailable(e.to_owned()))
        }
        let _ = match self {
            Pending::Append(tx, _) => tx.send(err(e)).map_err(drop),
            Pending::Outbox(tx, _) => tx.send(err(e)).map_err(drop),
            Pending::Count(tx, _) => tx.send(err(e)).map_err(drop),
            Pending::Revoked(tx, _) => tx.send(err(e)).map_err(drop),
            Pending::Group(tx, _) => tx.send(err(e)).map_err(drop),
            Pending::Unit(tx) => tx.send(err(e)).map_err(drop),
        };
    }
}

/// `(app, uid, device_id, gid)`: `gid` is empty for the cursor on the
/// user's own timeline, a group's id for the cursor on that group's.
pub type CursorKey = (String, String, String, String);

/// Cursors advanced in memory and not yet written; the writer writes a
/// snapshot of them and then forgets the entries that did not move since.
#[derive(Default)]
pub struct Cursors {
    // A std Mutex: held for a map insert or a clone, never across an await
    // or I/O.
    map: Mutex<HashMap<CursorKey, u64>>,
}

impl Cursors {
    fn lock(&self) -> MutexGuard<'_, HashMap<CursorKey, u64>> {
        // Every critical section leaves the map consistent, so a poisoned
        // lock (a panic elsewhere) is safe to keep using.
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn key(user: &UserKey, device_id: &str) -> CursorKey {
        (
            user.app.clone(),
            user.uid.clone(),
            device_id.to_owned(),
            String::new(),
        )
    }

    /// The key of a device's cursor on a group's timeline.
    pub fn group_key(user: &UserKey, device_id: &str, gid: &str) -> CursorKey {
        (
            user.app.clone(),
            user.uid.clone(),
            device_id.to_owned(),
            gid.to_owned(),
        )
    }

    /// Moves a cursor forward in memory (never back).
    pub fn advance(&self, key: CursorKey, seq: u64) {
        let mut map = self.lock();
        let e = map.entry(key).or_insert(0);
        *e = (*e).max(seq);
    }

    /// Forgets the cursors on a deleted group (`app`, `gid`), so none of
    /// them reaches the group created again with that id.
    pub fn forget_group(&self, app: &str, gid: &str) {
        self.lock()
            .retain(|(a, _, _, g), _| !(g == gid && a == app));
    }

    /// The cursor in memory, 0 when it is not there. Read it BEFORE the
    /// written one: an entry leaves memory only after it was written, so in
    /// that order the newest is never missed.
    pub fn get(&self, key: &CursorKey) -> u64 {
        self.lock().get(key).copied().unwrap_or(0)
    }

    /// A snapshot to write; entries stay in the map (so readers keep seeing
    /// them) until [`Cursors::flushed`] after the write is durable.
    pub fn dirty(&self) -> Vec<(CursorKey, u64)> {
        self.lock().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Forgets the entries that were written and have not moved since.
    pub fn flushed(&self, flushed: &[(CursorKey, u64)]) {
        if flushed.is_empty() {
            return;
        }
        let mut map = self.lock();
        for (k, v) in flushed {
            if map.get(k) == Some(v) {
                map.remove(k);
            }
        }
    }
}

/// What callers ask of an embedded store's writer.
pub enum Command {
    Append(NewMessage, Reply<Appended>),
    Outbox(BusEvent, String, Reply<OutboxReceipt>),
    MarkDelivered(Vec<u64>, Reply<usize>),
    /// Raise a user's token revocation time (never lower it).
    Revoke(UserKey, u64, Reply<u64>),
    /// Store (replace) a user's conversation view.
    PutView(UserKey, bytes::Bytes, Reply<()>),
    /// A group operation (`Store::put_group` and the others that write).
    Group(GroupOp, Reply<GroupDone>),
    /// Purge expired de-dup and delivered outbox entries now.
    Purge(Reply<usize>),
    /// Write dirty cursors now.
    Flush(Reply<()>),
    /// Write everything due, answer, and stop the thread.
    Close(Reply<()>),
}

/// A write to a group, run by the writer like an append.
pub enum GroupOp {
    Put(GroupSpec),
    Delete(GroupKey),
    /// Members with their roles, and the most the group may hold.
    Add(GroupKey, Vec<(String, Role)>, u64),
    Remove(GroupKey, Vec<String>),
    /// Boxed: far larger than the other ops.
    Append(Box<NewGroupMessage>),
}

impl GroupOp {
    /// Changes membership or settings (everything but an append).
    pub fn is_membership(&self) -> bool {
        !matches!(self, GroupOp::Append(_))
    }
}

/// What a [`GroupOp`] answers, one variant per op.
#[derive(Debug)]
pub enum GroupDone {
    Put(StoredGroup, bool),
    Deleted(bool),
    Members(MembersChanged),
    Appended(Appended),
}

/// One group for the writer: the commands, and what is due with them.
pub struct Group {
    pub batch: Vec<Queued>,
    /// Purge expired rows with this group.
    pub purge: bool,
    /// Cursors to write with this group (a snapshot of [`Cursors::dirty`]).
    pub cursors: Vec<(CursorKey, u64)>,
}

/// The writer's side of the queue: waits for a command, drains up to
/// `max_batch` more that are already queued, and adds the cursors when
/// their interval is up (or at a flush or close) and the purge when due.
/// Cursors do not go with every group: under load each group would write
/// the cursor of every device that acked since the last one, and a cursor
/// that moved a hundred times in a second is written once.
pub struct Gather {
    rx: Receiver<Queued>,
    cursors: Arc<Cursors>,
    max_batch: usize,
    cursor_flush_interval: Duration,
    purge_interval: Duration,
    next_cursor_flush: Instant,
    next_purge: Instant,
    done: bool,
}

impl Gather {
    pub fn new(
        rx: Receiver<Queued>,
        cursors: Arc<Cursors>,
        max_batch: usize,
        cursor_flush_interval: Duration,
        purge_interval: Duration,
    ) -> Gather {
        let now = Instant::now();
        Gather {
            rx,
            cursors,
            max_batch: max_batch.max(1),
            cursor_flush_interval,
            purge_interval,
            next_cursor_flush: now + cursor_flush_interval,
            next_purge: now + purge_interval,
            done: false,
        }
    }

    /// The next group; `None` once a `Close` was handed out or every sender
    /// is gone (after a last group with what was still due).
    pub fn next_group(&mut self) -> Option<Group> {
        while !self.done {
            // Wake at least when cursors or the purge are due, so a cursor
            // advanced while idle is written within about the interval.
            let wait = self
                .next_cursor_flush
                .min(self.next_purge)
                .saturating_duration_since(Instant::now());
            let mut batch = Vec::new();
            let mut disconnected = false;
            match self.rx.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(q) => batch.push(q),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => disconnected = true,
            }
            while !batch.is_empty() && batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(q) => batch.push(q),
                    Err(_) => break,
                }
            }
            let closing = disconnected || batch.iter().any(|q| matches!(q.cmd, Command::Close(_)));
            self.done = closing;
            let now = Instant::now();
            let purge = now >= self.next_purge;
            if purge {
                self.next_purge = now + self.purge_interval;
            }
            let flush_due = now >= self.next_cursor_flush
                || closing
                || batch.iter().any(|q| matches!(q.cmd, Command::Flush(_)));
            let cursors = if flush_due {
                self.next_cursor_flush = now + self.cursor_flush_interval;
                self.cursors.dirty()
            } else {
                Vec::new()
            };
            if !batch.is_empty() || purge || !cursors.is_empty() {
                return Some(Group {
                    batch,
                    purge,
                    cursors,
                });
            }
        }
        None
    }

    /// Purges again with the next group (a purge that stopped at its
    /// chunk size left expired rows behind).
    pub fn purge_soon(&mut self) {
        self.next_purge = Instant::now();
    }
}

/// More cached heads than this and the cache is cleared after a commit:
/// about 100 bytes each, so ~10 MB, and a miss costs one indexed read.
const MAX_CACHED_HEADS: usize = 100_000;

/// The writer's cache of timeline heads (the last seq written to each).
#[derive(Default)]
pub struct Heads(HashMap<UserKey, u64>);

impl Heads {
    pub fn get(&self, user: &UserKey) -> Option<u64> {
        self.0.get(user).copied()
    }

    pub fn insert(&mut self, user: UserKey, seq: u64) {
        self.0.insert(user, seq);
    }

    /// After a group: committed, the cache is cleared once it is too big;
    /// failed, the heads the group moved (`touched`) are ahead of the store
    /// and are forgotten, to reload from it.
    pub fn settle(&mut self, committed: bool, touched: &[UserKey]) {
        if !committed {
            for user in touched {
                self.0.remove(user);
            }
        } else if self.0.len() > MAX_CACHED_HEADS {
            self.0.clear();
        }
    }
}

/// The end of a group: records its time (from `started`) and size, then
/// answers every waiter (the group is durable) or fails every one with the
/// group's error (nothing of it was stored). True when it committed.
pub fn answer_group(
    store: &'static str,
    started: Instant,
    commands: usize,
    outcome: Result<(), StoreError>,
    pending: Vec<Pending>,
) -> bool {
    metrics::histogram!(stats::STORE_GROUP_SECONDS, "store" => store)
        .record(started.elapsed().as_secs_f64());
    metrics::histogram!(stats::STORE_GROUP_COMMANDS, "store" => store).record(commands as f64);
    match outcome {
        Ok(()) => {
            for p in pending {
                p.answer();
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, store, "group commit failed; nothing of it was stored");
            let msg = e.to_string();
            for p in pending {
                p.fail(&msg);
            }
            false
        }
    }
}
