//! Route: carries a delivery to the node that holds a device's connection.
//!
//! The embedded [`LocalRoute`] hands it straight to this node's [`Hub`]; the
//! clustered route publishes it on the target node's NATS subject. A
//! delivery lost in transit is acceptable: the device's ACK timer and `sync`
//! close the loop.

use std::sync::Arc;

use async_trait::async_trait;

use switchboard_proto::Packet;

use crate::hub::Hub;
use crate::model::{Entry, UserKey};

/// A timeline entry (or online-only message) for one user's devices on one node.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub user: UserKey,
    pub entry: Entry,
    /// The connection that sent the message: it has its ack and gets no push.
    pub skip_conn: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Route: Send + Sync + 'static {
    /// Delivers to the user's devices on `node`; returns how many devices
    /// were handed the push when that is known (0 for a remote node).
    async fn deliver(&self, node: &str, delivery: Delivery) -> Result<usize, RouteError>;

    /// Asks `node` to kick one connection with `code`; true when it was found
    /// (always true for a remote node, which answers asynchronously).
    async fn kick(
        &self,
        node: &str,
        user: &UserKey,
        conn_id: u64,
        code: u32,
    ) -> Result<bool, RouteError>;

    /// Checks that the backend is reachable (for `/readyz`).
    async fn ping(&self) -> Result<(), RouteError> {
        Ok(())
    }

    /// Delivers the same entry to several users' devices on `node` (an
    /// online-only fan-out, where seq 0 makes the push frame identical for
    /// every user); returns the devices reached per user, aligned with
    /// `users`, when known (0 for a remote node). Routes that can share one
    /// encoded frame override it.
    async fn deliver_many(
        &self,
        node: &str,
        users: &[&UserKey],
        entry: &Entry,
    ) -> Result<Vec<usize>, RouteError> {
        let mut reached = Vec::with_capacity(users.len());
        for &user in users {
            let delivery = Delivery {
                user: user.clone(),
                entry: entry.clone(),
                skip_conn: None,
            };
            reached.push(self.deliver(node, delivery).await?);
        }
        Ok(reached)
    }
}

/// Single-node route: every device is on this node's hub.
pub struct LocalRoute {
    hub: Arc<Hub>,
}

impl LocalRoute {
    pub fn new(hub: Arc<Hub>) -> LocalRoute {
        LocalRoute { hub }
    }
}

#[async_trait]
impl Route for LocalRoute {
    async fn deliver(&self, _node: &str, d: Delivery) -> Result<usize, RouteError> {
        Ok(self.hub.deliver(&d.user, &d.entry, d.skip_conn))
    }

    async fn deliver_many(
        &self,
        _node: &str,
        users: &[&UserKey],
        entry: &Entry,
    ) -> Result<Vec<usize>, RouteError> {
        // Encoded once, shared by every connection.
        let frame = Packet::Push(entry.to_pb()).encode(0);
        Ok(self.hub.deliver_many(users, entry.seq, &frame))
    }

    async fn kick(
        &self,
        _node: &str,
        user: &UserKey,
        conn_id: u64,
        code: u32,
    ) -> Result<bool, RouteError> {
        Ok(self.hub.kick_conn(user, conn_id, code))
    }
}
