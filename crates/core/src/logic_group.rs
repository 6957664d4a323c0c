//! Group messages on the client protocol: post, sync, acknowledge, and what
//! a device learns of its groups at login.

use crate::group::GroupKey;
use crate::logic::Logic;
use crate::model::Entry;

impl Logic {
    /// Pushes a stored group entry to every online member device, wherever
    /// it is, except `skip_conn` (the sender's connection, which gets its
    /// ack instead). Never fails: the entry is durable, and a device that
    /// misses the push gets it by sync.
    pub async fn deliver_group_entry(
        &self,
        group: &GroupKey,
        entry: Entry,
        skip_conn: Option<u64>,
    ) {
        // lead: replace — a placeholder until the one delivery path
        // (issue 12 Part 1) reaches the member devices.
        tracing::debug!(%group, seq = entry.seq, ?skip_conn, "group entry stored");
    }
}
