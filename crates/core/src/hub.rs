//! The hub: this node's registry of logged-in connections, where pushes land.
//!
//! A connection task registers a [`ConnHandle`] after login. A delivery
//! encodes its `Push` frame once and hands the same `Bytes` to every device
//! of the user with `try_send`: a full outbound queue means a slow consumer,
//! which is kicked (it reconnects and syncs) so it never stalls the sender,
//! the store or any other user.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use switchboard_proto::{Packet, code};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::{Entry, UserKey};

/// What the hub sends to a connection task.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// An encoded `Push` frame for timeline entry `seq` (0: online-only, no ack expected).
    Push { seq: u64, frame: Bytes },
}

/// The hub's side of one logged-in connection.
#[derive(Debug)]
pub struct ConnHandle {
    pub conn_id: u64,
    pub user: UserKey,
    pub device_id: String,
    pub platform: String,
    pub since_ms: i64,
    tx: mpsc::Sender<Outbound>,
    kill: CancellationToken,
    kick_code: AtomicU32,
}

impl ConnHandle {
    pub fn new(
        conn_id: u64,
        user: UserKey,
        device_id: String,
        platform: String,
        tx: mpsc::Sender<Outbound>,
        kill: CancellationToken,
    ) -> ConnHandle {
        ConnHandle {
            conn_id,
            user,
            device_id,
            platform,
            since_ms: crate::now_ms(),
            tx,
            kill,
            kick_code: AtomicU32::new(0),
        }
    }

    /// Asks the connection task to send `Kick{code}` and close. The first
    /// reason wins.
    pub fn kick(&self, code: u32) {
        let _ = self
            .kick_code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.kill.cancel();
    }

    /// The kick code, once [`ConnHandle::kick`] was called.
    pub fn kick_code(&self) -> Option<u32> {
        match self.kick_code.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }
}

const SHARDS: usize = 64;

/// One shard of the hub: users to their connections on this node.
type Shard = Mutex<HashMap<UserKey, Vec<Arc<ConnHandle>>>>;

/// This node's logged-in connections, by user.
pub struct Hub {
    // Sharded std Mutexes: lookups and updates are short, never await, and
    // spreading users over 64 locks keeps fan-out threads from contending.
    shards: Box<[Shard]>,
    connections: AtomicU64,
    slow_consumers: AtomicU64,
    /// Push frames handed to connection queues, since start.
    pushes: AtomicU64,
}

/// This node's logged-in connections counted by platform and by app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    pub total: u64,
    pub by_platform: BTreeMap<String, u64>,
    pub by_app: BTreeMap<String, u64>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new()
    }
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            connections: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
        }
    }

    fn shard(
        &self,
        user: &UserKey,
    ) -> std::sync::MutexGuard<'_, HashMap<UserKey, Vec<Arc<ConnHandle>>>> {
        use std::hash::{Hash, Hasher};
        // The same user must land on the same shard every time: a fixed-key hasher.
        let mut h = std::hash::DefaultHasher::new();
        user.hash(&mut h);
        let i = (h.finish() as usize) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a logged-in connection.
    pub fn register(&self, conn: Arc<ConnHandle>) {
        self.shard(&conn.user)
            .entry(conn.user.clone())
            .or_default()
            .push(conn);
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Removes a connection (when its task ends).
    pub fn unregister(&self, user: &UserKey, conn_id: u64) {
        let mut shard = self.shard(user);
        if let Some(conns) = shard.get_mut(user) {
            let before = conns.len();
            conns.retain(|c| c.conn_id != conn_id);
            if conns.len() < before {
                self.connections.fetch_sub(1, Ordering::Relaxed);
            }
            if conns.is_empty() {
                shard.remove(user);
            }
        }
    }

    /// Delivers a timeline entry to the user's connections here, except
    /// `skip_conn`. Returns how many connections were handed the push.
    pub fn deliver(&self, user: &UserKey, entry: &Entry, skip_conn: Option<u64>) -> usize {
        let conns = self.connections_of(user);
        if conns.iter().all(|c| Some(c.conn_id) == skip_conn) {
            return 0;
        }
        let frame = Packet::Push(entry.to_pb()).encode(0);
        self.deliver_frame(&conns, entry.seq, &frame, skip_conn)
    }

    /// Hands an already encoded push frame to the given connections.
    pub fn deliver_frame(
        &self,
        conns: &[Arc<ConnHandle>],
        seq: u64,
        frame: &Bytes,
        skip_conn: Option<u64>,
    ) -> usize {
        let reached = conns
            .iter()
            .filter(|c| Some(c.conn_id) != skip_conn)
            .filter(|c| self.hand_over(c, seq, frame))
            .count();
        self.count_pushes(seq, reached);
        reached
    }

    /// Hands one shared push frame to every connection here of each user
    /// (an online-only fan-out: with seq 0 the frame is the same for all).
    /// Returns, aligned with `users`, how many connections each one got.
    pub fn deliver_many(&self, users: &[&UserKey], seq: u64, frame: &Bytes) -> Vec<usize> {
        let mut total = 0;
        let reached = users
            .iter()
            .map(|&user| {
                // try_send never waits, so it is done under the shard lock,
                // which saves cloning the connection list per user.
                let shard = self.shard(user);
                let n = shard.get(user).map_or(0, |conns| {
                    conns
                        .iter()
                        .filter(|c| self.hand_over(c, seq, frame))
                        .count()
                });
                total += n;
                n
            })
            .collect();
        self.count_pushes(seq, total);
        reached
    }

    /// `try_send` of one push; a full queue is a slow consumer, kicked.
    fn hand_over(&self, c: &ConnHandle, seq: u64, frame: &Bytes) -> bool {
        match c.tx.try_send(Outbound::Push {
            seq,
            frame: frame.clone(),
        }) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Slow consumer: drop it rather than wait; it syncs on reconnect.
                self.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(conn_id = c.conn_id, user = %c.user, "outbound queue full; kicking slow consumer");
                c.kick(code::KICK_SLOW_CONSUMER);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn count_pushes(&self, seq: u64, n: usize) {
        if n == 0 {
            return;
        }
        self.pushes.fetch_add(n as u64, Ordering::Relaxed);
        let mode = if seq == 0 { "online" } else { "stored" };
        metrics::counter!(crate::stats::PUSHES, "mode" => mode).increment(n as u64);
    }

    /// The user's connections on this node.
    pub fn connections_of(&self, user: &UserKey) -> Vec<Arc<ConnHandle>> {
        self.shard(user).get(user).cloned().unwrap_or_default()
    }

    /// Kicks one connection of a user; true when it was here.
    pub fn kick_conn(&self, user: &UserKey, conn_id: u64, code: u32) -> bool {
        let conns = self.connections_of(user);
        let found = conns.iter().find(|c| c.conn_id == conn_id);
        if let Some(c) = found {
            c.kick(code);
        }
        found.is_some()
    }

    /// Kicks every connection of a user here; returns how many.
    pub fn kick_user(&self, user: &UserKey, code: u32) -> usize {
        let conns = self.connections_of(user);
        conns.iter().for_each(|c| c.kick(code));
        conns.len()
    }

    /// Kicks every connection (shutdown).
    pub fn kick_all(&self, code: u32) -> usize {
        let mut n = 0;
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for c in shard.values().flatten() {
                c.kick(code);
                n += 1;
            }
        }
        n
    }

    /// Logged-in connections on this node.
    pub fn connection_count(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Push frames handed to connection queues, since start.
    pub fn push_count(&self) -> u64 {
        self.pushes.load(Ordering::Relaxed)
    }

    /// Logged-in connections here, by platform and by app (one pass over
    /// the shards; for operator stats, not for a hot path).
    pub fn connection_counts(&self) -> ConnectionCounts {
        let mut counts = ConnectionCounts::default();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for c in shard.values().flatten() {
                counts.total += 1;
                *counts.by_platform.entry(c.platform.clone()).or_default() += 1;
                *counts.by_app.entry(c.user.app.clone()).or_default() += 1;
            }
        }
        counts
    }

    /// Connections kicked because their queue was full, since start.
    pub fn slow_consumer_count(&self) -> u64 {
        self.slow_consumers.load(Ordering::Relaxed)
    }
}
