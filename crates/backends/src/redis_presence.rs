//! [`RedisPresence`]: presence in Redis (standalone or Redis Cluster), shared
//! by every node of a cluster.
//!
//! # Layout
//!
//! - `<prefix>:{<app>/<uid>}:devices` — a hash, device id → `v1|node|boot|conn_id|since_ms|platform`.
//!   Everything about one user is this one key, so a user's reads and writes
//!   are single-key (one slot in a Redis Cluster); the `{…}` hash tag keeps
//!   any later per-user key in the same slot. The key expires 24 h after
//!   its last write; live nodes re-write their users' keys every 6 h, so
//!   only the keys of users nobody looks up again ever expire this way.
//! - `<prefix>:node:<name>` — the node's heartbeat: its boot id, with a TTL
//!   (default 15 s) refreshed every heartbeat (default 5 s).
//! - `<prefix>:lives` — a hash of every node life (`<name>|<boot>`) that
//!   registered and was not yet reaped, and `<prefix>:life:<name>|<boot>`
//!   — a hash of that life's own devices (same values as the user keys), so
//!   that when a life ends without logging its devices out (kill -9, power
//!   loss, an outage longer than the TTL) another node, or the next life of
//!   the same name, finds them: [`Presence::departed`] claims the dead life
//!   (`<prefix>:reaping:<life>`, `SET NX` with an expiry), takes its devices
//!   out of the user keys and hands them to the logic, which publishes
//!   `user.offline` for each. Two more writes per login and logout; the
//!   readers never look at these keys.
//!
//! # Why a per-node heartbeat key rather than a TTL on every user key
//!
//! A node holds ~19k users. Refreshing a TTL on each of their keys would cost
//! 19k writes per heartbeat per node (and a user with devices on two nodes
//! would be kept alive by the live one, hiding the dead one's entries). One
//! key per node costs one write per heartbeat whatever the number of users.
//! A reader then filters a user's entries by their node's liveness: an entry
//! is live while `<prefix>:node:<node>` holds the boot id written in the
//! entry. The boot id also retires the entries of a node that crashed and came
//! back under the same name. Liveness answers are cached for at most one
//! second (or one heartbeat), so a lookup costs one `HGETALL` in the steady
//! state; dead entries found by a reader are deleted then (compare-and-delete,
//! so a device that re-logged in elsewhere meanwhile is kept).
//!
//! So a dead node's users drop out within its TTL (plus the one-second
//! cache), while a node that lost Redis for longer than its TTL re-registers
//! its connections when Redis returns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Script, Value};
use switchboard_core::{DeviceSession, Presence, PresenceError, UserKey};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// How a [`RedisPresence`] connects and how fast a dead node's entries expire.
#[derive(Debug, Clone)]
pub struct RedisPresenceConfig {
    /// `redis://host:port` URLs: one for a standalone server; several (or
    /// `cluster = true`) for a Redis Cluster, where they are seed nodes.
    pub urls: Vec<String>,
    /// Use the Redis Cluster client even with a single seed URL.
    pub cluster: bool,
    /// This node's name (as in `DeviceSession::node`).
    pub node: String,
    /// Key prefix; several deployments (or test runs) can share one Redis.
    pub prefix: String,
    /// How long this node's entries stay live after its last heartbeat.
    pub ttl: Duration,
    /// How often the node's heartbeat key is refreshed (well under `ttl`).
    pub heartbeat: Duration,
    /// Bound on connecting and on each command.
    pub timeout: Duration,
}

impl Default for RedisPresenceConfig {
    fn default() -> Self {
        RedisPresenceConfig {
            urls: vec!["redis://127.0.0.1:6379".into()],
            cluster: false,
            node: "local".into(),
            prefix: "sb".into(),
            ttl: Duration::from_secs(15),
            heartbeat: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
        }
    }
}

/// Why a [`RedisPresence`] could not be built (bad configuration; an
/// unreachable server is not an error here: it connects lazily).
#[derive(Debug, thiserror::Error)]
pub enum RedisPresenceError {
    #[error("invalid redis presence configuration: {0}")]
    Config(String),
    #[error("invalid redis url: {0}")]
    Url(#[source] RedisError),
}

/// Presence in Redis. Build with [`RedisPresence::connect`]; it runs its
/// heartbeat until dropped (a crash, as far as other nodes can tell) or
/// [`RedisPresence::shutdown`] (a clean exit).
pub struct RedisPresence {
    inner: Arc<Inner>,
    heartbeat: JoinHandle<()>,
}

struct Inner {
    conn: Conn,
    /// For error messages: which Redis this is.
    target: String,
    node: String,
    /// Random per process: entries written by an earlier life of this node
    /// name are not this one's.
    boot: String,
    prefix: String,
    ttl: Duration,
    heartbeat: Duration,
    live_cache_for: Duration,
    /// Set once a heartbeat of this life reached Redis.
    beaten: AtomicBool,
    /// When this node last re-wrote all its users' keys (refreshing their TTL).
    last_refresh: Mutex<Instant>,
    /// This node's own online devices: re-written after an outage longer
    /// than the TTL, when other nodes may have reaped them.
    local: Mutex<HashMap<(UserKey, String), DeviceSession>>,
    /// Offline records that failed (Redis down), retried each heartbeat.
    pending_offline: Mutex<Vec<(UserKey, String, u64)>>,
    /// Node name → (its boot id or None when its heartbeat expired, when checked).
    live: Mutex<HashMap<String, (Option<String>, Instant)>>,
    offline_script: Script,
    reap_script: Script,
}

/// The connection: a reconnecting multiplexed connection to one server, or a
/// cluster connection created on first use (so a node starts while Redis is down).
enum Conn {
    Single(ConnectionManager),
    Cluster(Box<LazyCluster>),
}

struct LazyCluster {
    client: ClusterClient,
    conn: tokio::sync::Mutex<Option<ClusterConnection>>,
    timeout: Duration,
}

/// A usable connection handle, whichever kind.
enum AnyConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for AnyConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            AnyConn::Single(c) => c.req_packed_command(cmd),
            AnyConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            AnyConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConn::Single(c) => c.get_db(),
            AnyConn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    async fn get(&self) -> RedisResult<AnyConn> {
        match self {
            Conn::Single(c) => Ok(AnyConn::Single(c.clone())),
            Conn::Cluster(lazy) => {
                let LazyCluster {
                    client,
                    conn,
                    timeout,
                } = lazy.as_ref();
                let mut slot = conn.lock().await;
                if let Some(c) = slot.as_ref() {
                    return Ok(AnyConn::Cluster(c.clone()));
                }
                // The cluster connection needs the slot map at creation: it
                // is made on first use and kept (it reconnects by itself).
                let c = tokio::time::timeout(*timeout * 2, client.get_async_connection())
                    .await
                    .map_err(|_| {
                        RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "timed out connecting to the redis cluster",
                        ))
                    })??;
                *slot = Some(c.clone());
                Ok(AnyConn::Cluster(c))
            }
        }
    }
}

const VERSION: &str = "v1";

/// Device lookups of one `devices_many` in flight at once.
const LOOKUPS_IN_FLIGHT: usize = 128;

/// A URL for logs and errors: any `user:password@` replaced by `***@`.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) => format!("{scheme}://***@{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// A user's key outlives its last write by this much. Entries of dead nodes
/// are reaped when the user is looked up; this bounds how long the key of a
/// user nobody looks up again lingers. Live nodes re-write their users' keys
/// every quarter of it (19k users per node: about one command a second).
const USER_KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// One entry's value, parsed.
struct Stored {
    node: String,
    boot: String,
    conn_id: u64,
    since_ms: i64,
    platform: String,
}

fn encode(s: &DeviceSession, boot: &str) -> String {
    format!(
        "{VERSION}|{}|{boot}|{}|{}|{}",
        s.node, s.conn_id, s.since_ms, s.platform
    )
}

fn decode(v: &str) -> Option<Stored> {
    let mut it = v.splitn(6, '|');
    if it.next()? != VERSION {
        return None;
    }
    Some(Stored {
        node: it.next()?.to_string(),
        boot: it.next()?.to_string(),
        conn_id: it.next()?.parse().ok()?,
        since_ms: it.next()?.parse().ok()?,
        platform: it.next()?.to_string(),
    })
}

/// A device's field in its node life's hash: the user and the device id,
/// length-prefixed so that no character of an id is special.
fn life_field(user: &UserKey, device_id: &str) -> String {
    format!(
        "{}:{}{}:{}{device_id}",
        user.app.len(),
        user.app,
        user.uid.len(),
        user.uid
    )
}

fn parse_life_field(field: &str) -> Option<(UserKey, String)> {
    let take = |s: &str| -> Option<(String, String)> {
        let (len, rest) = s.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let (v, rest) = (rest.get(..len)?, rest.get(len..)?);
        Some((v.to_string(), rest.to_string()))
    };
    let (app, rest) = take(field)?;
    let (uid, device_id) = take(&rest)?;
    Some((UserKey { app, uid }, device_id))
}

/// Deletes a device's entry only if it is still the given connection of this
/// node's life (a newer login of the same device, anywhere, is kept).
const OFFLINE_LUA: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and string.sub(v, 1, #ARGV[2]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

/// Deletes entries (field, value pairs) only if unchanged since they were read.
const REAP_LUA: &str = r#"
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    n = n + 1
  end
end
return n
"#;

impl RedisPresence {
    /// Builds the client and starts the heartbeat. Does not wait for Redis:
    /// commands fail with `Unavailable` until it answers.
    pub fn connect(config: RedisPresenceConfig) -> Result<RedisPresence, RedisPresenceError> {
        if config.urls.is_empty() {
            return Err(RedisPresenceError::Config("no redis url".into()));
        }
        if config.node.is_empty() || config.node.contains(['|', '{', '}']) {
            return Err(RedisPresenceError::Config(format!(
                "node name {:?} must be non-empty, without '|', '{{' or '}}'",
                config.node
            )));
        }
        if config.prefix.contains(['{', '}']) {
            return Err(RedisPresenceError::Config(format!(
                "key prefix {:?} may not contain '{{' or '}}' (they are the user's hash tag)",
                config.prefix
            )));
        }
        if config.heartbeat.is_zero() || config.ttl <= config.heartbeat {
            return Err(RedisPresenceError::Config(format!(
                "the ttl ({:?}) must be longer than the heartbeat ({:?})",
                config.ttl, config.heartbeat
            )));
        }
        let conn = if config.urls.len() > 1 || config.cluster {
            let client = ClusterClient::builder(config.urls.clone())
                .connection_timeout(config.timeout)
                .response_timeout(config.timeout)
                .retries(2)
                .build()
                .map_err(RedisPresenceError::Url)?;
            Conn::Cluster(Box::new(LazyCluster {
                client,
                conn: tokio::sync::Mutex::new(None),
                timeout: config.timeout,
            }))
        } else {
            let client =
                redis::Client::open(config.urls[0].as_str()).map_err(RedisPresenceError::Url)?;
            // Few, quick retries: a request made while Redis is down fails
            // within a few seconds (UNAVAILABLE) instead of queueing; the
            // next request starts a new reconnect.
            let mcfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.timeout))
                .set_response_timeout(Some(config.timeout))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_millis(500));
            Conn::Single(
                ConnectionManager::new_lazy_with_config(client, mcfg)
                    .map_err(RedisPresenceError::Url)?,
            )
        };
        let inner = Arc::new(Inner {
            conn,
            target: config
                .urls
                .iter()
                .map(|u| redact(u))
                .collect::<Vec<_>>()
                .join(","),
            node: config.node,
            boot: format!("{:016x}", rand::random::<u64>()),
            prefix: config.prefix,
            ttl: config.ttl,
            heartbeat: config.heartbeat,
            live_cache_for: config.heartbeat.min(Duration::from_secs(1)),
            beaten: AtomicBool::new(false),
            last_refresh: Mutex::new(Instant::now()),
            local: Mutex::new(HashMap::new()),
            pending_offline: Mutex::new(Vec::new()),
            live: Mutex::new(HashMap::new()),
            offline_script: Script::new(OFFLINE_LUA),
            reap_script: Script::new(REAP_LUA),
        });
        let heartbeat = tokio::spawn(heartbeat_loop(inner.clone()));
        Ok(RedisPresence { inner, heartbeat })
    }

    /// Stops the heartbeat and removes this node's heartbeat key, so its
    /// remaining entries (if any) are dead at once. For a clean shutdown,
    /// after the connections were closed.
    pub async fn shutdown(&self) {
        self.heartbeat.abort();
        let key = self.inner.node_key(&self.inner.node);
        if let Err(e) = self.inner.query::<i64>(redis::cmd("DEL").arg(&key)).await {
            tracing::warn!(error = %e, "could not remove this node's presence heartbeat");
        }
    }

    /// This process's boot id (written in each entry and the heartbeat key).
    pub fn boot_id(&self) -> &str {
        &self.inner.boot
    }
}

impl Drop for RedisPresence {
    fn drop(&mut self) {
        // Without a heartbeat the entries expire with the TTL, as after a crash.
        self.heartbeat.abort();
    }
}

impl Inner {
    fn user_key(&self, user: &UserKey) -> String {
        format!("{}:{{{}/{}}}:devices", self.prefix, user.app, user.uid)
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    fn lives_key(&self) -> String {
        format!("{}:lives", self.prefix)
    }

    fn my_life(&self) -> String {
        format!("{}|{}", self.node, self.boot)
    }

    fn life_key(&self, life: &str) -> String {
        format!("{}:life:{life}", self.prefix)
    }

    /// Records one of this node's devices: in its user's key (what readers
    /// see) and in this life's own hash (what a reaper finds if this life
    /// ends without a logout).
    async fn record_local(&self, s: &DeviceSession) -> Result<(), PresenceError> {
        self.hset(s).await?;
        self.query::<()>(
            redis::cmd("HSET")
                .arg(self.life_key(&self.my_life()))
                .arg(life_field(&s.user, &s.device_id))
                .arg(encode(s, &self.boot)),
        )
        .await
    }

    /// Deletes a user's device entry if it still holds `value`.
    async fn reap_entry(
        &self,
        user: &UserKey,
        device_id: &str,
        value: &str,
    ) -> Result<(), PresenceError> {
        let mut c = self.conn.get().await.map_err(|e| self.unavailable(e))?;
        self.reap_script
            .key(self.user_key(user))
            .arg(device_id)
            .arg(value)
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }

    /// Takes the devices of node lives that ended without logging them out
    /// (see the module docs): each dead life is claimed by one node.
    async fn reap_dead_lives(&self) -> Result<Vec<DeviceSession>, PresenceError> {
        let lives: Vec<String> = self
            .query(redis::cmd("HKEYS").arg(self.lives_key()))
            .await?;
        let mine = self.my_life();
        let mut departed = Vec::new();
        for life in lives {
            if life == mine {
                continue;
            }
            let Some((node, boot)) = life.split_once('|') else {
                continue;
            };
            if self.live_boot(node, true).await?.as_deref() == Some(boot) {
                continue;
            }
            let claim: Option<String> = self
                .query(
                    redis::cmd("SET")
                        .arg(format!("{}:reaping:{life}", self.prefix))
                        .arg(&mine)
                        .arg("NX")
                        .arg("PX")
                        .arg((self.ttl * 4).as_millis() as u64),
                )
                .await?;
            if claim.is_none() {
                // Another node is reaping it.
                continue;
            }
            let life_key = self.life_key(&life);
            let entries: Vec<(String, String)> =
                self.query(redis::cmd("HGETALL").arg(&life_key)).await?;
            let mut sessions = Vec::with_capacity(entries.len());
            for (field, value) in entries {
                let (Some((user, device_id)), Some(s)) = (parse_life_field(&field), decode(&value))
                else {
                    continue;
                };
                sessions.push((
                    value,
                    DeviceSession {
                        user,
                        device_id,
                        platform: s.platform,
                        node: s.node,
                        conn_id: s.conn_id,
                        since_ms: s.since_ms,
                    },
                ));
            }
            // Out of the user keys (unless a reader did it already, or the
            // device logged in again since: compare-and-delete).
            // Made up front (lazy futures), as in `devices_many`.
            let reaps: Vec<_> = sessions
                .iter()
                .map(|(value, d)| self.reap_entry(&d.user, &d.device_id, value))
                .collect();
            futures::stream::iter(reaps)
                .buffer_unordered(LOOKUPS_IN_FLIGHT)
                .try_collect::<Vec<()>>()
                .await?;
            self.query::<()>(redis::cmd("DEL").arg(&life_key)).await?;
            self.query::<()>(redis::cmd("HDEL").arg(self.lives_key()).arg(&life))
                .await?;
            tracing::info!(life = %life, devices = sessions.len(), "reaped the devices of a node that stopped without logging them out");
            departed.extend(sessions.into_iter().map(|(_, d)| d));
        }
        Ok(departed)
    }

    fn unavailable(&self, e: RedisError) -> PresenceError {
        PresenceError::Unavailable(format!("redis {}: {e}", self.target))
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> Result<T, PresenceError> {
        let mut c = self.conn.get().await.map_err(|e| self.unavailable(e))?;
        cmd.query_async(&mut c)
            .await
            .map_err(|e| self.unavailable(e))
    }

    async fn hset(&self, s: &DeviceSession) -> Result<(), PresenceError> {
        let boot = if s.node == self.node {
            self.boot.as_str()
        } else {
            ""
        };
        let key = self.user_key(&s.user);
        // One key, one slot: a pipeline is fine on a cluster too.
        let mut p = redis::pipe();
        p.cmd("HSET")
            .arg(&key)
            .arg(&s.device_id)
            .arg(encode(s, boot))
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(USER_KEY_TTL.as_millis() as u64)
            .ignore();
        let mut c = self.conn.get().await.map_err(|e| self.unavailable(e))?;
        p.query_async::<()>(&mut c)
            .await
            .map_err(|e| self.unavailable(e))
    }

    async fn del_if_conn(
        &self,
        user: &UserKey,
        device_id: &str,
        conn_id: u64,
    ) -> Result<(), PresenceError> {
        let prefix = format!("{VERSION}|{}|{}|{conn_id}|", self.node, self.boot);
        let mut c = self.conn.get().await.map_err(|e| self.unavailable(e))?;
        self.offline_script
            .key(self.user_key(user))
            .arg(device_id)
            .arg(prefix)
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(|e| self.unavailable(e))
    }

    /// Takes a logged-out device out of this life's hash (only if it is
    /// still that connection). A failure is only logged: the entry would
    /// at worst make a reaper announce a device already announced offline.
    async fn forget_local(&self, user: &UserKey, device_id: &str, conn_id: u64) {
        let prefix = format!("{VERSION}|{}|{}|{conn_id}|", self.node, self.boot);
        let forgot = match self.conn.get().await {
            Ok(mut c) => {
                self.offline_script
                    .key(self.life_key(&self.my_life()))
                    .arg(life_field(user, device_id))
                    .arg(prefix)
                    .invoke_async::<i64>(&mut c)
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = forgot {
            tracing::debug!(error = %e, "could not take a device out of this node life's hash");
        }
    }

    /// The boot id `node` currently runs under, None when its heartbeat expired.
    /// `fresh` skips the cache (before deleting anything on its word).
    async fn live_boot(&self, node: &str, fresh: bool) -> Result<Option<String>, PresenceError> {
        if node == self.node {
            return Ok(Some(self.boot.clone()));
        }
        if !fresh
            && let Some((boot, at)) = self.lock_live().get(node)
            && at.elapsed() < self.live_cache_for
        {
            return Ok(boot.clone());
        }
        let boot: Option<String> = self
            .query(redis::cmd("GET").arg(self.node_key(node)))
            .await?;
        self.lock_live()
            .insert(node.to_string(), (boot.clone(), Instant::now()));
        Ok(boot)
    }

    fn lock_live(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Option<String>, Instant)>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_local(&self) -> std::sync::MutexGuard<'_, HashMap<(UserKey, String), DeviceSession>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One heartbeat: refresh the node key; re-register this node's devices
    /// if the key had expired (others may have reaped them); retry failed
    /// offline records.
    async fn beat(&self) -> Result<(), PresenceError> {
        let previous: Option<String> = self
            .query(
                redis::cmd("SET")
                    .arg(self.node_key(&self.node))
                    .arg(&self.boot)
                    .arg("PX")
                    .arg(self.ttl.as_millis() as u64)
                    .arg("GET"),
            )
            .await?;
        self.beaten.store(true, Ordering::Release);
        let refresh_due = {
            let mut last = self.last_refresh.lock().unwrap_or_else(|e| e.into_inner());
            let due = last.elapsed() >= USER_KEY_TTL / 4;
            if due {
                *last = Instant::now();
            }
            due
        };
        if previous.as_deref() != Some(self.boot.as_str()) {
            // This life, for a reaper to find should it end without a logout
            // (again after an outage: a reaper may have taken it meanwhile).
            self.query::<()>(
                redis::cmd("HSET")
                    .arg(self.lives_key())
                    .arg(self.my_life())
                    .arg(switchboard_core::now_ms()),
            )
            .await?;
        }
        if previous.as_deref() != Some(self.boot.as_str()) || refresh_due {
            let sessions: Vec<DeviceSession> = self.lock_local().values().cloned().collect();
            if !sessions.is_empty() && !refresh_due {
                tracing::warn!(
                    devices = sessions.len(),
                    "presence heartbeat had expired; re-registering this node's devices"
                );
            }
            // Keys of different users are in different slots: no pipeline,
            // but many commands in flight.
            let results: Vec<Result<(), PresenceError>> = futures::stream::iter(sessions)
                .map(|s| async move { self.record_local(&s).await })
                .buffer_unordered(64)
                .collect()
                .await;
            results.into_iter().collect::<Result<Vec<()>, _>>()?;
        }
        let pending = std::mem::take(
            &mut *self
                .pending_offline
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for (i, (user, device, conn)) in pending.iter().enumerate() {
            let done = self.del_if_conn(user, device, *conn).await;
            if done.is_ok() {
                self.forget_local(user, device, *conn).await;
            }
            if let Err(e) = done {
                let mut p = self
                    .pending_offline
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                p.extend(pending[i..].iter().cloned());
                return Err(e);
            }
        }
        Ok(())
    }
}

async fn heartbeat_loop(inner: Arc<Inner>) {
    let mut healthy = true;
    loop {
        match inner.beat().await {
            Ok(()) => {
                if !healthy {
                    tracing::info!(redis = %inner.target, "presence heartbeat restored");
                }
                healthy = true;
            }
            Err(e) => {
                // Logged on the transition only: an outage would flood the log.
                if healthy {
                    tracing::warn!(error = %e, "presence heartbeat failed; retrying");
                }
                healthy = false;
            }
        }
        tokio::time::sleep(if healthy {
            inner.heartbeat
        } else {
            // Retry sooner while down: the key may be about to expire.
            inner.heartbeat.min(Duration::from_secs(1))
        })
        .await;
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn online(&self, session: &DeviceSession) -> Result<(), PresenceError> {
        let inner = &self.inner;
        if !inner.beaten.load(Ordering::Acquire) {
            // An entry written before this life's first heartbeat would look
            // like a dead earlier life's to the other nodes.
            inner.beat().await?;
        }
        if session.node != inner.node {
            return inner.hset(session).await;
        }
        inner.record_local(session).await?;
        inner.lock_local().insert(
            (session.user.clone(), session.device_id.clone()),
            session.clone(),
        );
        Ok(())
    }

    async fn offline(
        &self,
        user: &UserKey,
        device_id: &str,
        conn_id: u64,
    ) -> Result<(), PresenceError> {
        let inner = &self.inner;
        {
            let mut local = inner.lock_local();
            let key = (user.clone(), device_id.to_string());
            if local.get(&key).is_some_and(|s| s.conn_id == conn_id) {
                local.remove(&key);
            }
        }
        match inner.del_if_conn(user, device_id, conn_id).await {
            Ok(()) => {
                inner.forget_local(user, device_id, conn_id).await;
                Ok(())
            }
            Err(e) => {
                // Retried by the heartbeat: a stale entry would count
                // against the device limit and draw useless routes.
                inner
                    .pending_offline
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((user.clone(), device_id.to_string(), conn_id));
                Err(e)
            }
        }
    }

    async fn devices(&self, user: &UserKey) -> Result<Vec<DeviceSession>, PresenceError> {
        let inner = &self.inner;
        let key = inner.user_key(user);
        let raw: Vec<(String, String)> = inner.query(redis::cmd("HGETALL").arg(&key)).await?;
        let mut live = Vec::with_capacity(raw.len());
        let mut dead: Vec<(String, String)> = Vec::new();
        // Node → (its current boot id, whether that was read just now).
        let mut boots: HashMap<String, (Option<String>, bool)> = HashMap::new();
        for (device_id, value) in raw {
            let Some(s) = decode(&value) else {
                dead.push((device_id, value));
                continue;
            };
            // An empty boot: written for another node by name only.
            let matches = |b: &Option<String>| {
                b.as_ref()
                    .is_some_and(|b| s.boot.is_empty() || *b == s.boot)
            };
            let (mut current, mut fresh) = match boots.get(&s.node) {
                Some(b) => b.clone(),
                None => (inner.live_boot(&s.node, false).await?, false),
            };
            if !matches(&current) && !fresh {
                // A cached answer may predate a restarted node's first
                // heartbeat: never judge an entry dead on it.
                current = inner.live_boot(&s.node, true).await?;
                fresh = true;
            }
            boots.insert(s.node.clone(), (current.clone(), fresh));
            let alive = matches(&current);
            if alive {
                live.push(DeviceSession {
                    user: user.clone(),
                    device_id,
                    platform: s.platform,
                    node: s.node,
                    conn_id: s.conn_id,
                    since_ms: s.since_ms,
                });
            } else {
                dead.push((device_id, value));
            }
        }
        if !dead.is_empty() {
            let mut inv = inner.reap_script.key(&key);
            for (field, value) in &dead {
                inv.arg(field).arg(value);
            }
            let reaped = match inner.conn.get().await {
                Ok(mut c) => inv.invoke_async::<i64>(&mut c).await,
                Err(e) => Err(e),
            };
            if let Err(e) = reaped {
                // The entries stay filtered out; a later lookup reaps them.
                tracing::debug!(error = %e, "could not delete expired presence entries");
            }
        }
        Ok(live)
    }

    /// The users' lookups run concurrently, `LOOKUPS_IN_FLIGHT` at a time,
    /// so the multiplexed connection pipelines them: a fan-out to 1,000
    /// users is a few round trips, not 1,000. (Not one Redis pipeline: the
    /// users' keys sit in different cluster slots.)
    async fn devices_many(
        &self,
        users: &[UserKey],
    ) -> Result<Vec<Vec<DeviceSession>>, PresenceError> {
        // Made up front (lazy futures: nothing runs until polled) so the
        // stream's item type names no closure lifetime.
        let lookups: Vec<_> = users.iter().map(|u| self.devices(u)).collect();
        futures::stream::iter(lookups)
            .buffered(LOOKUPS_IN_FLIGHT)
            .try_collect()
            .await
    }

    async fn ping(&self) -> Result<(), PresenceError> {
        self.inner
            .query::<String>(&redis::cmd("PING"))
            .await
            .map(|_| ())
    }

    async fn departed(&self) -> Result<Vec<DeviceSession>, PresenceError> {
        self.inner.reap_dead_lives().await
    }
}
