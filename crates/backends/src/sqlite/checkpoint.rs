//! Checkpoints of [`SqliteStore`](super::SqliteStore): WAL frames copied into
//! the database file mostly beside the writer, not inside its commits.
//!
//! SQLite's automatic checkpoint runs in the COMMIT that made the WAL cross
//! its threshold: that group's waiters, and everything queued behind them,
//! wait while thousands of pages are copied and the database file is
//! fsync'd (10-25 ms on the benchmark machine, several times a second under
//! load: that was the paced c2c benchmark's p90 and p99). So the writer's
//! autocheckpoint is off, and the work is split:
//!
//! - A checkpointer thread, on its own connection, runs a PASSIVE checkpoint
//!   every `checkpoint_interval`. PASSIVE takes no lock the writer waits for:
//!   it copies the frames committed so far while the writer goes on
//!   appending, and does the bulk of the copying.
//! - The WAL only starts over from its beginning when a write transaction
//!   begins with every frame already copied, which a continuous load never
//!   allows by itself. So once the WAL holds `max_wal_frames`, the thread
//!   runs its passes back to back (each copies what came during the last),
//!   and the writer, after answering a group that finds the uncopied tail
//!   short (under 2 % of the limit: just after a pass), runs a PASSIVE
//!   checkpoint itself. It copies that tail and fsyncs the database file
//!   (the one stall left: ~10 ms on the benchmark disk, once per
//!   `max_wal_frames`), and its next transaction restarts the WAL. At twice
//!   the limit it goes ahead whatever the tail: if the thread is stuck or
//!   failing, this is what bounds the WAL.
//!
//! A checkpoint that fails is logged and tried again later: its frames stay
//! in the WAL, where readers find them, so nothing is lost; the WAL grows.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use switchboard_core::{StoreError, stats};

use super::{schema, unavailable};

/// The checkpointer thread; dropping this stops and joins it.
pub struct Checkpointer {
    stop: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
    backfilled: Arc<AtomicI64>,
}

impl Checkpointer {
    /// Opens the thread's connection to `path` and starts it.
    pub fn start(
        path: &Path,
        interval: Duration,
        max_wal_frames: u32,
    ) -> Result<Checkpointer, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(unavailable)?;
        schema::configure_checkpointer(&conn)?;
        let (stop, stopped) = channel();
        let interval = interval.max(Duration::from_millis(1));
        let backfilled = Arc::new(AtomicI64::new(0));
        let copied = backfilled.clone();
        let handle = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&conn, &stopped, interval, max_wal_frames, &copied))
            .map_err(|e| StoreError::Unavailable(format!("starting the checkpoint thread: {e}")))?;
        Ok(Checkpointer {
            stop: Some(stop),
            handle: Some(handle),
            backfilled,
        })
    }

    /// How many frames of the WAL its last pass left in the database file.
    pub fn backfilled(&self) -> i64 {
        self.backfilled.load(Ordering::Relaxed)
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread with `Disconnected`.
        self.stop.take();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn run(
    conn: &Connection,
    stopped: &Receiver<()>,
    interval: Duration,
    max_wal_frames: u32,
    backfilled: &AtomicI64,
) {
    // The WAL as the last pass left it: a pass that finds it unchanged
    // copied nothing, and an idle store is not worth histogram samples.
    let mut last = Wal::default();
    // Logged once when checkpoints start failing, not four times a second.
    let mut failing = false;
    // Nothing is ever sent: the sender's drop (Disconnected) is the stop.
    // Once the WAL is long, passes run back to back: each copies what came
    // during the last, so the tail left to the writer (which waits for a
    // short one to start the WAL over) shrinks to a few milliseconds' worth.
    // Past twice the limit the writer goes ahead without waiting, and a WAL
    // still that long is held by a reader: back to back would only churn.
    let long = i64::from(max_wal_frames)..2 * i64::from(max_wal_frames);
    let wait = |wal: &Wal| {
        if long.contains(&wal.frames) {
            Duration::from_millis(1)
        } else {
            interval
        }
    };
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(wait(&last)) {
        let started = Instant::now();
        match passive(conn) {
            // The writer was checkpointing: nothing was done or learned.
            Ok(wal) if wal.busy => {}
            Ok(wal) => {
                if wal != last {
                    record(By::Thread, started);
                }
                backfilled.store(wal.copied, Ordering::Relaxed);
                last = wal;
                if std::mem::take(&mut failing) {
                    tracing::info!("sqlite background checkpoints work again");
                }
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "sqlite background checkpoint failed; retrying every interval");
            }
            Err(_) => {}
        }
    }
    tracing::debug!("sqlite checkpointer stopped");
}

/// Who ran a checkpoint: the label of its histogram.
#[derive(Clone, Copy)]
pub enum By {
    Thread,
    Writer,
}

/// Records the time of a checkpoint that started at `started`.
pub fn record(by: By, started: Instant) {
    let by = match by {
        By::Thread => "thread",
        By::Writer => "writer",
    };
    metrics::histogram!(stats::STORE_CHECKPOINT_SECONDS, "by" => by)
        .record(started.elapsed().as_secs_f64());
}

/// The WAL as a checkpoint left it.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Wal {
    /// Another checkpoint was running: this one did nothing.
    pub busy: bool,
    /// Frames in the WAL.
    pub frames: i64,
    /// Frames of it in the database file.
    pub copied: i64,
}

/// One PASSIVE checkpoint on `conn`.
pub fn passive(conn: &Connection) -> Result<Wal, StoreError> {
    let (busy, frames, copied): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(unavailable)?;
    Ok(Wal {
        busy: busy != 0,
        frames,
        copied,
    })
}
