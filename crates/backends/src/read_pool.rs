//! Reader threads shared by the embedded stores: reads are queued to a few
//! threads rather than run in `spawn_blocking`. At thousands of reads a
//! second (a reconnect storm: every login and its sync) the blocking pool's
//! hand-offs and thread wake-ups cost the node more CPU than the reads, and
//! a read that waits (SQLite on a lock, fjall while a keyspace installs a
//! new version) holds one of these threads, never a runtime worker. A
//! reader takes every read waiting (up to [`MAX_BATCH`]) and runs them back
//! to back, inside `begin_batch`/`end_batch` of its context (SQLite: one
//! read transaction).

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use switchboard_core::StoreError;
use tokio::sync::oneshot;

/// What a reader thread holds (a read connection, a database handle).
pub trait ReadContext: Send + 'static {
    /// Before a batch of more than one read; true if `end_batch` is due.
    fn begin_batch(&mut self) -> bool {
        false
    }

    /// After a batch that `begin_batch` began.
    fn end_batch(&mut self) {}
}

const MAX_BATCH: usize = 64;

/// One queued read: runs on a reader's context and answers its caller.
type Job<C> = Box<dyn FnOnce(&mut C) + Send>;

struct Queue<C> {
    jobs: VecDeque<Job<C>>,
    /// Readers waiting on the condvar (a push wakes one only if there is one).
    idle: usize,
    closed: bool,
}

struct Shared<C> {
    // A std Mutex: held to push or pop jobs, never across a query.
    queue: Mutex<Queue<C>>,
    ready: Condvar,
}

impl<C> Shared<C> {
    fn lock(&self) -> MutexGuard<'_, Queue<C>> {
        // Pushes and pops leave the queue consistent; poison is harmless.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The reader threads and their queue. Dropping it lets the threads finish
/// what is queued and exit.
pub struct ReadPool<C> {
    shared: Arc<Shared<C>>,
}

impl<C: ReadContext> ReadPool<C> {
    /// One reader thread per context, named `{name}-{i}`.
    pub fn start(name: &str, contexts: Vec<C>) -> Result<ReadPool<C>, StoreError> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                idle: 0,
                closed: false,
            }),
            ready: Condvar::new(),
        });
        let pool = ReadPool {
            shared: shared.clone(),
        };
        for (i, context) in contexts.into_iter().enumerate() {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || reader(context, &shared))
                .map_err(|e| StoreError::Unavailable(format!("starting a reader thread: {e}")))?;
        }
        Ok(pool)
    }

    /// Runs `f` on a reader's context (with the other reads of its batch)
    /// and returns its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut C) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job<C> = Box::new(move |context| {
            // A caller that gave up is not an error.
            let _ = tx.send(f(context));
        });
        {
            let mut q = self.shared.lock();
            if q.closed {
                return Err(StoreError::Unavailable("store is closed".into()));
            }
            q.jobs.push_back(job);
            if q.idle > 0 {
                self.shared.ready.notify_one();
            }
        }
        rx.await
            .map_err(|_| StoreError::Unavailable("read failed (the reader panicked)".into()))?
    }
}

impl<C> Drop for ReadPool<C> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

/// A reader thread's body: take what is queued, run it as one batch,
/// repeat; exit once the pool is dropped and the queue empty.
fn reader<C: ReadContext>(mut context: C, shared: &Shared<C>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut q = shared.lock();
            while q.jobs.is_empty() {
                if q.closed {
                    return;
                }
                q.idle += 1;
                q = shared.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
                q.idle -= 1;
            }
            let n = q.jobs.len().min(MAX_BATCH);
            batch.extend(q.jobs.drain(..n));
        }
        let in_batch = batch.len() > 1 && context.begin_batch();
        for job in batch.drain(..) {
            // A panicking read drops its answer (its caller gets an error);
            // the thread and its context stay.
            let _ = catch_unwind(AssertUnwindSafe(|| job(&mut context)));
        }
        if in_batch {
            context.end_batch();
        }
    }
}
