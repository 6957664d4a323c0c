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
    /// Checks that the backend is reachable (for `/readyz`).
    async fn ping(&self) -> Result<(), PresenceError> {
        Ok(())
    }
}

/// In-process presence for a single node.
#[derive(Default)]
pub struct MemoryPresence {
    // A std Mutex: every operation is a short map update that never awaits.
    users: Mutex<HashMap<UserKey, Vec<DeviceSession>>>,
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
}
