//! Switchboard's domain, independent of sockets and databases.
//!
//! - [`model`]: users, messages, timeline entries.
//! - [`id`]: time-ordered 64-bit message ids.
//! - the backend traits — [`Store`], [`Presence`], [`Route`], [`Bus`] — each
//!   with an embedded implementation here or in `switchboard-backends`, and
//!   clustered ones picked by configuration;
//! - [`hub`]: this node's registry of open connections (where a push lands);
//! - [`auth`]: app configuration and login tokens;
//! - [`logic`]: c2c, c2s, s2c, sync and cursors, written once against the traits.

pub mod auth;
pub mod bus;
pub mod error;
pub mod hub;
pub mod id;
pub mod logic;
pub mod model;
pub mod presence;
pub mod route;
pub mod store;

pub use auth::{AppConfig, Apps};
pub use bus::{Bus, BusError, BusEvent, BusReceipt, OutboxBus};
pub use error::LogicError;
pub use hub::{ConnHandle, Hub, Outbound};
pub use logic::{Logic, LogicConfig};
pub use model::{Entry, Message, NewMessage, UserKey};
pub use presence::{DeviceSession, MemoryPresence, Presence, PresenceError};
pub use route::{Delivery, LocalRoute, Route, RouteError};
pub use store::{Appended, Page, Store, StoreError};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
