//! [`SqliteStore`]: the embedded [`Store`](switchboard_core::Store) on one SQLite file (rusqlite,
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

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use switchboard_core::group::{Group, GroupKey, GroupState, Member};
use switchboard_core::{BusEvent, Message, Page, StoreError, UserKey};

pub use schema::SCHEMA_VERSION;

use crate::embedded::{Embedded, Reads};
use crate::read_pool::{ReadContext, ReadPool};
use crate::single_writer::{Cursors, WriteQueue};
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

/// The embedded store on one SQLite file in WAL mode: one writer thread,
/// reader threads each with its own read connection.
pub type SqliteStore = Embedded<Connection>;

impl Embedded<Connection> {
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
        Ok(Embedded::new(path, queue, reads, cursors))
    }
}

impl ReadContext for Connection {
    /// A batch of reads shares one read transaction: one snapshot, one
    /// BEGIN/COMMIT. Every read in it was queued before the snapshot is
    /// taken, so each sees at least what was committed (and acknowledged)
    /// when it was asked. If BEGIN fails, each read runs in its own implicit
    /// transaction, which is as correct, only slower.
    fn begin_batch(&mut self) -> bool {
        self.execute_batch("BEGIN").is_ok()
    }

    fn end_batch(&mut self) {
        if self.execute_batch("COMMIT").is_err() {
            let _ = self.execute_batch("ROLLBACK");
        }
    }
}

impl Reads for Connection {
    /// SQLite keeps integers as i64.
    const MAX_CURSOR: u64 = i64::MAX as u64;

    fn entries_after(
        &mut self,
        user: &UserKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        read::entries_after(self, user, since, limit)
    }

    fn conversation(
        &mut self,
        a: &UserKey,
        b: &UserKey,
        before_msg_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, StoreError> {
        read::conversation(self, a, b, before_msg_id, limit)
    }

    fn head(&mut self, user: &UserKey) -> Result<u64, StoreError> {
        read::head(self, user)
    }

    fn cursor(&mut self, user: &UserKey, device_id: &str) -> Result<u64, StoreError> {
        read::cursor(self, user, device_id)
    }

    fn outbox_pending(&mut self, after: u64, limit: usize) -> Result<Vec<BusEvent>, StoreError> {
        read::outbox_pending(self, after, limit)
    }

    fn tokens_revoked_before(&mut self, user: &UserKey) -> Result<Option<u64>, StoreError> {
        read::tokens_revoked_before(self, user)
    }

    fn conversation_view(&mut self, user: &UserKey) -> Result<Option<bytes::Bytes>, StoreError> {
        read::conversation_view(self, user)
    }

    fn message(&mut self, msg_id: u64) -> Result<Option<Message>, StoreError> {
        read::message_by_id(self, msg_id)
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        self.query_row("SELECT 1", [], |_| Ok(()))
            .map_err(unavailable)
    }

    fn group(&mut self, key: &GroupKey) -> Result<Option<Group>, StoreError> {
        Ok(read::group_row(self, key)?.map(|(_, g)| g))
    }

    fn member(&mut self, key: &GroupKey, uid: &str) -> Result<Option<Member>, StoreError> {
        read::member(self, key, uid)
    }

    fn members(
        &mut self,
        key: &GroupKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        read::members(self, key, after, limit)
    }

    fn user_groups(
        &mut self,
        user: &UserKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        read::user_groups(self, user, after, limit)
    }

    fn group_states(
        &mut self,
        user: &UserKey,
        device_id: &str,
    ) -> Result<Vec<GroupState>, StoreError> {
        read::group_states(self, user, device_id)
    }

    fn group_entries_after(
        &mut self,
        key: &GroupKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        read::group_entries_after(self, key, since, limit)
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
