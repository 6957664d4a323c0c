//! Presence: which devices of a user are online, and on which node.
//!
//! The embedded [`HubPresence`] is a view of this node's hub; the clustered
//! one keeps it in Redis, where each node's entries expire with its heartbeat
//! so a dead node's users drop out on their own.

use std::sync::Arc;

use async_trait::async_trait;

use crate::hub::Hub;
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
    /// The devices of nodes that stopped without recording them offline
    /// (killed, powered off, or cut off from presence for longer than its
    /// TTL), found since the last call and taken out of presence. Across
    /// all the nodes sharing the backend, each such device is returned by
    /// one call of one node (a node that dies while handing them out may
    /// leave them to be returned again: at least once). What a node that
    /// holds every connection itself (one node) never has: none.
    async fn departed(&self) -> Result<Vec<DeviceSession>, PresenceError> {
        Ok(Vec::new())
    }
}

/// Presence on a single node: a view of this node's [`Hub`], which holds
/// every connection there is, so no second registry is kept in step with it.
///
/// A connection is online once the gate registered it in the hub (before
/// the login's [`Presence::online`], which has nothing left to record);
/// [`Presence::offline`] takes it out of the hub (a device kicked past the
/// device limit, or replaced, stops getting pushes at once, and its own
/// logout then finds it gone and stays silent).
pub struct HubPresence {
    hub: Arc<Hub>,
    node: String,
}

impl HubPresence {
    /// The presence of `hub`, whose connections are on node `node`.
    pub fn new(hub: Arc<Hub>, node: impl Into<String>) -> HubPresence {
        HubPresence {
            hub,
            node: node.into(),
        }
    }
}

#[async_trait]
impl Presence for HubPresence {
    async fn online(&self, _session: &DeviceSession) -> Result<(), PresenceError> {
        Ok(())
    }

    async fn offline(
        &self,
        user: &UserKey,
        device_id: &str,
        conn_id: u64,
    ) -> Result<(), PresenceError> {
        let found = self
            .hub
            .connections_of(user)
            .iter()
            .any(|c| c.conn_id == conn_id && c.device_id == device_id);
        if found {
            self.hub.unregister(user, conn_id);
        }
        Ok(())
    }

    async fn devices(&self, user: &UserKey) -> Result<Vec<DeviceSession>, PresenceError> {
        Ok(self
            .hub
            .connections_of(user)
            .iter()
            .map(|c| c.device_session(&self.node))
            .collect())
    }
}
