//! The bus: where `c2s` reports and platform events go to business servers.
//!
//! The embedded [`OutboxBus`] writes each event to the store's durable
//! outbox (a webhook dispatcher drains it); a clustered bus publishes to NATS
//! JetStream. Either way `publish` returns once the event is durable, which
//! is when the client gets its `c2s_ack`.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::model::UserKey;
use crate::store::{Store, StoreError};

/// An event for business servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusEvent {
    /// Unique, time-ordered id; receivers de-duplicate on it.
    pub id: u64,
    /// `c2s`, `user.online`, `user.offline`, `message.stored`.
    pub topic: String,
    /// The user the event is about (the sender of a c2s).
    pub user: UserKey,
    /// The app's message type (for c2s), used to pick the destination.
    pub kind: String,
    pub body: Bytes,
    pub time_ms: i64,
}

/// A durable receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusReceipt {
    /// The event id (the first one, for a duplicate).
    pub id: u64,
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for BusError {
    fn from(e: StoreError) -> BusError {
        BusError::Unavailable(e.to_string())
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Makes the event durable; `dedupe_id` (may be empty) de-duplicates resends per user.
    async fn publish(&self, event: BusEvent, dedupe_id: &str) -> Result<BusReceipt, BusError>;

    /// Checks that the backend is reachable (for `/readyz`).
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// True when the bus should get only the platform events (not `c2s`)
    /// that one of the app's webhooks subscribed to ([`crate::AppConfig::wants_event`]).
    /// False (the default): every event, for readers the platform does not
    /// know (business servers on JetStream pick their subjects themselves).
    fn only_subscribed(&self) -> bool {
        false
    }
}

/// The embedded bus: events go to the store's outbox.
pub struct OutboxBus {
    store: Arc<dyn Store>,
}

impl OutboxBus {
    pub fn new(store: Arc<dyn Store>) -> OutboxBus {
        OutboxBus { store }
    }
}

#[async_trait]
impl Bus for OutboxBus {
    async fn publish(&self, event: BusEvent, dedupe_id: &str) -> Result<BusReceipt, BusError> {
        let r = self.store.outbox_append(&event, dedupe_id).await?;
        Ok(BusReceipt {
            id: r.id,
            duplicate: r.duplicate,
        })
    }

    /// The outbox's only reader is the webhook dispatcher, which drops what
    /// no webhook wants: writing such an event would cost a durable write
    /// per message for nothing.
    fn only_subscribed(&self) -> bool {
        true
    }
}
