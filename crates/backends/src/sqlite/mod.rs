//! [`SqliteStore`]: the embedded [`Store`] on one SQLite file (rusqlite,
//! bundled SQLite).
//!
//! - Writes (appends, outbox events, cursor flushes, purges) go to ONE writer
//!   thread (`writer`) through a bounded queue; it group-commits up to
//!   `max_batch` of them per transaction and answers nobody before COMMIT
//!   returned. WAL with `synchronous=FULL` makes that COMMIT an fsync.
//! - Reads (`entries_after`, `timeline_head`, `cursor`, `outbox_pending`) go
//!   to a few reader threads, each with its own read connection (`read`),
//!   which run whatever is queued in one read transaction per batch.
//! - Device cursors move in memory and reach the disk within
//!   `cursor_flush_interval` (or at a flush or close), as the contract allows.
//! - WAL frames are copied into the database file by a checkpointer thread
//!   and, when the WAL is long, by the writer between groups (`checkpoint`),
//!   never inside a group's COMMIT.
//! - The schema and its migrations: `schema`.
//!
//! Open one `SqliteStore` per file. A second writer on the same file (another
//! process) is not unsafe, only slow: its cached timeline heads go stale, the
//! clashing group aborts, its waiters get `Unavailable`, and the heads reload.

mod checkpoint;
mod read;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use switchboard_core::store::{LoginState, OutboxReceipt, PendingAppend};
use switchboard_core::{Appended, BusEvent, Message, NewMessage, Page, Store, StoreError, UserKey};

pub use schema::SCHEMA_VERSION;

use crate::read_pool::ReadPool;
use crate::single_writer::{Command, Cursors, Reply, WriteQueue};
use checkpoint::Checkpointer;
use writer::Writer;

/// Tuning of a [`SqliteStore`]; `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a `(from, client_msg_id)` (and an outbox `dedupe_id` once
    /// delivered) is remembered. Default 7 days.
    pub dedupe_window: Duration,
    /// Longest time an advanced cursor stays only in memory. Default 1 s.
    pub cursor_flush_interval: Duration,
    /// Most writes committed in one transaction. Default 512.
    pub max_batch: usize,
    /// Writes that may wait for the writer; past that callers wait for a slot.
    /// Default 1024: room for the next group to gather while one commits.
    pub queue_capacity: usize,
    /// Reader threads, each with its own read connection. Default 4: reads
    /// are short and this machine has 2 cores.
    pub read_connections: usize,
    /// How often expired de-dup rows are purged. Default 60 s.
    pub purge_interval: Duration,
    /// How often the checkpointer thread copies committed WAL frames into
    /// the database file. Default 250 ms.
    pub checkpoint_interval: Duration,
    /// WAL length, in frames (one 4 KiB page each), from which the writer
    /// checkpoints between groups, just after a pass of the checkpointer
    /// thread (at twice this, whenever), so the WAL starts over. Default
    /// 50,000 (about 200 MB of WAL file).
    pub max_wal_frames: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            cursor_flush_interval: Duration::from_secs(1),
            max_batch: 512,
            queue_capacity: 1024,
            read_connections: 4,
            purge_interval: Duration::from_secs(60),
            checkpoint_interval: Duration::from_millis(250),
            max_wal_frames: 50_000,
        }
    }
}

/// The embedded store: one SQLite file in WAL mode, one writer thread.
pub struct SqliteStore {
    path: PathBuf,
    queue: WriteQueue,
    reads: ReadPool<Connection>,
    cursors: Arc<Cursors>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating the directory and file if needed) the store at `path`,
    /// migrates the schema and starts the writer thread. Does blocking file
    /// I/O: from async code, call it in `spawn_blocking` or before serving.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<Arc<SqliteStore>, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("creating {}: {e}", dir.display())))?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI;
        let mut conn = Connection::open_with_flags(path, flags).map_err(unavailable)?;
        schema::configure_writer(&conn)?;
        schema::migrate(&mut conn)?;
        let reads = ReadPool::start(
            "sqlite-reader",
            read::connections(path, options.read_connections)?,
        )?;

        let (queue, rx) = WriteQueue::new(options.queue_capacity);
        let cursors = Arc::new(Cursors::default());
        let checkpointer =
            Checkpointer::start(path, options.checkpoint_interval, options.max_wal_frames)?;
        let writer = Writer::new(conn, rx, cursors.clone(), checkpointer, options)?;
        queue.spawn("sqlite-writer", move || writer.run())?;
        Ok(Arc::new(SqliteStore {
            path: path.to_owned(),
            queue,
            reads,
            cursors,
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Up to `limit` undelivered outbox events, lowest id first (for the
    /// webhook dispatcher).
    pub async fn outbox_pending(&self, limit: usize) -> Result<Vec<BusEvent>, StoreError> {
        self.read(move |c| read::outbox_pending(c, 0, limit)).await
    }

    /// Deletes expired de-dup rows and delivered outbox rows older than the
    /// window now (the writer also does it every `purge_interval`); returns
    /// the number of rows deleted.
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        self.write(Command::Purge).await
    }

    /// Persists every advanced cursor now.
    pub async fn flush_cursors(&self) -> Result<(), StoreError> {
        self.write(Command::Flush).await
    }

    /// Sends a command to the writer and waits for its answer.
    async fn write<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, StoreError> {
        self.queue.write(make).await
    }

    /// Runs a read on one of the reader threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.queue.check_open()?;
        self.reads.run(f).await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        self.write(|r| Command::Append(msg, r)).await
    }

    /// Returns once the append is in the writer's FIFO queue: appends
    /// submitted one after another commit in that order (in one group or
    /// in consecutive ones), and a resend of a queued append finds the
    /// first in the transaction or on disk and answers its result.
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
        self.read(move |c| read::entries_after(c, &user, since, limit))
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
        self.read(move |c| read::conversation(c, &a, &b, before_msg_id, limit))
            .await
    }

    async fn timeline_head(&self, user: &UserKey) -> Result<u64, StoreError> {
        let user = user.clone();
        self.read(move |c| read::head(c, &user)).await
    }

    async fn cursor(&self, user: &UserKey, device_id: &str) -> Result<u64, StoreError> {
        // Memory before the table (`Cursors::get`).
        let in_memory = self.cursors.get(&Cursors::key(user, device_id));
        let (user, device) = (user.clone(), device_id.to_owned());
        let on_disk = self.read(move |c| read::cursor(c, &user, &device)).await?;
        Ok(in_memory.max(on_disk))
    }

    /// Both in one read: one trip to a reader instead of two.
    async fn login_state(&self, user: &UserKey, device_id: &str) -> Result<LoginState, StoreError> {
        // As `cursor`: memory before the table.
        let in_memory = self.cursors.get(&Cursors::key(user, device_id));
        let (user, device) = (user.clone(), device_id.to_owned());
        let (timeline_head, on_disk) = self
            .read(move |c| Ok((read::head(c, &user)?, read::cursor(c, &user, &device)?)))
            .await?;
        Ok(LoginState {
            timeline_head,
            cursor: in_memory.max(on_disk),
        })
    }

    async fn advance_cursor(
        &self,
        user: &UserKey,
        device_id: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.queue.check_open()?;
        if seq > i64::MAX as u64 {
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
        self.write(|r| Command::Outbox(event, dedupe_id, r)).await
    }

    async fn outbox_pending_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BusEvent>, StoreError> {
        self.read(move |c| read::outbox_pending(c, after, limit))
            .await
    }

    async fn outbox_mark_delivered(&self, ids: &[u64]) -> Result<usize, StoreError> {
        let ids = ids.to_vec();
        self.write(|r| Command::MarkDelivered(ids, r)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.queue.writer_alive()?;
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(unavailable))
            .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        // Waiters already queued are answered first; later callers are refused.
        self.queue.close().await
    }
}

/// Any rusqlite error on the write or read path: the store can't serve it now.
fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

/// A decoding error means the data on disk is not what we wrote.
fn corrupt_or_unavailable(e: rusqlite::Error) -> StoreError {
    match e {
        rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::IntegralValueOutOfRange(..)
        | rusqlite::Error::Utf8Error(..) => StoreError::Corrupt(format!("sqlite: {e}")),
        e => unavailable(e),
    }
}
