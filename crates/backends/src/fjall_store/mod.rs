//! [`FjallStore`]: the embedded [`Store`](switchboard_core::Store) on fjall, an LSM-tree key-value
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

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use switchboard_core::group::{Group, GroupKey, GroupState, Member};
use switchboard_core::{BusEvent, Message, Page, StoreError, UserKey};

use crate::embedded::{Embedded, Reads};
use crate::read_pool::{ReadContext, ReadPool};
use crate::single_writer::{Cursors, WriteQueue};
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
    /// So it also bounds the memory of the memtables. Default 128 MiB.
    pub max_journal_bytes: u64,
    /// A keyspace's memtable is flushed to a table once it holds this
    /// much. Default 32 MiB.
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
    revocations: Keyspace,
    conversation_views: Keyspace,
    groups: Keyspace,
    group_members: Keyspace,
    user_groups: Keyspace,
    group_timelines: Keyspace,
    group_cursors: Keyspace,
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
            revocations: ks("revocations")?,
            conversation_views: ks("conversation_views")?,
            groups: ks("groups")?,
            group_members: ks("group_members")?,
            user_groups: ks("user_groups")?,
            group_timelines: ks("group_timelines")?,
            group_cursors: ks("group_cursors")?,
            db,
            poisoned: AtomicBool::new(false),
        })
    }
}

/// The embedded store on fjall: one directory, one writer thread, reader
/// threads.
pub type FjallStore = Embedded<FjallReads>;

/// What a reader thread of a [`FjallStore`] holds: the keyspaces. Each read
/// takes its own snapshot.
pub struct FjallReads(Arc<Keyspaces>);

impl ReadContext for FjallReads {}

impl Reads for FjallReads {
    fn entries_after(
        &mut self,
        user: &UserKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        read::entries_after(&self.0, user, since, limit)
    }

    fn conversation(
        &mut self,
        a: &UserKey,
        b: &UserKey,
        before_msg_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, StoreError> {
        read::conversation(&self.0, a, b, before_msg_id, limit)
    }

    fn head(&mut self, user: &UserKey) -> Result<u64, StoreError> {
        read::timeline_head(&self.0, user)
    }

    fn cursor(&mut self, user: &UserKey, device_id: &str) -> Result<u64, StoreError> {
        read::cursor(&self.0, user, device_id)
    }

    fn outbox_pending(&mut self, after: u64, limit: usize) -> Result<Vec<BusEvent>, StoreError> {
        read::outbox_pending(&self.0, after, limit)
    }

    fn tokens_revoked_before(&mut self, user: &UserKey) -> Result<Option<u64>, StoreError> {
        read::tokens_revoked_before(&self.0, user)
    }

    fn conversation_view(&mut self, user: &UserKey) -> Result<Option<bytes::Bytes>, StoreError> {
        read::conversation_view(&self.0, user)
    }

    fn message(&mut self, msg_id: u64) -> Result<Option<Message>, StoreError> {
        read::message_if_any(&self.0, msg_id)
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        if self.0.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "fjall refuses writes after a failed journal write; restart the node".into(),
            ));
        }
        let _ = self.0.messages.first_key_value();
        Ok(())
    }

    fn group(&mut self, key: &GroupKey) -> Result<Option<Group>, StoreError> {
        read::group(&self.0, key)
    }

    fn member(&mut self, key: &GroupKey, uid: &str) -> Result<Option<Member>, StoreError> {
        read::member(&self.0, key, uid)
    }

    fn members(
        &mut self,
        key: &GroupKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        read::members(&self.0, key, after, limit)
    }

    fn user_groups(
        &mut self,
        user: &UserKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        read::user_groups(&self.0, user, after, limit)
    }

    fn group_states(
        &mut self,
        user: &UserKey,
        device_id: &str,
    ) -> Result<Vec<GroupState>, StoreError> {
        read::group_states(&self.0, user, device_id)
    }

    fn group_entries_after(
        &mut self,
        key: &GroupKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        read::group_entries_after(&self.0, key, since, limit)
    }
}

impl Embedded<FjallReads> {
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
                .map(|_| FjallReads(ks.clone()))
                .collect(),
        )?;
        let writer = Writer::new(ks, rx, cursors.clone(), &options);
        queue.spawn("fjall-writer", move || writer.run())?;
        Ok(Embedded::new(path, queue, reads, cursors))
    }
}

/// Any fjall error: the store can't serve it now. (fjall answers every
/// write after a failed journal write with `Poisoned`.)
fn fjall_error(e: fjall::Error) -> StoreError {
    StoreError::Unavailable(format!("fjall: {e}"))
}
