//! Group messages on the client protocol: post, sync, acknowledge, and what
//! a device learns of its groups at login.

use crate::group::GroupKey;
use crate::logic::Logic;
use crate::model::Entry;
use crate::route::{Delivery, Target};

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
        let delivery = Delivery {
            entries: vec![(Target::Group(group.clone()), entry)],
            skip_conn: skip_conn.map(|c| (self.config().node.clone(), c)),
        };
        self.deliver(delivery).await;
    }
}
