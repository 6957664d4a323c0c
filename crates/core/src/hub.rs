//! The hub: this node's registry of logged-in connections, where pushes land.
//!
//! A connection task registers a [`ConnHandle`] after login. A delivery
//! encodes its `Push` frame once and hands the same `Bytes` to every device
//! of the user with `try_send`: a full outbound queue means a slow consumer,
//! which is kicked (it reconnects and syncs) so it never stalls the sender,
//! the store or any other user.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use switchboard_proto::code;
use tokio::sync::Notify;

use crate::group::GroupKey;
use crate::model::{Entry, UserKey};
use crate::presence::DeviceSession;
use crate::route::Target;

/// What the hub sends to a connection task.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// An encoded `Push` frame for entry `seq` of a timeline (0: online-only,
    /// no ack expected): the user's own timeline when `group` is `None`,
    /// else that group's (an ack names the timeline it acknowledges).
    Push {
        seq: u64,
        frame: Bytes,
        group: Option<Arc<str>>,
    },
}

/// The hub's side of one logged-in connection.
#[derive(Debug)]
pub struct ConnHandle {
    pub conn_id: u64,
    pub user: UserKey,
    pub device_id: String,
    pub platform: String,
    pub since_ms: i64,
    /// The outbound queue, which also carries the kick: one wake-up source
    /// for the connection task instead of a queue and a cancellation token.
    tx: OutboundTx,
}

impl ConnHandle {
    pub fn new(
        conn_id: u64,
        user: UserKey,
        device_id: String,
        platform: String,
        tx: OutboundTx,
    ) -> ConnHandle {
        ConnHandle {
            conn_id,
            user,
            device_id,
            platform,
            since_ms: crate::now_ms(),
            tx,
        }
    }

    /// Asks the connection task to send `Kick{code}` and close, ahead of
    /// any push still queued. The first reason wins.
    pub fn kick(&self, code: u32) {
        self.tx.kick(code);
    }

    /// This connection as presence records it, on node `node`.
    pub fn device_session(&self, node: &str) -> DeviceSession {
        DeviceSession {
            user: self.user.clone(),
            device_id: self.device_id.clone(),
            platform: self.platform.clone(),
            node: node.to_string(),
            conn_id: self.conn_id,
            since_ms: self.since_ms,
        }
    }
}

/// Creates one connection's outbound queue, bounded at `capacity` pushes.
///
/// Why not `tokio::sync::mpsc`: its bounded channel allocates a 32-slot
/// block up front (1.3 KB with 40-byte items) plus a ~500 B cache-padded
/// channel state, ~1.8 KB per connection that an idle connection never uses
/// (measured with heaptrack at 2,000 idle connections). This queue is one
/// small `Arc` (~100 B); its `VecDeque` is allocated on the first push and
/// let go again when a burst has drained. Only one receiver (the connection
/// task) and one sender (its [`ConnHandle`]) exist, and every operation is
/// a short critical section that never awaits, so a std `Mutex` serves.
///
/// The queue also carries the kick (`OutboundTx::kick`), which the receiver
/// sees before any queued push: a connection task waits on this one queue
/// rather than on a queue and a `CancellationToken` (whose tree node and
/// wait future cost ~250 B per idle connection).
pub fn outbound_queue(capacity: usize) -> (OutboundTx, OutboundRx) {
    let q = Arc::new(Queue {
        items: Mutex::new(VecDeque::new()),
        capacity: capacity.max(1),
        ready: Notify::new(),
        kicked: AtomicU32::new(0),
        tx_gone: AtomicBool::new(false),
        rx_gone: AtomicBool::new(false),
    });
    (OutboundTx { q: q.clone() }, OutboundRx { q })
}

struct Queue {
    items: Mutex<VecDeque<Outbound>>,
    capacity: usize,
    /// Wakes the receiver; `notify_one` keeps a permit when it is not waiting.
    ready: Notify,
    /// The kick code; 0 while not kicked.
    kicked: AtomicU32,
    tx_gone: AtomicBool,
    rx_gone: AtomicBool,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Outbound>> {
        self.items.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kick_code(&self) -> Option<u32> {
        match self.kicked.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.lock().len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// Why a push could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrySendError {
    /// The queue holds `capacity` pushes: a slow consumer.
    Full,
    /// The connection task is gone.
    Closed,
}

/// Why nothing was received without waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    /// Empty, and the sender is gone.
    Disconnected,
    /// The connection was kicked with this code (queued pushes are not handed out).
    Kicked(u32),
}

/// Why the queue will hand out nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Kicked with this code.
    Kicked(u32),
    /// The sender is gone and the queue is empty.
    Disconnected,
}

/// The hub's end of a connection's outbound queue.
#[derive(Debug)]
pub struct OutboundTx {
    q: Arc<Queue>,
}

impl OutboundTx {
    /// Queues a push without waiting.
    pub fn try_send(&self, out: Outbound) -> Result<(), TrySendError> {
        {
            let mut items = self.q.lock();
            // Checked under the lock the receiver's drop also takes, so no
            // push lands after it emptied the queue.
            if self.q.rx_gone.load(Ordering::Acquire) {
                return Err(TrySendError::Closed);
            }
            if items.len() >= self.q.capacity {
                return Err(TrySendError::Full);
            }
            items.push_back(out);
        }
        self.q.ready.notify_one();
        Ok(())
    }

    /// Tells the receiver to stop with `code`; the first code wins.
    pub fn kick(&self, code: u32) {
        let _ = self
            .q
            .kicked
            .compare_exchange(0, code.max(1), Ordering::AcqRel, Ordering::Acquire);
        self.q.ready.notify_one();
    }
}

impl Drop for OutboundTx {
    fn drop(&mut self) {
        self.q.tx_gone.store(true, Ordering::Release);
        self.q.ready.notify_one();
    }
}

/// The connection task's end of its outbound queue.
#[derive(Debug)]
pub struct OutboundRx {
    q: Arc<Queue>,
}

impl OutboundRx {
    /// The next push, or why there is none to come: a kick (seen before
    /// any queued push) or a gone sender. Cancel-safe: an item is only taken
    /// in the poll that returns it.
    pub async fn recv(&mut self) -> Result<Outbound, Closed> {
        loop {
            match self.try_recv() {
                Ok(out) => return Ok(out),
                Err(TryRecvError::Disconnected) => return Err(Closed::Disconnected),
                Err(TryRecvError::Kicked(code)) => return Err(Closed::Kicked(code)),
                // A push or kick between the check and the wait leaves a
                // permit, so this wait then returns at once.
                Err(TryRecvError::Empty) => self.q.ready.notified().await,
            }
        }
    }

    /// The next push if one is queued (and the connection is not kicked).
    pub fn try_recv(&mut self) -> Result<Outbound, TryRecvError> {
        if let Some(code) = self.q.kick_code() {
            return Err(TryRecvError::Kicked(code));
        }
        let mut items = self.q.lock();
        match items.pop_front() {
            Some(out) => {
                // A drained queue lets go of its buffer: an idle connection
                // that once received pushes costs no more than one that
                // never did (one allocation per burst of pushes instead).
                if items.is_empty() {
                    *items = VecDeque::new();
                }
                Ok(out)
            }
            None if self.q.tx_gone.load(Ordering::Acquire) => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Pushes waiting in the queue.
    pub fn len(&self) -> usize {
        self.q.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for OutboundRx {
    fn drop(&mut self) {
        self.q.rx_gone.store(true, Ordering::Release);
        // Frames still queued are let go now, not when the hub drops the handle.
        *self.q.lock() = VecDeque::new();
    }
}

const SHARDS: usize = 64;

/// One shard of the hub: users to their connections on this node.
///
/// foldhash rather than std's SipHash: a fan-out hashes every target twice
/// (shard, then map), and a key comes from a signed token or the business's
/// own API call, not from an anonymous peer. The seed is still random per
/// process.
type Shard = Mutex<Users>;

/// Users to their connections on this node (one shard's share).
type Users = HashMap<UserKey, Vec<Arc<ConnHandle>>, foldhash::fast::RandomState>;

/// Groups to this node's connections of their members (one shard's
/// share). A map by connection id, not a `Vec`: a member of a large group
/// leaves without a scan of every other member's connection.
type Groups = HashMap<GroupKey, ConnSet, foldhash::fast::RandomState>;
type ConnSet = HashMap<u64, Arc<ConnHandle>, foldhash::fast::RandomState>;

/// This node's logged-in connections, by user.
pub struct Hub {
    // Sharded std Mutexes: lookups and updates are short, never await, and
    // spreading users over 64 locks keeps fan-out threads from contending.
    shards: Box<[Shard]>,
    /// Picks a user's shard; one seed for the hub's life, so a user always
    /// lands on the same shard.
    shard_of: foldhash::fast::RandomState,
    /// The group index: group -> this node's connections of its members,
    /// sharded like the users.
    groups: Box<[Mutex<Groups>]>,
    /// The groups each subscribed connection is in, so unregistering forgets
    /// them (only connections in some group have an entry). One lock:
    /// touched at login, logout and membership changes, never by a push.
    conn_groups: Mutex<HashMap<u64, Vec<GroupKey>, foldhash::fast::RandomState>>,
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
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            shard_of: foldhash::fast::RandomState::default(),
            groups: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            conn_groups: Mutex::new(HashMap::default()),
            connections: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
        }
    }

    fn shard(&self, user: &UserKey) -> std::sync::MutexGuard<'_, Users> {
        use std::hash::BuildHasher;
        let i = (self.shard_of.hash_one(user) as usize) % self.shards.len();
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a logged-in connection.
    pub fn register(&self, conn: Arc<ConnHandle>) {
        let mut shard = self.shard(&conn.user);
        let conns = shard.entry(conn.user.clone()).or_default();
        // One slot per device, not a Vec's default four.
        conns.reserve_exact(1);
        conns.push(conn);
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    fn group_shard(&self, group: &GroupKey) -> std::sync::MutexGuard<'_, Groups> {
        use std::hash::BuildHasher;
        let i = (self.shard_of.hash_one(group) as usize) % self.groups.len();
        self.groups[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_conn_groups(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<GroupKey>, foldhash::fast::RandomState>> {
        self.conn_groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Removes a connection (when its task ends), and forgets its groups.
    pub fn unregister(&self, user: &UserKey, conn_id: u64) {
        // Lock order, everywhere: the user's shard, then the connection's
        // groups, then a group's shard. Holding the user's shard while the
        // groups are forgotten means a membership change of this user
        // cannot add the connection back to a group after it left.
        let mut shard = self.shard(user);
        let Some(conns) = shard.get_mut(user) else {
            return;
        };
        let before = conns.len();
        conns.retain(|c| c.conn_id != conn_id);
        let removed = conns.len() < before;
        if conns.is_empty() {
            shard.remove(user);
        }
        if !removed {
            return;
        }
        self.connections.fetch_sub(1, Ordering::Relaxed);
        let groups = self.lock_conn_groups().remove(&conn_id);
        for group in groups.into_iter().flatten() {
            let mut gs = self.group_shard(&group);
            if let Some(set) = gs.get_mut(&group) {
                set.remove(&conn_id);
                if set.is_empty() {
                    gs.remove(&group);
                }
            }
        }
    }

    /// Subscribes a logged-in connection of `user` to the groups `gids` of
    /// the user's app (the logic calls it at login, with the user's groups):
    /// it gets their pushes until it unregisters or leaves them.
    pub fn subscribe_groups(&self, conn_id: u64, user: &UserKey, gids: &[String]) {
        let shard = self.shard(user);
        let Some(conn) = shard
            .get(user)
            .and_then(|cs| cs.iter().find(|c| c.conn_id == conn_id))
        else {
            // Gone already (it logged out): nothing to subscribe.
            return;
        };
        for gid in gids {
            self.join(&GroupKey::new(user.app.clone(), gid.clone()), conn);
        }
    }

    /// Users `uids` of the group's app joined or left the group: every
    /// connection of theirs here starts or stops getting its pushes.
    pub fn membership(&self, group: &GroupKey, uids: &[String], joined: bool) {
        if uids.is_empty() && !joined {
            return self.dissolve(group);
        }
        for uid in uids {
            let user = UserKey::new(group.app.clone(), uid.clone());
            let shard = self.shard(&user);
            for conn in shard.get(&user).into_iter().flatten() {
                if joined {
                    self.join(group, conn);
                } else {
                    self.leave(group, conn.conn_id);
                }
            }
        }
    }

    /// Adds `conn` to the group's set (the caller holds its user's shard).
    fn join(&self, group: &GroupKey, conn: &Arc<ConnHandle>) {
        let mut cg = self.lock_conn_groups();
        let mine = cg.entry(conn.conn_id).or_default();
        if mine.contains(group) {
            return;
        }
        mine.push(group.clone());
        self.group_shard(group)
            .entry(group.clone())
            .or_default()
            .insert(conn.conn_id, conn.clone());
    }

    /// Takes a connection out of the group's set (the caller holds its
    /// user's shard).
    fn leave(&self, group: &GroupKey, conn_id: u64) {
        let mut cg = self.lock_conn_groups();
        let Some(mine) = cg.get_mut(&conn_id) else {
            return;
        };
        let before = mine.len();
        mine.retain(|g| g != group);
        if mine.len() == before {
            return;
        }
        if mine.is_empty() {
            cg.remove(&conn_id);
        }
        let mut gs = self.group_shard(group);
        if let Some(set) = gs.get_mut(group) {
            set.remove(&conn_id);
            if set.is_empty() {
                gs.remove(group);
            }
        }
    }

    /// Every connection leaves the group (it was deleted): a group created
    /// again with the same id starts with no subscriber.
    fn dissolve(&self, group: &GroupKey) {
        // Lock order as in `leave`: the connections' lists, then the group's shard.
        let mut cg = self.lock_conn_groups();
        let Some(set) = self.group_shard(group).remove(group) else {
            return;
        };
        for conn_id in set.keys() {
            if let Some(mine) = cg.get_mut(conn_id) {
                mine.retain(|g| g != group);
                if mine.is_empty() {
                    cg.remove(conn_id);
                }
            }
        }
    }

    /// Whether connection `conn_id` is subscribed to the group: its user was
    /// a member when it logged in, or joined since, and has not left.
    /// Asked on every group ack: reads the group's shard, not the one lock
    /// of every connection's group list.
    pub fn is_subscribed(&self, conn_id: u64, group: &GroupKey) -> bool {
        self.group_shard(group)
            .get(group)
            .is_some_and(|set| set.contains_key(&conn_id))
    }

    /// This node's connections subscribed to the group.
    pub fn group_connections(&self, group: &GroupKey) -> usize {
        self.group_shard(group).get(group).map_or(0, |s| s.len())
    }

    /// Hands each entry's push frame (`frames`, aligned with `entries`;
    /// entries that are the same share one encoding) to this node's
    /// connections of its target, except the connection `skip`. Returns,
    /// aligned with `entries`, how many connections each one reached.
    pub fn deliver(
        &self,
        entries: &[(Target, Entry)],
        frames: &[Bytes],
        skip: Option<u64>,
    ) -> Vec<usize> {
        let (mut stored, mut online) = (0, 0);
        let reached = entries
            .iter()
            .zip(frames)
            .map(|((target, entry), frame)| {
                let n = match target {
                    Target::User(user) => self.push_user(user, entry.seq, frame, skip),
                    Target::Group(group) => {
                        let gid: Arc<str> = Arc::from(group.gid.as_str());
                        self.push_group(group, &gid, entry.seq, frame, skip)
                    }
                };
                if entry.seq == 0 {
                    online += n;
                } else {
                    stored += n;
                }
                n
            })
            .collect();
        self.count_pushes(0, online);
        self.count_pushes(1, stored);
        reached
    }

    /// Hands an encoded push of the user's timeline (entry `seq`) to the
    /// user's connections here, except `skip`; returns how many. The
    /// caller counts the pushes ([`Hub::count_pushes`]).
    pub fn push_user(&self, user: &UserKey, seq: u64, frame: &Bytes, skip: Option<u64>) -> usize {
        // try_send never waits, so it is done under the shard lock, which
        // saves cloning the connection list per user.
        let shard = self.shard(user);
        shard.get(user).map_or(0, |conns| {
            conns
                .iter()
                .filter(|c| Some(c.conn_id) != skip)
                .filter(|c| self.hand_over(c, seq, frame, None))
                .count()
        })
    }

    /// Hands an encoded push of the group's timeline (entry `seq`) to this
    /// node's connections of its members, except `skip`; returns how many.
    /// `gid` is shared by every push (the connection tracks acks by it).
    pub fn push_group(
        &self,
        group: &GroupKey,
        gid: &Arc<str>,
        seq: u64,
        frame: &Bytes,
        skip: Option<u64>,
    ) -> usize {
        let shard = self.group_shard(group);
        shard.get(group).map_or(0, |conns| {
            conns
                .values()
                .filter(|c| Some(c.conn_id) != skip)
                .filter(|c| self.hand_over(c, seq, frame, Some(gid)))
                .count()
        })
    }

    /// `try_send` of one push; a full queue is a slow consumer, kicked.
    fn hand_over(&self, c: &ConnHandle, seq: u64, frame: &Bytes, group: Option<&Arc<str>>) -> bool {
        match c.tx.try_send(Outbound::Push {
            seq,
            frame: frame.clone(),
            group: group.cloned(),
        }) {
            Ok(()) => true,
            Err(TrySendError::Full) => {
                // Slow consumer: drop it rather than wait; it syncs on reconnect.
                self.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::info!(conn_id = c.conn_id, user = %c.user, "outbound queue full; kicking slow consumer");
                c.kick(code::KICK_SLOW_CONSUMER);
                false
            }
            Err(TrySendError::Closed) => false,
        }
    }

    /// Counts `n` pushes handed to connections (`seq` 0: online-only).
    pub fn count_pushes(&self, seq: u64, n: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn push(seq: u64) -> Outbound {
        Outbound::Push {
            seq,
            frame: Bytes::from_static(b"frame"),
            group: None,
        }
    }

    fn seq_of(o: Outbound) -> u64 {
        let Outbound::Push { seq, .. } = o;
        seq
    }

    #[tokio::test]
    async fn outbound_queue_is_bounded_ordered_and_wakes_the_receiver() {
        let (tx, mut rx) = outbound_queue(3);
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Empty);
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await.ok().map(seq_of);
            (first, rx)
        });
        tokio::task::yield_now().await;
        tx.try_send(push(1)).unwrap();
        let (first, mut rx) = waiter.await.unwrap();
        assert_eq!(first, Some(1));
        for s in 2..=4 {
            tx.try_send(push(s)).unwrap();
        }
        assert_eq!(tx.try_send(push(5)), Err(TrySendError::Full));
        assert_eq!(rx.len(), 3);
        assert_eq!(seq_of(rx.try_recv().unwrap()), 2);
        assert_eq!(rx.recv().await.map(seq_of), Ok(3));
        assert_eq!(rx.recv().await.map(seq_of), Ok(4));
        drop(tx);
        assert_eq!(rx.recv().await.map(seq_of), Err(Closed::Disconnected));
        assert_eq!(rx.try_recv().unwrap_err(), TryRecvError::Disconnected);
    }

    #[tokio::test]
    async fn a_kick_wakes_the_receiver_ahead_of_queued_pushes() {
        let (tx, mut rx) = outbound_queue(10);
        tx.try_send(push(1)).unwrap();
        tx.kick(code::KICK_SLOW_CONSUMER);
        tx.kick(code::KICK_ADMIN);
        assert_eq!(
            rx.recv().await.map(seq_of),
            Err(Closed::Kicked(code::KICK_SLOW_CONSUMER))
        );
        assert_eq!(
            rx.try_recv().unwrap_err(),
            TryRecvError::Kicked(code::KICK_SLOW_CONSUMER)
        );
        // A waiting receiver is woken by the kick.
        let (tx, mut rx) = outbound_queue(10);
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await.map(seq_of);
            (first, rx)
        });
        tokio::task::yield_now().await;
        tx.kick(code::KICK_SHUTDOWN);
        let (first, mut rx) = waiter.await.unwrap();
        assert_eq!(first, Err(Closed::Kicked(code::KICK_SHUTDOWN)));
        assert_eq!(
            rx.try_recv().unwrap_err(),
            TryRecvError::Kicked(code::KICK_SHUTDOWN)
        );
    }

    #[tokio::test]
    async fn a_burst_lets_go_of_its_buffer_and_a_closed_queue_refuses() {
        let (tx, mut rx) = outbound_queue(1000);
        for s in 0..100 {
            tx.try_send(push(s)).unwrap();
        }
        while rx.try_recv().is_ok() {}
        assert_eq!(rx.q.lock().capacity(), 0, "an emptied buffer is freed");
        tx.try_send(push(1)).unwrap();
        assert_eq!(rx.try_recv().map(seq_of), Ok(1));
        assert_eq!(rx.q.lock().capacity(), 0, "a small one too");
        // A recv cancelled by select! loses nothing: the item stays queued.
        tokio::select! {
            biased;
            _ = rx.recv() => panic!("nothing queued yet"),
            _ = tokio::task::yield_now() => {}
        }
        tx.try_send(push(7)).unwrap();
        assert_eq!(rx.recv().await.map(seq_of), Ok(7));
        drop(rx);
        assert_eq!(tx.try_send(push(8)), Err(TrySendError::Closed));
    }

    fn conn(hub: &Hub, uid: &str, conn_id: u64) -> OutboundRx {
        let (tx, rx) = outbound_queue(16);
        let user = UserKey::new("demo", uid);
        hub.register(Arc::new(ConnHandle::new(
            conn_id,
            user,
            format!("d{conn_id}"),
            "test".into(),
            tx,
        )));
        rx
    }

    fn group_entry(gid: &str, seq: u64) -> (Target, Entry) {
        let message = crate::model::Message {
            id: seq,
            from: UserKey::new("demo", "alice"),
            to: UserKey::new("demo", ""),
            kind: "text".into(),
            body: Bytes::from_static(b"hi"),
            client_msg_id: String::new(),
            server_time_ms: 0,
            group: gid.into(),
        };
        (
            Target::Group(GroupKey::new("demo", gid)),
            Entry {
                seq,
                message: Arc::new(message),
            },
        )
    }

    /// What a connection was handed: (group, seq) of each push.
    fn drained(rx: &mut OutboundRx) -> Vec<(Option<String>, u64)> {
        let mut got = Vec::new();
        while let Ok(Outbound::Push { seq, group, .. }) = rx.try_recv() {
            got.push((group.map(|g| g.to_string()), seq));
        }
        got
    }

    fn deliver(hub: &Hub, entries: &[(Target, Entry)], skip: Option<u64>) -> Vec<usize> {
        let frames = crate::route::push_frames(entries);
        hub.deliver(entries, &frames, skip)
    }

    #[test]
    fn group_pushes_reach_subscribed_connections_but_the_skipped_one() {
        let hub = Hub::new();
        let (mut a1, mut a2, mut b, mut c) = (
            conn(&hub, "alice", 1),
            conn(&hub, "alice", 2),
            conn(&hub, "bob", 3),
            conn(&hub, "carol", 4),
        );
        let alice = UserKey::new("demo", "alice");
        hub.subscribe_groups(1, &alice, &["g".into(), "h".into()]);
        hub.subscribe_groups(2, &alice, &["g".into()]);
        hub.subscribe_groups(3, &UserKey::new("demo", "bob"), &["g".into()]);
        // Unknown connection (gone already): nothing happens.
        hub.subscribe_groups(99, &alice, &["g".into()]);
        assert_eq!(hub.group_connections(&GroupKey::new("demo", "g")), 3);
        // Connection 1 sent entry 1 of g: its ack, not a push; alice's
        // other device gets it.
        let reached = deliver(&hub, &[group_entry("g", 1), group_entry("h", 1)], Some(1));
        assert_eq!(reached, [2, 0]);
        assert!(drained(&mut a1).is_empty());
        assert_eq!(drained(&mut a2), [(Some("g".into()), 1)]);
        assert_eq!(drained(&mut b), [(Some("g".into()), 1)]);
        assert!(drained(&mut c).is_empty(), "not a member");
        assert_eq!(deliver(&hub, &[group_entry("h", 2)], None), [1]);
        assert_eq!(drained(&mut a1), [(Some("h".into()), 2)]);
        // A user's timeline push says no group.
        let (_, e) = group_entry("", 5);
        assert_eq!(
            deliver(&hub, &[(Target::User(alice.clone()), e)], Some(2)),
            [1]
        );
        assert_eq!(drained(&mut a1), [(None, 5)]);
    }

    #[test]
    fn membership_changes_apply_to_every_connection_of_the_users() {
        let hub = Hub::new();
        let g = GroupKey::new("demo", "g");
        let (mut b1, mut b2, mut c) = (
            conn(&hub, "bob", 1),
            conn(&hub, "bob", 2),
            conn(&hub, "carol", 3),
        );
        hub.membership(&g, &["bob".into(), "dave".into()], true);
        assert_eq!(
            hub.group_connections(&g),
            2,
            "both of bob's; dave is offline"
        );
        // Joining twice changes nothing.
        hub.membership(&g, &["bob".into()], true);
        assert_eq!(deliver(&hub, &[group_entry("g", 1)], None), [2]);
        assert_eq!(drained(&mut b1), [(Some("g".into()), 1)]);
        assert_eq!(drained(&mut b2), [(Some("g".into()), 1)]);
        // Another app's group of the same id is another group.
        hub.membership(&GroupKey::new("other", "g"), &["carol".into()], true);
        assert_eq!(deliver(&hub, &[group_entry("g", 2)], None), [2]);
        assert!(drained(&mut c).is_empty());
        assert!(hub.is_subscribed(1, &g) && hub.is_subscribed(2, &g));
        assert!(!hub.is_subscribed(3, &g), "carol is not in demo's g");
        hub.membership(&g, &["bob".into()], false);
        assert_eq!(hub.group_connections(&g), 0);
        assert!(
            !hub.is_subscribed(1, &g),
            "left: its acks prove membership again"
        );
        assert_eq!(deliver(&hub, &[group_entry("g", 3)], None), [0]);
        assert_eq!(drained(&mut b1), [(Some("g".into()), 2)]);
        // Leaving again is harmless.
        hub.membership(&g, &["bob".into()], false);
    }

    #[test]
    fn unregister_forgets_the_connections_groups() {
        let hub = Hub::new();
        let (g, h) = (GroupKey::new("demo", "g"), GroupKey::new("demo", "h"));
        let alice = UserKey::new("demo", "alice");
        let _a1 = conn(&hub, "alice", 1);
        let mut a2 = conn(&hub, "alice", 2);
        hub.subscribe_groups(1, &alice, &["g".into(), "h".into()]);
        hub.subscribe_groups(2, &alice, &["g".into()]);
        hub.unregister(&alice, 1);
        assert_eq!(hub.group_connections(&g), 1);
        assert_eq!(hub.group_connections(&h), 0, "an empty group set is let go");
        assert!(hub.lock_conn_groups().get(&1).is_none());
        assert_eq!(deliver(&hub, &[group_entry("g", 1)], None), [1]);
        assert_eq!(drained(&mut a2), [(Some("g".into()), 1)]);
        // A membership change after the logout does not bring it back.
        hub.membership(&h, &["alice".into()], true);
        assert_eq!(
            hub.group_connections(&h),
            1,
            "only the connection still here"
        );
        hub.unregister(&alice, 2);
        assert_eq!(hub.group_connections(&g) + hub.group_connections(&h), 0);
        assert!(hub.lock_conn_groups().is_empty());
        assert_eq!(hub.connection_count(), 0);
    }
}
