//! [`FjallStore`]: the embedded [`Store`] on fjall, an LSM-tree key-value
//! store (one directory, a journal and sorted table files).
//!
//! Why it exists beside [`SqliteStore`](crate::SqliteStore): a durable c2c
//! message is about 1 KiB of keys and values here, written once to the
//! journal and later, sorted, to a table; in SQLite it dirties three or four
//! 4 KiB B-tree pages, each written to the WAL and again to the database
//! file by a checkpoint that competes with the commits' fsyncs
//! (docs/store-choice.md, docs/benchmarks.md).
//!
//! - Writes (appends, outbox events, cursor flushes, purges) go to ONE writer
//!   thread (`writer`) through a bounded FIFO queue (`single_writer`); it
//!   puts up to `max_batch` of them into one write batch, commits it with
//!   the journal fsync'd, and answers nobody before that returned.
//! - Reads run on a few reader threads (`read_pool`), each on one snapshot
//!   (`read`).
//! - Device cursors move in memory and are written within
//!   `cursor_flush_interval` (or at a flush or close), as the contract allows.
//! - Keys and values: `keys`.
//!
//! fjall locks its directory: a second process opening it gets an error.

mod keys;
mod read;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use switchboard_core::store::{LoginState, OutboxReceipt, PendingAppend};
use switchboard_core::{Appended, BusEvent, Message, NewMessage, Page, Store, StoreError, UserKey};

use crate::read_pool::{ReadContext, ReadPool};
use crate::single_writer::{Command, Cursors, WriteQueue};
use writer::Writer;

/// Tuning of a [`FjallStore`]; `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct FjallOptions {
    /// How long a `(from, client_msg_id)` (and an outbox `dedupe_id` once
    /// delivered) is remembered. Default 7 days.
    pub dedupe_window: Duration,
    /// Longest time an advanced cursor stays only in memory. Default 1 s.
    pub cursor_flush_interval: Duration,
    /// Most writes committed in one batch. Default 512.
    pub max_batch: usize,
    /// Writes that may wait for the writer; past that callers wait for a slot.
    /// Default 1024: room for the next group to gather while one commits.
    pub queue_capacity: usize,
    /// How often expired de-dup entries are purged. Default 60 s.
    pub purge_interval: Duration,
    /// Reader threads. Default 4: reads are short and this machine has 2
    /// cores.
    pub read_threads: usize,
    /// How long `open` waits for the directory's lock while another handle
    /// of this process lets it go (a store just dropped: fjall's background
    /// threads release it when they finish their current job). Default 5 s.
    pub lock_wait: Duration,
    /// fjall's block cache. Default 64 MiB.
    pub cache_bytes: u64,
    /// Most journal kept on disk: past it, the memtables holding the oldest
    /// journal's writes are flushed to tables and that journal is deleted.
    /// So it also bounds the memory of the memtables. Default 64 MiB.
    pub max_journal_bytes: u64,
    /// A keyspace's memtable is flushed to a table once it holds this
    /// much. Default 16 MiB.
    pub max_memtable_bytes: u64,
}

impl Default for FjallOptions {
    fn default() -> Self {
        FjallOptions {
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            cursor_flush_interval: Duration::from_secs(1),
            max_batch: 512,
            queue_capacity: 1024,
            purge_interval: Duration::from_secs(60),
            read_threads: 4,
            lock_wait: Duration::from_secs(5),
            cache_bytes: 64 << 20,
            max_journal_bytes: 128 << 20,
            max_memtable_bytes: 32 << 20,
        }
    }
}

/// The keyspaces (see `keys` for what each holds).
pub(crate) struct Keyspaces {
    db: Database,
    /// A journal write failed: fjall refuses every later write (it cannot
    /// tell what reached the disk), until the node restarts and recovers.
    poisoned: AtomicBool,
    messages: Keyspace,
    timelines: Keyspace,
    conversations: Keyspace,
    dedupe: Keyspace,
    dedupe_by_time: Keyspace,
    cursors: Keyspace,
    outbox: Keyspace,
    outbox_pending: Keyspace,
    outbox_dedupe: Keyspace,
    outbox_delivered: Keyspace,
}

impl Keyspaces {
    fn open(path: &Path, options: &FjallOptions) -> Result<Keyspaces, StoreError> {
        let deadline = Instant::now() + options.lock_wait;
        let db = loop {
            let opened = Database::builder(path)
                .cache_size(options.cache_bytes)
                .max_journaling_size(options.max_journal_bytes)
                .open();
            match opened {
                Err(fjall::Error::Locked) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(fjall::Error::Locked) => {
                    return Err(StoreError::Unavailable(format!(
                        "{} is in use by another store (another node on the same data dir?)",
                        path.display()
                    )));
                }
                opened => break opened.map_err(fjall_error)?,
            }
        };
        let ks = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(options.max_memtable_bytes)
            })
            .map_err(fjall_error)
        };
        Ok(Keyspaces {
            messages: ks("messages")?,
            timelines: ks("timelines")?,
            conversations: ks("conversations")?,
            dedupe: ks("dedupe")?,
            dedupe_by_time: ks("dedupe_by_time")?,
            cursors: ks("cursors")?,
            outbox: ks("outbox")?,
            outbox_pending: ks("outbox_pending")?,
            outbox_dedupe: ks("outbox_dedupe")?,
            outbox_delivered: ks("outbox_delivered")?,
            db,
            poisoned: AtomicBool::new(false),
        })
    }
}

/// A reader thread holds the keyspaces; each read takes its own snapshot.
impl ReadContext for Arc<Keyspaces> {}

/// The embedded store on fjall: one directory, one writer thread.
pub struct FjallStore {
    path: PathBuf,
    reads: ReadPool<Arc<Keyspaces>>,
    queue: WriteQueue,
    cursors: Arc<Cursors>,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FjallStore {
    /// Opens (creating it if needed, recovering its journal after a crash)
    /// the store in the directory `path` and starts the writer thread. Does
    /// blocking file I/O: from async code, call it in `spawn_blocking` or
    /// before serving.
    pub fn open(path: &Path, options: FjallOptions) -> Result<Arc<FjallStore>, StoreError> {
        std::fs::create_dir_all(path)
            .map_err(|e| StoreError::Unavailable(format!("creating {}: {e}", path.display())))?;
        let ks = Arc::new(Keyspaces::open(path, &options)?);
        let (queue, rx) = WriteQueue::new(options.queue_capacity);
        let cursors = Arc::new(Cursors::default());
        let reads = ReadPool::start(
            "fjall-reader",
            (0..options.read_threads.max(1))
                .map(|_| ks.clone())
                .collect(),
        )?;
        let writer = Writer::new(ks, rx, cursors.clone(), &options);
        queue.spawn("fjall-writer", move || writer.run())?;
        Ok(Arc::new(FjallStore {
            path: path.to_owned(),
            reads,
            queue,
            cursors,
        }))
    }

    /// The store's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes expired de-dup entries and delivered outbox events older
    /// than the window now (the writer also does it every
    /// `purge_interval`); returns how many went.
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
        f: impl FnOnce(&Keyspaces) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.queue.check_open()?;
        self.reads.run(move |ks| f(ks)).await
    }
}

#[async_trait]
impl Store for FjallStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        self.queue.write(|r| Command::Append(msg, r)).await
    }

    /// Returns once the append is in the writer's FIFO queue: appends
    /// submitted one after another commit in that order, and a resend of a
    /// queued append finds the first in the group or in the store and
    /// answers its result.
    async fn submit_append(&self, msg: NewMessage) -> Result<PendingAppend, StoreError> {
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
        self.read(move |ks| read::entries_after(ks, &user, since, limit))
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
        self.read(move |ks| read::conversation(ks, &a, &b, before_msg_id, limit))
            .await
    }

    async fn timeline_head(&self, user: &UserKey) -> Result<u64, StoreError> {
        let user = user.clone();
        self.read(move |ks| read::timeline_head(ks, &user)).await
    }

    async fn cursor(&self, user: &UserKey, device_id: &str) -> Result<u64, StoreError> {
        // Memory before the written one (`Cursors::get`).
        let in_memory = self.cursors.get(&Cursors::key(user, device_id));
        let (user, device) = (user.clone(), device_id.to_owned());
        let written = self
            .read(move |ks| read::cursor(ks, &user, &device))
            .await?;
        Ok(in_memory.max(written))
    }

    /// Both in one read: one trip to a blocking thread instead of two.
    async fn login_state(&self, user: &UserKey, device_id: &str) -> Result<LoginState, StoreError> {
        let in_memory = self.cursors.get(&Cursors::key(user, device_id));
        let (user, device) = (user.clone(), device_id.to_owned());
        let (timeline_head, written) = self
            .read(move |ks| {
                Ok((
                    read::timeline_head(ks, &user)?,
                    read::cursor(ks, &user, &device)?,
                ))
            })
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
        self.read(move |ks| read::outbox_pending(ks, after, limit))
            .await
    }

    async fn outbox_mark_delivered(&self, ids: &[u64]) -> Result<usize, StoreError> {
        let ids = ids.to_vec();
        self.queue.write(|r| Command::MarkDelivered(ids, r)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.queue.writer_alive()?;
        self.read(|ks| {
            if ks.poisoned.load(Ordering::Acquire) {
                return Err(StoreError::Unavailable(
                    "fjall refuses writes after a failed journal write; restart the node".into(),
                ));
            }
            let _ = ks.messages.first_key_value();
            Ok(())
        })
        .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Waiters already queued are answered first; later callers are refused.
        self.queue.close().await
    }
}

/// Any fjall error: the store can't serve it now. (fjall answers every
/// write after a failed journal write with `Poisoned`.)
fn fjall_error(e: fjall::Error) -> StoreError {
    StoreError::Unavailable(format!("fjall: {e}"))
}
