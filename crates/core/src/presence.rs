//! Presence: which devices of a user are online, and on which node.
//!
//! The embedded [`MemoryPresence`] keeps it in this process; the clustered
//! one keeps it in Redis, where each node's entries expire with its heartbeat
//! so a dead node's users drop out on their own.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::model::UserKey;

/// One online device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSession {
    pub user: UserKey,
    pub device_id: String,
    pub platform: String,
    /// The node holding the connection.
    pub node: String,
    /// The connection's id on that node.
    pub conn_id: u64,
    /// When the device logged in (ms since the Unix epoch).
    pub since_ms: i64,
}

/// Where users' devices are, for a fan-out: `entries` hold
/// `(user index, node index, devices)`, users in ascending order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub nodes: Vec<String>,
    pub entries: Vec<(usize, usize, usize)>,
}

impl Placement {
    /// Counts one device of user `user` (an index) on `node`. Users must be
    /// added in ascending order.
    pub fn add(&mut self, user: usize, node: &str) {
        // Nearly always one node, or few: a scan beats a map.
        let n = match self.nodes.iter().position(|x| x == node) {
            Some(n) => n,
            None => {
                self.nodes.push(node.to_owned());
                self.nodes.len() - 1
            }
        };
        match self
            .entries
            .iter_mut()
            .rev()
            .take_while(|e| e.0 == user)
            .find(|e| e.1 == n)
        {
            Some(e) => e.2 += 1,
            None => self.entries.push((user, n, 1)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("presence unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records a device as online (replacing an entry for the same device id).
    async fn online(&self, session: &DeviceSession) -> Result<(), PresenceError>;
    /// Removes a device, only if it is still the given connection (a newer
    /// login of the same device must not be removed by the old one's exit).
    async fn offline(
        &self,
        user: &UserKey,
        device_id: &str,
        conn_id: u64,
    ) -> Result<(), PresenceError>;
    /// The user's online devices.
    async fn devices(&self, user: &UserKey) -> Result<Vec<DeviceSession>, PresenceError>;
    /// The online devices of each user, aligned with `users` (for presence
    /// queries and fan-outs to many users). Backends that can batch
    /// (one lock, one pipeline) override it.
    async fn devices_many(
        &self,
        users: &[UserKey],
    ) -> Result<Vec<Vec<DeviceSession>>, PresenceError> {
        let mut all = Vec::with_capacity(users.len());
        for user in users {
            all.push(self.devices(user).await?);
        }
        Ok(all)
    }
    /// Which nodes hold devices of each user, and how many: what a fan-out
    /// to many users needs, without copying every device's details.
    async fn placement(&self, users: &[UserKey]) -> Result<Placement, PresenceError> {
        let mut placement = Placement::default();
        for (i, devices) in self.devices_many(users).await?.iter().enumerate() {
            for d in devices {
                placement.add(i, &d.node);
            }
        }
        Ok(placement)
    }
    /// Checks that the backend is reachable (for `/readyz`).
    async fn ping(&self) -> Result<(), PresenceError> {
        Ok(())
    }
    /// Every device this presence knows is on this node (the in-process
    /// presence). Then this node's hub holds the same connections, and a
    /// fan-out hands every target straight to it instead of looking each
    /// user up twice (a cache miss or more per user, ~1 µs, measured).
    fn single_node(&self) -> bool {
        false
    }
}

/// In-process presence for a single node.
#[derive(Default)]
pub struct MemoryPresence {
    // A std Mutex: every operation is a short map update that never awaits.
    // foldhash: see the hub's shards.
    users: Mutex<HashMap<UserKey, Vec<DeviceSession>, foldhash::fast::RandomState>>,
}

impl MemoryPresence {
    pub fn new() -> MemoryPresence {
        MemoryPresence::default()
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn online(&self, session: &DeviceSession) -> Result<(), PresenceError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let devices = users.entry(session.user.clone()).or_default();
        devices.retain(|d| d.device_id != session.device_id);
        // Exactly one more slot: most users have one device, and a Vec's
        // first growth would make room for four (544 B instead of 136).
        devices.reserve_exact(1);
        devices.push(session.clone());
        Ok(())
    }

    async fn offline(
        &self,
        user: &UserKey,
        device_id: &str,
        conn_id: u64,
    ) -> Result<(), PresenceError> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(devices) = users.get_mut(user) {
            devices.retain(|d| !(d.device_id == device_id && d.conn_id == conn_id));
            if devices.is_empty() {
                users.remove(user);
            }
        }
        Ok(())
    }

    async fn devices(&self, user: &UserKey) -> Result<Vec<DeviceSession>, PresenceError> {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        Ok(users.get(user).cloned().unwrap_or_default())
    }

    async fn devices_many(
        &self,
        users: &[UserKey],
    ) -> Result<Vec<Vec<DeviceSession>>, PresenceError> {
        // One lock for the whole batch.
        let map = self.users.lock().unwrap_or_else(|e| e.into_inner());
        Ok(users
            .iter()
            .map(|u| map.get(u).cloned().unwrap_or_default())
            .collect())
    }

    fn single_node(&self) -> bool {
        true
    }

    async fn placement(&self, users: &[UserKey]) -> Result<Placement, PresenceError> {
        let mut placement = Placement::default();
        let map = self.users.lock().unwrap_or_else(|e| e.into_inner());
        for (i, user) in users.iter().enumerate() {
            for d in map.get(user).into_iter().flatten() {
                placement.add(i, &d.node);
            }
        }
        Ok(placement)
    }
}
