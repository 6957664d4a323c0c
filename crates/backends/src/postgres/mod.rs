//! [`PgStore`]: the clustered [`Store`] on PostgreSQL (tokio-postgres over a
//! deadpool-postgres pool, no TLS yet). Several nodes share one database.
//!
//! - Appends go through a bounded queue to a few writer tasks (`writer`);
//!   each takes every append already waiting (up to `max_batch`) and stores
//!   them in ONE transaction: de-dup claims, messages, the per-user
//!   `timeline_heads` bump that hands out gap-free seqs (its row lock
//!   serializes the writers of one user on every node), the timeline rows.
//!   Nobody is answered before COMMIT returned, and every connection runs with
//!   `synchronous_commit = on`, so an acknowledged append is durable.
//! - Reads (`entries_after`, `timeline_head`, `cursor`, the outbox) run on the
//!   pool directly (`read`), one statement each.
//! - Device cursors move in memory and are upserted (with `GREATEST`) by a
//!   maintenance task every `cursor_flush_interval`, which also purges expired
//!   de-dup rows every `purge_interval`.
//! - Backend down: every call is bounded (connect, pool wait, statement and
//!   whole-operation timeouts) and answers `StoreError::Unavailable`; the
//!   pool drops broken connections and opens new ones when PostgreSQL is back.
//! - The schema and its embedded migrations: `schema`.

mod groups;
mod read;
mod schema;
mod writer;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use switchboard_core::group::{
    Group, GroupKey, GroupSpec, GroupState, Member, MembersChanged, NewGroupMessage, Role,
};
use switchboard_core::store::{LoginState, OutboxReceipt};
use switchboard_core::{
    Appended, BusEvent, Message, NewMessage, Page, Store, StoreError, UserKey, now_ms,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

pub use schema::SCHEMA_VERSION;

use writer::Job;

/// Tuning of a [`PgStore`]; `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The schema the tables live in, created if missing (`[a-z_][a-z0-9_]*`).
    /// `None`: the connection's own `search_path` (usually `public`).
    pub schema: Option<String>,
    /// Connections in the pool. Default 16.
    pub pool_size: usize,
    /// Append transactions in flight at once (each holds one connection while
    /// it runs). Default 2: one batch gathers while the other commits. More
    /// measured slower (store_bench, 1,000 users): concurrent batches share
    /// users, so they wait on each other's `timeline_heads` row locks anyway.
    pub writers: usize,
    /// Most appends in one transaction. Default 256.
    pub max_batch: usize,
    /// Appends that may wait for a writer; past that callers wait for a slot.
    /// Default 4096.
    pub queue_capacity: usize,
    /// Opening a connection. Default 3 s.
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` of every connection. Default 5 s.
    pub statement_timeout: Duration,
    /// Upper bound of any one store call, waiting for a connection included;
    /// past it the call answers `Unavailable` (an append's outcome is then
    /// unknown, and it was not acknowledged). Default 10 s.
    pub op_timeout: Duration,
    /// How long a `(from, client_msg_id)` (and a delivered outbox event) is
    /// remembered. Default 7 days.
    pub dedupe_window: Duration,
    /// Longest time an advanced cursor stays only in memory. Default 1 s.
    pub cursor_flush_interval: Duration,
    /// How often expired de-dup rows are purged. Default 60 s.
    pub purge_interval: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: None,
            pool_size: 16,
            writers: 2,
            max_batch: 256,
            queue_capacity: 4096,
            connect_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(10),
            dedupe_window: Duration::from_secs(7 * 24 * 3600),
            cursor_flush_interval: Duration::from_secs(1),
            purge_interval: Duration::from_secs(60),
        }
    }
}

/// `(app, uid, device_id, gid)`: `gid` is empty for the cursor on the
/// user's own timeline, a group's id for the cursor on that group's.
type CursorKey = (String, String, String, String);

/// What the handle, the writers and the maintenance task share.
struct Inner {
    pool: Pool,
    opts: PgOptions,
    // Cursors advanced in memory and not yet flushed. A std Mutex: held for a
    // map insert or a snapshot, never across an await.
    cursors: Mutex<HashMap<CursorKey, u64>>,
}

impl Inner {
    fn cursors(&self) -> std::sync::MutexGuard<'_, HashMap<CursorKey, u64>> {
        // Every critical section leaves the map consistent, so a poisoned
        // lock (a panic elsewhere) is safe to keep using.
        self.cursors.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection from the pool, or `Unavailable` within the pool timeouts.
    async fn conn(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs `fut` within `op_timeout`.
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.opts.op_timeout, fut)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "postgresql did not answer within {:?}",
                    self.opts.op_timeout
                )))
            })
    }

    /// Upserts every dirty cursor; entries leave memory only once committed
    /// and unchanged since, so `cursor()` never sees one go back.
    async fn flush_cursors(&self) -> Result<(), StoreError> {
        let mut dirty: Vec<(CursorKey, u64)> = self
            .cursors()
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        if dirty.is_empty() {
            return Ok(());
        }
        // One lock order for every node: no deadlock between two flushes.
        dirty.sort_unstable();
        self.bounded(async {
            let conn = self.conn().await?;
            for chunk in dirty.chunks(read::CURSOR_CHUNK) {
                read::upsert_cursors(&conn, chunk).await?;
            }
            Ok(())
        })
        .await?;
        let mut map = self.cursors();
        for (k, v) in &dirty {
            if map.get(k) == Some(v) {
                map.remove(k);
            }
        }
        Ok(())
    }

    async fn purge_expired(&self) -> Result<usize, StoreError> {
        let window = i64::try_from(self.opts.dedupe_window.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms().saturating_sub(window);
        self.bounded(async {
            let conn = self.conn().await?;
            read::purge(&conn, cutoff).await
        })
        .await
    }
}

/// The clustered store on PostgreSQL. Cheap to share: wrap in `Arc`.
pub struct PgStore {
    inner: Arc<Inner>,
    // The sending side of the writers' queue; taken at close so the writers
    // drain what is queued and stop. A std Mutex: held for a clone.
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    // Dropping it stops the maintenance task (after a last cursor flush).
    stop: Mutex<Option<oneshot::Sender<()>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.inner.opts.schema)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user@host:port/db?...`), creates the
    /// schema if configured, applies missing migrations and starts the writer
    /// and maintenance tasks. Must run inside a tokio runtime.
    pub async fn connect(url: &str, options: PgOptions) -> Result<Arc<PgStore>, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("postgresql url: {e}")))?;
        if let Some(schema) = &options.schema {
            schema::check_schema_name(schema)?;
        }
        // Durability and bounded waits are not left to the server's defaults.
        let mut server_options = config.get_options().unwrap_or_default().to_owned();
        server_options.push_str(&format!(
            " -c synchronous_commit=on -c statement_timeout={} \
             -c idle_in_transaction_session_timeout={}",
            options.statement_timeout.as_millis().max(1),
            (options.op_timeout * 3).as_millis().max(1),
        ));
        if let Some(schema) = &options.schema {
            server_options.push_str(&format!(" -c search_path={schema}"));
        }
        config
            .options(server_options.trim())
            .connect_timeout(options.connect_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("switchboard");
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                // A broken connection shows as closed: checking that is free,
                // and a query on a half-open one fails within the timeouts.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            // Room for reads beside the writers, whatever was configured.
            .max_size(options.pool_size.max(options.writers.max(1) + 1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.op_timeout))
            .create_timeout(Some(options.connect_timeout))
            .recycle_timeout(Some(options.connect_timeout))
            .build()
            .map_err(|e| StoreError::Invalid(format!("postgresql pool: {e}")))?;

        let inner = Arc::new(Inner {
            pool,
            opts: options.clone(),
            cursors: Mutex::new(HashMap::new()),
        });
        inner
            .bounded(async {
                let mut conn = inner.conn().await?;
                schema::migrate(&mut conn, options.schema.as_deref()).await
            })
            .await?;

        let (queue, rx) = mpsc::channel(options.queue_capacity.max(1));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut tasks = Vec::new();
        for _ in 0..options.writers.max(1) {
            tasks.push(tokio::spawn(writer::run(inner.clone(), rx.clone())));
        }
        let (stop, stopped) = oneshot::channel();
        tasks.push(tokio::spawn(maintain(inner.clone(), stopped)));
        Ok(Arc::new(PgStore {
            inner,
            queue: Mutex::new(Some(queue)),
            stop: Mutex::new(Some(stop)),
            tasks: Mutex::new(tasks),
            closed: AtomicBool::new(false),
        }))
    }

    /// Up to `limit` undelivered outbox events, lowest id first (the
    /// webhook dispatcher pages with `Store::outbox_pending_after`).
    pub async fn outbox_pending(&self, limit: usize) -> Result<Vec<BusEvent>, StoreError> {
        self.outbox_pending_after(0, limit).await
    }

    /// Deletes expired de-dup rows and delivered outbox rows older than the
    /// window now (the maintenance task also does it every `purge_interval`);
    /// returns the number of rows deleted.
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        self.check_open()?;
        self.inner.purge_expired().await
    }

    /// Persists every advanced cursor now.
    pub async fn flush_cursors(&self) -> Result<(), StoreError> {
        self.check_open()?;
        self.inner.flush_cursors().await
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("store is closed".into()));
        }
        Ok(())
    }

    fn cursor_key(user: &UserKey, device_id: &str) -> CursorKey {
        Self::group_cursor_key(user, device_id, "")
    }

    fn group_cursor_key(user: &UserKey, device_id: &str, gid: &str) -> CursorKey {
        (
            user.app.clone(),
            user.uid.clone(),
            device_id.to_owned(),
            gid.to_owned(),
        )
    }

    /// Runs `op` on a pooled connection within `op_timeout`.
    async fn on_conn<T>(
        &self,
        op: impl AsyncFnOnce(&mut Object) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.check_open()?;
        self.inner
            .bounded(async {
                let mut conn = self.inner.conn().await?;
                op(&mut conn).await
            })
            .await
    }

    /// Stops the writers and the maintenance task without waiting for them:
    /// they finish what is queued (and a last cursor flush) on their own.
    fn shut_down(&self) -> Vec<JoinHandle<()>> {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[async_trait]
impl Store for PgStore {
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        self.check_open()?;
        writer::validate(&msg)?;
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::Unavailable("store is closed".into()))?;
        let (reply, answer) = oneshot::channel();
        self.inner
            .bounded(async move {
                queue
                    .send(Job { msg, reply })
                    .await
                    .map_err(|_| StoreError::Unavailable("store is closed".into()))?;
                answer
                    .await
                    .map_err(|_| StoreError::Unavailable("postgresql writer stopped".into()))?
            })
            .await
    }

    async fn entries_after(
        &self,
        user: &UserKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.check_open()?;
        self.inner
            .bounded(async {
                let conn = self.inner.conn().await?;
                read::entries_after(&conn, user, since, limit).await
            })
            .await
    }

    async fn conversation(
        &self,
        a: &UserKey,
        b: &UserKey,
        before_msg_id: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Arc<Message>>, StoreError> {
        self.check_open()?;
        self.inner
            .bounded(async {
                let conn = self.inner.conn().await?;
                read::conversation(&conn, a, b, before_msg_id, limit).await
            })
            .await
    }

    async fn timeline_head(&self, user: &UserKey) -> Result<u64, StoreError> {
        self.check_open()?;
        self.inner
            .bounded(async {
                let conn = self.inner.conn().await?;
                read::head(&conn, user).await
            })
            .await
    }

    async fn revoke_tokens(&self, user: &UserKey, issued_before: u64) -> Result<u64, StoreError> {
        self.check_open()?;
        self.inner
            .bounded(async {
                let conn = self.inner.conn().await?;
                read::revoke_tokens(&conn, user, issued_before).await
            })
            .await
    }

    async fn tokens_revoked_before(&self, user: &UserKey) -> Result<Option<u64>, StoreError> {
        self.check_open()?;
        self.inner
            .bounded(async {
                let conn = self.inner.conn().await?;
                read::tokens_revoked_before(&conn, user).await
            })
            .await
    }

    async fn message(&self, id: u64) -> Result<Option<Message>, StoreError> {
        self.check_open()?;
        self.inner
            .bounded(async {
                let conn = self.inner.conn().await?;
                read::message(&conn, id).await
            })
            .await
    }

    async fn conversation_view(&self, user: &UserKey) -> Result<Option<bytes::Bytes>, StoreError> {
        self.check_open()?;
        self.inner
            .bounded(async {
                let conn = self.inner.conn().await?;
                read::conversation_view(&conn, user).await
            })
            .await
    }

    async fn put_conversation_view(
        &self,
        user: &UserKey,
        view: bytes::Bytes,
    ) -> Result<(), StoreError> {
        self.check_open()?;
        self.inner
            .bounded(async {
                let conn = self.inner.conn().await?;
                read::put_conversation_view(&conn, user, &view).await
            })
            .await
    }

    async fn cursor(&self, user: &UserKey, device_id: &str) -> Result<u64, StoreError> {
        self.check_open()?;
        // Memory first, then the table: an entry leaves memory only after it
        // was committed, so reading in this order never misses the newest.
        let key = Self::cursor_key(user, device_id);
        let in_memory = self.inner.cursors().get(&key).copied().unwrap_or(0);
        let stored = self
            .inner
            .bounded(async {
                let conn = self.inner.conn().await?;
                read::cursor(&conn, user, device_id).await
            })
            .await?;
        Ok(in_memory.max(stored))
    }

    /// Both in one statement: one round trip instead of two.
    async fn login_state(&self, user: &UserKey, device_id: &str) -> Result<LoginState, StoreError> {
        self.check_open()?;
        // As `cursor`: memory before the table.
        let key = Self::cursor_key(user, device_id);
        let in_memory = self.inner.cursors().get(&key).copied().unwrap_or(0);
        let (timeline_head, stored) = self
            .inner
            .bounded(async {
                let conn = self.inner.conn().await?;
                read::head_and_cursor(&conn, user, device_id).await
            })
            .await?;
        Ok(LoginState {
            timeline_head,
            cursor: in_memory.max(stored),
        })
    }

    async fn advance_cursor(
        &self,
        user: &UserKey,
        device_id: &str,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.check_open()?;
        if seq > i64::MAX as u64 {
            return Err(StoreError::Invalid(format!("cursor {seq} out of range")));
        }
        for (what, s) in [("app", &user.app), ("uid", &user.uid)] {
            writer::check_text(what, s)?;
        }
        writer::check_text("device_id", device_id)?;
        let key = Self::cursor_key(user, device_id);
        let mut map = self.inner.cursors();
        let e = map.entry(key).or_insert(0);
        *e = (*e).max(seq);
        Ok(())
    }

    async fn outbox_append(
        &self,
        event: &BusEvent,
        dedupe_id: &str,
    ) -> Result<OutboxReceipt, StoreError> {
        self.check_open()?;
        for (what, s) in [
            ("topic", event.topic.as_str()),
            ("app", &event.user.app),
            ("uid", &event.user.uid),
            ("kind", &event.kind),
            ("dedupe_id", dedupe_id),
        ] {
            writer::check_text(what, s)?;
        }
        self.inner
            .bounded(async {
                let conn = self.inner.conn().await?;
                read::outbox_append(&conn, event, dedupe_id, now_ms()).await
            })
            .await
    }

    async fn outbox_pending_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<BusEvent>, StoreError> {
        self.check_open()?;
        self.inner
            .bounded(async {
                let conn = self.inner.conn().await?;
                read::outbox_pending(&conn, after, limit).await
            })
            .await
    }

    async fn outbox_mark_delivered(&self, ids: &[u64]) -> Result<usize, StoreError> {
        self.check_open()?;
        self.inner
            .bounded(async {
                let conn = self.inner.conn().await?;
                read::mark_delivered(&conn, ids).await
            })
            .await
    }

    async fn put_group(&self, spec: &GroupSpec) -> Result<(Group, bool), StoreError> {
        self.on_conn(async |c| groups::put_group(c, spec).await)
            .await
    }

    async fn group(&self, key: &GroupKey) -> Result<Option<Group>, StoreError> {
        self.on_conn(async |c| groups::group(c, key).await).await
    }

    async fn delete_group(&self, key: &GroupKey) -> Result<bool, StoreError> {
        let deleted = self
            .on_conn(async |c| groups::delete_group(c, key).await)
            .await?;
        // Acks of the deleted group's entries this node holds in memory.
        // (Another node's, advanced within its flush interval before the
        // delete, may still reach the group created again with this id,
        // never past its head.)
        self.inner
            .cursors()
            .retain(|(a, _, _, g), _| !(*g == key.gid && *a == key.app));
        Ok(deleted)
    }

    async fn add_members(
        &self,
        key: &GroupKey,
        members: &[(String, Role)],
        max_members: u64,
    ) -> Result<MembersChanged, StoreError> {
        self.on_conn(async |c| groups::add_members(c, key, members, max_members).await)
            .await
    }

    async fn remove_members(
        &self,
        key: &GroupKey,
        uids: &[String],
    ) -> Result<MembersChanged, StoreError> {
        self.on_conn(async |c| groups::remove_members(c, key, uids).await)
            .await
    }

    async fn member(&self, key: &GroupKey, uid: &str) -> Result<Option<Member>, StoreError> {
        self.on_conn(async |c| groups::member(c, key, uid).await)
            .await
    }

    async fn members(
        &self,
        key: &GroupKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Member>, StoreError> {
        self.on_conn(async |c| groups::members(c, key, after, limit).await)
            .await
    }

    async fn user_groups(
        &self,
        user: &UserKey,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.on_conn(async |c| groups::user_groups(c, user, after, limit).await)
            .await
    }

    /// One query, then the cursors still in memory (read after the
    /// written ones, a cursor flushed in between is missed and the device
    /// is a little behind: it gets a few entries again, never fewer).
    async fn group_states(
        &self,
        user: &UserKey,
        device_id: &str,
    ) -> Result<Vec<GroupState>, StoreError> {
        let mut states = self
            .on_conn(async |c| groups::group_states(c, user, device_id).await)
            .await?;
        let map = self.inner.cursors();
        for s in &mut states {
            let key = Self::group_cursor_key(user, device_id, &s.gid);
            let in_memory = map.get(&key).copied().unwrap_or(0);
            s.cursor = s.cursor.max(in_memory).min(s.head);
        }
        Ok(states)
    }

    async fn group_append(&self, msg: NewGroupMessage) -> Result<Appended, StoreError> {
        self.on_conn(async |c| groups::group_append(c, msg).await)
            .await
    }

    async fn group_entries_after(
        &self,
        key: &GroupKey,
        since: u64,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.on_conn(async |c| groups::group_entries_after(c, key, since, limit).await)
            .await
    }

    async fn advance_group_cursor(
        &self,
        user: &UserKey,
        device_id: &str,
        key: &GroupKey,
        seq: u64,
    ) -> Result<(), StoreError> {
        self.check_open()?;
        if seq > i64::MAX as u64 {
            return Err(StoreError::Invalid(format!("cursor {seq} out of range")));
        }
        if key.app != user.app {
            return Err(StoreError::Invalid(format!(
                "{user} is not of the app of group {key}"
            )));
        }
        for (what, s) in [("app", &user.app), ("uid", &user.uid), ("gid", &key.gid)] {
            writer::check_text(what, s)?;
        }
        writer::check_text("device_id", device_id)?;
        let key = Self::group_cursor_key(user, device_id, &key.gid);
        let mut map = self.inner.cursors();
        let e = map.entry(key).or_insert(0);
        *e = (*e).max(seq);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check_open()?;
        self.inner
            .bounded(async {
                let conn = self.inner.conn().await?;
                conn.simple_query("SELECT 1").await.map_err(unavailable)?;
                Ok(())
            })
            .await
    }

    async fn close(&self) -> Result<(), StoreError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        // Appends already queued are still stored and answered; later calls
        // are refused by check_open.
        for task in self.shut_down() {
            let _ = task.await;
        }
        // The maintenance task flushed on its way out; flush once more in
        // case it could not (a flush of nothing costs nothing).
        let flushed = self.inner.flush_cursors().await;
        self.inner.pool.close();
        flushed
    }
}

impl Drop for PgStore {
    /// Best effort without `close`: the writers finish the queue and the
    /// maintenance task flushes cursors in the background.
    fn drop(&mut self) {
        drop(self.shut_down());
    }
}

/// Flushes cursors every `cursor_flush_interval` and purges every
/// `purge_interval` until `stop` fires or is dropped, then flushes once more.
async fn maintain(inner: Arc<Inner>, mut stop: oneshot::Receiver<()>) {
    let mut flush = tokio::time::interval(
        inner
            .opts
            .cursor_flush_interval
            .max(Duration::from_millis(1)),
    );
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut purge = tokio::time::interval(inner.opts.purge_interval.max(Duration::from_millis(1)));
    purge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Both intervals fire at once; the first purge can wait a full period.
    purge.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = flush.tick() => {
                if let Err(e) = inner.flush_cursors().await {
                    tracing::warn!(error = %e, "postgresql cursor flush failed; will retry");
                }
            }
            _ = purge.tick() => {
                match inner.purge_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(rows = n, "purged expired de-dup and outbox rows"),
                    Err(e) => tracing::warn!(error = %e, "postgresql purge failed; will retry"),
                }
            }
        }
    }
    if let Err(e) = inner.flush_cursors().await {
        tracing::warn!(error = %e, "postgresql cursor flush at shutdown failed");
    }
}

/// `url` without its password, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    format!("{}{user}:***@{}", &url[..scheme + 3], &url[at + 1..])
                }
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A tokio-postgres error with its cause (its `Display` alone says only
/// "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Any query error: the store can't serve it now.
fn unavailable(e: tokio_postgres::Error) -> StoreError {
    StoreError::Unavailable(format!("postgresql: {}", describe(&e)))
}

/// A column that does not decode means the data is not what we wrote.
fn corrupt(e: tokio_postgres::Error) -> StoreError {
    StoreError::Corrupt(format!("postgresql: {}", describe(&e)))
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => unavailable(e),
        PoolError::Timeout(kind) => StoreError::Unavailable(format!(
            "postgresql: timed out ({kind:?}) getting a connection"
        )),
        PoolError::Closed => StoreError::Unavailable("store is closed".into()),
        e => StoreError::Unavailable(format!("postgresql pool: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:secret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(redact_url("host=db user=u"), "host=db user=u");
    }
}
