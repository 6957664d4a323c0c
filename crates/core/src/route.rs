//! Route: the one way a stored (or online-only) entry reaches the devices
//! online now, wherever they are.
//!
//! A [`Delivery`] is a batch: entries for users' timelines and for groups'
//! timelines, and the sender's connection to skip. The embedded
//! [`LocalRoute`] hands the whole batch to this node's [`Hub`], which is the
//! whole of presence on one node. The clustered route (NATS, in
//! `switchboard-backends`) asks presence once per batch where the users'
//! devices are, hands this node's share to the hub, sends the rest as one
//! publish per node, and broadcasts group entries once to every node (each
//! node's hub knows which of its connections belong to which group).
//!
//! A delivery lost in transit is acceptable: the entries are durable, and a
//! device's ack timer and `sync` close the loop.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use switchboard_proto::Packet;

use crate::group::GroupKey;
use crate::hub::Hub;
use crate::model::{Entry, UserKey};

/// Whose devices an entry goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every device of the user (a user's timeline entry, or online-only).
    User(UserKey),
    /// Every device of every member of the group (a group timeline entry).
    Group(GroupKey),
}

/// A batch of entries to push, and the connection that sent them.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    pub entries: Vec<(Target, Entry)>,
    /// The sender's connection, `(node, conn_id)`: it has its ack and gets
    /// no push (the sender's other devices do).
    pub skip_conn: Option<(String, u64)>,
}

impl Delivery {
    /// The connection to skip when it is on `node`.
    pub fn skip_on(&self, node: &str) -> Option<u64> {
        self.skip_conn
            .as_ref()
            .filter(|(n, _)| n == node)
            .map(|(_, c)| *c)
    }
}

/// What one entry of a delivery reached.
#[derive(Debug, Clone, Default)]
pub struct Reach {
    /// Devices the push was handed to: exact on this node; on another node,
    /// those presence lists there when the route accepted the batch (for a
    /// group entry, this node's devices only).
    pub devices: usize,
    /// Why some node holding the target's devices could not be reached.
    pub error: Option<RouteError>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("route unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Route: Send + Sync + 'static {
    /// This node's hub, where the route hands local pushes.
    fn hub(&self) -> &Arc<Hub>;

    /// Pushes every entry to the online devices of its target, wherever
    /// they are; returns the reach of each entry, aligned with
    /// `d.entries`. An error means nothing was pushed: where the devices
    /// are could not be learnt (presence unavailable).
    async fn deliver(&self, d: &Delivery) -> Result<Vec<Reach>, RouteError>;

    /// Users `uids` of the group's app joined (`joined`) or left the group:
    /// every connection of theirs, on every node, starts or stops getting
    /// the group's pushes. No uids and `joined` false: the group was
    /// deleted, every connection leaves it.
    async fn membership(
        &self,
        group: &GroupKey,
        uids: &[String],
        joined: bool,
    ) -> Result<(), RouteError>;

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
}

/// The encoded `Push` frame of each entry, aligned with `entries`. An entry
/// equal to the one before it (the same message and sequence, as in an
/// online-only fan-out) shares its frame: one encoding for the batch, the
/// same `Bytes` handed to every connection.
pub fn push_frames(entries: &[(Target, Entry)]) -> Vec<Bytes> {
    let mut frames: Vec<Bytes> = Vec::with_capacity(entries.len());
    let mut prev: Option<&Entry> = None;
    for (_, entry) in entries {
        let frame = match (prev, frames.last()) {
            (Some(p), Some(f)) if p.seq == entry.seq && Arc::ptr_eq(&p.message, &entry.message) => {
                f.clone()
            }
            _ => Packet::Push(entry.to_pb()).encode(0),
        };
        frames.push(frame);
        prev = Some(entry);
    }
    frames
}

/// Single-node route: every device is on this node's hub, which answers
/// presence itself.
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
    fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    async fn deliver(&self, d: &Delivery) -> Result<Vec<Reach>, RouteError> {
        let frames = push_frames(&d.entries);
        // One node: the skip names a connection here.
        let skip = d.skip_conn.as_ref().map(|(_, c)| *c);
        let reached = self.hub.deliver(&d.entries, &frames, skip);
        Ok(reached
            .into_iter()
            .map(|devices| Reach {
                devices,
                error: None,
            })
            .collect())
    }

    async fn membership(
        &self,
        group: &GroupKey,
        uids: &[String],
        joined: bool,
    ) -> Result<(), RouteError> {
        self.hub.membership(group, uids, joined);
        Ok(())
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
